"""Settings of the upload service, read from ``QA_*`` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The same defaults as the pipeline's --max_file_bytes and --max_rows (beam_qa/options.py), so
# that a file this service accepts is one the pipeline accepts.
DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_ROWS = 200_000

# Room for the multipart boundary and part headers around the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024

# Cloud Run refuses an HTTP/1 request body over 32 MiB with its own HTML 413, before the service
# sees it (https://cloud.google.com/run/quotas, "Maximum HTTP/1 server request size"). On Cloud
# Run the default file limit leaves room for the multipart envelope under that cap.
CLOUD_RUN_MAX_REQUEST_BYTES = 32 * 1024 * 1024
CLOUD_RUN_MAX_UPLOAD_BYTES = CLOUD_RUN_MAX_REQUEST_BYTES - MULTIPART_OVERHEAD_BYTES


def on_cloud_run() -> bool:
    """Cloud Run sets ``K_SERVICE`` in every service container."""
    return bool(os.environ.get("K_SERVICE"))


def default_max_upload_bytes() -> int:
    """The pipeline's limit, or on Cloud Run the largest file its request cap lets through."""
    return CLOUD_RUN_MAX_UPLOAD_BYTES if on_cloud_run() else DEFAULT_MAX_UPLOAD_BYTES


class Settings(BaseSettings):
    """Where uploads go and what they may contain. Every field is ``QA_<NAME>`` in the environment.

    Attributes:
        bucket: the bucket the pipeline watches.
        incoming_prefix: the pipeline's ``--incoming_prefix``; uploads go below it.
        pg_dsn: the PostgreSQL database the pipeline writes (``qa_files``, ``qa_answers``).
        gcs_url: a GCS emulator URL (``QA_GCS_URL``, else ``STORAGE_EMULATOR_HOST``); the client
            is then anonymous. Empty means real GCS with application default credentials.
        api_token: when set, every endpoint except the health checks needs
            ``Authorization: Bearer <token>``.
        max_upload_bytes: larger files are rejected with 413 (default: the pipeline's 50 MiB; on
            Cloud Run 32 MiB minus 64 KiB, see ``CLOUD_RUN_MAX_UPLOAD_BYTES``).
        max_rows: files with more data rows are rejected with 422.
        backend_timeout_secs: how long one GCS or PostgreSQL call may take.
        stall_after_secs: an upload the pipeline has not recorded after this long is reported as
            stalled (``stalled``, ``note``), and the web page stops polling it.
        log_format: ``text`` (one line per record) or ``json`` (Cloud Logging's structured JSON).
        log_level: the service's log level.
    """

    model_config = SettingsConfigDict(env_prefix="QA_", extra="ignore", populate_by_name=True)

    bucket: str = "qa-local"
    incoming_prefix: str = "incoming/"
    pg_dsn: str = "host=127.0.0.1 port=5432 user=postgres dbname=beam_qa"
    gcs_url: str | None = Field(default=None, validation_alias=AliasChoices("QA_GCS_URL", "STORAGE_EMULATOR_HOST",
                                                                            "gcs_url"))
    api_token: SecretStr | None = None
    max_upload_bytes: int = Field(default_factory=default_max_upload_bytes, gt=0)
    max_rows: int = Field(default=DEFAULT_MAX_ROWS, gt=0)
    backend_timeout_secs: float = Field(default=10.0, gt=0)
    stall_after_secs: float = Field(default=60.0, gt=0)
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _case_insensitive(cls, value, info):
        if not isinstance(value, str):
            return value
        return value.lower() if info.field_name == "log_format" else value.upper()

    @field_validator("incoming_prefix")
    @classmethod
    def _prefix_is_a_folder(cls, value: str) -> str:
        value = value.lstrip("/")
        if not value:
            raise ValueError("QA_INCOMING_PREFIX must not be empty (the pipeline only watches a prefix)")
        return value if value.endswith("/") else value + "/"

    @field_validator("gcs_url", "api_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return None if value in ("", None) else value

    @field_validator("gcs_url")
    @classmethod
    def _with_scheme(cls, value: str | None) -> str | None:
        # STORAGE_EMULATOR_HOST is often given as host:port; the client needs a URL.
        if value and "://" not in value:
            return "http://" + value
        return value.rstrip("/") if value else value


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once on first use (never at import)."""
    return Settings()
