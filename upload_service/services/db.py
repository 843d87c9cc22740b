"""PostgreSQL reads for upload status and answers (tables written by the pipeline)."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from upload_service.core.errors import ApiError

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

FIND_FILE = """
SELECT source_uri, source_generation, status, row_count, error, output_uri, received_at, completed_at
FROM qa_files WHERE source_uri LIKE %s ESCAPE '\\'
ORDER BY received_at DESC LIMIT 1
"""

COUNT_ANSWERS = """
SELECT count(*), count(answer), count(error) FROM qa_answers
WHERE source_uri = %s AND source_generation = %s
"""

ANSWERS_PAGE = """
SELECT row_index, id, question, context, answer, score, answer_start, answer_end, error
FROM qa_answers WHERE source_uri = %s AND source_generation = %s
ORDER BY row_index OFFSET %s LIMIT %s
"""


@dataclasses.dataclass(frozen=True)
class FileRecord:
    """One ``qa_files`` row."""

    source_uri: str
    source_generation: int
    status: str
    row_count: int | None
    error: str | None
    output_uri: str | None
    received_at: datetime.datetime | None
    completed_at: datetime.datetime | None


def like_prefix(prefix: str) -> str:
    """A LIKE pattern matching strings that start with ``prefix`` literally."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class Database:
    """A psycopg connection pool, opened on first use; creates the schema once if missing.

    Args:
        dsn: libpq connection string or URL.
        timeout: seconds to wait for a connection.
    """

    def __init__(self, dsn: str, timeout: float, max_size: int = 4):
        self._dsn = dsn
        self._timeout = timeout
        self._max_size = max_size
        self._pool = None
        self._schema_ready = False
        self._lock = threading.Lock()

    def _get_pool(self):
        with self._lock:
            if self._pool is None:
                from psycopg_pool import ConnectionPool
                self._pool = ConnectionPool(self._dsn, min_size=1, max_size=self._max_size, open=False,
                                            timeout=self._timeout,
                                            kwargs={"connect_timeout": max(1, int(self._timeout))})
                self._pool.open(wait=False)
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def _run(self, work: Callable, what: str) -> T:
        import psycopg
        import psycopg_pool
        try:
            with self._get_pool().connection() as conn:
                if not self._schema_ready:
                    # The service may start before the pipeline ever ran: the tables it reads
                    # come from the same idempotent schema file, under the pipeline's lock.
                    from beam_qa.sinks.postgres import ensure_schema
                    ensure_schema(conn)
                    self._schema_ready = True
                return work(conn)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            _LOGGER.warning("PostgreSQL failed while %s: %s", what, exc)
            raise ApiError(503, "database_unavailable", f"PostgreSQL failed while {what}: {type(exc).__name__}",
                           hint="Try again in a moment; GET /readyz shows whether PostgreSQL is reachable.") from exc

    def ping(self) -> None:
        self._run(lambda conn: conn.execute("SELECT 1").fetchone(), "checking readiness")

    def find_file(self, uri_prefix: str) -> FileRecord | None:
        """The newest ``qa_files`` row whose source URI starts with ``uri_prefix``."""
        row = self._run(lambda conn: conn.execute(FIND_FILE, (like_prefix(uri_prefix),)).fetchone(),
                        "looking up the upload")
        return FileRecord(*row) if row else None

    def answer_counts(self, uri: str, generation: int) -> tuple[int, int, int]:
        """``(rows, rows with an answer, rows with an error)`` stored for this file version."""
        return self._run(lambda conn: conn.execute(COUNT_ANSWERS, (uri, generation)).fetchone(),
                         "counting answers")

    def answers(self, uri: str, generation: int, offset: int, limit: int) -> list[dict]:
        """One page of answers in row order."""
        def work(conn):
            cur = conn.execute(ANSWERS_PAGE, (uri, generation, offset, limit))
            names = [col.name for col in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
        return self._run(work, "reading answers")
