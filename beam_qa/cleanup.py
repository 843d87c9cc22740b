"""The last steps for a file: delete it once answered, or move it aside once failed."""

from __future__ import annotations

import logging

import apache_beam as beam

from beam_qa import metrics
from beam_qa.runtime import WorkerDoFn
from beam_qa.errors import FileErrorKind
from beam_qa.events import quarantine_location
from beam_qa.records import AnsweredFile, FileFailure
from beam_qa.settings import OutputSettings, PostgresSettings, StorageSettings
from beam_qa.storage import SourceGone

_LOGGER = logging.getLogger(__name__)


class _DeleteFn(WorkerDoFn):
    def __init__(self, files: StorageSettings):
        super().__init__(files=files)

    def process(self, answered: AnsweredFile):
        event = answered.event
        try:
            deleted = self.files.delete_generation(event.uri, event.generation)
        except Exception:  # pylint: disable=broad-except
            metrics.DELETE_FAILURES.inc()
            _LOGGER.exception("could not delete %s; it is answered, and the next sweep deletes it", event.key)
            return
        if deleted:
            metrics.SOURCES_DELETED.inc()
        else:
            _LOGGER.info("not deleting %s: already gone or replaced by a newer upload", event.key)
        yield event.key


class DeleteSourceObject(beam.PTransform):
    """Deletes the source version (ifGenerationMatch) once it is answered and marked done."""

    def __init__(self, files: StorageSettings):
        super().__init__()
        self._fn = _DeleteFn(files)

    def expand(self, answered):
        return answered | "DeleteIfGenerationMatches" >> beam.ParDo(self._fn)


# How a failed copy ends an attempt ("the last one ended with …", beam_qa/store/attempts.py).
COPY_FAILED = "a failed copy under the error prefix"


class _CopyAsideFn(WorkerDoFn):
    def __init__(self, outputs: OutputSettings, files: StorageSettings, pg: PostgresSettings):
        super().__init__(pg=pg, files=files)
        self._error_prefix = outputs.error_prefix

    def process(self, failure: FileFailure):
        event = failure.event
        if failure.kind == FileErrorKind.SOURCE_GONE:
            yield failure  # nothing left to keep
            return
        target = quarantine_location(event, self._error_prefix)
        try:
            # The client retries a transient error for a few seconds (the copy is idempotent).
            self.files.copy_generation(event.uri, event.generation, target)
        except SourceGone:
            _LOGGER.info("not quarantining %s: that generation no longer exists", event.key)
            yield failure
            return
        except Exception:  # pylint: disable=broad-except
            # Not failed without its copy: the lease goes back and the sweeper starts another
            # attempt, which fails the same way and copies again. A give-up attempt keeps the
            # ending of the last real attempt.
            metrics.QUARANTINE_FAILURES.inc()
            _LOGGER.exception("could not copy %s to %s; it stays in place and the sweeper retries it", event.key,
                              target)
            self.pg.release(event, failure.attempt, None if failure.kind == FileErrorKind.GAVE_UP else COPY_FAILED)
            return
        yield failure._replace(error_uri=target)


class QuarantineFile(beam.PTransform):
    """Copies a failed file version under the error prefix; returns the failures with their new location.

    A copy that fails gives the attempt's lease back (the sweeper retries it) instead of failing
    the file without its copy.
    """

    def __init__(self, outputs: OutputSettings, files: StorageSettings, pg: PostgresSettings):
        super().__init__()
        self._fn = _CopyAsideFn(outputs, files, pg)

    def expand(self, failures):
        return failures | "CopyToErrorPrefix" >> beam.ParDo(self._fn)


class _DeleteFailedSourceFn(WorkerDoFn):
    def __init__(self, files: StorageSettings):
        super().__init__(files=files)

    def process(self, failure: FileFailure):
        if failure.kind == FileErrorKind.SOURCE_GONE:
            return
        try:
            self.files.delete_generation(failure.event.uri, failure.event.generation)
        except Exception:  # pylint: disable=broad-except
            _LOGGER.exception("could not delete quarantined source %s; the next sweep deletes it", failure.event.key)
            return
        yield failure.event.key


class DeleteFailedSource(beam.PTransform):
    """Removes a failed file's source once its copy and its failed record exist."""

    def __init__(self, files: StorageSettings):
        super().__init__()
        self._fn = _DeleteFailedSourceFn(files)

    def expand(self, failures):
        return failures | "DeleteQuarantinedSource" >> beam.ParDo(self._fn)
