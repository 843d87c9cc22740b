"""A batch that keeps failing ends its file's attempt, never the run; after --max_attempts the file gives up.

Real bounded runs with the real handler, model and PostgreSQL. ``tests.handlers.FailingBatchHandler``
fails every batch holding a marked question, the way a resource error escapes the handler once its
own retries are spent, or a native panic (a ``BaseException``) escapes it. The runs stand for the
attempts: each run is what the sweeper's next claim would start on a streaming job.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from beam_qa import metrics, runtime
from beam_qa.answering import (BatchFailed, FailedForFile, _ContainedKeyedHandler,  # pylint: disable=protected-access
                               _EndAttemptsFn)
from beam_qa.launch import run
from beam_qa.qa.handler import TransientInferenceError
from beam_qa.records import ChunkRow, Claim, FileEvent, RowOutcome
from beam_qa.settings import InputSettings, PostgresSettings, StorageSettings
from tests import handlers
from tests.conftest import csv_bytes, fresh_database, query, squad_csv

pytestmark = pytest.mark.integration

MARK = handlers.FAIL_MARKER[0]


def out_of_memory_for_good():
    return TransientInferenceError("resource error persisted through 3 retries of one row: OutOfMemoryError: "
                                   "out of memory (injected by the test)")


def poison_csv() -> bytes:
    """Eight rows, one of them marked: every batch holding it fails."""
    rows = [[f"p{i}", f"What is number {i}?{MARK if i == 5 else ''}", f"The number is {i}."] for i in range(8)]
    return csv_bytes(["id", "question", "context"], rows)


@pytest.fixture
def failing(monkeypatch):
    handlers.install(monkeypatch, handlers.FailingBatchHandler)
    yield
    handlers.FAIL_WITH[0] = None


def _run(folder: Path, model: str, dsn: str):
    with metrics.local_tally() as tally:
        run([f"--input_pattern={folder / '*.csv'}", f"--model={model}", f"--pg_dsn={dsn}", "--max_attempts=2",
             "--max_batch_size=4", "--chunk_size=2"])
    return tally.counts


def test_a_batch_that_always_fails_ends_its_attempts_then_gives_up_and_the_other_files_are_answered(
        tmp_path, tiny_model, failing):
    handlers.FAIL_WITH[0] = out_of_memory_for_good
    folder = tmp_path / "in"
    folder.mkdir()
    poison, good = folder / "poison.csv", folder / "good.csv"
    poison.write_bytes(poison_csv())
    good.write_bytes(squad_csv(0, 6))
    dsn = fresh_database("beam_qa_failing_batches")
    state = "SELECT status, attempt, lease_until <= now(), attempt_error FROM qa_files WHERE source_uri = %s"
    ending = ("an error that failed its rows as a batch (TransientInferenceError: resource error persisted "
              "through 3 retries of one row: OutOfMemoryError: out of memory (injected by the test))")

    first = _run(folder, tiny_model, dsn)           # the run ends: the failure did not stop it
    assert query(dsn, state, (str(poison),)) == [("received", 1, True, ending)]
    assert query(dsn, "SELECT status, row_count FROM qa_files WHERE source_uri = %s", (str(good),)) == [("done", 6)]
    assert not good.exists() and poison.exists()
    assert first.get("attempts_ended") == 1

    second = _run(folder, tiny_model, dsn)          # attempt 2 (the sweeper's next claim on a stream)
    assert query(dsn, state, (str(poison),)) == [("received", 2, True, ending)]
    assert second.get("attempts_ended") == 1

    third = _run(folder, tiny_model, dsn)           # attempts used up: the claim gives up
    (status, kind, error, output), = query(dsn, "SELECT status, error_kind, error, output_uri FROM qa_files "
                                               "WHERE source_uri = %s", (str(poison),))
    assert (status, kind) == ("failed", "gave_up")
    assert error == (f"gave up after 2 attempts; the last one ended with {ending}; the file is kept under the "
                     "error prefix: check it, then upload a fixed copy")
    assert Path(output).read_bytes() == poison_csv() and not poison.exists()
    assert third.get("file_errors_gave_up") == 1 and not third.get("attempts_ended")


def test_a_panic_escaping_the_handler_ends_the_attempt_and_the_run_answers_the_rest(tmp_path, tiny_model, failing):
    handlers.FAIL_WITH[0] = lambda: handlers.InjectedPanic("stride must be strictly less than max_len")
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "poison.csv").write_bytes(poison_csv())
    for index in range(2):
        (folder / f"good{index}.csv").write_bytes(squad_csv(3 * index, 3))
    dsn = fresh_database("beam_qa_failing_panic")
    counts = _run(folder, tiny_model, dsn)
    assert query(dsn, "SELECT source_uri, status, attempt, lease_until <= now(), attempt_error FROM qa_files "
                      "ORDER BY source_uri") == [
        (str(folder / "good0.csv"), "done", 1, None, None),
        (str(folder / "good1.csv"), "done", 1, None, None),
        (str(folder / "poison.csv"), "received", 1, True,
         "an error that failed its rows as a batch (InjectedPanic: stride must be strictly less than "
         "max_len)")]
    assert counts.get("attempts_ended") == 1


# --- the pieces, called directly ----------------------------------------------------------------------

class _MarkedFails(ModelHandler):
    """A model handler without a model: answers each question with its length, or fails on a marked one."""

    def load_model(self):
        return None

    def run_inference(self, batch, model, inference_args=None):
        if any(MARK in question for question, _ in batch):
            raise handlers.InjectedPanic("panicked")
        return [PredictionResult(example, len(example[0])) for example in batch]


def _keyed(name: str, index: int, question: str):
    event = FileEvent(f"gs://b/incoming/{name}", 1, 10, "gs://b/", name, 0.0, "")
    row = ChunkRow(row_index=index, question=question, context="c", row_id=str(index), error="", others=())
    return RowOutcome(event=event, attempt=1, chunk=0, chunk_first_row=0, chunk_rows=4, row=row), (question, "c")


def test_a_failing_batch_of_several_files_is_answered_again_file_by_file():
    handler = _ContainedKeyedHandler(_MarkedFails())
    batch = [_keyed("good.csv", 0, "one?"), _keyed("bad.csv", 0, f"two{MARK}?"), _keyed("good.csv", 1, "three?"),
             _keyed("bad.csv", 1, "four?")]
    results = handler.run_inference(batch, None)
    assert [key.event.relative_name for key, _ in results] == ["good.csv", "bad.csv", "good.csv", "bad.csv"]
    assert [result.inference for _, result in results] == [
        4, FailedForFile("InjectedPanic: panicked"), 6, FailedForFile("InjectedPanic: panicked")]
    # One file's batch raises, as an Exception that RunInference's exception handling catches.
    with pytest.raises(BatchFailed, match="^InjectedPanic: panicked$") as info:
        handler.run_inference([batch[1], batch[3]], None)
    assert isinstance(info.value.__cause__, handlers.InjectedPanic)
    # What must stop the process is never turned into data.
    with pytest.raises(KeyboardInterrupt):
        _ContainedKeyedHandler(_Interrupted()).run_inference(batch, None)


class _Interrupted(_MarkedFails):
    def run_inference(self, batch, model, inference_args=None):
        raise KeyboardInterrupt


class _Unreachable:
    """A store whose database is gone: every statement fails the way the retries give up."""

    def release(self, *_args, **_kwargs):
        raise psycopg.OperationalError("connection refused (injected by the test)")

    def close(self) -> None:
        pass


def test_an_ending_that_cannot_be_recorded_fails_the_bundle_for_the_runner_to_retry():
    key, example = _keyed("bad.csv", 0, "q?")
    failed = ([(key, example)], (TransientInferenceError, "TransientInferenceError('x')", ["Traceback ...\n"]))
    with runtime.override(postgres_factory=lambda _settings: _Unreachable()):
        fn = _EndAttemptsFn(PostgresSettings("host=unused"))
        fn.setup()
        with pytest.raises(psycopg.OperationalError):
            fn.process(failed)


def _parser_bug(*_args, **_kwargs):
    raise RuntimeError("a parser bug (injected by the test)")


@pytest.mark.parametrize("where", ["parse", "rows"])
def test_a_parser_bug_ends_the_attempt_instead_of_failing_the_bundle(tmp_path, monkeypatch, where):
    from beam_qa import reading
    path = tmp_path / "a.csv"
    path.write_bytes(squad_csv(0, 5))
    stat = path.stat()
    event = FileEvent(str(path), stat.st_mtime_ns, stat.st_size, str(tmp_path), "a.csv", 0.0, "")
    settings = PostgresSettings(fresh_database("beam_qa_failing_parse"), retry_secs=10)
    if where == "parse":
        monkeypatch.setattr(reading, "parse_csv", _parser_bug)
    else:  # rows are parsed as the chunks go out: the third row fails, after the first chunk left
        original = reading.chunk_row_of
        monkeypatch.setattr(reading, "chunk_row_of", lambda row, *args: _parser_bug() if row.row_index == 2
                            else original(row, *args))
    fn = reading._ReadCsvFn(InputSettings(chunk_size=2), settings, StorageSettings())  # pylint: disable=protected-access
    fn.setup()
    try:
        store = runtime.postgres(settings)
        with metrics.local_tally() as tally:
            out = list(fn.process(Claim(event, store.claim(event))))   # no exception: the bundle goes on
        assert [chunk.index for chunk in out] == ([] if where == "parse" else [0])
        assert not store.heartbeat(event, 1)        # a chunk already out is dropped as superseded
    finally:
        runtime.close()
    assert query(settings.dsn, "SELECT status, lease_until <= now(), attempt_error FROM qa_files") == [
        ("received", True, "an error while reading it (RuntimeError: a parser bug (injected by the test))")]
    assert tally.counts.get("attempts_ended") == 1
