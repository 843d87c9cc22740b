"""PostgreSQL for the upload service: its own ``qa_uploads`` rows, and the pipeline's tables read.

``qa_uploads`` is the service's record of every upload it stored or refused, with the client that
made it, so that the history (``GET /uploads``) lists a file before the pipeline has recorded it
(``uploaded``: no ``qa_files`` row yet) and after the pipeline deleted its object. The pipeline
never reads or writes it; the pipeline's own tables (``qa_files``, ``qa_answers``) are only read
here. The schema is the pipeline's: the service runs no DDL unless told to (``apply_migrations``).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import psycopg
import psycopg_pool
from psycopg_pool import ConnectionPool

from beam_qa.store.schema import ensure_schema, migrations, schema_version
from upload_service.core.auth import Client
from upload_service.core.errors import ApiError
from upload_service.services import sql

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

# The migration that added what this service reads and writes last (owners, Idempotency-Keys).
NEEDED_MIGRATION = "upload_owners"

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


@dataclasses.dataclass(frozen=True)
class KeyedUpload:
    """The ``qa_uploads`` row a client's Idempotency-Key claimed; ``generation`` None until stored."""

    upload_id: str
    request_sha256: str
    filename: str
    source_uri: str
    generation: int | None
    size: int
    rows: int


@functools.lru_cache(maxsize=1)
def needed_schema_version() -> int:
    """The schema version whose migration added what this service uses (found by name, not number)."""
    return next(m.version for m in migrations() if m.name == NEEDED_MIGRATION)


def schema_outdated(version: int) -> ApiError:
    needed = needed_schema_version()
    return ApiError(503, "schema_outdated",
                    f"the database schema is at version {version}; this service needs version {needed} "
                    f"({needed:03d}_{NEEDED_MIGRATION})",
                    hint="The pipeline migrates the schema when its workers connect: start or update the pipeline "
                         "first (the upload service has no DDL rights). Locally, QA_APPLY_MIGRATIONS=true lets the "
                         "service apply the migrations itself.",
                    details={"schema_version": version, "needed": needed})


class Database:
    """A psycopg connection pool, opened on first use, that checks the schema version once.

    Args:
        dsn: libpq connection string or URL.
        timeout: seconds to wait for a connection.
        apply_migrations: apply the pipeline's migrations when the schema is older than needed
            (needs DDL rights: local stacks and tests); otherwise answer 503 until it is migrated.
    """

    def __init__(self, dsn: str, timeout: float, max_size: int = 4, *, apply_migrations: bool = False):
        self._dsn = dsn
        self._timeout = timeout
        self._max_size = max_size
        self._apply_migrations = apply_migrations
        self._pool = None
        self._schema_ready = False
        self._lock = threading.Lock()

    def _get_pool(self):
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(self._dsn, min_size=1, max_size=self._max_size, open=False,
                                            timeout=self._timeout,
                                            kwargs={"connect_timeout": max(1, int(self._timeout)),
                                                    "application_name": "beam_qa_upload"})
                self._pool.open(wait=False)
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def _check_schema(self, conn) -> None:
        """Raises 503 ``schema_outdated`` until the schema has this service's migration.

        Checked on every request until it passes (a read that takes no lock), then never again.
        """
        version = schema_version(conn)
        conn.commit()  # ensure_schema opens its own transactions
        if version < needed_schema_version() and self._apply_migrations:
            ensure_schema(conn)
            version = schema_version(conn)
            conn.commit()
        if version < needed_schema_version():
            _LOGGER.warning("database schema at version %d, older than the %d this service needs", version,
                            needed_schema_version())
            raise schema_outdated(version)
        self._schema_ready = True

    def _run(self, work: Callable, what: str) -> T:
        try:
            with self._get_pool().connection() as conn:
                if not self._schema_ready:
                    self._check_schema(conn)
                return work(conn)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            _LOGGER.warning("PostgreSQL failed while %s: %s", what, exc)
            raise ApiError(503, "database_unavailable", f"PostgreSQL failed while {what}: {type(exc).__name__}",
                           hint="Try again in a moment; GET /readyz shows whether PostgreSQL is reachable.") from exc

    def check_schema(self) -> None:
        """Raises 503 ``schema_outdated`` (or ``database_unavailable``) before anything is stored."""
        if not self._schema_ready:
            self._run(lambda conn: None, "checking the schema")

    def record_upload(self, upload_id: str, owner: Client, filename: str, uri: str, generation: int, size: int,
                      rows: int, uploaded_at: datetime.datetime) -> None:
        """Adds a stored upload to its owner's history.

        Args:
            uploaded_at: when the object was about to be written; the row is inserted after the
                write, by when the pipeline may already have recorded the file as received.
        """
        self._run(lambda conn: conn.execute(sql.RECORD_UPLOAD, (upload_id, owner.name, filename, uri, generation,
                                                                size, rows, uploaded_at)), "recording the upload")

    def record_rejection(self, upload_id: str, owner: Client, filename: str, size: int | None, kind: str,
                         message: str) -> None:
        """Adds a refused upload (nothing stored) to its owner's history, with the reason."""
        self._run(lambda conn: conn.execute(sql.RECORD_REJECTION, (upload_id, owner.name, filename, size, kind,
                                                                   message)), "recording the rejected upload")

    def claim_key(self, owner: Client, key: str, proposal: KeyedUpload, uploaded_at: datetime.datetime) -> KeyedUpload:
        """The upload a client's Idempotency-Key stands for: ``proposal`` if this call claimed the
        key, else the one an earlier request with the same key claimed (stored or not yet)."""
        params = {"upload_id": proposal.upload_id, "owner": owner.name, "key": key,
                  "sha256": proposal.request_sha256, "filename": proposal.filename, "uri": proposal.source_uri,
                  "size": proposal.size, "rows": proposal.rows, "uploaded_at": uploaded_at}
        find = sql.FIND_KEYED_ANONYMOUS if owner.sees_all else sql.FIND_KEYED

        def work(conn):
            conn.execute(sql.RESERVE, params)
            return conn.execute(find, params).fetchone()
        return KeyedUpload(*self._run(work, "claiming the Idempotency-Key"))

    def complete(self, upload_id: str, generation: int) -> None:
        """Records the generation of a claimed upload's stored object."""
        self._run(lambda conn: conn.execute(sql.COMPLETE, (generation, upload_id)), "recording the upload")

    def release(self, upload_id: str) -> None:
        """Drops a claim whose object could not be stored, so that a retry can store it."""
        self._run(lambda conn: conn.execute(sql.RELEASE, (upload_id,)), "releasing the Idempotency-Key")

    def get_upload(self, upload_id: str, owner: Client, stall_secs: float) -> UploadRecord | None:
        """The history entry of one upload of this client, or None if it has no such upload."""
        conditions = [sql.ONE_UPLOAD] + ([] if owner.sees_all else [sql.OWNED])
        params = {"upload_id": upload_id, "owner": owner.name, "stall_secs": stall_secs}
        row = self._run(lambda conn: conn.execute(sql.upload_query(*conditions), params).fetchone(),
                        "looking up the upload")
        return UploadRecord(*row) if row else None

    def list_uploads(self, owner: Client, limit: int, stall_secs: float,
                     after: tuple[datetime.datetime, str] | None = None) -> list[UploadRecord]:
        """Up to ``limit`` of this client's uploads, newest first, after the ``(uploaded_at,
        upload_id)`` of ``after``."""
        conditions = [] if owner.sees_all else [sql.OWNED]
        params = {"limit": limit, "stall_secs": stall_secs, "owner": owner.name}
        if after is not None:
            conditions.append(sql.AFTER)
            params.update(after_at=after[0], after_id=after[1])
        query = sql.upload_query(*conditions, paged=True)
        rows = self._run(lambda conn: conn.execute(query, params).fetchall(), "listing uploads")
        return [UploadRecord(*row) for row in rows]

    def ping(self) -> None:
        """Raises unless PostgreSQL answers and the schema is the one this service needs."""
        self._run(lambda conn: conn.execute("SELECT 1").fetchone(), "checking readiness")

    def find_file(self, uri_prefix: str) -> FileRecord | None:
        """The newest ``qa_files`` row whose source URI starts with ``uri_prefix``."""
        row = self._run(lambda conn: conn.execute(sql.FIND_FILE, (like_prefix(uri_prefix),)).fetchone(),
                        "looking up the upload")
        return FileRecord(*row) if row else None

    def answer_counts(self, uri: str, generation: int) -> tuple[int, int, int]:
        """``(rows, rows with an answer, rows with an error)`` stored for this file version."""
        return self._run(lambda conn: conn.execute(sql.COUNT_ANSWERS, (uri, generation)).fetchone(),
                         "counting answers")

    def answers(self, uri: str, generation: int, offset: int, limit: int, max_bytes: int) -> list[dict]:
        """One page of answers in row order: at most ``limit`` rows, cut once their text passes
        ``max_bytes`` (at least one row); a row whose text alone is over ``max_bytes`` has each text
        field cut to ``max_bytes // 20`` characters (five fields of at most 4 bytes a character) and
        ``truncated`` set, so a page's text is under ``2 * max_bytes`` whatever its rows hold."""
        params = {"uri": uri, "generation": generation, "offset": offset, "limit": limit, "max_bytes": max_bytes,
                  "cut": max_bytes // 20}

        def work(conn):
            cur = conn.execute(sql.ANSWERS_PAGE, params)
            names = [col.name for col in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
        return self._run(work, "reading answers")
