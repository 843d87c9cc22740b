"""The one JSON error shape every 4xx/5xx of the service uses, and its exception."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException


class ErrorResponse(BaseModel):
    """What went wrong and how to fix it."""

    error: str = Field(description="Machine-readable kind, for example `missing_columns`, `too_large`, "
                                   "`unauthorized`, `not_found`, `not_ready`.",
                       examples=["missing_columns"])
    message: str = Field(description="What is wrong, for a person.",
                         examples=["missing column(s) context in header ['question', 'ctx']; "
                                   "the header must contain question and context"])
    hint: str | None = Field(default=None, description="How to fix it.",
                             examples=["Add the missing column(s) context to the header row."])
    details: dict[str, Any] | None = Field(default=None,
                                           description="Structured facts: the limit, the missing columns, ...",
                                           examples=[{"missing": ["context"]}])


class ApiError(StarletteHTTPException):
    """An error answered with ``ErrorResponse``.

    A Starlette ``HTTPException`` so that FastAPI passes it through unchanged even when it is
    raised while the request body is being read (the upload size cap does that).
    """

    def __init__(self, status_code: int, error: str, message: str, hint: str | None = None,
                 details: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.body = ErrorResponse(error=error, message=message, hint=hint, details=details)


def error_response(status_code: int, body: ErrorResponse, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status_code, headers=headers)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status_code, exc.body, exc.headers)


_KINDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type"}


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Routing errors (unknown path, wrong method) and framework errors get the same shape.
    kind = _KINDS.get(exc.status_code, "server_error" if exc.status_code >= 500 else "bad_request")
    return error_response(exc.status_code, ErrorResponse(error=kind, message=str(exc.detail)), exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for item in exc.errors():
        where = ".".join(str(part) for part in item.get("loc", ()))
        problems.append({"loc": where, "msg": item.get("msg", "")})
    summary = "; ".join(f"{p['loc']}: {p['msg']}" for p in problems) or "invalid request"
    return error_response(422, ErrorResponse(
        error="invalid_request", message=summary,
        hint="Check the request against the OpenAPI document at /openapi.json "
             "(POST /uploads takes multipart/form-data with one field named `file`).",
        details={"problems": problems}))


def install_error_handlers(app) -> None:
    """Makes every error, including FastAPI's own 404/405/422, an ``ErrorResponse``."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these status codes, all with the ErrorResponse shape."""
    descriptions = {
        401: "No API key, a wrong one, or a bad Identity-Aware Proxy assertion (`unauthorized`); decided before "
             "the request body is read.",
        403: "A page of another site sent this request (`cross_site`: `Sec-Fetch-Site` or `Origin` says so).",
        404: "No upload with this id for this client (`not_found`): another client's upload is answered the same.",
        409: "The answers are not there yet, or the file failed or was rejected (`not_ready`, `upload_failed`); "
             "a retry while the first request with its Idempotency-Key is still storing (`in_progress`).",
        413: "The file is over `QA_MAX_UPLOAD_BYTES` (`too_large`); `details.limit_bytes` gives the limit.",
        415: "The file name does not end in `.csv` (`not_csv`).",
        422: "The request or the CSV is not valid: `invalid_request`, `invalid_cursor` (GET /uploads), "
             "`idempotency_key_reused` (POST /uploads: the key came with another file), or the pipeline's file "
             "error kinds "
             "`not_utf8`, `binary`, `empty`, `duplicate_columns`, `missing_columns` (`details.missing`), "
             "`too_many_rows` (`details.limit_rows`), `malformed_csv`, `no_rows`; `row_too_large` (a row over "
             "`QA_MAX_ROW_BYTES`, `details.line` and `details.limit_bytes`).",
        503: "GCS or PostgreSQL cannot be reached (`storage_unavailable`, `database_unavailable`), or the "
             "database schema is older than the service needs (`schema_outdated`).",
    }
    return {code: {"model": ErrorResponse, "description": descriptions.get(code, "Error.")} for code in codes}
