"""The FastAPI application: ``uvicorn upload_service.main:app`` (or ``create_app()`` in tests)."""

from __future__ import annotations

import contextlib
import logging
from importlib import resources

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from upload_service.api.gate import AuthGate, CrossSiteGuard, refuse
from upload_service.api.routes import health, uploads, web
from upload_service.core.auth import auth_refusal, warn_about_auth
from upload_service.core.config import CLOUD_RUN_MAX_UPLOAD_BYTES, MULTIPART_OVERHEAD_BYTES, get_settings, on_cloud_run
from upload_service.core.errors import install_error_handlers
from upload_service.core.headers import SecurityHeaders
from upload_service.core.logs import RequestLogMiddleware, configure_logging
from upload_service.services.validation import too_large

DESCRIPTION = """\
Upload `question,context` CSV files for the beam-qa pipeline, follow their status and fetch the answers.

Files are checked with the pipeline's own rules before anything is stored. Every `/uploads` endpoint
needs your API key, as `Authorization: Bearer <key>` or `X-API-Key: <key>`, and shows you only your
own uploads (another client's upload id is a 404); `/healthz`, `/readyz` and the web page at `/` do
not. `POST /uploads` honours `Idempotency-Key`. Every error is a JSON `ErrorResponse`: `error` (a
kind), `message`, `hint` and optional `details`.
"""


class UploadSizeLimit:
    """Stops reading a POST /uploads body once it exceeds the upload limit (ASGI middleware).

    The multipart parser would otherwise spool an unbounded body to disk before the route
    runs. The limit comes from the settings dependency (honouring test overrides) on each request.
    """

    def __init__(self, app, *, fastapi_app: FastAPI, path: str):
        self.app = app
        self.fastapi_app = fastapi_app
        self.path = path

    def _limit(self) -> int:
        settings = self.fastapi_app.dependency_overrides.get(get_settings, get_settings)()
        return settings.max_upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != self.path:
            await self.app(scope, receive, send)
            return
        max_bytes = self._limit()
        allowed = max_bytes + MULTIPART_OVERHEAD_BYTES
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > allowed:
            await refuse(too_large(max_bytes), scope, receive, send)
            return
        received = 0

        async def capped_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > allowed:
                    # Closing the connection: else uvicorn reads and discards the rest of the body.
                    error = too_large(max_bytes)
                    error.headers = {"Connection": "close"}
                    raise error
            return message
        await self.app(scope, capped_receive, send)


_LOGGER = logging.getLogger(__name__)


def _settings_of(app: FastAPI):
    return app.dependency_overrides.get(get_settings, get_settings)()


def _warn_about_cloud_run_limit(max_upload_bytes: int) -> None:
    if on_cloud_run() and max_upload_bytes > CLOUD_RUN_MAX_UPLOAD_BYTES:
        _LOGGER.warning("QA_MAX_UPLOAD_BYTES=%d is more than Cloud Run lets through (%d with the multipart "
                        "envelope under its 32 MiB request cap): larger files get Cloud Run's own 413 page, not "
                        "this service's error. Unset it, or upload large files straight to the bucket (README).",
                        max_upload_bytes, CLOUD_RUN_MAX_UPLOAD_BYTES)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    app.state.clients = {}
    if app.state.configure_logging:
        # For `uvicorn upload_service.main:app`; `python -m upload_service` configured it before
        # uvicorn's own first lines (upload_service/__main__.py).
        settings = _settings_of(app)
        configure_logging(settings.log_format, settings.log_level)
        _warn_about_cloud_run_limit(settings.max_upload_bytes)
        # On Cloud Run the address is 0.0.0.0 whoever started uvicorn; elsewhere only
        # `python -m upload_service` knows it, and checks before uvicorn starts.
        refusal = auth_refusal(settings, "0.0.0.0") if on_cloud_run() else None
        if refusal:
            raise RuntimeError(f"error: {refusal}")
        warn_about_auth(settings)
    try:
        yield
    finally:
        for client in app.state.clients.values():
            client.close()
        app.state.clients.clear()


def create_app(*, configure_logs: bool = False) -> FastAPI:
    """Builds the app. Reads no settings: they come through ``get_settings`` per request.

    Args:
        configure_logs: at start-up, set up the process's logging from ``QA_LOG_FORMAT`` and
            ``QA_LOG_LEVEL`` (the served app does; tests keep pytest's logging).
    """
    # No /docs or /redoc: their pages load scripts from a CDN into the service's own origin, where
    # the web page keeps the caller's API key. /openapi.json documents the API.
    app = FastAPI(title="beam-qa upload service", version="0.1.0", description=DESCRIPTION, lifespan=_lifespan,
                  docs_url=None, redoc_url=None)
    app.state.clients = {}
    app.state.configure_logging = configure_logs
    install_error_handlers(app)
    app.include_router(uploads.router)
    app.include_router(health.router)
    app.include_router(web.router)
    static = resources.files("upload_service").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.add_middleware(UploadSizeLimit, fastapi_app=app, path="/uploads")
    # Outside the size cap: who calls is decided before anything of the body is read.
    app.add_middleware(AuthGate, fastapi_app=app, prefix="/uploads")
    app.add_middleware(CrossSiteGuard)
    # Outside the size cap, so that its refusals carry the headers too.
    app.add_middleware(SecurityHeaders)
    # Added last, so it is outermost: it also logs the requests the size cap refuses.
    app.add_middleware(RequestLogMiddleware)
    return app


app = create_app(configure_logs=True)
