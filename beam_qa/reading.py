"""ReadCsvRows: file events -> rows to answer, row errors, manifests and file errors."""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam import pvalue

from beam_qa import metrics
from beam_qa.csv_rows import FileError, parse_csv, row_error_reason
from beam_qa.events import FileEvent
from beam_qa.records import FileFailure, RowAnswer
from beam_qa.storage import SourceGone, Storage

_LOGGER = logging.getLogger(__name__)

ROWS = "rows"
ROW_ERRORS = "row_errors"
MANIFESTS = "manifests"
FILE_ERRORS = "file_errors"


class _ReadCsvFn(beam.DoFn):
    def __init__(self, max_bytes: int, max_rows: int, anonymous: bool):
        self._max_bytes = max_bytes
        self._max_rows = max_rows
        self._anonymous = anonymous
        self._storage: Storage | None = None

    def setup(self):
        self._storage = Storage(anonymous=self._anonymous or None)

    def teardown(self):
        if self._storage:
            self._storage.close()

    def process(self, event: FileEvent):
        if event.size > self._max_bytes:
            yield self._file_error(event, FileError(
                "too_large", f"file is {event.size} bytes, over the limit of {self._max_bytes} bytes; "
                "split it into smaller files"))
            return
        try:
            data = self._storage.read_bytes(event.uri, event.generation)
        except SourceGone:
            # Already processed and deleted, or replaced by a newer upload with its own event.
            metrics.counter("events_ignored").inc()
            metrics.counter("events_ignored_gone").inc()
            _LOGGER.info("skipping %s: that generation no longer exists", event.key)
            return
        except Exception:  # pylint: disable=broad-except
            # A transient storage failure must not kill the stream; the object stays under
            # the incoming prefix, so a redelivery or the sweeper picks it up again.
            metrics.counter("read_failures").inc()
            _LOGGER.exception("could not read %s; leaving it in place", event.key)
            return
        try:
            parsed = parse_csv(data, event, max_bytes=self._max_bytes, max_rows=self._max_rows)
        except FileError as exc:
            yield self._file_error(event, exc)
            return
        metrics.counter("files_received").inc()
        _LOGGER.info("received %s with %d rows", event.key, parsed.manifest.row_count)
        yield pvalue.TaggedOutput(MANIFESTS, parsed.manifest)
        for row in parsed.rows:
            if row.error:
                metrics.counter("row_errors").inc()
                metrics.counter(f"row_errors_{row_error_reason(row.error)}").inc()
                yield pvalue.TaggedOutput(ROW_ERRORS, RowAnswer(row=row, error=row.error))
            else:
                yield row

    @staticmethod
    def _file_error(event: FileEvent, exc: FileError):
        metrics.counter(f"file_errors_{exc.kind}").inc()
        _LOGGER.warning("file error for %s: %s", event.key, exc.kind)
        return pvalue.TaggedOutput(FILE_ERRORS, FileFailure(event=event, reason=str(exc)))


class ReadCsvRows(beam.PTransform):
    """Reads each file version and splits it into rows, row errors and file errors.

    Returns a DoOutputsTuple with the tags ``rows`` (main), ``row_errors``,
    ``manifests`` and ``file_errors``.
    """

    def __init__(self, max_bytes: int, max_rows: int, anonymous: bool = False):
        super().__init__()
        self._fn = _ReadCsvFn(max_bytes, max_rows, anonymous)

    def expand(self, events):
        return events | "ParseCsv" >> beam.ParDo(self._fn).with_outputs(
            ROW_ERRORS, MANIFESTS, FILE_ERRORS, main=ROWS)
