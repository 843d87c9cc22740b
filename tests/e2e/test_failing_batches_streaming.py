"""On the local stream, a file whose batches always fail gives up after --max_attempts, and the stream goes on.

The real emulators, PostgreSQL and streaming pipeline, with no restart: the pipeline process
(``tests/e2e/failing_pipeline.py``) fails every model batch that holds a marked row, the way a
resource error escapes the handler once its own retries are spent. Each failure ends the file's
attempt; the sweeper starts the next; after the last the claim gives the file up.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import pytest

from beam_qa.storage import make_gcs_client
from devtools.stack import Stack, StackConfig
from tests import handlers
from tests.conftest import csv_bytes, fresh_database, query, squad_csv
from tests.e2e.support import free_port, stack_environment, upload, wait_for_status, wait_gone

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_ATTEMPTS = 2


class _FailingStack(Stack):
    """The local stack whose pipeline is ``tests.e2e.failing_pipeline``."""

    def pipeline_command(self, model: str) -> list[str]:
        command = super().pipeline_command(model)
        assert command[1:3] == ["-m", "beam_qa"], command
        return [sys.executable, "-m", "tests.e2e.failing_pipeline", *command[3:]]


@contextlib.contextmanager
def _failing_stack(tmp_path_factory, model: str) -> Iterator[Stack]:
    config = StackConfig(
        project="local-project", pubsub_host=f"127.0.0.1:{free_port()}", gcs_url=f"http://127.0.0.1:{free_port()}",
        bucket="qa-failing", topic="qa-failing-uploads", subscription="qa-failing-pipeline",
        pg_dsn=fresh_database("beam_qa_failing_e2e"), model=model, run_dir=tmp_path_factory.mktemp("run-failing"),
        pipeline_args=["--sweep_interval_secs=2", "--sweep_grace_secs=1", f"--max_attempts={MAX_ATTEMPTS}",
                       "--max_batch_size=4"])
    running = _FailingStack(config)
    with stack_environment(config):
        try:
            running.up()
            yield running
        finally:
            running.stop()


def test_a_file_whose_batches_always_fail_gives_up_and_the_next_file_is_answered_without_a_restart(
        tmp_path_factory, tiny_model):
    marked = csv_bytes(["id", "question", "context"], [
        [str(i), f"What is number {i}?{handlers.FAIL_MARKER[0] if i == 1 else ''}", f"The number is {i}."]
        for i in range(3)])
    with _failing_stack(tmp_path_factory, tiny_model) as stack:
        bucket = make_gcs_client(anonymous=True).bucket(stack.config.bucket)
        poison = upload(bucket, "incoming/poison.csv", marked)
        beside = upload(bucket, "incoming/beside.csv", squad_csv(0, 3))
        uri = f"gs://{bucket.name}/incoming/poison.csv"
        wait_for_status(stack, f"gs://{bucket.name}/incoming/beside.csv", beside.generation, "done", timeout=120)
        wait_for_status(stack, uri, poison.generation, "failed", timeout=240)
        (kind, error, output, attempt), = query(stack.config.pg_dsn, "SELECT error_kind, error, output_uri, attempt "
                                                "FROM qa_files WHERE source_uri = %s", (uri,))
        assert kind == "gave_up" and attempt == MAX_ATTEMPTS + 1
        assert error.startswith(f"gave up after {MAX_ATTEMPTS} attempts; the last one ended with an error that "
                                "failed its rows as a batch (TransientInferenceError: resource error persisted"), error
        assert output == f"gs://{bucket.name}/errors/poison.{poison.generation}.csv"
        assert bucket.blob(output.split("/", 3)[3]).download_as_bytes() == marked
        wait_gone(bucket, "incoming/poison.csv", timeout=30)
        # The same process answers the next file: nothing stopped the stream.
        after = upload(bucket, "incoming/after.csv", squad_csv(3, 2))
        wait_for_status(stack, f"gs://{bucket.name}/incoming/after.csv", after.generation, "done", timeout=120)
        assert stack.procs["pipeline"].poll() is None
        log = (stack.config.run_dir / "pipeline.log").read_text()
        assert log.count(f"ended attempt 1 of {uri}#{poison.generation}") == 1
        assert log.count(f"ended attempt {MAX_ATTEMPTS} of {uri}#{poison.generation}") == 1
