"""Answered rows: committed chunk by chunk, and the commit that completes an attempt found exactly once.

Per chunk, a bitmap of committed rows (``qa_chunks``); per file, a count of complete chunks
(``qa_files.chunks_done``), both updated under the lock of the file's ``qa_files`` row, so exactly
one commit sees the current attempt complete whatever the parallelism.
"""

from __future__ import annotations

import dataclasses
import json

from beam_qa.records import CompletedFile, FileEvent, RowOutcome
from beam_qa.store.attempts import ENDED

# ``ended``: the attempt was given back (attempts.ENDED); its late rows are stale, and committing
# them must not renew its lease.
LOCK_FILE = f"""
SELECT status, attempt, chunk_count, row_count, lease_until = {ENDED} AS ended FROM qa_files
WHERE source_uri = %s AND source_generation = %s FOR UPDATE
"""

# Every row of one commit in one statement: the columns travel as arrays (one per column) and
# unnest back into rows, so the server plans and runs one INSERT per chunk instead of one per row
# (``benchmarks/overhead.py`` measures both). ``other_cells`` is a text[] per row, which an array
# of arrays cannot carry when rows differ in width: it travels as one JSON array of arrays.
UPSERT_ANSWERS = """
INSERT INTO qa_answers (source_uri, source_generation, row_index, id, question, context, other_cells,
                        answer, score, answer_start, answer_end, error, error_kind, model, processed_at)
SELECT %(uri)s, %(generation)s, r.row_index, r.id, r.question, r.context,
       ARRAY(SELECT jsonb_array_elements_text(%(others)s::jsonb -> (r.n::int - 1))),
       r.answer, r.score, r.answer_start, r.answer_end, r.error, r.error_kind, r.model, now()
FROM unnest(%(row_index)s::int[], %(id)s::text[], %(question)s::text[], %(context)s::text[], %(answer)s::text[],
            %(score)s::float8[], %(answer_start)s::int[], %(answer_end)s::int[], %(error)s::text[],
            %(error_kind)s::text[], %(model)s::text[])
     WITH ORDINALITY AS r(row_index, id, question, context, answer, score, answer_start, answer_end, error,
                          error_kind, model, n)
ON CONFLICT (source_uri, source_generation, row_index) DO UPDATE SET
    id = EXCLUDED.id, question = EXCLUDED.question, context = EXCLUDED.context,
    other_cells = EXCLUDED.other_cells, answer = EXCLUDED.answer, score = EXCLUDED.score, answer_start = EXCLUDED.answer_start,
    answer_end = EXCLUDED.answer_end, error = EXCLUDED.error, error_kind = EXCLUDED.error_kind, model = EXCLUDED.model,
    processed_at = EXCLUDED.processed_at
"""

CHUNKS_OF = """
SELECT chunk_index, rows_done FROM qa_chunks
WHERE source_uri = %s AND source_generation = %s AND attempt = %s AND chunk_index = ANY(%s)
"""

UPSERT_CHUNK = """
INSERT INTO qa_chunks (source_uri, source_generation, attempt, chunk_index, rows_done)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (source_uri, source_generation, attempt, chunk_index) DO UPDATE SET rows_done = EXCLUDED.rows_done
"""

ADD_DONE_CHUNKS = """
UPDATE qa_files SET chunks_done = chunks_done + %s, lease_until = now() + make_interval(secs => %s)
WHERE source_uri = %s AND source_generation = %s
RETURNING chunks_done
"""

HEADER_OF = "SELECT header FROM qa_files WHERE source_uri = %s AND source_generation = %s"

ROWS_OF = """
SELECT row_index, question, context, other_cells, answer, score, answer_start, answer_end, error, model
FROM qa_answers WHERE source_uri = %s AND source_generation = %s ORDER BY row_index
"""


def _answer_columns(event: FileEvent, rows: list[RowOutcome]) -> dict:
    """``UPSERT_ANSWERS``' parameters: one array per column, one entry per distinct row.

    One statement may not update a row twice, so a row that came twice (a redelivered element in
    the same bundle) keeps its last outcome, as one statement per row would have left it.
    """
    latest = list({r.row.row_index: r for r in rows}.values())
    return {
        "uri": event.uri, "generation": event.generation,
        "row_index": [r.row.row_index for r in latest], "id": [r.row.row_id for r in latest],
        "question": [r.row.question for r in latest], "context": [r.row.context for r in latest],
        "others": json.dumps([list(r.row.others) for r in latest]),
        "answer": [r.answer for r in latest], "score": [r.score for r in latest],
        "answer_start": [r.start for r in latest], "answer_end": [r.end for r in latest],
        "error": [r.error or None for r in latest], "error_kind": [r.error_kind or None for r in latest],
        "model": [r.model or None for r in latest],
    }


def _bitmap(bits: int, rows: int) -> bytes:
    return bits.to_bytes((rows + 7) // 8, "little")


@dataclasses.dataclass
class CommitResult:
    """What one ``commit_rows`` call did."""

    committed: int = 0        # rows of current attempts written
    stale: int = 0            # rows of superseded or finished attempts, dropped
    completed: list[CompletedFile] = dataclasses.field(default_factory=list)



class AnswerQueries:
    """The answer statements of ``PostgresStore`` (needs its ``settings`` and ``_run``)."""

    def commit_rows(self, outcomes: list[RowOutcome]) -> CommitResult:
        """Upserts answered rows and records them against their chunks, one transaction per file.

        Rows of an attempt that is not the file's current unfinished one, or that was given back
        (ended), are dropped. A commit that leaves every chunk of the current attempt complete
        reports the file as completed.
        """
        result = CommitResult()
        by_file: dict[tuple[str, int], list[RowOutcome]] = {}
        for outcome in outcomes:
            by_file.setdefault((outcome.event.uri, outcome.event.generation), []).append(outcome)
        for key in sorted(by_file):
            committed, stale, completed = self._run("writing answers", lambda conn, rows=by_file[key]:
                                                    self._commit_file(conn, rows))
            result.committed += committed
            result.stale += stale
            if completed is not None:
                result.completed.append(completed)
        return result

    def _commit_file(self, conn, rows: list[RowOutcome]) -> tuple[int, int, CompletedFile | None]:
        event = rows[0].event
        state = conn.execute(LOCK_FILE, (event.uri, event.generation)).fetchone()
        if state is None:
            return 0, len(rows), None
        status, attempt, chunk_count, row_count, ended = state
        live = status == "received" and chunk_count and not ended
        current = [r for r in rows if r.attempt == attempt] if live else []
        if not current:
            return 0, len(rows), None
        conn.execute(UPSERT_ANSWERS, _answer_columns(event, current))
        mine: dict[int, tuple[int, int, int]] = {}  # chunk -> (bits, rows in the chunk, first row)
        for r in current:
            bits, size, first = mine.get(r.chunk, (0, r.chunk_rows, r.chunk_first_row))
            mine[r.chunk] = (bits | (1 << (r.row.row_index - first)), size, first)
        before = {index: int.from_bytes(bitmap, "little") for index, bitmap in conn.execute(
            CHUNKS_OF, (event.uri, event.generation, attempt, list(mine))).fetchall()}
        newly_complete = 0
        updates = []
        for index, (bits, size, _) in mine.items():
            old = before.get(index, 0)
            new = old | bits
            if new != old:
                updates.append((event.uri, event.generation, attempt, index, _bitmap(new, size)))
            if new.bit_count() == size and old.bit_count() < size:
                newly_complete += 1
        if updates:
            with conn.cursor() as cur:
                cur.executemany(UPSERT_CHUNK, updates)
        (chunks_done,) = conn.execute(ADD_DONE_CHUNKS, (newly_complete, self.settings.lease_secs,
                                                        event.uri, event.generation)).fetchone()
        completed = None
        if chunks_done >= chunk_count:
            # Also when this commit completed nothing new: a bundle retried after its commit
            # must still hand the file on (finishing is idempotent).
            completed = CompletedFile(event=event, attempt=attempt, row_count=row_count)
        return len(current), len(rows) - len(current), completed

    def stored_file(self, event: FileEvent) -> tuple[list[str], list[tuple]]:
        """The header and every stored row of a version, in order.

        Returns:
            ``(header, rows)``; a row is ``(row_index, question, context, other_cells, answer,
            score, start, end, error, model)``.
        """
        def work(conn):
            (header,) = conn.execute(HEADER_OF, (event.uri, event.generation)).fetchone() or (None,)
            return list(header or []), conn.execute(ROWS_OF, (event.uri, event.generation)).fetchall()
        return self._run("reading answers", work)

