"""The records that flow between the pipeline's stages.

They are ``NamedTuple``s of plain fields so that the pipeline can give the ones that cross a
shuffle (``FileEvent``, ``Chunk``) Beam's schema-based ``RowCoder`` (see
``beam_qa.pipeline.register_coders``): their encoding then depends on field names and types,
not on a pickled class layout, which is what lets a running job be ``--update``d. This module
imports nothing from Beam (the upload service imports the CSV rules that use it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Optional


class FileEvent(NamedTuple):
    """One version of one uploaded file, and what made the pipeline look at it.

    Attributes:
        uri: ``gs://bucket/name`` or an absolute local path.
        generation: GCS object generation; for local files the mtime in nanoseconds.
        size: size in bytes as reported by the event or the file system (-1 if unknown).
        root: where relative output locations are resolved: ``gs://bucket/`` for objects,
            the input directory for local files.
        relative_name: the name below the incoming prefix (or input directory), used to
            derive the answers and error locations.
        event_time: seconds since the epoch when the upload was finalized.
        trigger: what made this event, stable across retries of the bundle that handles it
            (``pubsub:<message id>``, ``sweep:<tick>``, ``match:<run id>``): it is the claim
            token, so a retried bundle recognises its own claim (see ``ClaimFiles``).
    """

    uri: str
    generation: int
    size: int
    root: str
    relative_name: str
    event_time: float
    trigger: str = ""

    @property
    def key(self) -> str:
        """The identity of this file version: every side effect is keyed by it."""
        return f"{self.uri}#{self.generation}"

    @property
    def is_gcs(self) -> bool:
        return self.uri.startswith("gs://")


class Claim(NamedTuple):
    """A file version this pipeline now holds the lease of, as attempt number ``attempt``.

    ``gave_up`` is set (the reason) when the version used up its attempts: this claim only
    records that it failed. ``error_kind`` and ``error`` are set when the claim itself decided
    that the version fails (a ``FileErrorKind`` value and its message, e.g. ``name_too_long``):
    it is failed without being read.
    """

    event: FileEvent
    attempt: int
    gave_up: str = ""
    error_kind: str = ""
    error: str = ""


class ChunkRow(NamedTuple):
    """One data row as it travels to the model and to qa_answers.

    ``others`` holds the row's cells except its question and context, in column order: they
    are stored with the answer (``qa_answers.other_cells``) so that the answers CSV can repeat
    every input column without the source object, which a re-upload may already have replaced.
    """

    row_index: int
    question: str
    context: str
    row_id: Optional[str]
    error: str  # why the row is not sent to the model ("" when it is)
    others: Sequence[str] = ()
    error_kind: str = ""  # the RowErrorKind value of ``error`` ("" when there is none)


class Chunk(NamedTuple):
    """Consecutive rows of one attempt at one file version: the unit spread over workers."""

    event: FileEvent
    attempt: int
    index: int
    rows: Sequence[ChunkRow]

    @property
    def first_row(self) -> int:
        return self.rows[0].row_index


def rebuild_chunk(value) -> Chunk:
    """A ``Chunk`` again, from what a schema coder decoded.

    In a fresh worker process Beam decodes a schema'd element into a NamedTuple class it
    generates from the schema, without this module's properties; rebuilding is cheap.
    """
    return Chunk(event=FileEvent(*value.event), attempt=value.attempt, index=value.index,
                 rows=tuple(ChunkRow(*row[:5], others=tuple(row.others), error_kind=row.error_kind)
                           for row in value.rows))


class RowOutcome(NamedTuple):
    """A row with its answer, or with the reason it has none, ready for qa_answers."""

    event: FileEvent
    attempt: int
    chunk: int
    chunk_first_row: int
    chunk_rows: int
    row: ChunkRow
    answer: Optional[str] = None
    score: Optional[float] = None
    start: Optional[int] = None
    end: Optional[int] = None
    error: str = ""
    model: str = ""
    error_kind: str = ""  # the RowErrorKind value of ``error``


class CompletedFile(NamedTuple):
    """Every row of ``attempt`` at ``event`` is committed to qa_answers."""

    event: FileEvent
    attempt: int
    row_count: int


class AnsweredFile(NamedTuple):
    """A file whose answers CSV is written (``output_uri``), ready to be marked done."""

    event: FileEvent
    attempt: int
    row_count: int
    error_count: int
    output_uri: str
    models: str


class FileFailure(NamedTuple):
    """A file that cannot be processed, with a reason a user can act on."""

    event: FileEvent
    attempt: int
    kind: str
    reason: str
    error_uri: str = ""
