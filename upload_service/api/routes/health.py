"""GET /healthz (the process answers) and GET /readyz (GCS and PostgreSQL reachable)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from upload_service.api.deps import DatabaseDep, StoreDep
from upload_service.api.schemas import Check, Health, Readiness

_LOGGER = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    """Always 200 while the process serves requests; touches no backend. Never needs a token."""
    return Health()


def _check(action) -> Check:
    try:
        action()
    except Exception as exc:  # pylint: disable=broad-except  -- any failure means "not ready"
        _LOGGER.warning("readiness check failed: %r", exc)
        return Check(ok=False, detail=f"{type(exc).__name__}: {exc}"[:300])
    return Check(ok=True)


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "GCS or PostgreSQL cannot be reached."}},
            summary="Readiness: the bucket and PostgreSQL are reachable")
def readyz(store: StoreDep, db: DatabaseDep):
    """200 when the bucket can be read and PostgreSQL answers, else 503 naming the failing check."""
    checks = {"gcs": _check(store.ping), "postgres": _check(db.ping)}
    ready = all(c.ok for c in checks.values())
    body = Readiness(status="ready" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
