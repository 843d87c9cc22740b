"""Slow files on the real stack: one attempt at a time, and re-uploads answered side by side.

A DistilBERT-base-sized model (random weights, real compute) makes a file take long enough for
a sweeper, running every 2 s with a 5 s grace, to find it several times while it is answered:
the lease (renewed by the claiming process and by every chunk) must keep it from being started
again. Two pipeline processes share the subscription, the bucket and the database, like two
Dataflow workers: the local DirectRunner runs one work item at a time, so while one process
answers the file only the other one's sweeper can find it. That runner's clock for timers is
its Pub/Sub read's watermark, which moves only when a pull returns (after 30 s on an idle
subscription), so the test publishes a harmless notification (a delete, which the pipeline
ignores) every half second while it waits. Writes of the answers CSV are counted from
fake-gcs-server's own notifications, read from an extra "audit" subscription, not from the
pipelines' logs.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import re
import threading
import time

import pytest

from devtools.stack import Stack
from devtools.squad import squad_rows
from tests.conftest import csv_bytes, query
from tests.e2e.support import (
    answers_name, create_subscription, publish, pull_all, running_stack, upload, wait_for_status)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SWEEP_INTERVAL_SECS = 2
SWEEP_GRACE_SECS = 5


@pytest.fixture(scope="module")
def stack(tmp_path_factory, base_model):
    args = (f"--sweep_interval_secs={SWEEP_INTERVAL_SECS}", f"--sweep_grace_secs={SWEEP_GRACE_SECS}",
            "--lease_secs=10")
    with running_stack(tmp_path_factory, base_model, "overlap", pipeline_args=args) as running:
        running.audit = create_subscription(running.config, "qa-overlap-audit")
        second = Stack(dataclasses.replace(running.config, run_dir=tmp_path_factory.mktemp("run-overlap-b")))
        try:
            second.start_pipeline(base_model)
            running.logs = [running.config.run_dir / "pipeline.log", second.config.run_dir / "pipeline.log"]
            yield running
        finally:
            second.stop()


@pytest.fixture(scope="module")
def bucket(stack):
    from beam_qa.storage import make_gcs_client
    return make_gcs_client(anonymous=True).bucket(stack.config.bucket)


def _rows(start: int, count: int, tag: str) -> bytes:
    rows = squad_rows(start + count)[start:]
    return csv_bytes(["id", "question", "context"], [[f"{tag}-{i}", r["question"], r["context"]]
                                                     for i, r in enumerate(rows)])


@contextlib.contextmanager
def clock_ticking(stack):
    """Publishes an ignored notification every 0.5 s, so that the idle pipeline's watermark moves."""
    stop = threading.Event()

    def tick():
        while not stop.wait(0.5):
            publish(stack, {"eventType": "OBJECT_DELETE", "bucketId": stack.config.bucket,
                            "objectId": "incoming/tick.csv", "objectGeneration": "1",
                            "payloadFormat": "JSON_API_V1"}, {})
    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _finalize_events(stack, name: str) -> list[dict]:
    stack.audited = getattr(stack, "audited", []) + pull_all(stack.config, stack.audit)
    return [m for m in stack.audited if m.get("attributes", {}).get("eventType") == "OBJECT_FINALIZE"
            and m["attributes"].get("objectId") == name]


def test_a_file_slower_than_the_sweep_grace_is_read_answered_and_written_once(stack, bucket):
    blob = upload(bucket, "incoming/slow/big.csv", _rows(0, 300, "big"))
    uri = f"gs://{bucket.name}/{blob.name}"
    starts = [path.stat().st_size for path in stack.logs]
    with clock_ticking(stack):
        wait_for_status(stack, uri, blob.generation, "done", timeout=600)
    (received_at, completed_at, attempt), = query(
        stack.config.pg_dsn, "SELECT received_at, completed_at, attempt FROM qa_files WHERE source_uri = %s", (uri,))
    log = "\n".join(path.read_text(errors="replace")[start:] for path, start in zip(stack.logs, starts))
    busy_sweeps = re.findall(r"swept gs://qa-overlap/incoming/\*\*: 0 to start \(0 not CSV, to be moved under the error "
                             r"prefix\) of 1 files older than 5s "
                             r"\(1 finished or in flight\)", log)
    took = (completed_at - received_at).total_seconds()
    if not (took > 3 * SWEEP_GRACE_SECS and len(busy_sweeps) >= 2):
        pytest.skip(f"this machine answered the file in {took:.0f}s and {len(busy_sweeps)} sweep(s) saw it in "
                    "flight: too fast for the case under test (a file that outlives several sweeps)")
    # Read once: one attempt, one "received" line; answered once: each row committed by attempt 1.
    assert attempt == 1
    assert log.count(f"received {uri}#{blob.generation}") == 1
    assert f"retrying {uri}" not in log and f"not starting {uri}" not in log  # never even offered again
    assert query(stack.config.pg_dsn, "SELECT count(*), count(DISTINCT row_index), count(answer) FROM qa_answers "
                 "WHERE source_uri = %s", (uri,)) == [(300, 300, 300)]
    # Written once, by the bucket's own account.
    answers = answers_name(blob.name, blob.generation)
    deadline = time.monotonic() + 10
    while not _finalize_events(stack, answers) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    assert len(_finalize_events(stack, answers)) == 1


def test_two_generations_of_one_name_answered_at_once_keep_their_own_answers(stack, bucket):
    name = "incoming/regen/same.csv"
    first = upload(bucket, name, _rows(400, 60, "first"))
    uri = f"gs://{bucket.name}/{name}"
    if wait_for_status(stack, uri, first.generation, ("received", "done"), timeout=120) == "done":
        pytest.skip("this machine answered 60 rows before the test saw the file in flight: too fast for a "
                    "re-upload to overlap it")
    second = upload(bucket, name, _rows(500, 5, "second"))   # while the first is being answered
    for blob, rows, tag in ((first, 60, "first"), (second, 5, "second")):
        wait_for_status(stack, uri, blob.generation, "done", timeout=300)
        (output_uri,), = query(stack.config.pg_dsn, "SELECT output_uri FROM qa_files WHERE source_uri = %s "
                               "AND source_generation = %s", (uri, blob.generation))
        assert output_uri == f"gs://{bucket.name}/{answers_name(name, blob.generation)}"
        written = list(csv.DictReader(io.StringIO(bucket.blob(output_uri.split("/", 3)[3]).download_as_text())))
        assert [r["id"] for r in written] == [f"{tag}-{i}" for i in range(rows)]
        assert all(r["context"][int(r["answer_start"]):int(r["answer_end"])] == r["answer"] for r in written)
    assert first.generation != second.generation
    assert query(stack.config.pg_dsn, "SELECT source_generation, row_count FROM qa_files WHERE source_uri = %s "
                 "ORDER BY 1", (uri,)) == [(first.generation, 60), (second.generation, 5)]
