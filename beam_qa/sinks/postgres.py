"""PostgreSQL: the schema and its migrations, attempts with leases, and idempotent writes.

PostgreSQL is both a sink and the pipeline's coordination point. Every statement here is
keyed by ``(source_uri, source_generation[, row_index])``, so doing it twice changes nothing,
and the few decisions that must be taken exactly once are taken under the lock of the file's
``qa_files`` row:

* ``claim``: whether an event starts a new attempt at a file version (no live lease, no final
  record);
* ``commit_rows``: whether a commit of answered rows is the one that completes the current
  attempt (the assembly: per chunk, a bitmap of committed rows; per file, a count of complete
  chunks);
* ``mark_done`` / ``mark_failed``: the final record, once.

This module imports psycopg lazily (the upload service imports ``ensure_schema`` too).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from importlib import resources
from typing import TypeVar

from beam_qa.records import AnsweredFile, CompletedFile, FileEvent, FileFailure, RowOutcome
from beam_qa.settings import PostgresSettings

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

# Any constant serialises concurrent migrations by several workers.
_SCHEMA_LOCK_ID = 4_242_001
APPLICATION_NAME = "beam_qa"

# --- the schema --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """``beam_qa/sql/migrations/NNN_name.sql``, in version order."""
    folder = resources.files("beam_qa").joinpath("sql/migrations")
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{3})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"schema migrations are not numbered 1..N: {[m.version for m in found]}")
    return found


SCHEMA_VERSION_TABLE = "beam_qa_schema_migrations"


def schema_version(conn) -> int:
    """The highest migration applied to the database (0 for an empty one).

    Takes no lock: it only reads the version table, so a worker whose schema is current
    never queues behind the status writes of others.
    """
    if conn.execute("SELECT to_regclass(%s)", (SCHEMA_VERSION_TABLE,)).fetchone()[0] is None:
        return 0
    return conn.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA_VERSION_TABLE}").fetchone()[0]


def ensure_schema(conn) -> list[int]:
    """Applies the migrations the database lacks; safe when several processes do it at once.

    Returns:
        The versions this call applied (empty when the schema was current: no DDL ran).
    """
    wanted = migrations()
    with conn.transaction():
        if schema_version(conn) >= wanted[-1].version:
            return []
    applied = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
        conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_VERSION_TABLE} ("
                     "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                     "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        current = schema_version(conn)  # again, under the lock: another process may have won
        for migration in wanted:
            if migration.version <= current:
                continue
            conn.execute(migration.sql)
            conn.execute(f"INSERT INTO {SCHEMA_VERSION_TABLE} (version, name) VALUES (%s, %s)",
                         (migration.version, migration.name))
            applied.append(migration.version)
    if applied:
        _LOGGER.info("beam_qa schema migrated to version %d (applied %s)", wanted[-1].version, applied)
    return applied


# --- retries -----------------------------------------------------------------------------------


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


# --- statements ----------------------------------------------------------------------------

# A new attempt starts when there is no record, or the record is unfinished and its lease
# has expired (the attempt ended without a final record, or its worker died).
CLAIM = """
INSERT INTO qa_files (source_uri, source_generation, status, attempt, claim_token, lease_until,
                      chunks_done, received_at)
VALUES (%(uri)s, %(generation)s, 'received', 1, %(token)s, now() + make_interval(secs => %(lease)s), 0, now())
ON CONFLICT (source_uri, source_generation) DO UPDATE SET
    attempt = qa_files.attempt + 1, claim_token = EXCLUDED.claim_token, lease_until = EXCLUDED.lease_until,
    chunk_count = NULL, chunks_done = 0, row_count = NULL
WHERE qa_files.status = 'received' AND (qa_files.lease_until IS NULL OR qa_files.lease_until < now())
RETURNING attempt
"""

# A retried bundle finds its own claim (same token) still current and carries on with it.
OWN_CLAIM = """
SELECT attempt FROM qa_files
WHERE source_uri = %(uri)s AND source_generation = %(generation)s AND status = 'received'
  AND claim_token = %(token)s
"""

RECORD_MANIFEST = """
UPDATE qa_files SET header = %s, row_count = %s, chunk_count = %s, chunks_done = 0,
                    lease_until = now() + make_interval(secs => %s)
WHERE source_uri = %s AND source_generation = %s AND attempt = %s AND status = 'received'
"""

HEARTBEAT = """
UPDATE qa_files SET lease_until = now() + make_interval(secs => %s)
WHERE source_uri = %s AND source_generation = %s AND attempt = %s AND status = 'received'
"""

# Renew only leases that are still live: a released (or expired) attempt stays claimable.
RENEW_LEASES = """
UPDATE qa_files f SET lease_until = now() + make_interval(secs => %s)
FROM unnest(%s::text[], %s::bigint[], %s::int[]) AS held(uri, generation, attempt)
WHERE f.source_uri = held.uri AND f.source_generation = held.generation AND f.attempt = held.attempt
  AND f.status = 'received' AND f.lease_until > now()
RETURNING f.source_uri, f.source_generation, f.attempt
"""

RELEASE = """
UPDATE qa_files SET lease_until = now()
WHERE source_uri = %s AND source_generation = %s AND attempt = %s AND status = 'received'
"""

LOCK_FILE = """
SELECT status, attempt, chunk_count, row_count FROM qa_files
WHERE source_uri = %s AND source_generation = %s FOR UPDATE
"""

UPSERT_ANSWER = """
INSERT INTO qa_answers (source_uri, source_generation, row_index, id, question, context, other_cells,
                        answer, score, answer_start, answer_end, error, model, processed_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
ON CONFLICT (source_uri, source_generation, row_index) DO UPDATE SET
    id = EXCLUDED.id, question = EXCLUDED.question, context = EXCLUDED.context,
    other_cells = EXCLUDED.other_cells, answer = EXCLUDED.answer, score = EXCLUDED.score, answer_start = EXCLUDED.answer_start,
    answer_end = EXCLUDED.answer_end, error = EXCLUDED.error, model = EXCLUDED.model,
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

FILE_STATE = """
SELECT status, attempt FROM qa_files WHERE source_uri = %s AND source_generation = %s
"""

MARK_DONE = """
UPDATE qa_files SET status = 'done', row_count = %s, error = NULL, output_uri = %s, model = %s,
                    completed_at = now(), lease_until = NULL, claim_token = NULL
WHERE source_uri = %s AND source_generation = %s AND attempt = %s AND status = 'received'
RETURNING completed_at
"""

MARK_FAILED = """
UPDATE qa_files SET status = 'failed', error = %s, output_uri = %s, model = %s,
                    completed_at = now(), lease_until = NULL, claim_token = NULL
WHERE source_uri = %s AND source_generation = %s AND attempt = %s AND status = 'received'
RETURNING completed_at
"""

DROP_CHUNKS = "DELETE FROM qa_chunks WHERE source_uri = %s AND source_generation = %s"

# Versions the sweeper must leave alone: finished, or held by a live attempt.
NOT_CLAIMABLE = """
SELECT source_uri, source_generation FROM qa_files
WHERE source_uri = ANY(%s) AND (status IN ('done', 'failed') OR lease_until > now())
"""

# Unfinished versions under a prefix whose lease expired and whose source object is gone
# (not among the live objects listed): nothing can finish them any more.
ABANDON = """
UPDATE qa_files f SET status = 'failed', error = %s, completed_at = now(), lease_until = NULL,
                      claim_token = NULL
WHERE f.status = 'received' AND f.source_uri LIKE %s
  AND (f.lease_until IS NULL OR f.lease_until < now() - make_interval(secs => %s))
  AND NOT EXISTS (SELECT 1 FROM unnest(%s::text[], %s::bigint[]) AS live(uri, generation)
                  WHERE live.uri = f.source_uri AND live.generation = f.source_generation)
RETURNING f.source_uri, f.source_generation
"""

ABANDONED_REASON = ("the source object was deleted (or replaced by a newer upload) before it was "
                    "answered; upload it again")


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _bitmap(bits: int, rows: int) -> bytes:
    return bits.to_bytes((rows + 7) // 8, "little")


@dataclasses.dataclass
class CommitResult:
    """What one ``commit_rows`` call did."""

    committed: int = 0        # rows of current attempts written
    stale: int = 0            # rows of superseded or finished attempts, dropped
    completed: list[CompletedFile] = dataclasses.field(default_factory=list)


class PostgresStore:
    """A connection pool and the pipeline's statements. One per worker process (see ``clients``).

    Args:
        settings: where and how hard to try.
        connect_kwargs: extra libpq parameters (the password read from Secret Manager).
    """

    def __init__(self, settings: PostgresSettings, connect_kwargs: dict | None = None):
        self.settings = settings
        self._connect_kwargs = connect_kwargs or {}
        self._pool = None
        self.migrations_applied: list[int] = []

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> None:
        """Opens the pool and brings the schema up to date (once: a current schema runs no DDL)."""
        from psycopg_pool import ConnectionPool
        # min_size=0 and max_idle: an idle worker holds no connection, a busy one at most
        # pool_size (the documented budget per worker process, docs/deploy.md).
        self._pool = ConnectionPool(
            self.settings.dsn, min_size=0, max_size=self.settings.pool_size, max_idle=60.0, open=False,
            timeout=10.0, kwargs={"connect_timeout": 5, "application_name": APPLICATION_NAME,
                                  **self._connect_kwargs})
        self._pool.open(wait=False)

        def migrate() -> list[int]:
            with self._pool.connection() as conn:
                return ensure_schema(conn)
        self.migrations_applied = with_retries(migrate, what="checking the schema",
                                               deadline_secs=self.settings.retry_secs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _run(self, what: str, work: Callable[..., T], retry_secs: float | None = None) -> T:
        def attempt() -> T:
            with self._pool.connection() as conn, conn.transaction():
                return work(conn)
        return with_retries(attempt, what=what,
                            deadline_secs=self.settings.retry_secs if retry_secs is None else retry_secs)

    # -- attempts ---------------------------------------------------------------------------
    def claim(self, event: FileEvent) -> int | None:
        """Starts an attempt at ``event``'s version, or finds this trigger's own (a retried bundle).

        Returns:
            The attempt number, or None when the version is finished or held by a live attempt.
        """
        params = {"uri": event.uri, "generation": event.generation, "token": event.trigger or None,
                  "lease": self.settings.lease_secs}

        def work(conn) -> int | None:
            row = conn.execute(CLAIM, params).fetchone()
            if row is None and event.trigger:
                row = conn.execute(OWN_CLAIM, params).fetchone()
            return row[0] if row else None
        return self._run("claiming a file", work)

    def record_manifest(self, event: FileEvent, attempt: int, header: Iterable[str], row_count: int,
                        chunk_count: int) -> bool:
        """Records the header and how many rows and chunks the attempt has; False if it is no longer current."""
        return self._run("recording a received file", lambda conn: conn.execute(
            RECORD_MANIFEST, (list(header), row_count, chunk_count, self.settings.lease_secs, event.uri,
                              event.generation, attempt)).rowcount == 1)

    def heartbeat(self, event: FileEvent, attempt: int) -> bool:
        """Extends the attempt's lease; False when it is no longer the current unfinished attempt."""
        return self._run("renewing a lease", lambda conn: conn.execute(
            HEARTBEAT, (self.settings.lease_secs, event.uri, event.generation, attempt)).rowcount == 1)

    def renew(self, held: Iterable[tuple[str, int, int]]) -> set[tuple[str, int, int]]:
        """Renews the live leases among ``held`` ``(uri, generation, attempt)``; returns those renewed."""
        held = list(held)
        if not held:
            return set()
        uris, generations, attempts = (list(column) for column in zip(*held))
        return self._run("renewing leases", lambda conn: {
            (uri, int(generation), int(attempt)) for uri, generation, attempt in conn.execute(
                RENEW_LEASES, (self.settings.lease_secs, uris, generations, attempts)).fetchall()},
            retry_secs=min(self.settings.retry_secs, self.settings.lease_secs / 3))

    def release(self, event: FileEvent, attempt: int) -> None:
        """Ends the attempt's lease now, so that the sweeper may start another one."""
        self._run("releasing a lease", lambda conn: conn.execute(
            RELEASE, (event.uri, event.generation, attempt)))

    # -- answers ----------------------------------------------------------------------------
    def commit_rows(self, outcomes: list[RowOutcome]) -> CommitResult:
        """Upserts answered rows and records them against their chunks, one transaction per file.

        Rows of an attempt that is not the file's current unfinished one are dropped. A commit
        that leaves every chunk of the current attempt complete reports the file as completed.
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
        status, attempt, chunk_count, row_count = state
        current = [r for r in rows if r.attempt == attempt] if status == "received" and chunk_count else []
        if not current:
            return 0, len(rows), None
        with conn.cursor() as cur:
            cur.executemany(UPSERT_ANSWER, [
                (event.uri, event.generation, r.row.row_index, r.row.row_id, r.row.question, r.row.context,
                 list(r.row.others), r.answer, r.score, r.start, r.end, r.error or None, r.model or None)
                for r in current])
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

    def file_state(self, event: FileEvent) -> tuple[str, int] | None:
        """``(status, attempt)`` of the version, or None when it has no record."""
        return self._run("reading a file's status", lambda conn: conn.execute(
            FILE_STATE, (event.uri, event.generation)).fetchone())

    # -- final records ------------------------------------------------------------------------
    def mark_done(self, answered: AnsweredFile) -> float | None:
        """Marks the attempt done; returns its completion time, or None if it was not current."""
        event = answered.event

        def work(conn):
            row = conn.execute(MARK_DONE, (answered.row_count, answered.output_uri, answered.models or None,
                                           event.uri, event.generation, answered.attempt)).fetchone()
            if row is not None:
                conn.execute(DROP_CHUNKS, (event.uri, event.generation))
            return row[0].timestamp() if row else None
        return self._run("marking a file done", work)

    def mark_failed(self, failure: FileFailure, model: str | None = None) -> bool:
        """Marks the attempt failed with its reason; False if it was not the current one."""
        event = failure.event

        def work(conn) -> bool:
            row = conn.execute(MARK_FAILED, (failure.reason, failure.error_uri or None, model, event.uri,
                                             event.generation, failure.attempt)).fetchone()
            if row is not None:
                conn.execute(DROP_CHUNKS, (event.uri, event.generation))
            return row is not None
        return self._run("recording a failed file", work)

    # -- the sweeper --------------------------------------------------------------------------
    def not_claimable(self, uris: list[str], retry_secs: float) -> set[tuple[str, int]]:
        """The ``(uri, generation)`` pairs among ``uris`` that are finished or held by a live lease."""
        return self._run("listing finished files", lambda conn: {
            (uri, int(generation)) for uri, generation in conn.execute(NOT_CLAIMABLE, (uris,)).fetchall()},
            retry_secs=retry_secs)

    def abandon_missing(self, uri_prefix: str, live: list[tuple[str, int]], grace_secs: float,
                        retry_secs: float) -> list[tuple[str, int]]:
        """Fails unfinished versions under ``uri_prefix`` whose lease expired and whose source is gone."""
        uris = [uri for uri, _ in live]
        generations = [generation for _, generation in live]

        def work(conn):
            gone = [(uri, int(generation)) for uri, generation in conn.execute(
                ABANDON, (ABANDONED_REASON, _like_prefix(uri_prefix), grace_secs, uris, generations)).fetchall()]
            for uri, generation in gone:
                conn.execute(DROP_CHUNKS, (uri, generation))
            return gone
        return self._run("abandoning vanished files", work, retry_secs=retry_secs)


class LeaseKeeper:
    """Renews the leases of the attempts this worker process claimed, while the process lives.

    A background thread every ``lease_secs / 3``: a live process keeps its attempts even when
    their chunks wait behind a backlog, and a process that dies stops renewing, so the
    sweeper can start another attempt once the lease has expired. An attempt is dropped from
    the set once it is finished, superseded or released (its renewal then updates no row).
    """

    def __init__(self, store: PostgresStore):
        self._store = store
        self._held: set[tuple[str, int, int]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, event: FileEvent, attempt: int) -> None:
        with self._lock:
            self._held.add((event.uri, event.generation, attempt))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="beam_qa-leases", daemon=True)
                self._thread.start()

    def held(self) -> set[tuple[str, int, int]]:
        with self._lock:
            return set(self._held)

    def renew_now(self) -> None:
        held = self.held()
        if not held:
            return
        renewed = self._store.renew(held)
        with self._lock:
            # Keep what was added meanwhile; drop what the database no longer lets us hold.
            self._held -= held - renewed

    def _loop(self) -> None:
        interval = max(self._store.settings.lease_secs / 3, 0.5)
        while not self._stop.wait(interval):
            try:
                self.renew_now()
            except Exception as exc:  # pylint: disable=broad-except
                # An outage: the leases may lapse, which only lets another attempt start later.
                _LOGGER.warning("could not renew %d leases (%s); trying again in %.0fs", len(self.held()),
                                type(exc).__name__, interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
