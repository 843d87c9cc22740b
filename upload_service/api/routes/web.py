"""GET /: the upload page (static HTML; its script calls the JSON API)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["web"])


@router.get("/", response_class=HTMLResponse, summary="The upload web page",
            responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}})
def index() -> HTMLResponse:
    """Choose a CSV, upload it, watch its status and see the answers. The page holds no data, so it
    is served without a token; it asks for the token when the API answers 401."""
    page = resources.files("upload_service").joinpath("templates/index.html").read_text(encoding="utf-8")
    return HTMLResponse(page)
