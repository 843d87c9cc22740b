"""GET /: the upload web page (static HTML, CSS and JavaScript that calls the JSON API)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from upload_service.api.deps import SettingsDep

router = APIRouter(tags=["web"])


@router.get("/", response_class=HTMLResponse, summary="The upload web page",
            responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}})
def index(settings: SettingsDep) -> HTMLResponse:
    """Choose or drop CSV files, upload them, follow each one's status and progress, browse the
    history and the answers. The page holds no data, so it is served without a token; it asks for
    the token when the API answers 401. It knows the upload limit, so that a file over it is refused
    before it is sent (on Cloud Run, the front end would answer with its own 413 page)."""
    page = resources.files("upload_service").joinpath("templates/index.html").read_text(encoding="utf-8")
    # An integer only: nothing a client sends reaches the page.
    return HTMLResponse(page.replace("{{max_upload_bytes}}", str(int(settings.max_upload_bytes))))
