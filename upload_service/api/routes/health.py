"""GET /healthz (the process answers) and GET /readyz (GCS and PostgreSQL reachable, schema current)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from upload_service.api.deps import DatabaseDep, OptionalClientDep, SettingsDep, StoreDep
from upload_service.api.schemas import Check, Health, Readiness
from upload_service.core.errors import ApiError

_LOGGER = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


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
def readyz(settings: SettingsDep, store: StoreDep, db: DatabaseDep, client: OptionalClientDep):
    """200 when the bucket can be read and PostgreSQL answers with a current schema, else 503. Without
    a key only `status`; with one, `checks` names the failing backend and the kind of failure."""
    checks = {"gcs": _check("gcs", lambda: store.ping(settings.answers_prefix)),
              "postgres": _check("postgres", db.ping)}
    ready = all(c.ok for c in checks.values())
    body = Readiness(status="ready" if ready else "unavailable", checks=checks if client is not None else None)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ready else 503)
