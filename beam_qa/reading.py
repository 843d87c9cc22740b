"""ClaimFiles and ReadCsvRows: file events -> attempts -> chunks of rows, or file errors."""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam import pvalue

from beam_qa import metrics
from beam_qa.runtime import WorkerDoFn, leases
from beam_qa.csv_rows import FileError, other_cells, parse_csv
from beam_qa.errors import FileErrorKind
from beam_qa.records import Chunk, ChunkRow, Claim, FileEvent, FileFailure
from beam_qa.settings import InputSettings, PostgresSettings, StorageSettings
from beam_qa.storage import SourceGone

_LOGGER = logging.getLogger(__name__)

CHUNKS = "chunks"
FILE_ERRORS = "file_errors"


class _ClaimFn(WorkerDoFn):
    """Starts an attempt at each event's file version, unless one is live or the version is finished."""

    def __init__(self, pg: PostgresSettings):
        super().__init__(pg=pg)

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
        metrics.FILES_CLAIMED.inc()
        if attempt > 1:
            metrics.FILES_RETRIED.inc()
            _LOGGER.info("retrying %s as attempt %d: the previous attempt left no final record", event.key, attempt)
        yield Claim(event=event, attempt=attempt)


class ClaimFiles(beam.PTransform):
    """FileEvents -> Claims: at most one attempt per file version in flight (a lease in qa_files).

    Repeated notifications, swept files and retried bundles all come through here; a new
    attempt starts only when the version has no final record and no live lease.
    """

    def __init__(self, pg: PostgresSettings):
        super().__init__()
        self._fn = _ClaimFn(pg)

    def expand(self, events):
        return events | "ClaimAttempt" >> beam.ParDo(self._fn)


def chunk_rows(claim: Claim, rows: list[ChunkRow], chunk_size: int) -> list[Chunk]:
    """Cuts a file's rows into chunks of ``chunk_size`` consecutive rows (the last may be shorter)."""
    return [Chunk(event=claim.event, attempt=claim.attempt, index=index, rows=tuple(rows[start:start + chunk_size]))
            for index, start in enumerate(range(0, len(rows), chunk_size))]


class _ReadCsvFn(WorkerDoFn):
    def __init__(self, inputs: InputSettings, pg: PostgresSettings, files: StorageSettings):
        super().__init__(pg=pg, files=files)
        self._inputs = inputs

    def process(self, claim: Claim):
        event, attempt = claim
        limits = self._inputs
        if event.size > limits.max_file_bytes:
            yield self._file_error(claim, FileError(
                FileErrorKind.TOO_LARGE, f"file is {event.size} bytes, over the limit of {limits.max_file_bytes} "
                "bytes; split it into smaller files"))
            return
        try:
            data = self.files.read_bytes(event.uri, event.generation)
        except SourceGone:
            # Deleted, or replaced by a newer upload (which has its own event): nothing to answer.
            metrics.EVENTS_IGNORED.inc()
            metrics.events_ignored("gone").inc()
            _LOGGER.info("not reading %s: that generation no longer exists", event.key)
            yield pvalue.TaggedOutput(FILE_ERRORS, FileFailure(
                event=event, attempt=attempt, kind=FileErrorKind.SOURCE_GONE.value,
                reason="the file was deleted or replaced by a newer upload before it was read"))
            return
        except Exception:  # pylint: disable=broad-except
            # A storage failure is transient: give the lease back so that the sweeper starts
            # another attempt, and keep the stream going.
            metrics.READ_FAILURES.inc()
            _LOGGER.exception("could not read %s; leaving it for the sweeper", event.key)
            self.pg.release(event, attempt)
            return
        try:
            parsed = parse_csv(data, max_bytes=limits.max_file_bytes, max_rows=limits.max_rows,
                               max_context_chars=limits.max_context_chars)
        except FileError as exc:
            yield self._file_error(claim, exc)
            return
        rows = []
        q_at, c_at = parsed.question_at, parsed.context_at
        for row in parsed.rows:
            if row.error:
                metrics.ROW_ERRORS.inc()
                metrics.row_errors(row.error_kind).inc()
            rows.append(ChunkRow(row_index=row.row_index, question=row.question, context=row.context,
                                 row_id=row.row_id, error=row.error, others=other_cells(row.values, q_at, c_at),
                                 error_kind=row.error_kind))
        chunks = chunk_rows(claim, rows, limits.chunk_size)
        if not self.pg.record_manifest(event, attempt, parsed.header, len(rows), len(chunks)):
            metrics.CHUNKS_SUPERSEDED.inc(len(chunks))
            _LOGGER.info("not answering %s attempt %d: a newer attempt or a final record replaced it",
                         event.key, attempt)
            return
        metrics.FILES_RECEIVED.inc()
        metrics.ROWS_READ.inc(len(rows))
        _LOGGER.info("received %s (attempt %d) with %d rows in %d chunks", event.key, attempt, len(rows),
                     len(chunks))
        yield from chunks

    @staticmethod
    def _file_error(claim: Claim, exc: FileError):
        metrics.file_errors(exc.kind).inc()
        _LOGGER.warning("file error for %s: %s", claim.event.key, exc.kind)
        return pvalue.TaggedOutput(FILE_ERRORS, FileFailure(event=claim.event, attempt=claim.attempt,
                                                            kind=exc.kind, reason=str(exc)))


class ReadCsvRows(beam.PTransform):
    """Reads each claimed file version, records its row and chunk counts, and cuts it into chunks.

    Returns a DoOutputsTuple with the tags ``chunks`` (main) and ``file_errors``.
    """

    def __init__(self, inputs: InputSettings, pg: PostgresSettings, files: StorageSettings):
        super().__init__()
        self._fn = _ReadCsvFn(inputs, pg, files)

    def expand(self, claims):
        return claims | "ParseCsv" >> beam.ParDo(self._fn).with_outputs(FILE_ERRORS, main=CHUNKS)
