"""A chunk's rows reach qa_answers in one statement, cell for cell as the rows said, whatever they hold."""

from __future__ import annotations

import time

import pytest

from beam_qa import runtime
from beam_qa.records import Claim, ChunkRow, FileEvent, RowOutcome
from beam_qa.reading import chunk_rows
from beam_qa.settings import PostgresSettings
from tests.conftest import fresh_database, query

pytestmark = pytest.mark.integration


@pytest.fixture
def store():
    yield runtime.postgres(PostgresSettings(fresh_database("beam_qa_answer_writes"), retry_secs=10))
    runtime.close()


ROWS = [
    # Ragged other cells (none, one, three), NULL-able fields both set and unset, odd text.
    ChunkRow(row_index=0, question="Who?", context="Alice met Bob.", row_id="a-1", error="", others=()),
    ChunkRow(row_index=1, question="Quoi ? «»", context='He said "hi", then {braces}, a\\b and NULL.',
             row_id=None, error="", others=("x",)),
    ChunkRow(row_index=2, question="", context="ctx", row_id="3", error="empty question",
             others=("", "NULL", '{"json": [1, 2]}'), error_kind="empty_question"),
    ChunkRow(row_index=3, question="Émoji? 😀", context="東京タワー\ttab\nnewline", row_id="4", error="",
             others=("a,b", "'quoted'")),
]


def _outcome(event: FileEvent, chunk, row: ChunkRow, answer: str | None) -> RowOutcome:
    if row.error:
        return RowOutcome(event, chunk.attempt, chunk.index, chunk.first_row, len(chunk.rows), row,
                          error=row.error, error_kind=row.error_kind)
    return RowOutcome(event, chunk.attempt, chunk.index, chunk.first_row, len(chunk.rows), row, answer=answer,
                      score=0.25 + row.row_index, start=row.row_index, end=2 ** 31 - 1, model="m@1 fp32")


def test_a_chunk_is_stored_cell_for_cell_and_a_repeated_row_keeps_its_last_outcome(store):
    event = FileEvent(uri="gs://b/incoming/f.csv", generation=2 ** 40, size=1, root="gs://b/", relative_name="f.csv",
                      event_time=time.time(), trigger="t")
    attempt = store.claim(event)
    (chunk,) = chunk_rows(Claim(event, attempt), ROWS, 4)
    assert store.record_manifest(event, attempt, ["id", "question", "context", "o1", "o2", "o3"], 4, 1)
    outcomes = [_outcome(event, chunk, row, f"first{row.row_index}") for row in ROWS]
    outcomes.append(_outcome(event, chunk, ROWS[1], "second1"))  # the same row again, later
    result = store.commit_rows(outcomes)
    assert (result.committed, result.stale, len(result.completed)) == (5, 0, 1)
    header, stored = store.stored_file(event)
    assert header == ["id", "question", "context", "o1", "o2", "o3"]
    assert stored == [
        (0, "Who?", "Alice met Bob.", [], "first0", 0.25, 0, 2 ** 31 - 1, None, "m@1 fp32"),
        (1, "Quoi ? «»", 'He said "hi", then {braces}, a\\b and NULL.', ["x"], "second1", 1.25, 1, 2 ** 31 - 1, None,
         "m@1 fp32"),
        (2, "", "ctx", ["", "NULL", '{"json": [1, 2]}'], None, None, None, None, "empty question", None),
        (3, "Émoji? 😀", "東京タワー\ttab\nnewline", ["a,b", "'quoted'"], "first3", 3.25, 3, 2 ** 31 - 1, None,
         "m@1 fp32"),
    ]
    dsn = store.settings.dsn
    assert query(dsn, "SELECT row_index, id, error_kind FROM qa_answers ORDER BY row_index") == [
        (0, "a-1", None), (1, None, None), (2, "3", "empty_question"), (3, "4", None)]
