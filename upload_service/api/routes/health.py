"""GET /healthz (the process answers) and GET /readyz (GCS and PostgreSQL reachable, schema current)."""

from __future__ import annotations

import logging
import threading
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from upload_service.api.deps import DatabaseDep, OptionalClientDep, SettingsDep, StoreDep
from upload_service.api.schemas import Check, Health, Readiness
from upload_service.core.errors import ApiError

_LOGGER = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

# How long a keyless /readyz reuses the last checks: probes and strangers alike then cost at most
# one GCS and one PostgreSQL round trip per this many seconds, however often they call.
READY_CACHE_SECS = 5.0


class ReadinessCache:
    """The last checks and when they ran; one refresh at a time (callers meanwhile wait for it)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._checks: dict[str, Check] | None = None
        self._at = float("-inf")

    def get(self, run) -> dict[str, Check]:
        with self._lock:
            if self._checks is None or time.monotonic() - self._at >= READY_CACHE_SECS:
                self._checks = run()
                self._at = time.monotonic()
            return self._checks


def _cache(request: Request) -> ReadinessCache:
    state = request.app.state
    if getattr(state, "readiness", None) is None:
        with _CACHE_LOCK:
            if getattr(state, "readiness", None) is None:
                state.readiness = ReadinessCache()
    return state.readiness


_CACHE_LOCK = threading.Lock()


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    """Always 200 while the process serves requests; touches no backend. Never needs a key."""
    return Health()


def _check(name: str, action) -> Check:
    try:
        action()
    except Exception as exc:  # pylint: disable=broad-except  -- any failure means "not ready"
        # The whole story goes to the log; a caller learns only the kind of failure, never a
        # host name, a user or an exception's text.
        _LOGGER.warning("readiness check %s failed: %r", name, exc)
        return Check(ok=False, detail=exc.body.error if isinstance(exc, ApiError) else type(exc).__name__)
    return Check(ok=True)


@router.get("/readyz", response_model=Readiness, response_model_exclude_none=True,
            responses={503: {"model": Readiness, "description": "GCS or PostgreSQL cannot be reached, or the "
                                                                "schema is older than the service needs."}},
            summary="Readiness: the bucket and PostgreSQL are reachable")
def readyz(request: Request, settings: SettingsDep, store: StoreDep, db: DatabaseDep, client: OptionalClientDep):
    """200 when the bucket can be read and PostgreSQL answers with a current schema, else 503. Without
    a key only `status`, from checks at most a few seconds old; with one, fresh checks, and `checks`
    names the failing backend and the kind of failure."""
    def run() -> dict[str, Check]:
        return {"gcs": _check("gcs", lambda: store.ping(settings.answers_prefix)),
                "postgres": _check("postgres", db.ping)}
    checks = run() if client is not None else _cache(request).get(run)
    ready = all(c.ok for c in checks.values())
    body = Readiness(status="ready" if ready else "unavailable", checks=checks if client is not None else None)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ready else 503)
