"""Helpers shared by the end-to-end tests: free ports, uploads, waiting on PostgreSQL and GCS.

Every e2e module starts its own stack on free ports (see ``stack_environment``), so tests never
touch a ``make up`` stack or each other.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator

import pytest

from devtools.stack import Stack, StackConfig, _http
from tests.conftest import fresh_database, query

DEADLINE_SECS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def stack_environment(config: StackConfig) -> Iterator[None]:
    """Points this process's clients (GCS, Pub/Sub, PostgreSQL) at ``config``, then restores."""
    saved = {k: os.environ.get(k) for k in config.client_env()}
    os.environ.update(config.client_env())
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def running_stack(tmp_path_factory, model: str, name: str, *, pipeline_args: tuple[str, ...] = (),
                  with_upload: bool = False, client_env: bool = True) -> Iterator[Stack]:
    """The whole local stack, as ``make up`` starts it, on free ports; stopped on exit.

    Its bucket (``qa-NAME``), topic, subscription, database (``beam_qa_NAME``) and run
    directory are its own, so it never touches another test's or a ``make up`` stack.

    Args:
        tmp_path_factory: pytest's, for the run directory.
        model: the model directory the pipeline loads.
        name: a short lowercase name for this stack's resources.
        pipeline_args: extra pipeline flags.
        with_upload: also start the upload service (uvicorn).
        client_env: point this process's GCS/Pub/Sub/PostgreSQL clients at the stack meanwhile.
    """
    if not shutil.which("gcloud"):
        pytest.fail("gcloud (with the Pub/Sub emulator) is required for the end-to-end tests")
    extra = {"upload_host": "127.0.0.1", "upload_port": free_port()} if with_upload else {}
    config = StackConfig(
        project="local-project", pubsub_host=f"127.0.0.1:{free_port()}", gcs_url=f"http://127.0.0.1:{free_port()}",
        bucket=f"qa-{name}", topic=f"qa-{name}-uploads", subscription=f"qa-{name}-pipeline",
        pg_dsn=fresh_database(f"beam_qa_{name}".replace("-", "_")), model=model,
        run_dir=tmp_path_factory.mktemp(f"run-{name}"), pipeline_args=list(pipeline_args), **extra)
    running = Stack(config)
    with stack_environment(config) if client_env else contextlib.nullcontext():
        try:
            running.up()
            if with_upload:
                running.start_upload()
            yield running
        finally:
            running.stop()


def upload(bucket, name: str, data: bytes):
    blob = bucket.blob(name)
    blob.upload_from_string(data, content_type="text/csv")
    return blob


def wait_for_status(stack, uri: str, generation: int, status: str | tuple[str, ...],
                    timeout: float = DEADLINE_SECS) -> str:
    """Waits until qa_files holds ``status`` (or one of several) for that version; returns it.

    ``timeout`` is how long to wait before calling the pipeline stuck, not a bound on its speed.
    """
    wanted = (status,) if isinstance(status, str) else status
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        rows = query(stack.config.pg_dsn, "SELECT status FROM qa_files WHERE source_uri = %s "
                     "AND source_generation = %s", (uri, generation))
        if rows and rows[0][0] in wanted:
            return rows[0][0]
        time.sleep(0.1)
    pytest.fail(f"{uri}#{generation} did not reach {' or '.join(wanted)} within {timeout}s; "
                f"pipeline log tail:\n{(stack.config.run_dir / 'pipeline.log').read_text()[-3000:]}")


def answers_name(source_name: str, generation: int) -> str:
    """The answers CSV of one version: ``answers/<name without .csv>.<generation>.answers.csv``."""
    return source_name.replace("incoming/", "answers/", 1)[:-len(".csv")] + f".{generation}.answers.csv"


def errors_name(source_name: str, generation: int) -> str:
    """Where a failed version is kept: ``errors/<name without .csv>.<generation>.csv``."""
    return source_name.replace("incoming/", "errors/", 1)[:-len(".csv")] + f".{generation}.csv"


def wait_gone(bucket, name: str, timeout: float = DEADLINE_SECS) -> None:
    deadline = time.monotonic() + timeout
    while bucket.get_blob(name) is not None:
        assert time.monotonic() < deadline, f"{name} was not deleted within {timeout}s"
        time.sleep(0.1)


def publish(stack, attributes: dict[str, str], data: dict) -> None:
    body = {"messages": [{"data": base64.b64encode(json.dumps(data).encode()).decode(), "attributes": attributes}]}
    status, text = _http("POST", f"http://{stack.config.pubsub_host}/v1/{stack.config.topic_path}:publish", body)
    assert status == 200, text


def create_subscription(config: StackConfig, name: str) -> str:
    """A further subscription on the stack's topic (for example to audit fake-gcs-server's events)."""
    path = f"projects/{config.project}/subscriptions/{name}"
    status, text = _http("PUT", f"http://{config.pubsub_host}/v1/{path}",
                         {"topic": config.topic_path, "ackDeadlineSeconds": 60})
    assert status in (200, 409), text
    return path


def pull_all(config: StackConfig, subscription_path: str) -> list[dict]:
    """Pulls and acknowledges every message waiting on a subscription; returns them."""
    base = f"http://{config.pubsub_host}/v1/{subscription_path}"
    messages: list[dict] = []
    while True:
        status, text = _http("POST", f"{base}:pull", {"maxMessages": 1000, "returnImmediately": True})
        assert status == 200, text
        received = json.loads(text or b"{}").get("receivedMessages", [])
        if not received:
            return messages
        messages.extend(item["message"] for item in received)
        status, text = _http("POST", f"{base}:acknowledge", {"ackIds": [item["ackId"] for item in received]})
        assert status == 200, text
