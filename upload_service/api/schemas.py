"""Response bodies of the upload API (the error shape is ``core.errors.ErrorResponse``)."""

from __future__ import annotations

import datetime
from typing import Literal

from pydantic import BaseModel, Field

UploadState = Literal["uploaded", "received", "done", "failed"]


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
    is answering. `done`: answers are in PostgreSQL and the answers CSV. `failed`: the pipeline
    rejected the file; `error` says why.
    """

    upload_id: str
    status: UploadState
    object: str = Field(description="The uploaded object (gs:// URI).")
    generation: int
    filename: str
    row_count: int | None = Field(default=None, description="Data rows (known once received).")
    answered_count: int = Field(default=0, description="Rows with an answer.")
    error_count: int = Field(default=0, description="Rows with a row error (empty question, ...).")
    error: str | None = Field(default=None, description="Why the file failed (status failed).")
    answers_csv: str | None = Field(default=None, description="gs:// URI of the answers CSV (status done).")
    answers_url: str | None = Field(default=None, description="GET /uploads/{upload_id}/answers (status done).")
    received_at: datetime.datetime | None = None
    completed_at: datetime.datetime | None = None


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


class AnswersPage(BaseModel):
    """A page of answers in row order."""

    upload_id: str
    object: str
    generation: int
    total: int = Field(description="Rows stored for the file.")
    offset: int
    limit: int
    answers: list[Answer]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    service: str = "beam-qa-upload"


class Check(BaseModel):
    ok: bool
    detail: str = ""


class Readiness(BaseModel):
    """Whether the bucket and the database can be reached."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, Check]
