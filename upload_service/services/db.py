"""PostgreSQL for the upload service: its own ``qa_uploads`` table, and the pipeline's tables read.

``qa_uploads`` is the service's record of every upload it stored or refused, so that the history
(``GET /uploads``) lists a file before the pipeline has recorded it (``uploaded``: no ``qa_files``
row yet) and after the pipeline deleted its object. The pipeline never reads or writes it; the
pipeline's own tables (``qa_files``, ``qa_answers``) are only read here.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from beam_qa.store.schema import ensure_schema
from upload_service.core.errors import ApiError

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

RECORD_UPLOAD = """
INSERT INTO qa_uploads (upload_id, filename, source_uri, source_generation, size_bytes, row_count, uploaded_at)
VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (upload_id) DO NOTHING
"""

RECORD_REJECTION = """
INSERT INTO qa_uploads (upload_id, filename, size_bytes, rejected, error)
VALUES (%s, %s, %s, %s, %s) ON CONFLICT (upload_id) DO NOTHING
"""

# One upload with the pipeline's view of it: its qa_files row (the exact object version) and
# how many of its rows qa_answers holds, which grows while the file is `received` (the
# pipeline commits answers chunk by chunk). `stalled`: not recorded by the pipeline in time.
UPLOAD_VIEW = """
SELECT u.upload_id, u.filename, u.source_uri, u.source_generation, u.size_bytes, u.row_count, u.rejected,
       u.error, u.uploaded_at, f.status, f.row_count, f.error, f.output_uri, f.received_at, f.completed_at,
       a.processed, a.answered, a.errored,
       (u.rejected IS NULL AND f.status IS NULL
        AND u.uploaded_at < now() - make_interval(secs => %(stall_secs)s)) AS stalled
FROM qa_uploads u
LEFT JOIN qa_files f ON f.source_uri = u.source_uri AND f.source_generation = u.source_generation
LEFT JOIN LATERAL (
    SELECT count(*) AS processed, count(q.answer) AS answered, count(q.error) AS errored
    FROM qa_answers q WHERE q.source_uri = u.source_uri AND q.source_generation = u.source_generation
) a ON u.source_uri IS NOT NULL
"""

GET_UPLOAD = UPLOAD_VIEW + "WHERE u.upload_id = %(upload_id)s"

NEWEST_FIRST = """
ORDER BY u.uploaded_at DESC, u.upload_id DESC
LIMIT %(limit)s
"""

LIST_UPLOADS = UPLOAD_VIEW + NEWEST_FIRST

# Keyset paging: the page after the (uploaded_at, upload_id) of the previous page's last item,
# which the index qa_uploads_newest_idx serves without sorting the whole table.
LIST_UPLOADS_AFTER = UPLOAD_VIEW + """
WHERE (u.uploaded_at, u.upload_id) < (%(after_at)s, %(after_id)s)
""" + NEWEST_FIRST

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


@dataclasses.dataclass(frozen=True)
class UploadRecord:
    """One ``qa_uploads`` row joined with the pipeline's record of the same object version."""

    upload_id: str
    filename: str
    source_uri: str | None
    source_generation: int | None
    size_bytes: int | None
    uploaded_rows: int | None
    rejected: str | None
    rejection: str | None
    uploaded_at: datetime.datetime
    status: str | None  # the pipeline's qa_files.status, None before it recorded the file
    row_count: int | None
    error: str | None
    output_uri: str | None
    received_at: datetime.datetime | None
    completed_at: datetime.datetime | None
    processed: int | None
    answered: int | None
    errored: int | None
    stalled: bool


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
                    # The service may start before the pipeline ever ran: its tables and the
                    # ones it reads come from the same migrations, under the same lock.
                    ensure_schema(conn)
                    self._schema_ready = True
                return work(conn)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            _LOGGER.warning("PostgreSQL failed while %s: %s", what, exc)
            raise ApiError(503, "database_unavailable", f"PostgreSQL failed while {what}: {type(exc).__name__}",
                           hint="Try again in a moment; GET /readyz shows whether PostgreSQL is reachable.") from exc

    def record_upload(self, upload_id: str, filename: str, uri: str, generation: int, size: int, rows: int,
                      uploaded_at: datetime.datetime) -> None:
        """Adds a stored upload to the history.

        Args:
            uploaded_at: when the object was about to be written; the row is inserted after the
                write, by when the pipeline may already have recorded the file as received.
        """
        self._run(lambda conn: conn.execute(RECORD_UPLOAD, (upload_id, filename, uri, generation, size, rows,
                                                            uploaded_at)), "recording the upload")

    def record_rejection(self, upload_id: str, filename: str, size: int | None, kind: str, message: str) -> None:
        """Adds a refused upload (nothing stored) to the history, with the reason."""
        self._run(lambda conn: conn.execute(RECORD_REJECTION, (upload_id, filename, size, kind, message)),
                  "recording the rejected upload")

    def get_upload(self, upload_id: str, stall_secs: float) -> UploadRecord | None:
        """The history entry of one upload, or None if the service has no record of it."""
        row = self._run(lambda conn: conn.execute(GET_UPLOAD, {"upload_id": upload_id, "stall_secs": stall_secs})
                        .fetchone(), "looking up the upload")
        return UploadRecord(*row) if row else None

    def list_uploads(self, limit: int, stall_secs: float,
                     after: tuple[datetime.datetime, str] | None = None) -> list[UploadRecord]:
        """Up to ``limit`` uploads, newest first, after the ``(uploaded_at, upload_id)`` of ``after``."""
        params = {"limit": limit, "stall_secs": stall_secs}
        query = LIST_UPLOADS
        if after is not None:
            query = LIST_UPLOADS_AFTER
            params.update(after_at=after[0], after_id=after[1])
        rows = self._run(lambda conn: conn.execute(query, params).fetchall(), "listing uploads")
        return [UploadRecord(*row) for row in rows]

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

