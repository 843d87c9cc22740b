"""Dependencies: settings, the bucket, the database and the calling client.

Routes take them as ``Annotated`` aliases, so tests point them anywhere with
``app.dependency_overrides[get_settings] = ...`` (or override the clients themselves).
"""

from __future__ import annotations

import logging
import threading
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from upload_service.core.auth import Client, is_loopback
from upload_service.core.config import Settings, get_settings
from upload_service.core.errors import ApiError
from upload_service.core.iap import HEADER as IAP_HEADER
from upload_service.core.iap import IapVerifier
from upload_service.services.db import Database
from upload_service.services.gcs import UploadStore

_LOGGER = logging.getLogger(__name__)

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
    return _shared(request, ("pg", settings.pg_dsn, settings.backend_timeout_secs, settings.apply_migrations),
                   lambda: Database(settings.pg_dsn, settings.backend_timeout_secs,
                                    apply_migrations=settings.apply_migrations))


# Where AuthGate leaves the identified Client in the request's scope state.
GATED_CLIENT = "caller"

StoreDep = Annotated[UploadStore, Depends(get_store)]
DatabaseDep = Annotated[Database, Depends(get_database)]

_bearer = HTTPBearer(auto_error=False, description="Your API key (or send it as X-API-Key).")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False,
                        description="Your API key, when Authorization carries something else (Cloud Run's "
                                    "invoker token).")

BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
ApiKeyDep = Annotated[str | None, Depends(_api_key)]


def _unauthorized(message: str, hint: str) -> ApiError:
    return ApiError(401, "unauthorized", message, hint=hint, headers={"WWW-Authenticate": "Bearer"})


def _iap(request: Request, settings: Settings) -> IapVerifier:
    return _shared(request, ("iap", settings.iap_audience, settings.iap_certs_url),
                   lambda: IapVerifier(settings.iap_audience, settings.iap_certs_url,
                                       min(settings.backend_timeout_secs, 5.0)))


def _key(request: Request) -> str | None:
    """The key from ``X-API-Key``, else from ``Authorization: Bearer``."""
    if key := request.headers.get("x-api-key"):
        return key
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() or None if scheme.lower() == "bearer" else None


def served_on_loopback(request: Request) -> bool:
    """Whether the connection arrived on a loopback address of this machine.

    Decided from the server side of the connection (``scope["server"]``: the address the socket
    accepted it on), never from the peer address: uvicorn's ``--proxy-headers`` rewrites the peer
    from ``X-Forwarded-For``, which any caller can send. Only a process on this machine can reach a
    loopback address, whatever address the server listens on (0.0.0.0 included).
    """
    server = request.scope.get("server")
    return bool(server) and is_loopback(server[0])


def identify(request: Request, settings: Settings) -> Client:
    """Who is calling: an IAP identity, a key's client, or with authentication off the one client.

    Reads headers only, never the body (``AuthGate`` calls it before the body is read).

    Raises:
        ApiError: 401 when keys are configured and none matches, or an IAP assertion is bad; 401
            when no keys are configured and the caller is not on this machine (unless QA_AUTH=none).
    """
    if not settings.authenticates:
        # Fail closed even when served by a bare `uvicorn --host 0.0.0.0` (which skips the start-up
        # check of `python -m upload_service`): without keys, only this machine is served.
        if settings.auth != "none" and not served_on_loopback(request):
            raise _unauthorized("this service has no API keys configured, so it serves only callers on its "
                                "own machine", "The operator sets QA_API_KEYS (docs/upload-service.md).")
        return Client(None)
    if settings.iap_audience is not None and (assertion := request.headers.get(IAP_HEADER)):
        try:
            return Client(_iap(request, settings).email(assertion))
        except ValueError as exc:
            _LOGGER.warning("IAP assertion refused: %s", exc)
            raise _unauthorized("the Identity-Aware Proxy assertion is not valid for this service",
                                "Reach the service through its Identity-Aware Proxy.") from exc
        except OSError as exc:
            raise ApiError(503, "auth_unavailable", "the Identity-Aware Proxy keys could not be fetched",
                           hint="Try again in a moment.") from exc
    key = _key(request)
    name = settings.key_ring.client_for(key) if key else None
    if name is None:
        raise _unauthorized("missing or wrong API key",
                            "Send your key as 'Authorization: Bearer <key>' (or 'X-API-Key: <key>').")
    return Client(name)


def require_client(request: Request, settings: SettingsDep, _bearer_scheme: BearerDep,
                   _key_scheme: ApiKeyDep) -> Client:
    """The calling client; every ``/uploads`` endpoint depends on it.

    ``AuthGate`` has identified the caller before the body was read; this returns that identity
    (and identifies the caller itself only if the gate did not run). The two security schemes are
    parameters so that the OpenAPI document shows them; ``identify`` reads the same headers itself,
    for ``/readyz`` too.
    """
    client = (request.scope.get("state") or {}).get(GATED_CLIENT)
    if not isinstance(client, Client):
        client = identify(request, settings)
    request.state.client = client.name  # for the request log line
    return client


def optional_client(request: Request, settings: SettingsDep) -> Client | None:
    """The calling client, or None for a caller without a valid key (``/readyz`` then says less).

    No security scheme in the OpenAPI document: the endpoint answers everyone.
    """
    try:
        return identify(request, settings)
    except ApiError:
        return None


ClientDep = Annotated[Client, Depends(require_client)]
OptionalClientDep = Annotated[Client | None, Depends(optional_client)]
