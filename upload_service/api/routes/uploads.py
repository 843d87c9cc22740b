"""POST /uploads, GET /uploads/{upload_id}, GET /uploads/{upload_id}/answers."""

from __future__ import annotations

import logging
import posixpath
from typing import Annotated, Literal

from fastapi import APIRouter, File, Path, Query, Request, UploadFile
from fastapi.responses import StreamingResponse

from upload_service.api.deps import AuthDep, DatabaseDep, SettingsDep, StoreDep
from upload_service.api.schemas import Answer, AnswersPage, UploadAccepted, UploadStatus
from upload_service.core.config import Settings
from upload_service.core.errors import ApiError, error_responses
from upload_service.core.naming import UPLOAD_ID_PATTERN, new_upload_id, object_name
from upload_service.services.db import Database
from upload_service.services.gcs import UploadStore
from upload_service.services.validation import check_name, read_capped, validate_csv

_LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix="/uploads", tags=["uploads"], dependencies=[AuthDep])

UploadId = Annotated[str, Path(pattern=UPLOAD_ID_PATTERN, description="The id POST /uploads returned (32 hex digits).")]

MAX_PAGE = 10_000


@router.post("", status_code=201, response_model=UploadAccepted,
             responses=error_responses(401, 409, 413, 415, 422, 503),
             summary="Upload a question,context CSV")
def create_upload(request: Request, settings: SettingsDep, store: StoreDep,
                  file: Annotated[UploadFile, File(description="The CSV: UTF-8, a header with question and "
                                                               "context (id optional), one row per question.")]):
    """Checks the file with the pipeline's own rules, then stores it for the pipeline.

    Nothing is written for a rejected file. The object is created with `ifGenerationMatch=0`
    at `<incoming prefix><upload_id>/<sanitised name>`.
    """
    check_name(file.filename)
    data = read_capped(file.file, settings.max_upload_bytes)
    rows = validate_csv(data, file.filename, max_bytes=settings.max_upload_bytes, max_rows=settings.max_rows)
    upload_id = new_upload_id()
    name = object_name(settings.incoming_prefix, upload_id, file.filename)
    generation = store.create(name, data)
    _LOGGER.info("stored upload %s as %s#%d (%d rows)", upload_id, store.uri(name), generation, rows)
    return UploadAccepted(upload_id=upload_id, object=store.uri(name), generation=generation,
                          filename=posixpath.basename(name), size=len(data), row_count=rows,
                          status_url=str(request.url_for("get_upload", upload_id=upload_id)))


def _resolve(upload_id: str, settings: Settings, store: UploadStore, db: Database) -> UploadStatus:
    prefix = f"{settings.incoming_prefix}{upload_id}/"
    uri_prefix = store.uri(prefix)
    record = db.find_file(uri_prefix)
    if record is None:
        stored = store.first_under(prefix)
        if stored is not None:
            return UploadStatus(upload_id=upload_id, status="uploaded", object=store.uri(stored.name),
                                generation=stored.generation, filename=posixpath.basename(stored.name))
        # The pipeline may have recorded and deleted it between the two lookups.
        record = db.find_file(uri_prefix)
        if record is None:
            raise ApiError(404, "not_found", f"no upload with id {upload_id}",
                           hint="Use the upload_id that POST /uploads returned.")
    _, answered, errored = db.answer_counts(record.source_uri, record.source_generation)
    done = record.status == "done"
    return UploadStatus(
        upload_id=upload_id, status=record.status, object=record.source_uri,
        generation=record.source_generation, filename=posixpath.basename(record.source_uri),
        row_count=record.row_count, answered_count=answered, error_count=errored, error=record.error,
        answers_csv=record.output_uri if done else None, received_at=record.received_at,
        completed_at=record.completed_at)


@router.get("/{upload_id}", response_model=UploadStatus, responses=error_responses(401, 404, 422, 503),
            summary="Status of an upload")
def get_upload(request: Request, upload_id: UploadId, settings: SettingsDep, store: StoreDep, db: DatabaseDep):
    """Status from PostgreSQL (`received`, `done`, `failed`), or `uploaded` while the pipeline has
    not recorded the file yet; row counts and where the answers are."""
    status = _resolve(upload_id, settings, store, db)
    if status.status == "done":
        status.answers_url = str(request.url_for("get_answers", upload_id=upload_id))
    return status


@router.get("/{upload_id}/answers", response_model=AnswersPage,
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}},
                             "description": "JSON (a page of answers), or with `?format=csv` the whole answers "
                                            "CSV the pipeline wrote."},
                       **error_responses(401, 404, 409, 422, 503)},
            summary="Answers of a done upload")
def get_answers(upload_id: UploadId, settings: SettingsDep, store: StoreDep, db: DatabaseDep,
                output: Annotated[Literal["json", "csv"],
                                  Query(alias="format", description="json (default) or csv")] = "json",
                offset: Annotated[int, Query(ge=0, le=1_000_000, description="First row (json)")] = 0,
                limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Rows per page (json)")] = 1000):
    """The answers as JSON pages from PostgreSQL, or the answers CSV file (`?format=csv`), which keeps
    every input column and adds answer, score, answer_start, answer_end and error."""
    status = _resolve(upload_id, settings, store, db)
    if status.status == "failed":
        raise ApiError(409, "upload_failed", f"the pipeline rejected this file: {status.error}",
                       hint="Fix the file as the message says and upload it again.",
                       details={"status": status.status})
    if status.status != "done":
        raise ApiError(409, "not_ready", f"the upload is {status.status}, not done yet",
                       hint=f"Poll GET /uploads/{upload_id} until its status is done.",
                       details={"status": status.status})
    if output == "csv":
        if not status.answers_csv:
            raise ApiError(404, "answers_missing", "the pipeline recorded no answers CSV for this upload",
                           hint="Use the JSON answers (without ?format=csv).")
        chunks = store.open_chunks(status.answers_csv)
        filename = posixpath.basename(status.answers_csv)
        return StreamingResponse(chunks, media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": f'attachment; filename="{filename}"'})
    total, _, _ = db.answer_counts(status.object, status.generation)
    rows = db.answers(status.object, status.generation, offset, limit)
    return AnswersPage(upload_id=upload_id, object=status.object, generation=status.generation, total=total,
                       offset=offset, limit=limit, answers=[Answer(**row) for row in rows])
