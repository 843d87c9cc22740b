"""The sink stages: rows to PostgreSQL as they are answered, then per file the CSV and the final records.

Per file version the steps are chained, each passing the file on only after its side effect
is durable: ``WriteAnswersPostgres`` commits rows (every input cell and the answer) chunk by
chunk and hands a file on once the commit that completes its current attempt is in;
``WriteAnswersCsv`` renders the answers CSV from those rows; ``MarkFilesDone``
records ``done``; only then does ``DeleteSourceObject`` run. The chain replaces a per-file
stateful join: PostgreSQL's row lock on the file decides completion exactly once, whatever
the parallelism, and a bounded run finishes each file as soon as its last chunk is answered.
"""

from __future__ import annotations

import logging
import time

from apache_beam.transforms import window

from beam_qa import metrics
from beam_qa.events import answers_location
from beam_qa.records import AnsweredFile, CompletedFile, FileFailure, RowOutcome
from beam_qa.runtime import WorkerDoFn
from beam_qa.settings import OutputSettings, PostgresSettings, StorageSettings
from beam_qa.sinks.gcs_csv import render_answers_csv
from beam_qa.stage import OneStepStage
from beam_qa.store.retries import is_infrastructure

_LOGGER = logging.getLogger(__name__)


class _CommitRowsFn(WorkerDoFn):
    """Buffers a bundle's row outcomes and commits each chunk as soon as all its rows are here.

    Committing per complete chunk (not per bundle) matters in bounded mode, where one bundle
    can hold a whole stage's input: files finish as they are answered, not at the end. What
    is left at the end of the bundle (a chunk split by stateful batching) is committed then;
    the chunk's bitmap in qa_chunks joins the parts.
    """

    def __init__(self, pg: PostgresSettings):
        super().__init__(pg=pg)
        self._buffer: dict[tuple, list[RowOutcome]] = {}

    def start_bundle(self):
        self._buffer = {}

    def process(self, outcome: RowOutcome):
        key = (outcome.event.uri, outcome.event.generation, outcome.attempt, outcome.chunk)
        rows = self._buffer.setdefault(key, [])
        rows.append(outcome)
        if len(rows) >= outcome.chunk_rows:
            yield from self._commit(self._buffer.pop(key))

    def finish_bundle(self):
        leftovers = [row for rows in self._buffer.values() for row in rows]
        self._buffer = {}
        if leftovers:
            for completed in self._commit(leftovers):
                yield window.GlobalWindows.windowed_value(completed)

    def _commit(self, rows: list[RowOutcome]):
        by_file: dict[tuple[str, int], list[RowOutcome]] = {}
        for row in rows:
            by_file.setdefault((row.event.uri, row.event.generation), []).append(row)
        for file_rows in by_file.values():
            # One file at a time (commit_rows commits each file on its own anyway), so that rows
            # PostgreSQL refuses end their own file's attempt and no other file's completion is lost.
            try:
                result = self.pg.commit_rows(file_rows)
            except Exception as exc:  # pylint: disable=broad-except
                if is_infrastructure(exc):
                    # A database that stays unreachable past the retry budget fails the bundle, so
                    # that the runner retries it: the rows are not lost, and nothing downstream ran.
                    raise
                self._end_attempts(file_rows, exc)
                continue
            metrics.ROWS_COMMITTED.inc(result.committed)
            if result.stale:
                metrics.ROWS_STALE.inc(result.stale)
                _LOGGER.info("dropped %d rows of a superseded or finished attempt", result.stale)
            for completed in result.completed:
                metrics.FILES_COMPLETED.inc()
                yield completed

    def _end_attempts(self, rows: list[RowOutcome], exc: Exception) -> None:
        """Rows that fail the same way on every try (refused data, a bug): their attempt ends, not the bundle."""
        first_line = (str(exc).splitlines() or [""])[0][:300]
        error = f"{type(exc).__name__}: {first_line}"
        for event, attempt in {(row.event, row.attempt) for row in rows}:
            if self.pg.release(event, attempt, f"an error while storing its rows ({error})"):
                metrics.ATTEMPTS_ENDED.inc()
                _LOGGER.error("ended attempt %d of %s: an error while storing its rows (%s); the sweeper starts the "
                              "next one", attempt, event.key, error, exc_info=exc)


class WriteAnswersPostgres(OneStepStage):
    """Upserts answered rows into qa_answers chunk by chunk; yields each file once all its rows are in.

    Rows of an attempt that is no longer the file's current one are dropped, so two
    overlapping attempts never mix; the commit that completes the current attempt is the
    only one that hands the file on (a retried bundle may hand it on again: every later step
    is idempotent).
    """

    STEP = "CommitRows"

    def __init__(self, pg: PostgresSettings):
        super().__init__(_CommitRowsFn(pg))


class _WriteCsvFn(WorkerDoFn):
    def __init__(self, outputs: OutputSettings, pg: PostgresSettings, files: StorageSettings, attempts: int = 5):
        super().__init__(pg=pg, files=files)
        self._answers_prefix = outputs.answers_prefix
        self._attempts = attempts

    def process(self, completed: CompletedFile):
        event, attempt = completed.event, completed.attempt
        if self.pg.file_state(event) != ("received", attempt):
            return []  # already finished by a twin of this element, or superseded
        header, rows = self.pg.stored_file(event)
        present = {row[0] for row in rows}
        if not header or len(present) != completed.row_count or present != set(range(completed.row_count)):
            metrics.SINK_FAILURES_POSTGRES.inc()
            _LOGGER.error("%s is complete but qa_answers holds %d of its %d rows; source kept",
                          event.key, len(present), completed.row_count)
            self.pg.release(event, attempt)
            return []
        target = answers_location(event, self._answers_prefix)
        if not self._write(target, render_answers_csv(header, rows), event.key):
            self.pg.release(event, attempt)
            return []
        errors = sum(1 for row in rows if row[8])
        models = sorted({row[9] for row in rows if row[9]})
        return [AnsweredFile(event=event, attempt=attempt, row_count=len(rows), error_count=errors,
                             output_uri=target, models=", ".join(models))]

    def _write(self, target: str, text: str, key: str) -> bool:
        delay = 0.5
        for attempt in range(1, self._attempts + 1):
            try:
                # One request per attempt: this loop is the retry policy (about 8 s in all), so a
                # failing bucket does not hold the worker for the client's 120 s per attempt.
                self.files.write_text(target, text, client_retries=False)
                return True
            except Exception:  # pylint: disable=broad-except
                if attempt == self._attempts:
                    # The source stays under the incoming prefix and the lease is given back: the
                    # sweeper starts another attempt. Nothing is deleted without its answers.
                    metrics.SINK_FAILURES_CSV.inc()
                    _LOGGER.exception("could not write %s for %s; source kept", target, key)
                    return False
                _LOGGER.warning("writing %s failed (attempt %d); retrying in %.1fs", target, attempt, delay)
                time.sleep(delay)
                delay *= 2
        return False


class WriteAnswersCsv(OneStepStage):
    """Writes one answers CSV per file version: every input column plus the answer columns.

    It is rendered from PostgreSQL (the header in qa_files, each row's cells in qa_answers),
    not from the source object, which a re-upload of the same name may already have replaced.
    """

    STEP = "WriteCsv"

    def __init__(self, outputs: OutputSettings, pg: PostgresSettings, files: StorageSettings):
        super().__init__(_WriteCsvFn(outputs, pg, files))


class _MarkDoneFn(WorkerDoFn):
    def __init__(self, pg: PostgresSettings):
        super().__init__(pg=pg)

    def process(self, answered: AnsweredFile):
        event = answered.event
        completed_at = self.pg.mark_done(answered)
        if completed_at is None:
            return []  # a twin of this element got there first, or a newer attempt replaced this one
        metrics.FILES_DONE.inc()
        metrics.ROWS_PER_FILE.update(answered.row_count)
        metrics.UPLOAD_TO_ANSWER_MS.update(max(int((completed_at - event.event_time) * 1000), 0))
        _LOGGER.info("done %s: %d rows (%d row errors) -> %s", event.key, answered.row_count,
                     answered.error_count, answered.output_uri)
        return [answered]


class MarkFilesDone(OneStepStage):
    """Marks each answered file version ``done`` (once); passes it on after the commit."""

    STEP = "MarkDone"

    def __init__(self, pg: PostgresSettings):
        super().__init__(_MarkDoneFn(pg))


class _MarkFailedFn(WorkerDoFn):
    def __init__(self, pg: PostgresSettings):
        super().__init__(pg=pg)

    def process(self, failure: FileFailure):
        if not self.pg.mark_failed(failure):
            return
        metrics.FILES_FAILED.inc()
        _LOGGER.info("failed %s: %s", failure.event.key, failure.kind)
        yield failure


class RecordFileFailures(OneStepStage):
    """Marks file versions ``failed`` with their reason; passes them on after commit."""

    STEP = "MarkFailed"

    def __init__(self, pg: PostgresSettings):
        super().__init__(_MarkFailedFn(pg))
