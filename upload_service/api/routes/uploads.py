"""POST /uploads, GET /uploads (the history), GET /uploads/{upload_id}, GET /uploads/{upload_id}/answers."""

from __future__ import annotations

import logging
import posixpath
from typing import Annotated, Literal

from fastapi import APIRouter, File, Header, Path, Query, Request, Response, UploadFile
from fastapi.responses import StreamingResponse

from upload_service.api.deps import ClientDep, DatabaseDep, SettingsDep, StoreDep
from upload_service.api.schemas import Answer, AnswersPage, UploadAccepted, UploadList, UploadStatus
from upload_service.core.auth import Client
from upload_service.core.config import Settings
from upload_service.core.cursor import decode_cursor, encode_cursor
from upload_service.core.errors import ApiError, error_responses
from upload_service.core.naming import UPLOAD_ID_PATTERN, content_disposition, display_name, new_upload_id
from upload_service.services.db import Database, UploadRecord
from upload_service.services.gcs import UploadStore
from upload_service.services.uploading import store_upload
from upload_service.services.validation import check_name, read_capped, validate_csv

_LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix="/uploads", tags=["uploads"])

UploadId = Annotated[str, Path(pattern=UPLOAD_ID_PATTERN, description="The id POST /uploads returned (32 hex digits).")]

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
    description="Any string of your choosing (a UUID, say), new for each file: a retry with the same key "
                "returns the first upload instead of storing the file again.")]

MAX_PAGE = 1000
MAX_HISTORY_PAGE = 100

STALL_NOTE = ("The pipeline has not picked this file up after {secs:.0f} s. Is it running? Locally, make run "
              "shows its log (also in .run/pipeline.log); on Dataflow, check the job. The file is kept in the "
              "bucket and is answered once the pipeline runs.")


@router.post("", status_code=201, response_model=UploadAccepted,
             responses=error_responses(401, 403, 409, 413, 415, 422, 503),
             summary="Upload a question,context CSV")
def create_upload(request: Request, response: Response, client: ClientDep, settings: SettingsDep, store: StoreDep,
                  db: DatabaseDep,
                  file: Annotated[UploadFile, File(description="The CSV: UTF-8, a header with question and "
                                                               "context (id optional), one row per question.")],
                  idempotency_key: IdempotencyKey = None):
    """Checks the file with the pipeline's own rules, then stores it for the pipeline.

    Nothing is written to the bucket for a rejected file; the rejection joins the history
    (`GET /uploads`) with its reason, and its id is in the error's `details.upload_id`. The object
    is created with `ifGenerationMatch=0` at `<incoming prefix><upload_id>/<sanitised name>`. With an
    `Idempotency-Key`, a retry of the same request returns the first upload (same `upload_id`,
    header `Idempotent-Replayed: true`) and stores nothing new.
    """
    # An outdated schema must refuse the upload before the object is stored, not after.
    db.check_schema()
    size = None
    try:
        check_name(file.filename)
        data = read_capped(file.file, settings.max_upload_bytes)
        size = len(data)
        rows = validate_csv(data, file.filename, max_bytes=settings.max_upload_bytes, max_rows=settings.max_rows,
                            max_row_bytes=settings.max_row_bytes)
    except ApiError as exc:
        _record_rejection(db, client, new_upload_id(), display_name(file.filename), size, exc)
        raise
    stored = store_upload(store, db, settings.incoming_prefix, client, file.filename, data, rows, idempotency_key)
    if stored.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    _LOGGER.info("upload %s %s: %s, %d bytes, %d rows -> %s#%d", stored.upload_id,
                 "replayed" if stored.replayed else "uploaded", stored.filename, stored.size, stored.rows, stored.uri,
                 stored.generation,
                 extra={"upload_id": stored.upload_id, "file": stored.filename, "size_bytes": stored.size,
                        "rows": stored.rows, "status": "replayed" if stored.replayed else "uploaded",
                        "object": stored.uri, "generation": stored.generation, "client": client.name})
    return UploadAccepted(upload_id=stored.upload_id, object=stored.uri, generation=stored.generation,
                          filename=stored.filename, size=stored.size, row_count=stored.rows,
                          status_url=str(request.url_for("get_upload", upload_id=stored.upload_id)))


def _record_rejection(db: Database, client: Client, upload_id: str, filename: str, size: int | None,
                      exc: ApiError) -> None:
    """Adds a refused file to the client's history and names it in the error; never hides the rejection."""
    try:
        db.record_rejection(upload_id, client, filename, size, exc.body.error, exc.body.message)
        exc.body.details = {**(exc.body.details or {}), "upload_id": upload_id}
    except ApiError as db_error:
        _LOGGER.warning("rejected upload %s not recorded in qa_uploads: %s", upload_id, db_error.body.message)
    _LOGGER.info("upload %s rejected: %s, %s bytes, %s: %s", upload_id, filename, "?" if size is None else size,
                 exc.body.error, exc.body.message,
                 extra={"upload_id": upload_id, "file": filename, "size_bytes": size, "rows": None,
                        "status": "rejected", "error": exc.body.error, "client": client.name})


@router.get("", response_model=UploadList, responses=error_responses(401, 422, 503),
            summary="The upload history, newest first")
def list_uploads(request: Request, client: ClientDep, settings: SettingsDep, db: DatabaseDep,
                 limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_PAGE, description="Uploads per page")] = 20,
                 cursor: Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous "
                                                                                 "page; omit for the newest")]
                 = None):
    """Every upload this client made through the service (stored or rejected), newest first, each
    with its status and row counts, in pages of `limit`; `next_cursor` fetches the next (older) page."""
    after = None
    if cursor:
        try:
            after = decode_cursor(cursor)
        except ValueError as exc:
            raise ApiError(422, "invalid_cursor", "cursor is not one this service returned",
                           hint="Pass the next_cursor of the previous page unchanged, or omit cursor for the "
                                "newest uploads.") from exc
    records = db.list_uploads(client, limit + 1, settings.stall_after_secs, after)
    page = records[:limit]
    next_cursor = encode_cursor(page[-1].uploaded_at, page[-1].upload_id) if len(records) > limit else None
    return UploadList(uploads=[_with_links(request, _from_record(r, settings)) for r in page], limit=limit,
                      next_cursor=next_cursor)


def _from_record(record: UploadRecord, settings: Settings) -> UploadStatus:
    status = "rejected" if record.rejected else record.status or "uploaded"
    return UploadStatus(
        upload_id=record.upload_id, status=status, filename=record.filename, object=record.source_uri,
        generation=record.source_generation, size=record.size_bytes,
        row_count=record.row_count if record.row_count is not None else record.uploaded_rows,
        processed_count=record.processed or 0, answered_count=record.answered or 0,
        error_count=record.errored or 0, error=record.rejection if record.rejected else record.error,
        stalled=record.stalled, note=STALL_NOTE.format(secs=settings.stall_after_secs) if record.stalled else None,
        answers_csv=record.output_uri if status == "done" else None, uploaded_at=record.uploaded_at,
        received_at=record.received_at, completed_at=record.completed_at)


def _with_links(request: Request, status: UploadStatus) -> UploadStatus:
    if status.status == "done":
        status.answers_url = str(request.url_for("get_answers", upload_id=status.upload_id))
    return status


def _not_found(upload_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no upload with id {upload_id}",
                    hint="Use the upload_id that POST /uploads returned to you.")


def _resolve(upload_id: str, client: Client, settings: Settings, store: UploadStore, db: Database) -> UploadStatus:
    """The upload's status from the client's history. With authentication off (one client, who
    sees everything) also an object written straight to the bucket under
    ``<incoming prefix><upload_id>/``, from ``qa_files`` and the bucket: it has no owner."""
    record = db.get_upload(upload_id, client, settings.stall_after_secs)
    if record is not None:
        return _from_record(record, settings)
    if not client.sees_all:
        # Another client's upload, or none at all: the same answer, so an id reveals nothing.
        raise _not_found(upload_id)
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
            raise _not_found(upload_id)
    processed, answered, errored = db.answer_counts(record.source_uri, record.source_generation)
    done = record.status == "done"
    return UploadStatus(
        upload_id=upload_id, status=record.status, object=record.source_uri,
        generation=record.source_generation, filename=posixpath.basename(record.source_uri),
        row_count=record.row_count, processed_count=processed, answered_count=answered, error_count=errored,
        error=record.error,
        answers_csv=record.output_uri if done else None, received_at=record.received_at,
        completed_at=record.completed_at)


@router.get("/{upload_id}", response_model=UploadStatus, responses=error_responses(401, 404, 422, 503),
            summary="Status of an upload")
def get_upload(request: Request, upload_id: UploadId, client: ClientDep, settings: SettingsDep, store: StoreDep,
               db: DatabaseDep):
    """Status from PostgreSQL (`received`, `done`, `failed`), `uploaded` while the pipeline has
    not recorded the file yet (`stalled` after a while), or `rejected`; row counts (while `received`,
    `processed_count` grows as the pipeline commits answers) and where the answers are."""
    return _with_links(request, _resolve(upload_id, client, settings, store, db))


@router.get("/{upload_id}/answers", response_model=AnswersPage,
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}},
                             "description": "JSON (a page of answers), or with `?format=csv` the whole answers "
                                            "CSV the pipeline wrote."},
                       **error_responses(401, 404, 409, 422, 503)},
            summary="Answers of a done upload")
def get_answers(upload_id: UploadId, client: ClientDep, settings: SettingsDep, store: StoreDep, db: DatabaseDep,
                output: Annotated[Literal["json", "csv"],
                                  Query(alias="format", description="json (default) or csv")] = "json",
                offset: Annotated[int, Query(ge=0, le=1_000_000, description="First row (json)")] = 0,
                limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Most rows per page (json)")] = 100):
    """The answers as JSON pages from PostgreSQL, or the answers CSV file (`?format=csv`), which keeps
    every input column and adds answer, score, answer_start, answer_end and error. A JSON page also
    stops at `QA_MAX_PAGE_BYTES` of text, so it may hold fewer than `limit` rows: follow
    `next_offset`."""
    status = _resolve(upload_id, client, settings, store, db)
    if status.status == "rejected":
        raise ApiError(409, "upload_failed", f"the service refused this file: {status.error}",
                       hint="Fix the file as the message says and upload it again.",
                       details={"status": status.status})
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
        if not status.answers_csv.startswith(store.uri(settings.answers_prefix)):
            # Only the pipeline's answers are ever read for a client, whatever a record says.
            raise ApiError(404, "answers_missing", f"the answers CSV is not under {settings.answers_prefix}",
                           hint="Use the JSON answers (without ?format=csv); the operator sets "
                                "QA_ANSWERS_PREFIX to the pipeline's --answers_prefix.")
        chunks = store.open_chunks(status.answers_csv)
        return StreamingResponse(chunks, media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": content_disposition(posixpath.basename(status.answers_csv))})
    total, _, _ = db.answer_counts(status.object, status.generation)
    rows = db.answers(status.object, status.generation, offset, limit, settings.max_page_bytes)
    following = offset + len(rows)
    return AnswersPage(upload_id=upload_id, object=status.object, generation=status.generation, total=total,
                       offset=offset, limit=limit, next_offset=following if following < total else None,
                       answers=[Answer(**row) for row in rows])
