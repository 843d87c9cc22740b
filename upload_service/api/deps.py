"""Dependencies: settings, the bucket, the database and the bearer-token check.

Routes take them as ``Annotated`` aliases, so tests point them anywhere with
``app.dependency_overrides[get_settings] = ...`` (or override the clients themselves).
"""

from __future__ import annotations

import secrets
import threading
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from upload_service.core.config import Settings, get_settings
from upload_service.core.errors import ApiError
from upload_service.services.db import Database
from upload_service.services.gcs import UploadStore

SettingsDep = Annotated[Settings, Depends(get_settings)]

_LOCK = threading.Lock()


def _shared(request: Request, key: tuple, factory):
    """One client per app and configuration, created on first use and closed at shutdown."""
    with _LOCK:
        clients = request.app.state.clients
        if key not in clients:
            clients[key] = factory()
        return clients[key]


def get_store(request: Request, settings: SettingsDep) -> UploadStore:
    """The bucket named by the settings."""
    return _shared(request, ("gcs", settings.bucket, settings.gcs_url, settings.backend_timeout_secs),
                   lambda: UploadStore(settings.bucket, settings.gcs_url, settings.backend_timeout_secs))


def get_database(request: Request, settings: SettingsDep) -> Database:
    """The PostgreSQL pool for the settings' DSN."""
    return _shared(request, ("pg", settings.pg_dsn, settings.backend_timeout_secs),
                   lambda: Database(settings.pg_dsn, settings.backend_timeout_secs))


StoreDep = Annotated[UploadStore, Depends(get_store)]
DatabaseDep = Annotated[Database, Depends(get_database)]

_bearer = HTTPBearer(auto_error=False, description="Needed when the server sets QA_API_TOKEN.")


def require_token(settings: SettingsDep,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Checks ``Authorization: Bearer <QA_API_TOKEN>`` when a token is configured.

    Raises:
        ApiError: 401 when the token is missing or wrong.
    """
    if settings.api_token is None:
        return
    supplied = credentials.credentials if credentials is not None else ""
    # Constant-time: the comparison's duration says nothing about how much of the token matched.
    if not secrets.compare_digest(supplied.encode("utf-8"), settings.api_token.get_secret_value().encode("utf-8")):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token",
                       hint="Send the header 'Authorization: Bearer <token>' with the server's QA_API_TOKEN.",
                       headers={"WWW-Authenticate": "Bearer"})


AuthDep = Depends(require_token)
