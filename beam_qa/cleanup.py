"""The last steps for a file: delete it once answered, or move it aside once failed."""

from __future__ import annotations

import dataclasses
import logging

import apache_beam as beam

from beam_qa import metrics
from beam_qa.events import derived_location
from beam_qa.records import FileAnswers, FileFailure
from beam_qa.storage import SourceGone, Storage

_LOGGER = logging.getLogger(__name__)


class _StorageFn(beam.DoFn):
    def __init__(self, anonymous: bool):
        self._anonymous = anonymous
        self._storage: Storage | None = None

    def setup(self):
        self._storage = Storage(anonymous=self._anonymous or None)

    def teardown(self):
        if self._storage:
            self._storage.close()


class _DeleteFn(_StorageFn):
    def process(self, result: FileAnswers):
        event = result.manifest.event
        try:
            deleted = self._storage.delete_generation(event.uri, event.generation)
        except Exception:  # pylint: disable=broad-except
            metrics.counter("delete_failures").inc()
            _LOGGER.exception("could not delete %s; it is answered and stays in place", event.key)
            return
        if deleted:
            metrics.counter("sources_deleted").inc()
        else:
            _LOGGER.info("not deleting %s: already gone or replaced by a newer upload", event.key)
        yield event.key


class DeleteSourceObject(beam.PTransform):
    """Deletes the source version (ifGenerationMatch) once both sinks have committed it."""

    def __init__(self, anonymous: bool = False):
        super().__init__()
        self._fn = _DeleteFn(anonymous)

    def expand(self, files):
        return files | "DeleteIfGenerationMatches" >> beam.ParDo(self._fn)


class _CopyAsideFn(_StorageFn):
    def __init__(self, error_prefix: str, anonymous: bool):
        super().__init__(anonymous)
        self._error_prefix = error_prefix

    def process(self, failure: FileFailure):
        event = failure.event
        target = derived_location(event, self._error_prefix)
        try:
            self._storage.copy_generation(event.uri, event.generation, target)
        except SourceGone:
            _LOGGER.info("not quarantining %s: that generation no longer exists", event.key)
            return
        except Exception:  # pylint: disable=broad-except
            metrics.counter("quarantine_failures").inc()
            _LOGGER.exception("could not copy %s to %s; it stays in place", event.key, target)
            return
        yield dataclasses.replace(failure, error_uri=target)


class _DeleteFailedSourceFn(_StorageFn):
    def process(self, failure: FileFailure):
        try:
            self._storage.delete_generation(failure.event.uri, failure.event.generation)
        except Exception:  # pylint: disable=broad-except
            _LOGGER.exception("could not delete quarantined source %s", failure.event.key)
            return
        yield failure.event.key


class QuarantineFile(beam.PTransform):
    """Copies a failed file under the error prefix; returns the failures with their new location."""

    def __init__(self, error_prefix: str, anonymous: bool = False):
        super().__init__()
        self._fn = _CopyAsideFn(error_prefix, anonymous)

    def expand(self, failures):
        return failures | "CopyToErrorPrefix" >> beam.ParDo(self._fn)


class DeleteFailedSource(beam.PTransform):
    """Removes a failed file's source once its copy and its failed record exist."""

    def __init__(self, anonymous: bool = False):
        super().__init__()
        self._fn = _DeleteFailedSourceFn(anonymous)

    def expand(self, failures):
        return failures | "DeleteQuarantinedSource" >> beam.ParDo(self._fn)
