"""The whole flow on the local emulated GCP: Pub/Sub emulator, fake-gcs-server, PostgreSQL.

The stack is started by the test on free ports with its own bucket, subscription, database
and run directory, so it never touches a `make up` stack running beside it.
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import csv_bytes, fresh_database, query, read_csv_text, squad_csv
from tests.e2e.support import (
    answers_name, errors_name, publish, running_stack, upload, wait_for_status, wait_gone)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model):
    with running_stack(tmp_path_factory, tiny_model, "e2e") as running:
        yield running


@pytest.fixture(scope="module")
def bucket(stack):
    from beam_qa.storage import make_gcs_client
    return make_gcs_client(anonymous=True).bucket(stack.config.bucket)


def test_three_files_are_answered_and_the_model_loads_once(stack, bucket):
    blobs = [upload(bucket, f"incoming/batch/file{i}.csv", squad_csv(i * 15, 15)) for i in range(3)]
    for blob in blobs:
        uri = f"gs://{bucket.name}/{blob.name}"
        wait_for_status(stack, uri, blob.generation, "done")
        wait_gone(bucket, blob.name)
        assert query(stack.config.pg_dsn, "SELECT count(*), count(answer) FROM qa_answers WHERE source_uri = %s",
                     (uri,)) == [(15, 15)]
        rows = read_csv_text(bucket.blob(answers_name(blob.name, blob.generation)).download_as_text())
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
        kept = bucket.blob(errors_name(blob.name, blob.generation))
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
    assert answers == [answers_name(blob.name, blob.generation)]
    assert query(stack.config.pg_dsn, "SELECT attempt FROM qa_files WHERE source_uri = %s", (uri,)) == [(1,)]


def test_other_prefixes_suffixes_and_events_are_ignored(stack, bucket):
    upload(bucket, "other/x.csv", b"question,context\nq,c\n")
    upload(bucket, "incoming/readme.txt", b"hello")
    probe = upload(bucket, "incoming/ignored/probe.csv", squad_csv(300, 2))
    wait_for_status(stack, f"gs://{bucket.name}/{probe.name}", probe.generation, "done")
    # (readme.txt is younger than the sweeper's grace: later a sweep moves it under errors/ as not_csv.)
    assert bucket.blob("other/x.csv").exists() and bucket.blob("incoming/readme.txt").exists()
    assert query(stack.config.pg_dsn, "SELECT count(*) FROM qa_files WHERE source_uri LIKE %s OR source_uri LIKE %s",
                 ("%/other/%", "%.txt")) == [(0,)]
    # The pipeline's own outputs (answers/, errors/) and its deletes never became work either.
    assert query(stack.config.pg_dsn, "SELECT count(*) FROM qa_files WHERE source_uri NOT LIKE %s",
                 (f"gs://{bucket.name}/incoming/%",)) == [(0,)]


def test_a_notification_for_another_bucket_leaves_that_bucket_untouched(stack, bucket):
    """Whoever can publish to the topic cannot point the pipeline at another bucket (issue 31).

    fake-gcs-server notifies the same topic for every bucket, so an upload to a second bucket is
    a real notification naming it; a forged one is published too. Before the fix the pipeline read
    that object, wrote an answers CSV into that bucket and deleted its source.
    """
    from beam_qa.storage import make_gcs_client
    from devtools.stack import _http
    name = f"{stack.config.bucket}-victim"
    status, body = _http("POST", f"{stack.config.gcs_url}/storage/v1/b", {"name": name})
    assert status in (200, 409), body
    victim = make_gcs_client(anonymous=True).bucket(name)
    data = squad_csv(500, 3)
    theirs = upload(victim, "incoming/theirs.csv", data)
    publish(stack, {"eventType": "OBJECT_FINALIZE", "bucketId": name, "objectId": theirs.name,
                    "objectGeneration": str(theirs.generation), "payloadFormat": "JSON_API_V1"},
            {"bucket": name, "name": theirs.name, "generation": str(theirs.generation), "size": str(len(data))})
    ours = upload(bucket, "incoming/other-bucket/ours.csv", squad_csv(510, 2))
    wait_for_status(stack, f"gs://{bucket.name}/{ours.name}", ours.generation, "done")
    log = stack.config.run_dir / "pipeline.log"
    deadline = time.monotonic() + 10
    while "other_bucket" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {blob.name for blob in victim.list_blobs()} == {"incoming/theirs.csv"}, "the other bucket was touched"
    assert victim.blob("incoming/theirs.csv").download_as_bytes() == data
    assert query(stack.config.pg_dsn, "SELECT count(*) FROM qa_files WHERE source_uri LIKE %s",
                 (f"gs://{name}/%",)) == [(0,)]
    assert "other_bucket" in log.read_text()
    # And our bucket is still answered.
    after = upload(bucket, "incoming/other-bucket/after.csv", squad_csv(520, 2))
    wait_for_status(stack, f"gs://{bucket.name}/{after.name}", after.generation, "done")


def test_bounded_mode_writes_the_same_answers_as_streaming(stack, bucket, tmp_path, tiny_model):
    from beam_qa.launch import run
    data = squad_csv(400, 8)
    blob = upload(bucket, "incoming/same/compare.csv", data)
    uri = f"gs://{bucket.name}/{blob.name}"
    wait_for_status(stack, uri, blob.generation, "done")
    streamed_csv = bucket.blob(answers_name(blob.name, blob.generation)).download_as_text()

    local = tmp_path / "in" / "compare.csv"
    local.parent.mkdir()
    local.write_bytes(data)
    generation = local.stat().st_mtime_ns
    dsn = fresh_database("beam_qa_e2e_bounded")
    run([f"--input_pattern={local.parent / '*.csv'}", f"--model={tiny_model}", f"--pg_dsn={dsn}"])
    bounded_csv = (local.parent / "answers" / f"compare.{generation}.answers.csv").read_bytes().decode()
    assert bounded_csv == streamed_csv
    columns = "row_index, id, question, context, answer, round(score::numeric, 6), answer_start, answer_end, error"
    streamed_rows = query(stack.config.pg_dsn, f"SELECT {columns} FROM qa_answers WHERE source_uri = %s ORDER BY 1",
                          (uri,))
    assert query(dsn, f"SELECT {columns} FROM qa_answers ORDER BY 1") == streamed_rows

