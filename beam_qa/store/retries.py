"""Retrying what a lost PostgreSQL connection interrupted, for a bounded time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")


def with_retries(action: Callable[[], T], *, what: str, deadline_secs: float,
                 initial_delay: float = 0.5, max_delay: float = 10.0) -> T:
    """Runs ``action``, retrying connection-level errors with exponential backoff.

    Only ``OperationalError`` and ``PoolTimeout`` are retried: they say "not now". Anything else
    (a constraint, a bug) is raised at once. psycopg's pool has no retry policy of its own for a
    statement that fails midway, hence this loop.

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


def is_infrastructure(exc: BaseException) -> bool:
    """Whether a failure says "the database, not this data": it must fail the bundle, not end a file.

    Refused data (``DataError``: a value out of range; ``IntegrityError``) is the rows' own
    problem and fails the same way on every attempt; anything else psycopg raises (a lost
    connection, a pool timeout, a schema that does not match the code) is the deployment's, and
    ending files for it would give up on every file in turn.
    """
    import psycopg
    import psycopg_pool
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return True
    return isinstance(exc, psycopg.Error) and not isinstance(exc, (psycopg.DataError, psycopg.IntegrityError))
