"""The sink stages: answers CSV, PostgreSQL, and file status records."""

from __future__ import annotations

import dataclasses
import logging
import time

import apache_beam as beam

from beam_qa import metrics
from beam_qa.events import derived_location
from beam_qa.records import FileAnswers, FileFailure, FileManifest
from beam_qa.sinks.gcs_csv import ANSWERS_SUFFIX, render_answers_csv
from beam_qa.sinks.postgres import PostgresWriter
from beam_qa.storage import Storage

_LOGGER = logging.getLogger(__name__)


class _WriteCsvFn(beam.DoFn):
    def __init__(self, answers_prefix: str, anonymous: bool, attempts: int = 5):
        self._answers_prefix = answers_prefix
        self._anonymous = anonymous
        self._attempts = attempts
        self._storage: Storage | None = None

    def setup(self):
        self._storage = Storage(anonymous=self._anonymous or None)

    def teardown(self):
        if self._storage:
            self._storage.close()

    def process(self, result: FileAnswers):
        event = result.manifest.event
        target = derived_location(event, self._answers_prefix, ANSWERS_SUFFIX)
        text = render_answers_csv(result)
        delay = 0.5
        for attempt in range(1, self._attempts + 1):
            try:
                # One request per attempt: this loop is the retry policy (about 8 s in all), so a
                # failing bucket does not hold the worker for the client's 120 s per attempt.
                self._storage.write_text(target, text, client_retries=False)
                break
            except Exception:  # pylint: disable=broad-except
                if attempt == self._attempts:
                    # The source stays under the incoming prefix: nothing is deleted
                    # without its answers, and a redelivery or the sweeper retries it.
                    metrics.counter("sink_failures_csv").inc()
                    _LOGGER.exception("could not write %s for %s; source kept", target, event.key)
                    return
                _LOGGER.warning("writing %s failed (attempt %d); retrying in %.1fs", target, attempt, delay)
                time.sleep(delay)
                delay *= 2
        yield dataclasses.replace(result, output_uri=target)


class WriteAnswersCsv(beam.PTransform):
    """Writes one answers CSV per file version; passes the file on once it is written."""

    def __init__(self, answers_prefix: str, anonymous: bool = False):
        super().__init__()
        self._fn = _WriteCsvFn(answers_prefix, anonymous)

    def expand(self, files):
        return files | "WriteCsv" >> beam.ParDo(self._fn)


class _PostgresFn(beam.DoFn):
    """Base for DoFns holding a PostgresWriter (pool opened in setup, closed in teardown)."""

    def __init__(self, dsn: str, model: str, retry_secs: float, password_secret: str | None = None):
        self._dsn = dsn
        self._model = model
        self._retry_secs = retry_secs
        # Only the secret's name is pickled into the graph; the password is read in setup().
        self._password_secret = password_secret
        self._writer: PostgresWriter | None = None

    def setup(self):
        self._writer = PostgresWriter(self._dsn, model=self._model, retry_secs=self._retry_secs,
                                      password_secret=self._password_secret)
        self._writer.open()

    def teardown(self):
        if self._writer:
            self._writer.close()


class _WriteAnswersFn(_PostgresFn):
    def process(self, result: FileAnswers):
        import psycopg
        event = result.manifest.event
        try:
            self._writer.write_answers(result)
        except (psycopg.Error, OSError):
            metrics.counter("sink_failures_postgres").inc()
            _LOGGER.exception("could not write answers of %s to PostgreSQL; source kept", event.key)
            return
        errors = sum(1 for a in result.answers if a.error)
        metrics.counter("files_done").inc()
        metrics.distribution("upload_to_answer_ms").update(int((time.time() - event.event_time) * 1000))
        _LOGGER.info("done %s: %d rows (%d row errors) -> %s", event.key, len(result.answers), errors,
                     result.output_uri)
        yield result


class WriteAnswersPostgres(beam.PTransform):
    """Upserts a file's answers and marks it done, in one transaction; passes it on after commit."""

    def __init__(self, dsn: str, model: str, retry_secs: float = 120.0, password_secret: str | None = None):
        super().__init__()
        self._fn = _WriteAnswersFn(dsn, model, retry_secs, password_secret)

    def expand(self, files):
        return files | "UpsertAnswers" >> beam.ParDo(self._fn)


class _MarkReceivedFn(_PostgresFn):
    def process(self, manifest: FileManifest):
        import psycopg
        try:
            self._writer.mark_received(manifest)
        except (psycopg.Error, OSError):
            _LOGGER.exception("could not record %s as received", manifest.event.key)


class RecordFilesReceived(beam.PTransform):
    """Records each file version as ``received`` in qa_files (never downgrades ``done``)."""

    def __init__(self, dsn: str, model: str, retry_secs: float = 120.0, password_secret: str | None = None):
        super().__init__()
        self._fn = _MarkReceivedFn(dsn, model, retry_secs, password_secret)

    def expand(self, manifests):
        return manifests | "MarkReceived" >> beam.ParDo(self._fn)


class _MarkFailedFn(_PostgresFn):
    def process(self, failure: FileFailure):
        import psycopg
        try:
            self._writer.mark_failed(failure)
        except (psycopg.Error, OSError):
            metrics.counter("sink_failures_postgres").inc()
            _LOGGER.exception("could not record %s as failed; source kept", failure.event.key)
            return
        metrics.counter("files_failed").inc()
        yield failure


class RecordFileFailures(beam.PTransform):
    """Marks file versions ``failed`` with their reason; passes them on after commit."""

    def __init__(self, dsn: str, model: str, retry_secs: float = 120.0, password_secret: str | None = None):
        super().__init__()
        self._fn = _MarkFailedFn(dsn, model, retry_secs, password_secret)

    def expand(self, failures):
        return failures | "MarkFailed" >> beam.ParDo(self._fn)
