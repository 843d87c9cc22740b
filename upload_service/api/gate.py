"""Deciding who calls, and from where, before a request's body is read (pure ASGI middleware).

FastAPI reads and spools a multipart body before any dependency runs, so a check made in a
dependency comes after the body has been read: a keyless caller could make the service read (and
spool to its memory-backed ``/tmp``) a whole upload before its ``401``. These gates run first, on
the request line and headers alone, and a refusal closes the connection (``Connection: close``),
so the rest of the body is never read (uvicorn would otherwise read and discard it to keep the
connection alive).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from upload_service.api.deps import GATED_CLIENT, identify
from upload_service.core.config import get_settings
from upload_service.core.errors import ApiError, error_response
from upload_service.core.logs import request_target

_LOGGER = logging.getLogger(__name__)

# Methods that change something: a browser lets another site send them with the user's cookies.
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Sec-Fetch-Site values of a request the service's own page made, or a person typed: allowed.
_OWN_SITE = frozenset({b"same-origin", b"none"})


def _has_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length", b"0").strip()
    return b"transfer-encoding" in headers or not length.isdigit() or int(length) > 0


async def refuse(error: ApiError, scope, receive, send) -> None:
    """Answers ``error`` without reading the request body; closes the connection if there is one."""
    headers = dict(error.headers or {})
    if _has_body(dict(scope.get("headers") or [])):
        headers["Connection"] = "close"
    await error_response(error.status_code, error.body, headers)(scope, receive, send)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


class AuthGate:
    """Identifies the caller of every request under ``prefix`` from its headers, before the body.

    A caller that is not allowed gets the ``401`` (or ``503 auth_unavailable``) of
    ``api.deps.identify`` and nothing of its body is read; an allowed caller's ``Client`` goes to
    the route in the request's scope state (``api.deps.require_client`` returns it).

    Args:
        fastapi_app: the app, for its settings dependency (honouring test overrides).
        prefix: the path whose requests need a client (``/uploads`` and everything below it).
    """

    def __init__(self, app, *, fastapi_app: FastAPI, prefix: str = "/uploads"):
        self.app = app
        self.fastapi_app = fastapi_app
        self.prefix = prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not _under(scope.get("path", ""), self.prefix):
            await self.app(scope, receive, send)
            return
        settings = self.fastapi_app.dependency_overrides.get(get_settings, get_settings)()
        # No receive: the Request can read headers only. In a thread, since checking an IAP
        # assertion may fetch IAP's keys.
        try:
            client = await run_in_threadpool(identify, Request(scope), settings)
        except ApiError as error:
            await refuse(error, scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[GATED_CLIENT] = client
        state["client"] = client.name  # for the request log line
        await self.app(scope, receive, send)


class CrossSiteGuard:
    """Refuses a state-changing request that a browser sent from another site (``403 cross_site``).

    Behind Identity-Aware Proxy the browser's cookie is the credential, and a browser attaches it
    to a form another site posts to this one: that request must not store a file in the user's
    name. A browser says where a request comes from: ``Sec-Fetch-Site`` (every current browser),
    else ``Origin``. Allowed: ``same-origin`` and ``none`` (typed by the user), an ``Origin`` whose
    host is the request's own ``Host``, and clients that send neither header (curl, scripts: they
    carry no ambient cookie).
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in STATE_CHANGING:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        site = headers.get(b"sec-fetch-site")
        origin = headers.get(b"origin")
        refused = None
        if site is not None:
            if site.strip().lower() not in _OWN_SITE:
                refused = f"Sec-Fetch-Site: {site.decode('latin-1')[:40]}"
        elif origin is not None and not _same_host(origin, headers.get(b"host")):
            refused = f"Origin: {origin.decode('latin-1')[:200]}"
        if refused is None:
            await self.app(scope, receive, send)
            return
        _LOGGER.warning("cross-site %s %s refused (%s)", scope.get("method"), request_target(scope),
                        refused.encode("unicode_escape").decode("ascii"))
        await refuse(ApiError(403, "cross_site", "a page of another site sent this request; only this service's "
                              "own page and non-browser clients may change anything here",
                              hint="Upload from the service's own page, or from a script (curl, httpx) that sends "
                                   "neither Origin nor Sec-Fetch-Site."), scope, receive, send)


def _same_host(origin: bytes, host: bytes | None) -> bool:
    """Whether an ``Origin`` names the host (and port) the request was sent to."""
    if host is None or origin.strip() == b"null":
        return False
    try:
        netloc = urlsplit(origin.decode("latin-1").strip()).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc.lower() == host.decode("latin-1").strip().lower()
