"""Settings of the upload service, read from ``QA_*`` environment variables."""

from __future__ import annotations

import os
from functools import cached_property, lru_cache
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from upload_service.core.auth import TOKEN_CLIENT, KeyRing, parse_api_keys

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

# The longest record (one row, quoted line breaks included) an upload may hold. Parsing holds a
# record at about 13 times its size, so this bounds the parser's memory per request (about 13 MiB);
# it holds four contexts of the pipeline's --max_context_chars (100,000) even at 4 bytes a character.
DEFAULT_MAX_ROW_BYTES = 1024 * 1024

# A page of answers stops at this many bytes of text even when `limit` allows more rows.
DEFAULT_MAX_PAGE_BYTES = 2 * 1024 * 1024

# Where Identity-Aware Proxy publishes the public keys of its signed headers (ES256, PEM by key id).
IAP_CERTS_URL = "https://www.gstatic.com/iap/verify/public_key"


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
        answers_prefix: the pipeline's ``--answers_prefix``: the only place answers CSVs are read from.
        pg_dsn: the PostgreSQL database the pipeline writes (``qa_files``, ``qa_answers``).
        apply_migrations: apply the pipeline's schema migrations when the schema is older than the
            service needs (local stacks and tests; needs DDL rights). Off, the service answers 503
            ``schema_outdated`` until the pipeline has migrated the database.
        gcs_url: a GCS emulator URL (``QA_GCS_URL``, else ``STORAGE_EMULATOR_HOST``); the client
            is then anonymous. Empty means real GCS with application default credentials.
        api_keys: the clients, ``name=<sha256 hex of the key>`` pairs separated by commas. A
            caller sends its key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` and
            sees only its own uploads.
        api_token: one more client, named ``default``, whose key is this value (kept for
            deployments that predate ``api_keys``).
        auth: ``none`` serves every caller without a key, on any address, on purpose (every
            caller then sees every upload); ``keys`` (the default) needs keys except on loopback.
        iap_audience: behind Identity-Aware Proxy, the audience of its signed header
            (``/projects/NUMBER/...``); the verified e-mail address is then the client.
        iap_certs_url: where IAP's public keys are fetched from.
        max_page_bytes: a page of answers stops at this many bytes of text.
        max_row_bytes: a file with a longer record (a row, its quoted line breaks included) is
            rejected with 422 ``row_too_large`` before it is parsed: this bounds the parser's memory.
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
    answers_prefix: str = "answers/"
    pg_dsn: str = "host=127.0.0.1 port=5432 user=postgres dbname=beam_qa"
    apply_migrations: bool = False
    gcs_url: str | None = Field(default=None, validation_alias=AliasChoices("QA_GCS_URL", "STORAGE_EMULATOR_HOST",
                                                                            "gcs_url"))
    api_keys: SecretStr | None = None
    api_token: SecretStr | None = None
    auth: Literal["keys", "none"] = "keys"
    iap_audience: str | None = None
    iap_certs_url: str = IAP_CERTS_URL
    max_page_bytes: int = Field(default=DEFAULT_MAX_PAGE_BYTES, ge=1024)
    max_upload_bytes: int = Field(default_factory=default_max_upload_bytes, gt=0)
    max_row_bytes: int = Field(default=DEFAULT_MAX_ROW_BYTES, ge=1024)
    max_rows: int = Field(default=DEFAULT_MAX_ROWS, gt=0)
    backend_timeout_secs: float = Field(default=10.0, gt=0)
    stall_after_secs: float = Field(default=60.0, gt=0)
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("log_format", "log_level", "auth", mode="before")
    @classmethod
    def _case_insensitive(cls, value, info):
        if not isinstance(value, str):
            return value
        return value.upper() if info.field_name == "log_level" else value.lower()

    @field_validator("incoming_prefix", "answers_prefix")
    @classmethod
    def _prefix_is_a_folder(cls, value: str) -> str:
        value = value.lstrip("/")
        if not value:
            raise ValueError("must not be empty (the pipeline only works under a prefix)")
        return value if value.endswith("/") else value + "/"

    @field_validator("api_keys")
    @classmethod
    def _keys_parse(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_api_keys(value.get_secret_value())  # a malformed pair is a start-up error, not a 401 later
        return value

    @model_validator(mode="after")
    def _one_way_to_authenticate(self):
        if self.auth == "none" and self.authenticates:
            raise ValueError("QA_AUTH=none turns authentication off, but QA_API_KEYS, QA_API_TOKEN or "
                             "QA_IAP_AUDIENCE is set: unset QA_AUTH or those")
        if self.api_keys is not None and self.api_token is not None \
                and TOKEN_CLIENT in parse_api_keys(self.api_keys.get_secret_value()):
            raise ValueError(f"QA_API_TOKEN is the client named {TOKEN_CLIENT!r}, which QA_API_KEYS names too: "
                             "rename one")
        return self

    @property
    def authenticates(self) -> bool:
        """Whether callers are told apart (keys, the token or IAP); else every caller is one client."""
        return self.api_keys is not None or self.api_token is not None or self.iap_audience is not None

    @cached_property
    def key_ring(self) -> KeyRing:
        """The configured keys (hashes only), ``QA_API_TOKEN`` included."""
        keys = parse_api_keys(self.api_keys.get_secret_value()) if self.api_keys is not None else {}
        if self.api_token is not None:
            keys[TOKEN_CLIENT] = KeyRing.digest(self.api_token.get_secret_value())
        return KeyRing(tuple(keys.items()))

    @field_validator("gcs_url", "api_token", "api_keys", "iap_audience", mode="before")
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
