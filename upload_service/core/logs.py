"""The service's logs: one line per request and per upload, as text or as Cloud Logging JSON.

``QA_LOG_FORMAT=json`` writes one JSON object per line with the fields Cloud Logging reads from a
container's output (https://cloud.google.com/logging/docs/structured-logging): ``severity``,
``message``, ``time``, ``logging.googleapis.com/sourceLocation`` and, for request lines,
``httpRequest``. Anything passed in ``extra`` (``upload_id``, ``size_bytes``, ...) becomes a field
of its own, searchable in the Logs Explorer as ``jsonPayload.upload_id``.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

REQUEST_LOGGER = "upload_service.requests"

# Cloud Logging's names for the standard LogRecord attributes.
_CLOUD_FIELDS = {"levelname": "severity", "exc_info": "stack_trace"}

_HANDLER_NAME = "upload_service"


class CloudLoggingFormatter(JsonFormatter):
    """One JSON object per record, in the shape Cloud Logging's agent parses into a LogEntry."""

    def __init__(self):
        super().__init__("%(levelname)s %(message)s %(exc_info)s", rename_fields=_CLOUD_FIELDS)

    def add_fields(self, log_data, record, message_dict) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data["time"] = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat()
        log_data["logger"] = record.name
        log_data["logging.googleapis.com/sourceLocation"] = {
            "file": record.pathname, "line": str(record.lineno), "function": record.funcName}
        if not log_data.get("stack_trace"):
            log_data.pop("stack_trace", None)


def configure_logging(log_format: str, level: str) -> None:
    """Sends every logger (the service's, uvicorn's, the libraries') to stdout in one format.

    Idempotent: it replaces the handler it installed before. uvicorn's own access log is
    silenced, because ``RequestLogMiddleware`` writes one richer line per request.

    Args:
        log_format: ``text`` or ``json``.
        level: a logging level name for the service's loggers.
    """
    handler = logging.StreamHandler(sys.stdout)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(CloudLoggingFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries: warnings and errors only
    for name in ("upload_service", "beam_qa", "uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's default config gives these loggers handlers of their own (plain text).
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


# A logged request target holds printable ASCII only: anything else is written %XX.
_PRINTABLE = frozenset(range(0x21, 0x7F))
_MAX_TARGET_BYTES = 2048


def _escaped(raw: bytes) -> str:
    return "".join(chr(b) if b in _PRINTABLE else f"%{b:02X}" for b in raw)


def request_target(scope) -> str:
    """The request's path and query as sent, for a log line: never a line break or a control character.

    ``scope["path"]`` is percent-decoded (``/%0A…`` holds a real line break, which would forge a
    log line of the caller's choosing), so the raw target is used, as sent, with every byte outside
    printable ASCII percent-encoded, and cut at 2 KiB.
    """
    raw = scope.get("raw_path")
    if raw is None:
        raw = scope.get("path", "").encode("utf-8", "surrogateescape")
    query = scope.get("query_string", b"")
    target = raw + b"?" + query if query else raw
    cut = len(target) > _MAX_TARGET_BYTES
    return _escaped(target[:_MAX_TARGET_BYTES]) + ("…" if cut else "")


class RequestLogMiddleware:
    """Logs one line per HTTP request: method, path, status, duration, and Cloud Logging's httpRequest.

    A pure ASGI middleware (not ``BaseHTTPMiddleware``), so streamed responses such as the answers
    CSV pass through unbuffered; the line is written when the response has been sent.
    """

    def __init__(self, app):
        self.app = app
        self._logger = logging.getLogger(REQUEST_LOGGER)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        response = {"status": 500, "size": 0}

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
            elif message["type"] == "http.response.body":
                response["size"] += len(message.get("body", b""))
            await send(message)
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self._log(scope, response["status"], response["size"], time.perf_counter() - started)

    def _log(self, scope, status: int, size: int, seconds: float) -> None:
        target = request_target(scope)
        headers = dict(scope.get("headers") or [])
        client = scope.get("client") or ("", 0)
        # The calling client's name, once api.deps.require_client has identified it.
        caller = (scope.get("state") or {}).get("client")
        self._logger.log(
            logging.ERROR if status >= 500 else logging.INFO,
            "%s %s %d %.1f ms%s", scope.get("method", ""), target, status, seconds * 1000,
            f" client={caller}" if caller else "",
            extra={"client": caller, "httpRequest": {
                "requestMethod": scope.get("method", ""), "requestUrl": target, "status": status,
                "responseSize": str(size), "latency": f"{seconds:.6f}s", "remoteIp": client[0],
                "userAgent": headers.get(b"user-agent", b"").decode("latin-1"),
                "protocol": f"HTTP/{scope.get('http_version', '1.1')}"}})
