"""``PostgresStore``: one connection pool per worker process and every statement the pipeline runs.

PostgreSQL is both a sink and the pipeline's coordination point. The statements live beside
their subject (``attempts``, ``answers``, ``sweep``); this class owns the pool, brings the schema
up to date once when it opens, and runs each unit of work in one transaction, retrying a lost
connection for ``PostgresSettings.retry_secs``. psycopg is imported lazily (the upload service
imports this package without the pipeline extra's clients).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from beam_qa.settings import PostgresSettings
from beam_qa.store.answers import AnswerQueries
from beam_qa.store.attempts import AttemptQueries
from beam_qa.store.retries import with_retries
from beam_qa.store.schema import ensure_schema
from beam_qa.store.sweep import SweepQueries

T = TypeVar("T")

APPLICATION_NAME = "beam_qa"


class PostgresStore(AttemptQueries, AnswerQueries, SweepQueries):
    """A connection pool and the pipeline's statements. One per worker process (``beam_qa.runtime``).

    Args:
        settings: where and how hard to try.
        connect_kwargs: extra libpq parameters (the password read from Secret Manager).
    """

    def __init__(self, settings: PostgresSettings, connect_kwargs: dict | None = None):
        self.settings = settings
        self._connect_kwargs = connect_kwargs or {}
        self._pool = None
        self.migrations_applied: list[int] = []

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
