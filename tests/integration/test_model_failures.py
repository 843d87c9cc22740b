"""Transient model failures are retried; deterministic ones become row errors for the rows that cause them.

Real bounded runs with the real handler and model. ``tests.handlers.FlakyHandler`` makes the
model's forward pass raise ``torch.OutOfMemoryError`` a given number of times (the way a GPU or
host running short of memory does); the poisoned model (``tests.conftest.poisoned_model``) has a
token its embeddings lack, so a row holding it fails deterministically.
"""

from __future__ import annotations

import pytest
from apache_beam.metrics.metric import MetricsFilter

from beam_qa.launch import run
from tests import handlers
from tests.conftest import POISON, csv_bytes, fresh_database, poisoned_model, query, squad_csv

pytestmark = pytest.mark.integration

ANSWERS = ("SELECT row_index, answer, round(score::numeric, 5), answer_start, answer_end, error FROM qa_answers "
           "ORDER BY row_index")


def counters(result) -> dict[str, int]:
    totals: dict[str, int] = {}
    for item in result.metrics().query(MetricsFilter().with_namespace("beam_qa"))["counters"]:
        totals[item.key.metric.name] = totals.get(item.key.metric.name, 0) + item.committed
    return totals


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("model-failures") / "in"
    path.mkdir()
    (path / "rows.csv").write_bytes(squad_csv(40, 12))
    return path


def _run(folder, model: str, dsn: str, *extra: str):
    return run([f"--input_pattern={folder / '*.csv'}", f"--model={model}", f"--pg_dsn={dsn}", "--keep_source",
                "--max_batch_size=8", *extra])


def test_an_out_of_memory_error_once_is_retried_and_the_file_is_answered_without_row_errors(
        folder, tiny_model, monkeypatch):
    clean = fresh_database("beam_qa_oom_clean")
    _run(folder, tiny_model, clean)

    flaky = fresh_database("beam_qa_oom_once")
    handlers.install(monkeypatch, handlers.FlakyHandler)
    handlers.FAILURES_LEFT[0], handlers.FORWARD_CALLS[0] = 1, 0
    result = _run(folder, tiny_model, flaky)

    assert handlers.FAILURES_LEFT[0] == 0, "the injected error never happened"
    assert counters(result)["inference_retries"] == 1
    assert query(flaky, "SELECT status, row_count FROM qa_files") == [("done", 12)]
    assert query(flaky, "SELECT count(*) FROM qa_answers WHERE error IS NOT NULL") == [(0,)]
    # The same answers as a run that never failed (the retry ran smaller batches).
    assert query(flaky, ANSWERS) == query(clean, ANSWERS)


def test_an_out_of_memory_error_that_persists_ends_the_attempt_instead_of_writing_row_errors(
        folder, tiny_model, monkeypatch):
    dsn = fresh_database("beam_qa_oom_always")
    handlers.install(monkeypatch, handlers.FlakyHandler)
    handlers.FAILURES_LEFT[0] = 10 ** 6
    monkeypatch.setattr("beam_qa.qa.handler.time.sleep", lambda _secs: None)  # skip the retry pauses
    result = _run(folder, tiny_model, dsn)  # the run goes on: the failure is data, not a failed bundle
    handlers.FAILURES_LEFT[0] = 0
    # Nothing was recorded as an answer or a row error, and the file is not final: its attempt
    # ended with the error, so the sweeper (or the next run) tries it again, up to --max_attempts.
    assert query(dsn, "SELECT count(*) FROM qa_answers") == [(0,)]
    (status, ended, ending), = query(dsn, "SELECT status, lease_until <= now(), attempt_error FROM qa_files")
    assert (status, ended) == ("received", True)
    assert ending.startswith("an error that failed its rows as a batch (TransientInferenceError: resource error "
                             "persisted through 3 retries of one row: OutOfMemoryError: out of memory"), ending
    assert counters(result)["attempts_ended"] == 1


def test_a_deterministic_failure_is_a_row_error_for_that_row_only(tmp_path, tiny_model):
    model = poisoned_model(tiny_model, tmp_path / "poisoned")
    (tmp_path / "in").mkdir()
    rows = [[f"q{i}", f"Who is number {i}?", f"Number {i} is Alice {i}."] for i in range(10)]
    rows[6][2] = f"{POISON} {rows[6][2]}"
    (tmp_path / "in" / "poisoned.csv").write_bytes(csv_bytes(["id", "question", "context"], rows))
    dsn = fresh_database("beam_qa_poisoned_row")
    result = run([f"--input_pattern={tmp_path / 'in' / '*.csv'}", f"--model={model}", f"--pg_dsn={dsn}",
                  "--keep_source", "--max_batch_size=8"])
    answers = query(dsn, "SELECT row_index, answer IS NOT NULL, error FROM qa_answers ORDER BY row_index")
    assert [index for index, _, error in answers if error] == [6]
    assert answers[6][2].startswith("model failed on this row: ") and "index out of range" in answers[6][2]
    assert all(answered for index, answered, _ in answers if index != 6)
    assert counters(result)["row_errors_model"] == 1
    assert query(dsn, "SELECT status FROM qa_files") == [("done",)]
