"""Bytes of per-file assembly state held per row: before (Beam bag state) and now (PostgreSQL).

Before this change (commit e0aeec0) ``AssemblePerFile`` held every ``RowAnswer`` of a file in a
Beam ``BagState`` with ``PickleCoder``, each carrying the file's manifest, every input cell and the
context, until the file's last row arrived. Now the assembly keeps no Beam state: the rows go to
``qa_answers`` as they are answered (where they must end up anyway), and what remains to decide
that a file is complete is one ``qa_chunks`` row per chunk of the current attempt (a bitmap of its
committed rows) plus a few counters on the file's ``qa_files`` row.

Both are measured on the same SQuAD rows: the old records are rebuilt below with the exact fields
they had and pickled as ``PickleCoder`` did (the class references name this module instead of
``beam_qa.records``, 7 characters longer per class: a few bytes per row, counted against the new
design); the new state is read from a real PostgreSQL database with ``pg_column_size`` at its
largest, just before a file's last chunk is committed.

Usage: ``python -m benchmarks.state_bytes [--rows 1000] [--chunk-size 64]`` (prints JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

# --- the records the old assembly held (beam_qa/records.py as of e0aeec0) ----------------------


@dataclasses.dataclass(frozen=True)
class FileEvent:
    uri: str
    generation: int
    size: int
    root: str
    relative_name: str
    event_time: float


@dataclasses.dataclass(frozen=True)
class FileManifest:
    event: FileEvent
    header: tuple[str, ...]
    row_count: int


@dataclasses.dataclass(frozen=True)
class QaRow:
    manifest: FileManifest
    row_index: int
    values: tuple[str, ...]
    question: str
    context: str
    row_id: str | None
    error: str = ""


@dataclasses.dataclass(frozen=True)
class RowAnswer:
    row: QaRow
    answer: str | None = None
    score: float | None = None
    start: int | None = None
    end: int | None = None
    error: str = ""


def old_bytes_per_row(rows: list[dict]) -> float:
    """Mean PickleCoder bytes of one RowAnswer held in the old assembly's bag state."""
    from apache_beam.coders import PickleCoder
    coder = PickleCoder()
    event = FileEvent("gs://my-bucket/incoming/team/questions.csv", 1_795_313_659_049_626, 1_000_000,
                      "gs://my-bucket/", "team/questions.csv", time.time())
    manifest = FileManifest(event, ("id", "question", "context"), len(rows))
    total = 0
    for index, row in enumerate(rows):
        values = (row["id"], row["question"], row["context"])
        answer = RowAnswer(QaRow(manifest, index, values, row["question"], row["context"], row["id"]),
                           answer=row["answer"] or "an answer", score=0.123456, start=10, end=20)
        total += len(coder.encode(answer))
    return total / len(rows)


def new_bytes_per_row(dsn: str, rows: list[dict], chunk_size: int) -> dict:
    """PostgreSQL bytes of assembly state per row, just before the file's last chunk commits."""
    import psycopg

    from beam_qa import runtime
    from beam_qa.reading import chunk_rows
    from beam_qa.records import ChunkRow, Claim, RowOutcome
    from beam_qa.records import FileEvent as NewFileEvent
    from beam_qa.settings import PostgresSettings

    event = NewFileEvent("gs://my-bucket/incoming/team/questions.csv", 1_795_313_659_049_626, 1_000_000,
                         "gs://my-bucket/", "team/questions.csv", time.time(), "pubsub:1")
    store = runtime.postgres(PostgresSettings(dsn, retry_secs=10))
    try:
        attempt = store.claim(event)
        chunk_rows_ = [ChunkRow(i, r["question"], r["context"], r["id"], "", (r["id"],)) for i, r in enumerate(rows)]
        chunks = chunk_rows(Claim(event, attempt), chunk_rows_, chunk_size)
        store.record_manifest(event, attempt, ["id", "question", "context"], len(rows), len(chunks))
        for chunk in chunks[:-1]:
            store.commit_rows([RowOutcome(event, attempt, chunk.index, chunk.first_row, len(chunk.rows), row,
                                          answer="an answer", score=0.123456, start=10, end=20, model="m")
                               for row in chunk.rows])
        with psycopg.connect(dsn) as conn:
            (chunk_bytes, chunk_count), = conn.execute(
                "SELECT coalesce(sum(pg_column_size(c.*)), 0), count(*) FROM qa_chunks c").fetchall()
            # The assembly's share of the file's row: the columns only it needs.
            (file_bytes,), = conn.execute(
                "SELECT pg_column_size(attempt) + pg_column_size(claim_token) + pg_column_size(lease_until) "
                "+ pg_column_size(chunk_count) + pg_column_size(chunks_done) FROM qa_files").fetchall()
    finally:
        runtime.close()
    committed = chunk_size * (len(chunks) - 1)
    return {"qa_chunks_rows": chunk_count, "qa_chunks_bytes": int(chunk_bytes), "qa_files_assembly_bytes": file_bytes,
            "rows_committed": committed, "bytes_per_row": round((chunk_bytes + file_bytes) / committed, 3)}


def measure(dsn: str, rows: list[dict], chunk_size: int) -> dict:
    old = old_bytes_per_row(rows)
    new = new_bytes_per_row(dsn, rows, chunk_size)
    return {"benchmark": "assembly_state_bytes", "rows": len(rows), "chunk_size": chunk_size,
            "before_bytes_per_row": round(old, 1), "now": new,
            "ratio": round(new["bytes_per_row"] / old, 5), "target_ratio": 0.25,
            "met": new["bytes_per_row"] <= 0.25 * old,
            "machine": {"python": platform.python_version(), "machine": platform.machine()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--chunk-size", type=int, default=64)
    args = parser.parse_args(argv)
    import psycopg

    from devtools.squad import squad_rows
    base = os.environ.get("QA_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres")
    name = os.environ.get("QA_TEST_DB_PREFIX", "") + "beam_qa_bench_state"
    with psycopg.connect(f"{base} dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    print(json.dumps(measure(f"{base} dbname={name}", squad_rows(args.rows), args.chunk_size), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
