"""PostgreSQL: schema and idempotent, batched writes of files and answers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from importlib import resources
from typing import TypeVar

from beam_qa.records import FileAnswers, FileFailure, FileManifest

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

# Any constant serialises concurrent schema creation by several workers.
_SCHEMA_LOCK_ID = 4_242_001

UPSERT_ANSWER = """
INSERT INTO qa_answers (source_uri, source_generation, row_index, id, question, context,
                        answer, score, answer_start, answer_end, error, model, processed_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
ON CONFLICT (source_uri, source_generation, row_index) DO UPDATE SET
    id = EXCLUDED.id, question = EXCLUDED.question, context = EXCLUDED.context,
    answer = EXCLUDED.answer, score = EXCLUDED.score, answer_start = EXCLUDED.answer_start,
    answer_end = EXCLUDED.answer_end, error = EXCLUDED.error, model = EXCLUDED.model,
    processed_at = EXCLUDED.processed_at
"""

MARK_RECEIVED = """
INSERT INTO qa_files (source_uri, source_generation, status, row_count, model)
VALUES (%s, %s, 'received', %s, %s)
ON CONFLICT (source_uri, source_generation) DO UPDATE SET row_count = EXCLUDED.row_count
WHERE qa_files.status = 'received'
"""

MARK_DONE = """
INSERT INTO qa_files (source_uri, source_generation, status, row_count, output_uri, model, completed_at)
VALUES (%s, %s, 'done', %s, %s, %s, now())
ON CONFLICT (source_uri, source_generation) DO UPDATE SET
    status = 'done', row_count = EXCLUDED.row_count, error = NULL,
    output_uri = EXCLUDED.output_uri, model = EXCLUDED.model, completed_at = now()
"""

MARK_FAILED = """
INSERT INTO qa_files (source_uri, source_generation, status, error, output_uri, model, completed_at)
VALUES (%s, %s, 'failed', %s, %s, %s, now())
ON CONFLICT (source_uri, source_generation) DO UPDATE SET
    status = 'failed', error = EXCLUDED.error, output_uri = EXCLUDED.output_uri, completed_at = now()
WHERE qa_files.status <> 'done'
"""

# File versions that reached a final state; the sweeper re-emits the others.
FINISHED_VERSIONS = """
SELECT source_uri, source_generation FROM qa_files
WHERE status IN ('done', 'failed') AND source_uri = ANY(%s)
"""


def schema_sql() -> str:
    """The documented schema (beam_qa/sql/schema.sql)."""
    return resources.files("beam_qa").joinpath("sql/schema.sql").read_text(encoding="utf-8")


def ensure_schema(conn) -> None:
    """Creates the tables if missing; safe when several processes do it at once."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
        conn.execute(schema_sql())


def with_retries(action: Callable[[], T], *, what: str, deadline_secs: float,
                 initial_delay: float = 0.5, max_delay: float = 10.0) -> T:
    """Runs ``action``, retrying connection-level errors with exponential backoff.

    Raises:
        psycopg.OperationalError: the last error, once ``deadline_secs`` have passed.
    """
    import psycopg
    import psycopg_pool
    delay = initial_delay
    give_up_at = time.monotonic() + deadline_secs
    while True:
        try:
            return action()
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            if time.monotonic() + delay > give_up_at:
                raise
            _LOGGER.warning("PostgreSQL unavailable while %s (%s); retrying in %.1fs",
                            what, type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, max_delay)


class PostgresWriter:
    """A connection pool plus the three idempotent writes the pipeline needs."""

    def __init__(self, dsn: str, *, model: str, retry_secs: float = 120.0, max_size: int = 4,
                 password_secret: str | None = None):
        self._dsn = dsn
        self._model = model
        self._retry_secs = retry_secs
        self._max_size = max_size
        self._password_secret = password_secret
        self._pool = None

    def connection_kwargs(self) -> dict:
        """libpq parameters added to the DSN; the password is fetched here, on the worker."""
        kwargs: dict = {"connect_timeout": 5}
        if self._password_secret:
            from beam_qa import secret_manager
            kwargs["password"] = secret_manager.access_secret_version(self._password_secret)
        return kwargs

    def open(self) -> None:
        from psycopg_pool import ConnectionPool
        self._pool = ConnectionPool(self._dsn, min_size=1, max_size=self._max_size, open=False,
                                    timeout=10.0, kwargs=self.connection_kwargs())
        self._pool.open(wait=False)

        def create() -> None:
            with self._pool.connection() as conn:
                ensure_schema(conn)
        with_retries(create, what="creating the schema", deadline_secs=self._retry_secs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _run(self, what: str, work: Callable) -> None:
        def attempt() -> None:
            with self._pool.connection() as conn, conn.transaction():
                work(conn)
        with_retries(attempt, what=what, deadline_secs=self._retry_secs)

    def mark_received(self, manifest: FileManifest) -> None:
        event = manifest.event
        self._run("recording a received file", lambda conn: conn.execute(
            MARK_RECEIVED, (event.uri, event.generation, manifest.row_count, self._model)))

    def write_answers(self, result: FileAnswers) -> None:
        """Upserts every row and marks the file done, in one transaction."""
        event = result.manifest.event
        params = [
            (event.uri, event.generation, a.row.row_index, a.row.row_id, a.row.question, a.row.context,
             a.answer, a.score, a.start, a.end, a.error or None, self._model)
            for a in result.answers]

        def work(conn) -> None:
            with conn.cursor() as cur:
                cur.executemany(UPSERT_ANSWER, params)
            conn.execute(MARK_DONE, (event.uri, event.generation, result.manifest.row_count,
                                     result.output_uri, self._model))
        self._run("writing answers", work)

    def mark_failed(self, failure: FileFailure) -> None:
        event = failure.event
        self._run("recording a failed file", lambda conn: conn.execute(
            MARK_FAILED, (event.uri, event.generation, failure.reason, failure.error_uri or None,
                          self._model)))

    def finished_versions(self, uris: list[str]) -> set[tuple[str, int]]:
        """The ``(uri, generation)`` pairs among ``uris`` recorded as ``done`` or ``failed``."""
        found: set[tuple[str, int]] = set()

        def work(conn) -> None:
            found.clear()
            found.update((uri, int(generation)) for uri, generation
                         in conn.execute(FINISHED_VERSIONS, (list(uris),)).fetchall())
        self._run("listing finished files", work)
        return found
