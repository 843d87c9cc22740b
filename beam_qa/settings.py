"""Settings, one frozen object per concern, built once from ``QaOptions``.

Each stage takes the one object it needs (the way DataflowTemplates parses a spec once)
instead of a DSN, a model name, a secret name and a flag threaded through its constructor.
They are small, picklable values: they travel in the job graph, so they never hold a
password (``PostgresSettings.password_secret`` is the name of a Secret Manager version, read
on the workers).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PostgresSettings:
    """Where answers and file records go, and how hard to try.

    Attributes:
        dsn: libpq connection string or URL, without a password when ``password_secret`` is set.
        password_secret: Secret Manager version holding the password, or None.
        pool_size: most connections one worker process opens (shared by all its DoFns).
        retry_secs: how long a write retries a lost connection before the bundle gives up.
        lease_secs: how long an attempt at a file holds it without a heartbeat.
    """

    dsn: str
    password_secret: str | None = None
    pool_size: int = 4
    retry_secs: float = 120.0
    lease_secs: float = 120.0


@dataclasses.dataclass(frozen=True)
class StorageSettings:
    """How to reach GCS (or local files)."""

    anonymous: bool = False


@dataclasses.dataclass(frozen=True)
class InputSettings:
    """What is read and how it is cut into chunks.

    Attributes:
        incoming_prefix: only objects under it are processed (streaming).
        max_file_bytes: larger files are a file error.
        max_rows: files with more data rows are a file error.
        max_context_chars: longer contexts are a row error.
        chunk_size: rows per chunk, the unit spread over workers and committed together.
    """

    incoming_prefix: str = "incoming/"
    max_file_bytes: int = 50 * 1024 * 1024
    max_rows: int = 200_000
    max_context_chars: int = 100_000
    chunk_size: int = 64


@dataclasses.dataclass(frozen=True)
class OutputSettings:
    """Where answers CSVs and failed files go, and whether sources are removed."""

    answers_prefix: str = "answers/"
    error_prefix: str = "errors/"
    keep_source: bool = False


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """The streaming sweeper: which bucket, how often, how old a file must be."""

    bucket: str
    interval_secs: float = 300.0
    grace_secs: float = 300.0
