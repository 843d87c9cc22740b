"""The whole flow on the local emulated GCP: Pub/Sub emulator, fake-gcs-server, PostgreSQL.

The stack is started by the test on free ports with its own bucket, subscription, database
and run directory, so it never touches a `make up` stack running beside it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import time

import pytest

from beam_qa.dev.stack import Stack, StackConfig, _http
from tests.conftest import csv_bytes, fresh_database, query, read_csv_text, squad_csv

pytestmark = pytest.mark.e2e

DEADLINE_SECS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model):
    if not shutil.which("gcloud"):
        pytest.fail("gcloud (with the Pub/Sub emulator) is required for the end-to-end tests")
    config = StackConfig(
        project="local-project", pubsub_host=f"127.0.0.1:{free_port()}", gcs_url=f"http://127.0.0.1:{free_port()}",
        bucket="qa-e2e", topic="qa-e2e-uploads", subscription="qa-e2e-pipeline",
        pg_dsn=fresh_database("beam_qa_e2e"), model=tiny_model,
        run_dir=tmp_path_factory.mktemp("run"), pipeline_args=[])
    running = Stack(config)
    saved = {k: os.environ.get(k) for k in config.client_env()}
    os.environ.update(config.client_env())
    try:
        running.up()
        yield running
    finally:
        running.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def bucket(stack):
    from beam_qa.storage import make_gcs_client
    return make_gcs_client(anonymous=True).bucket(stack.config.bucket)


def upload(bucket, name: str, data: bytes):
    blob = bucket.blob(name)
    blob.upload_from_string(data, content_type="text/csv")
    return blob


def wait_for_status(stack, uri: str, generation: int, status: str, timeout: float = DEADLINE_SECS) -> float:
    """Seconds until qa_files holds ``status`` for that version; fails after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        rows = query(stack.config.pg_dsn, "SELECT status FROM qa_files WHERE source_uri = %s "
                     "AND source_generation = %s", (uri, generation))
        if rows and rows[0][0] == status:
            return time.monotonic() - start
        time.sleep(0.1)
    pytest.fail(f"{uri}#{generation} did not reach {status} within {timeout}s; "
                f"pipeline log tail:\n{(stack.config.run_dir / 'pipeline.log').read_text()[-3000:]}")


def wait_gone(bucket, name: str, timeout: float = DEADLINE_SECS) -> None:
    deadline = time.monotonic() + timeout
    while bucket.get_blob(name) is not None:
        assert time.monotonic() < deadline, f"{name} was not deleted within {timeout}s"
        time.sleep(0.1)


def publish(stack, attributes: dict[str, str], data: dict) -> None:
    body = {"messages": [{"data": base64.b64encode(json.dumps(data).encode()).decode(), "attributes": attributes}]}
    status, text = _http("POST", f"http://{stack.config.pubsub_host}/v1/{stack.config.topic_path}:publish", body)
    assert status == 200, text


def test_three_files_are_answered_within_seconds_and_the_model_loads_once(stack, bucket):
    blobs = [upload(bucket, f"incoming/batch/file{i}.csv", squad_csv(i * 15, 15)) for i in range(3)]
    for blob in blobs:
        uri = f"gs://{bucket.name}/{blob.name}"
        elapsed = wait_for_status(stack, uri, blob.generation, "done")
        assert elapsed < DEADLINE_SECS
        wait_gone(bucket, blob.name)
        assert query(stack.config.pg_dsn, "SELECT count(*), count(answer) FROM qa_answers WHERE source_uri = %s",
                     (uri,)) == [(15, 15)]
        answers_name = blob.name.replace("incoming/", "answers/").replace(".csv", ".answers.csv")
        rows = read_csv_text(bucket.blob(answers_name).download_as_text())
        assert len(rows) == 15 and all(r["context"][int(r["answer_start"]):int(r["answer_end"])] == r["answer"]
                                       for r in rows)
    log = (stack.config.run_dir / "pipeline.log").read_text()
    assert log.count("beam_qa model loaded") == 1


def test_bad_files_are_handled_and_the_stream_keeps_serving(stack, bucket):
    missing = upload(bucket, "incoming/bad/missing_context.csv", b"question,ctx\nq,c\n")
    latin = upload(bucket, "incoming/bad/latin1.csv", "question,context\nqu\u00e9,c\u00e9\n".encode("latin-1"))
    empties = upload(bucket, "incoming/bad/empty_questions.csv", csv_bytes(
        ["question", "context"], [["Who?", "Alice."], ["", "ctx"], ["", "ctx"], ["Where?", "Paris."]]))

    for blob, reason in ((missing, "missing column(s) context"), (latin, "not valid UTF-8")):
        uri = f"gs://{bucket.name}/{blob.name}"
        wait_for_status(stack, uri, blob.generation, "failed")
        wait_gone(bucket, blob.name)
        (error, output_uri), = query(stack.config.pg_dsn, "SELECT error, output_uri FROM qa_files WHERE "
                                     "source_uri = %s", (uri,))
        assert reason in error
        kept = bucket.blob(blob.name.replace("incoming/", "errors/"))
        assert output_uri == f"gs://{bucket.name}/{kept.name}"
        assert kept.exists(), "a failed file must be kept under the error prefix"

    uri = f"gs://{bucket.name}/{empties.name}"
    wait_for_status(stack, uri, empties.generation, "done")
    assert query(stack.config.pg_dsn, "SELECT row_index, error FROM qa_answers WHERE source_uri = %s ORDER BY 1",
                 (uri,)) == [(0, None), (1, "empty question"), (2, "empty question"), (3, None)]

    after = upload(bucket, "incoming/bad/after.csv", squad_csv(100, 3))
    wait_for_status(stack, f"gs://{bucket.name}/{after.name}", after.generation, "done")


def test_a_duplicated_notification_leaves_one_set_of_rows_and_one_csv(stack, bucket):
    data = squad_csv(200, 6)
    blob = upload(bucket, "incoming/dup/twice.csv", data)
    attributes = {"eventType": "OBJECT_FINALIZE", "bucketId": bucket.name, "objectId": blob.name,
                  "objectGeneration": str(blob.generation), "payloadFormat": "JSON_API_V1"}
    resource = {"bucket": bucket.name, "name": blob.name, "generation": str(blob.generation),
                "size": str(len(data))}
    publish(stack, attributes, resource)  # same version, delivered again while in flight
    uri = f"gs://{bucket.name}/{blob.name}"
    wait_for_status(stack, uri, blob.generation, "done")
    wait_gone(bucket, blob.name)
    publish(stack, attributes, resource)  # and once more after it is done
    time.sleep(3)
    assert query(stack.config.pg_dsn, "SELECT count(*), count(DISTINCT row_index) FROM qa_answers "
                 "WHERE source_uri = %s", (uri,)) == [(6, 6)]
    assert query(stack.config.pg_dsn, "SELECT count(*), min(status) FROM qa_files WHERE source_uri = %s",
                 (uri,)) == [(1, "done")]
    answers = [b.name for b in bucket.list_blobs(prefix="answers/dup/")]
    assert answers == ["answers/dup/twice.answers.csv"]


def test_other_prefixes_suffixes_and_events_are_ignored(stack, bucket):
    upload(bucket, "other/x.csv", b"question,context\nq,c\n")
    upload(bucket, "incoming/readme.txt", b"hello")
    probe = upload(bucket, "incoming/ignored/probe.csv", squad_csv(300, 2))
    wait_for_status(stack, f"gs://{bucket.name}/{probe.name}", probe.generation, "done")
    assert bucket.blob("other/x.csv").exists() and bucket.blob("incoming/readme.txt").exists()
    assert query(stack.config.pg_dsn, "SELECT count(*) FROM qa_files WHERE source_uri LIKE %s OR source_uri LIKE %s",
                 ("%/other/%", "%.txt")) == [(0,)]
    # The pipeline's own outputs (answers/, errors/) and its deletes never became work either.
    assert query(stack.config.pg_dsn, "SELECT count(*) FROM qa_files WHERE source_uri NOT LIKE %s",
                 (f"gs://{bucket.name}/incoming/%",)) == [(0,)]


def test_bounded_mode_writes_the_same_answers_as_streaming(stack, bucket, tmp_path, tiny_model):
    from beam_qa.pipeline import run
    data = squad_csv(400, 8)
    blob = upload(bucket, "incoming/same/compare.csv", data)
    uri = f"gs://{bucket.name}/{blob.name}"
    wait_for_status(stack, uri, blob.generation, "done")
    streamed_csv = bucket.blob("answers/same/compare.answers.csv").download_as_text()

    local = tmp_path / "in" / "compare.csv"
    local.parent.mkdir()
    local.write_bytes(data)
    dsn = fresh_database("beam_qa_e2e_bounded")
    run([f"--input_pattern={local.parent / '*.csv'}", f"--model={tiny_model}", f"--pg_dsn={dsn}"])
    bounded_csv = (local.parent / "answers" / "compare.answers.csv").read_bytes().decode()
    assert bounded_csv == streamed_csv
    columns = "row_index, id, question, context, answer, round(score::numeric, 6), answer_start, answer_end, error"
    streamed_rows = query(stack.config.pg_dsn, f"SELECT {columns} FROM qa_answers WHERE source_uri = %s ORDER BY 1",
                          (uri,))
    assert query(dsn, f"SELECT {columns} FROM qa_answers ORDER BY 1") == streamed_rows
