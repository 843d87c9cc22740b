"""Response bodies of the upload API (the error shape is ``core.errors.ErrorResponse``)."""

from __future__ import annotations

import datetime
from typing import Literal

from pydantic import BaseModel, Field

UploadState = Literal["uploaded", "received", "done", "failed", "rejected"]


class UploadAccepted(BaseModel):
    """A validated file stored under the incoming prefix."""

    upload_id: str = Field(description="Id for GET /uploads/{upload_id}.", examples=["3f2a9c0e4b5d4e7f8a1b2c3d4e5f6a7b"])
    object: str = Field(description="Where the file is: gs://BUCKET/<incoming prefix><upload_id>/<name>.",
                        examples=["gs://qa-local/incoming/3f2a9c0e4b5d4e7f8a1b2c3d4e5f6a7b/questions.csv"])
    generation: int = Field(description="The object's GCS generation (the pipeline keys its work by it).")
    filename: str = Field(description="The sanitised file name used in the object name.")
    size: int = Field(description="Bytes stored.")
    row_count: int = Field(description="Data rows found (the pipeline answers each).")
    status: UploadState = Field(default="uploaded")
    status_url: str = Field(description="Absolute URL of GET /uploads/{upload_id}.")


class UploadStatus(BaseModel):
    """Where an upload is.

    `uploaded`: stored, the pipeline has not recorded it yet. `received`: the pipeline parsed it and
    is answering (`processed_count` of `row_count` rows so far). `done`: answers are in PostgreSQL
    and the answers CSV. `failed`: the pipeline rejected the file; `error` says why. `rejected`: the
    service refused the file and stored nothing; `error` says why.
    """

    upload_id: str
    status: UploadState
    filename: str
    object: str | None = Field(default=None, description="The uploaded object (gs:// URI); null if rejected.")
    generation: int | None = Field(default=None, description="The object's generation; null if rejected.")
    size: int | None = Field(default=None, description="Bytes uploaded (null when unknown).")
    row_count: int | None = Field(default=None, description="Data rows in the file.")
    processed_count: int = Field(default=0, description="Rows the pipeline has answered so far, with or without "
                                                        "a row error; reaches row_count when done.")
    answered_count: int = Field(default=0, description="Rows with an answer.")
    error_count: int = Field(default=0, description="Rows with a row error (empty question, ...).")
    error: str | None = Field(default=None, description="Why the file failed or was rejected.")
    stalled: bool = Field(default=False, description="Still `uploaded` after QA_STALL_AFTER_SECS: the pipeline "
                                                     "has not picked the file up (is it running?).")
    note: str | None = Field(default=None, description="What to do about a stalled upload.")
    answers_csv: str | None = Field(default=None, description="gs:// URI of the answers CSV (status done).")
    answers_url: str | None = Field(default=None, description="GET /uploads/{upload_id}/answers (status done).")
    uploaded_at: datetime.datetime | None = Field(default=None, description="When the service stored or refused "
                                                                            "it (null for objects written "
                                                                            "straight to the bucket).")
    received_at: datetime.datetime | None = None
    completed_at: datetime.datetime | None = None


class UploadList(BaseModel):
    """A page of the upload history, newest first."""

    uploads: list[UploadStatus]
    limit: int
    next_cursor: str | None = Field(default=None, description="Pass as `cursor` for the next (older) page; "
                                                              "null on the last page.")


class Answer(BaseModel):
    """One data row of the file and its answer."""

    row_index: int = Field(description="0-based data row in the file.")
    id: str | None = Field(default=None, description="The row's id column, if the file had one.")
    question: str
    context: str
    answer: str | None = None
    score: float | None = None
    answer_start: int | None = Field(default=None, description="Character offset into context.")
    answer_end: int | None = None
    error: str | None = Field(default=None, description="Row error, or null.")
    truncated: bool = Field(default=False, description="The row's text alone is over QA_MAX_PAGE_BYTES: each "
                                                       "text field is cut to QA_MAX_PAGE_BYTES / 20 characters; "
                                                       "the answers CSV (`?format=csv`) holds the whole row.")


class AnswersPage(BaseModel):
    """A page of answers in row order."""

    upload_id: str
    object: str
    generation: int
    total: int = Field(description="Rows stored for the file.")
    offset: int
    limit: int
    next_offset: int | None = Field(default=None, description="`offset` of the next page; null on the last. A "
                                                              "page stops at QA_MAX_PAGE_BYTES of text, so it may "
                                                              "hold fewer than `limit` rows.")
    answers: list[Answer]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    service: str = "beam-qa-upload"


class Check(BaseModel):
    ok: bool
    detail: str = Field(default="", description="What failed: an error kind, never a host, user or message.")


class Readiness(BaseModel):
    """Whether the bucket and the database can be reached; `checks` only for a caller with a key."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, Check] | None = Field(default=None, description="Per backend; only for an authenticated "
                                                                      "caller.")
