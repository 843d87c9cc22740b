"""The records that flow between the pipeline's stages."""

from __future__ import annotations

import dataclasses

from beam_qa.events import FileEvent


@dataclasses.dataclass(frozen=True)
class FileManifest:
    """What ReadCsvRows learned about one file version.

    Attributes:
        event: the file version.
        header: the header cells as written in the file (order kept).
        row_count: number of data rows; AssemblePerFile waits for exactly this many.
    """

    event: FileEvent
    header: tuple[str, ...]
    row_count: int


@dataclasses.dataclass(frozen=True)
class QaRow:
    """One data row of a file, answered or not.

    Attributes:
        manifest: the file it belongs to.
        row_index: 0-based position among the file's data rows.
        values: the row's cells, aligned with ``manifest.header``.
        question: the question cell.
        context: the context cell.
        row_id: the optional ``id`` cell, or None.
        error: why the row is not sent to the model (empty string when it is).
    """

    manifest: FileManifest
    row_index: int
    values: tuple[str, ...]
    question: str
    context: str
    row_id: str | None
    error: str = ""


@dataclasses.dataclass(frozen=True)
class RowAnswer:
    """A row with its answer, or with the reason it has none."""

    row: QaRow
    answer: str | None = None
    score: float | None = None
    start: int | None = None
    end: int | None = None
    error: str = ""


@dataclasses.dataclass(frozen=True)
class FileAnswers:
    """All rows of one file version, in original order, ready for the sinks."""

    manifest: FileManifest
    answers: tuple[RowAnswer, ...]
    output_uri: str = ""


@dataclasses.dataclass(frozen=True)
class FileFailure:
    """A file that cannot be processed, with a reason a user can act on."""

    event: FileEvent
    reason: str
    error_uri: str = ""
