"""Fixtures for the upload service: a real fake-gcs-server, real PostgreSQL, the app under test."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

import pytest

from devtools.stack import _http, _port_open, fake_gcs_binary
from tests.conftest import fresh_database

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def fake_gcs_url() -> Iterator[str]:
    """A fake-gcs-server (in-memory, no notifications) on a free port, for this test session."""
    port = free_port()
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [str(fake_gcs_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
         "-backend", "memory", "-log-level", "warn", "-external-url", f"http://127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not _port_open(f"127.0.0.1:{port}"):
            assert proc.poll() is None, "fake-gcs-server exited"
            assert time.monotonic() < deadline, "fake-gcs-server did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def create_bucket(gcs_url: str, name: str) -> None:
    status, body = _http("POST", f"{gcs_url}/storage/v1/b", {"name": name})
    assert status in (200, 409), body


def bucket_names(gcs_url: str, bucket: str) -> list[str]:
    """Every object name in the bucket (what the service wrote, or did not)."""
    from upload_service.services.gcs import make_client
    return sorted(blob.name for blob in make_client(gcs_url).list_blobs(bucket))


@pytest.fixture(scope="module")
def upload_db() -> str:
    """A fresh PostgreSQL database for one test module."""
    return fresh_database("beam_qa_upload_api")


# The test clients and their keys; the service is configured with the hashes only.
KEYS = {"alice": "alice-" + "k" * 40, "bob": "bob-" + "k" * 40}
API_KEYS = ",".join(f"{name}={hashlib.sha256(key.encode()).hexdigest()}" for name, key in KEYS.items())


def key_header(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


@pytest.fixture
def make_client(fake_gcs_url, upload_db, request):
    """Builds a TestClient for a new app whose settings point at fake-gcs-server and PostgreSQL.

    Each call gets its own empty bucket; keyword arguments override Settings fields. The app knows
    the clients of ``KEYS`` and applies the schema migrations itself; the TestClient sends alice's
    key unless ``as_client`` names another client, or None for no key. ``client.as_(name)`` is
    another TestClient on the same app that sends ``name``'s key (None: no key).
    """
    from fastapi.testclient import TestClient
    from upload_service.core.config import Settings, get_settings
    from upload_service.main import create_app

    opened = []

    def build(as_client: str | None = "alice", **overrides):
        bucket = f"qa-upload-{len(opened)}-{os.urandom(4).hex()}"
        create_bucket(fake_gcs_url, bucket)
        defaults = {"bucket": bucket, "gcs_url": fake_gcs_url, "pg_dsn": upload_db, "backend_timeout_secs": 5.0,
                    "apply_migrations": True, "api_keys": None if overrides.get("auth") == "none" else API_KEYS}
        settings = Settings(**{**defaults, **overrides})
        app = create_app()
        app.dependency_overrides[get_settings] = lambda: settings

        def as_(name: str | None) -> TestClient:
            # Not entered: the app's lifespan (its shared clients) belongs to the first client.
            other = TestClient(app, raise_server_exceptions=False, headers=key_header(name) if name else {})
            other.settings = settings
            return other
        client = TestClient(app, raise_server_exceptions=False, headers=key_header(as_client) if as_client else {})
        client.__enter__()
        client.settings = settings
        client.as_ = as_
        opened.append(client)
        return client

    yield build
    for client in opened:
        client.__exit__(None, None, None)


def chromium_path() -> str | None:
    path = "/usr/bin/chromium"
    return path if os.path.exists(path) else shutil.which("chromium")


@pytest.fixture(scope="session")
def upload_stack(tmp_path_factory, tiny_model):
    """The whole local stack (as `make up` starts it) on free ports: emulators, pipeline, upload service.

    Shared by the end-to-end and browser tests of this folder; its bucket, subscription, database
    and run directory are its own, so it never touches a `make up` stack running beside it.
    """
    from tests.e2e.support import running_stack
    # client_env=False: the API tests of this session talk to their own fake-gcs-server.
    with running_stack(tmp_path_factory, tiny_model, "upload-e2e", with_upload=True, client_env=False) as running:
        yield running


@pytest.fixture(scope="session")
def keyed_upload(upload_stack) -> Iterator[str]:
    """A second upload service on the same stack, as deployed: with the API keys of ``KEYS``.

    The stack's own service runs as `make run` starts it (no keys: QA_AUTH=none on loopback);
    this one tells clients apart. Its log is ``upload-keyed.log`` in the stack's run directory.
    """
    env = {**os.environ, **upload_stack.upload_env(), "QA_API_KEYS": API_KEYS, "QA_AUTH": None}
    with serve(env, upload_stack.config.run_dir / "upload-keyed.log") as url:
        yield url


def log_tail(stack, name: str, chars: int = 3000) -> str:
    path = stack.config.run_dir / f"{name}.log"
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@contextlib.contextmanager
def served(fake_gcs_url: str, log_path: Path, database: str = "beam_qa_upload_served", **env: str) -> Iterator[str]:
    """``python -m upload_service`` (as deployed) on a free port, with its own bucket and database and
    no pipeline; yields its URL, its output goes to ``log_path``; ``env`` adds QA_* settings (None
    removes one)."""
    bucket = f"qa-log-{os.urandom(4).hex()}"
    create_bucket(fake_gcs_url, bucket)
    port = free_port()
    environment = {**os.environ, "QA_BUCKET": bucket, "QA_GCS_URL": fake_gcs_url, "QA_APPLY_MIGRATIONS": "true",
                   "QA_PG_DSN": fresh_database(database), "QA_UPLOAD_PORT": str(port), **env}
    with serve(environment, log_path) as url:
        yield url


@contextlib.contextmanager
def serve(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """``python -m upload_service`` with the environment ``env`` (None values left out) on the port
    ``QA_UPLOAD_PORT`` names, else a free one; yields its URL once /healthz answers."""
    environment = {k: v for k, v in env.items() if v is not None}
    environment.pop("K_SERVICE", None)
    port = environment.setdefault("QA_UPLOAD_PORT", str(free_port()))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "upload_service"], stdout=log, stderr=subprocess.STDOUT,
                                env=environment, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class PipelineRecords:
    """Writes qa_files/qa_answers for one uploaded object with the pipeline's own store, step by step.

    Args:
        dsn: the database the upload service reads.
        accepted: the JSON of the upload's 201 response.
        bucket: the bucket name.
    """

    def __init__(self, dsn: str, accepted: dict, bucket: str):
        from beam_qa.records import FileEvent
        root = f"gs://{bucket}/"
        self.event = FileEvent(accepted["object"], accepted["generation"], accepted["size"], root,
                               accepted["object"][len(root):], 0.0, "test")
        self._dsn = dsn
        self.attempt = None

    def _store(self):
        from beam_qa import runtime
        from beam_qa.settings import PostgresSettings
        return runtime.postgres(PostgresSettings(self._dsn, retry_secs=10))

    def received(self, row_count: int, chunks: int = 1) -> None:
        from beam_qa import runtime
        try:
            store = self._store()
            self.attempt = store.claim(self.event)
            assert store.record_manifest(self.event, self.attempt, ["id", "question", "context"], row_count, chunks)
        finally:
            runtime.close()

    def commit(self, rows: list[tuple], row_count: int):
        """``rows``: ``(row_index, id, question, context, answer, score, start, end, error)``; one chunk."""
        from beam_qa import runtime
        from beam_qa.records import ChunkRow, RowOutcome
        outcomes = [RowOutcome(self.event, self.attempt, 0, 0, row_count,
                               ChunkRow(index, question, context, row_id, "", (row_id,)),
                               answer=answer, score=score, start=start, end=end, error=error or "", model="t")
                    for index, row_id, question, context, answer, score, start, end, error in rows]
        try:
            return self._store().commit_rows(outcomes)
        finally:
            runtime.close()

    def done(self, row_count: int, errors: int, output_uri: str) -> None:
        from beam_qa import runtime
        from beam_qa.records import AnsweredFile
        try:
            assert self._store().mark_done(AnsweredFile(self.event, self.attempt, row_count, errors, output_uri,
                                                        "t")) is not None
        finally:
            runtime.close()
