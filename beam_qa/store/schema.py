"""The coordination database's schema: numbered migrations, applied once, under an advisory lock.

``beam_qa/store/migrations/NNN_name.sql`` holds every table the project uses, the upload service's
``qa_uploads`` included: the pipeline applies them when a worker process first connects (a
current schema runs no DDL), and the upload service only checks the version it needs.
This module imports nothing from Beam, torch or psycopg.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from importlib import resources

_LOGGER = logging.getLogger(__name__)

# Any constant serialises concurrent migrations by several workers.
SCHEMA_LOCK_ID = 4_242_001
SCHEMA_VERSION_TABLE = "beam_qa_schema_migrations"


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """``beam_qa/store/migrations/NNN_name.sql``, in version order."""
    folder = resources.files("beam_qa.store").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{3})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"schema migrations are not numbered 1..N: {[m.version for m in found]}")
    return found


def latest_version() -> int:
    """The version a fully migrated database has."""
    return migrations()[-1].version


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
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_ID,))
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
