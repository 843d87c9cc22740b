"""Error kinds shared by the pipeline, the upload service, the metrics and docs/bad-input.md.

Plain ``str`` enums, so that a kind is stored, logged and compared as its value
(``"missing_columns"``) and a misspelt kind is an ``AttributeError`` instead of a new
metric. A row or file error travels as its kind and its message side by side (``ParsedRow``,
``ChunkRow``, ``RowOutcome``, ``FileFailure``, the ``error_kind`` columns): nothing decides
anything from a message's text, so rewording a message changes no metric. This module imports
nothing from Beam or torch: the upload service uses it.
"""

from __future__ import annotations

import enum


class FileErrorKind(str, enum.Enum):
    """Why a whole file is rejected (``qa_files.status = 'failed'``; metric ``file_errors_<kind>``)."""

    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    BINARY = "binary"
    EMPTY = "empty"
    DUPLICATE_COLUMNS = "duplicate_columns"
    MISSING_COLUMNS = "missing_columns"
    # More header columns than --max_columns, or a row holding far more separators than that.
    TOO_MANY_COLUMNS = "too_many_columns"
    TOO_MANY_ROWS = "too_many_rows"
    MALFORMED_CSV = "malformed_csv"
    NO_ROWS = "no_rows"
    # The source object disappeared (deleted, or replaced by a newer upload) after it was read
    # and before its answers CSV could be written; the newer upload has its own event.
    SOURCE_GONE = "source_gone"
    # --max_attempts attempts ended without an outcome (a worker killed by the file, a sink that
    # never succeeds): the version is failed with how the last attempt ended, instead of retried.
    GAVE_UP = "gave_up"
    # The answers or error object's name would pass Cloud Storage's 1,024-byte limit: no attempt
    # could ever finish, so the first one fails the file (kept under a shortened name).
    NAME_TOO_LONG = "name_too_long"
    # An object under the incoming prefix whose name does not end in .csv, found by the sweeper
    # after the grace: moved under the error prefix with its reason instead of left there unseen.
    NOT_CSV = "not_csv"

    def __str__(self) -> str:
        return self.value


class RowErrorKind(str, enum.Enum):
    """Why one row has no answer (its ``error`` column; metric ``row_errors_<kind>``)."""

    EMPTY_QUESTION = "empty_question"
    EMPTY_CONTEXT = "empty_context"
    EXTRA_FIELDS = "extra_fields"
    CONTEXT_TOO_LONG = "context_too_long"
    QUESTION_TOO_LONG = "question_too_long"
    MODEL = "model"
    NO_ANSWER = "no_answer"

    def __str__(self) -> str:
        return self.value


class UsageError(ValueError):
    """A mistake in how beam-qa was invoked: a flag, a combination of flags, a model or an input
    that cannot be found. Its message says what to change; the command line prints it as one
    ``error:`` line (exit status 2). Any other exception is a bug and keeps its traceback.
    """
