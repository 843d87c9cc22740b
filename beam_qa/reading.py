"""ClaimFiles and ReadCsvRows: file events -> attempts -> chunks of rows, or file errors."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import apache_beam as beam
from apache_beam import pvalue

from beam_qa import metrics
from beam_qa.csv_rows import FileError, ParsedFile, other_cells, parse_csv
from beam_qa.errors import FileErrorKind
from beam_qa.events import name_too_long
from beam_qa.records import Chunk, ChunkRow, Claim, FileEvent, FileFailure
from beam_qa.runtime import WorkerDoFn, leases
from beam_qa.settings import InputSettings, OutputSettings, PostgresSettings, StorageSettings
from beam_qa.stage import OneStepStage
from beam_qa.storage import ContentEncodingError, ContentTooLarge, SourceGone
from beam_qa.store.attempts import gave_up_reason
from beam_qa.store.retries import is_infrastructure

_LOGGER = logging.getLogger(__name__)

CHUNKS = "chunks"
FILE_ERRORS = "file_errors"


class _ClaimFn(WorkerDoFn):
    """Starts an attempt at each event's file version, unless one is live or the version is finished."""

    def __init__(self, pg: PostgresSettings, outputs: OutputSettings | None = None):
        super().__init__(pg=pg)
        self._outputs = outputs or OutputSettings()

    def setup(self):
        super().setup()
        self._leases = leases(self._pg_settings)

    def process(self, event: FileEvent):
        attempt = self.pg.claim(event)
        if attempt is None:
            state = self.pg.file_state(event)
            reason = "finished" if state and state[0] in ("done", "failed") else "in_flight"
            metrics.EVENTS_IGNORED.inc()
            metrics.events_ignored(reason).inc()
            _LOGGER.info("not starting %s: %s", event.key,
                         "it is already finished" if reason == "finished" else "another attempt holds its lease")
            return
        self._leases.hold(event, attempt)
        tries = self._pg_settings.max_attempts
        if attempt > tries:
            # Its attempts are used up (a file that kills its worker every time): this claim only
            # fails it, with how the last attempt ended, and it is quarantined like any failure.
            _LOGGER.warning("giving up on %s after %d attempts", event.key, tries)
            yield Claim(event=event, attempt=attempt, gave_up=gave_up_reason(tries, self.pg.attempt_ending(event)))
            return
        metrics.FILES_CLAIMED.inc()
        if attempt > 1:
            metrics.FILES_RETRIED.inc()
            _LOGGER.info("retrying %s as attempt %d: the previous attempt left no final record", event.key, attempt)
        refused = _refused(event, self._outputs)
        if refused:
            kind, reason = refused
            _LOGGER.warning("failing %s at once (%s): %s", event.key, kind, reason)
            yield Claim(event=event, attempt=attempt, error_kind=kind.value, error=reason)
            return
        yield Claim(event=event, attempt=attempt)


def _refused(event: FileEvent, outputs: OutputSettings) -> tuple[FileErrorKind, str] | None:
    """Why the version fails without being read, decided from its name alone; None if it may be read."""
    if not event.relative_name.lower().endswith(".csv"):
        # Only the sweeper sends these (notifications and patterns skip them): an object left
        # under the incoming prefix by mistake is moved aside with its reason, never lost.
        return FileErrorKind.NOT_CSV, ("only objects whose name ends in .csv are answered; this one was left "
                                       "under the incoming prefix: upload it again as a .csv file")
    too_long = name_too_long(event, outputs.answers_prefix, outputs.error_prefix)
    if too_long:
        # Its answers could never be written: every attempt would spend a model pass and fail the
        # same way, for ever. One attempt decides it.
        return FileErrorKind.NAME_TOO_LONG, too_long
    return None


class ClaimFiles(OneStepStage):
    """FileEvents -> Claims: at most one attempt per file version in flight (a lease in qa_files).

    Repeated notifications, swept files and retried bundles all come through here; a new
    attempt starts only when the version has no final record and no live lease.
    """

    STEP = "ClaimAttempt"

    def __init__(self, pg: PostgresSettings, outputs: OutputSettings | None = None):
        super().__init__(_ClaimFn(pg, outputs))


def cut_chunks(claim: Claim, rows: Iterable[ChunkRow], chunk_size: int) -> Iterator[Chunk]:
    """Cuts a file's rows into chunks of ``chunk_size`` consecutive rows (the last may be shorter), as they come."""
    batch: list[ChunkRow] = []
    index = 0
    for row in rows:
        batch.append(row)
        if len(batch) == chunk_size:
            yield Chunk(event=claim.event, attempt=claim.attempt, index=index, rows=tuple(batch))
            batch, index = [], index + 1
    if batch:
        yield Chunk(event=claim.event, attempt=claim.attempt, index=index, rows=tuple(batch))


def chunk_rows(claim: Claim, rows: list[ChunkRow], chunk_size: int) -> list[Chunk]:
    """``cut_chunks`` as a list."""
    return list(cut_chunks(claim, rows, chunk_size))


def chunk_count(row_count: int, chunk_size: int) -> int:
    return -(-row_count // chunk_size)


def chunk_row_of(row, question_at: int, context_at: int) -> ChunkRow:
    """The ``ChunkRow`` of a parsed row, counting its row error."""
    if row.error:
        metrics.ROW_ERRORS.inc()
        metrics.row_errors(row.error_kind).inc()
    return ChunkRow(row_index=row.row_index, question=row.question, context=row.context, row_id=row.row_id,
                    error=row.error, others=other_cells(row.values, question_at, context_at),
                    error_kind=row.error_kind)


class _ReadCsvFn(WorkerDoFn):
    def __init__(self, inputs: InputSettings, pg: PostgresSettings, files: StorageSettings):
        super().__init__(pg=pg, files=files)
        self._inputs = inputs

    def process(self, claim: Claim):
        event, attempt = claim.event, claim.attempt
        if claim.gave_up:
            yield self._file_error(claim, FileError(FileErrorKind.GAVE_UP, claim.gave_up))
            return
        if claim.error_kind:
            yield self._file_error(claim, FileError(FileErrorKind(claim.error_kind), claim.error))
            return
        limits = self._inputs
        if event.size > limits.max_file_bytes:
            yield self._file_error(claim, _too_large(f"file is {event.size} bytes, over the limit of "
                                                      f"{limits.max_file_bytes} bytes"))
            return
        try:
            # Never more than max_file_bytes, whatever the object's Content-Encoding (a gzip
            # bomb stops at the limit instead of inflating inside the worker).
            data = self.files.read_bytes(event.uri, event.generation, max_bytes=limits.max_file_bytes)
        except SourceGone:
            # Deleted, or replaced by a newer upload (which has its own event): nothing to answer.
            metrics.EVENTS_IGNORED.inc()
            metrics.events_ignored("gone").inc()
            metrics.file_errors(FileErrorKind.SOURCE_GONE).inc()
            _LOGGER.info("not reading %s: that generation no longer exists", event.key)
            yield pvalue.TaggedOutput(FILE_ERRORS, FileFailure(
                event=event, attempt=attempt, kind=FileErrorKind.SOURCE_GONE.value,
                reason="the file was deleted or replaced by a newer upload before it was read"))
            return
        except ContentTooLarge as exc:
            inflated = f" once inflated (it is stored with Content-Encoding: {exc.encoding})" if exc.encoding else ""
            yield self._file_error(claim, _too_large(f"file is over the limit of {exc.limit} bytes{inflated}"))
            return
        except ContentEncodingError as exc:
            yield self._file_error(claim, FileError(FileErrorKind.BINARY, f"file is {exc}; upload it again as "
                                                    "plain CSV (without -Z or Content-Encoding: gzip)"))
            return
        except Exception as exc:  # pylint: disable=broad-except
            # A storage failure is transient: give the lease back so that the sweeper starts
            # another attempt, and keep the stream going.
            metrics.READ_FAILURES.inc()
            _LOGGER.exception("could not read %s; leaving it for the sweeper", event.key)
            self.pg.release(event, attempt, f"a storage error while reading it ({type(exc).__name__})")
            return
        try:
            parsed = parse_csv(data, max_bytes=limits.max_file_bytes, max_rows=limits.max_rows,
                               max_context_chars=limits.max_context_chars, max_columns=limits.max_columns)
        except FileError as exc:
            yield self._file_error(claim, exc)
            return
        except Exception as exc:  # pylint: disable=broad-except
            self._end_attempt(claim, exc)
            return
        chunks = chunk_count(parsed.row_count, limits.chunk_size)
        if not self.pg.record_manifest(event, attempt, parsed.header, parsed.row_count, chunks):
            metrics.CHUNKS_SUPERSEDED.inc(chunks)
            _LOGGER.info("not answering %s attempt %d: a newer attempt or a final record replaced it",
                         event.key, attempt)
            return
        metrics.FILES_RECEIVED.inc()
        metrics.ROWS_READ.inc(parsed.row_count)
        _LOGGER.info("received %s (attempt %d) with %d rows in %d chunks", event.key, attempt, parsed.row_count,
                     chunks)
        try:
            yield from _chunks(claim, parsed, limits.chunk_size)
        except Exception as exc:  # pylint: disable=broad-except
            # Rows are parsed as the chunks go out; the chunks already out are dropped as superseded.
            self._end_attempt(claim, exc)

    def _end_attempt(self, claim: Claim, exc: Exception) -> None:
        """A parser failure that is no FileError (a bug): the same on every try, so it ends the attempt.

        Failing the bundle instead would stop the local pipeline and be retried for ever on
        Dataflow; ended, the file gives up after ``--max_attempts``. A database error (from a step
        fused after this one, raised through the yield) still fails the bundle.
        """
        if is_infrastructure(exc):
            raise exc
        first_line = (str(exc).splitlines() or [""])[0][:300]
        error = f"{type(exc).__name__}: {first_line}"
        if self.pg.release(claim.event, claim.attempt, f"an error while reading it ({error})"):
            metrics.ATTEMPTS_ENDED.inc()
            _LOGGER.error("ended attempt %d of %s: an error while reading it (%s); the sweeper starts the next one",
                          claim.attempt, claim.event.key, error, exc_info=exc)

    @staticmethod
    def _file_error(claim: Claim, exc: FileError):
        metrics.file_errors(exc.kind).inc()
        _LOGGER.warning("file error for %s: %s", claim.event.key, exc.kind)
        return pvalue.TaggedOutput(FILE_ERRORS, FileFailure(event=claim.event, attempt=claim.attempt,
                                                            kind=exc.kind, reason=str(exc)))


def _chunks(claim: Claim, parsed: ParsedFile, chunk_size: int) -> Iterator[Chunk]:
    """The file's chunks, parsed and emitted one at a time: a file never holds all its cells at once."""
    q_at, c_at = parsed.question_at, parsed.context_at
    return cut_chunks(claim, (chunk_row_of(row, q_at, c_at) for row in parsed.iter_rows()), chunk_size)


def _too_large(what: str) -> FileError:
    return FileError(FileErrorKind.TOO_LARGE, f"{what}; split it into smaller files")


class ReadCsvRows(beam.PTransform):
    """Reads each claimed file version, records its row and chunk counts, and cuts it into chunks.

    Returns a DoOutputsTuple with the tags ``chunks`` (main) and ``file_errors``.
    """

    def __init__(self, inputs: InputSettings, pg: PostgresSettings, files: StorageSettings):
        super().__init__()
        self._fn = _ReadCsvFn(inputs, pg, files)

    def expand(self, claims):
        return claims | "ParseCsv" >> beam.ParDo(self._fn).with_outputs(FILE_ERRORS, main=CHUNKS)
