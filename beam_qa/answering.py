"""AnswerQuestions: chunks of rows -> RowOutcomes through RunInference.

The chunks arrive here after a Reshuffle (``SpreadChunks`` in the pipeline), so the rows of one
large file are answered by many workers and threads at once, and every bundle holds whole
chunks: RunInference's batches fill up to ``--max_batch_size`` whatever the file shape.

A batch that still fails after the handler's own isolation (a resource error that outlived the
in-process retries, a bug, a native panic) must not fail the bundle: the local runner would
stop the stream and Dataflow would retry the bundle for ever, with the process's lease keeper
renewing the file's lease meanwhile, so ``--max_attempts`` would never fire. RunInference's
exception handling turns it into data instead, and ``_EndAttemptsFn`` ends the current attempt
of each file in the batch with the error: the sweeper (or the next run) starts the next attempt,
and after ``--max_attempts`` the claim gives the file up and it is quarantined. A retry thus
still happens, later and perhaps elsewhere, but a bounded number of times. Only a failure to
record that ending (PostgreSQL unreachable past the retry budget) fails the bundle, so that the
runner retries it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from beam_qa import metrics
from beam_qa.runtime import WorkerDoFn
from beam_qa.qa.handler import QaPrediction, QuestionAnsweringModelHandler
from beam_qa.records import Chunk, RowOutcome
from beam_qa.settings import PostgresSettings

_LOGGER = logging.getLogger(__name__)

_NOT_ASKED = "not_asked"
# The longest exception message kept in an attempt's ending (it may quote a row).
_ENDING_CHARS = 300


class _StartChunkFn(WorkerDoFn):
    """Renews the attempt's lease as its chunk starts; drops chunks of superseded or finished attempts.

    The check costs one indexed UPDATE per chunk and saves the model time a stale chunk
    would take (after a newer attempt started, or after the file was finished).
    """

    def __init__(self, pg: PostgresSettings):
        super().__init__(pg=pg)

    def process(self, chunk: Chunk):
        if not self.pg.heartbeat(chunk.event, chunk.attempt):
            metrics.CHUNKS_SUPERSEDED.inc()
            return
        metrics.CHUNKS_STARTED.inc()
        yield chunk


def _explode(chunk: Chunk):
    """A chunk -> one keyed example per row to ask, and a RowOutcome per row not to ask."""
    size = len(chunk.rows)
    for row in chunk.rows:
        outcome = RowOutcome(event=chunk.event, attempt=chunk.attempt, chunk=chunk.index,
                             chunk_first_row=chunk.first_row, chunk_rows=size, row=row)
        if row.error:
            yield pvalue.TaggedOutput(_NOT_ASKED, outcome._replace(error=row.error, error_kind=row.error_kind))
        else:
            yield outcome, (row.question, row.context)


def _to_row_outcome(keyed_result) -> RowOutcome:
    outcome, result = keyed_result
    prediction: QaPrediction | FailedForFile = result.inference
    if isinstance(prediction, FailedForFile):
        raise BatchFailed(prediction.error)  # to the dead-letter output: the attempt ends
    model = str(result.model_id or "")
    if prediction.span is None:
        metrics.ROW_ERRORS.inc()
        metrics.row_errors(prediction.kind).inc()
        return outcome._replace(error=prediction.error, error_kind=prediction.kind, model=model)
    span = prediction.span
    metrics.ROWS_ANSWERED.inc()
    return outcome._replace(answer=span.answer, score=span.score, start=span.start, end=span.end, model=model)


_EXITS = (KeyboardInterrupt, SystemExit, GeneratorExit)


class BatchFailed(Exception):
    """A failure of a file's rows as a batch, described as ``"Type: first line"``, its cause chained.

    It also carries a ``BaseException`` that escaped the handler (a native panic) as an
    Exception, the class RunInference's exception handling catches (``_EXITS`` never are: they
    must stop the process). Its repr is its description, which Beam's dead-letter output keeps.
    """

    def __repr__(self) -> str:
        return str(self)


def describe(exc: BaseException) -> str:
    """``"Type: first line of the message"`` (the message bounded)."""
    first_line = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line[:_ENDING_CHARS]}"


@dataclasses.dataclass(frozen=True)
class FailedForFile:
    """The inference of a row whose file's rows failed again as a batch of their own."""

    error: str


def _file_of(keyed) -> tuple[str, int, int]:
    outcome: RowOutcome = keyed[0]
    return outcome.event.uri, outcome.event.generation, outcome.attempt


class _ContainedKeyedHandler(KeyedModelHandler):
    """``KeyedModelHandler`` whose failing batch ends the attempts of its own files only.

    A batch that fails (after the handler's own per-row isolation) and holds the rows of one
    file raises, and RunInference's exception handling sends it to the dead-letter output. A
    batch that holds several files' rows is first answered again file by file: batches fill
    across files, and a file that happened to share a batch with a failing one must not lose
    an attempt (on its next attempt it could meet the same file again, and give up with it).
    The rows of a file that fails again carry ``FailedForFile``.
    """

    def run_inference(self, batch, model, inference_args=None):
        try:
            return self._answer(batch, model, inference_args)
        except _EXITS:
            raise
        except BaseException as exc:  # pylint: disable=broad-exception-caught
            files = {_file_of(keyed) for keyed in batch}
            if len(files) == 1:
                # The cause stays in the dead-letter traceback; the message is the ending's.
                raise BatchFailed(describe(exc)) from exc
            failure = exc
        return self._answer_per_file(batch, model, inference_args, failure)

    def _answer(self, batch, model, inference_args):
        # A list: a lazy result would fail later, outside run_inference.
        return list(super().run_inference(batch, model, inference_args))

    def _answer_per_file(self, batch, model, inference_args, failure: BaseException):
        by_file: dict[tuple[str, int, int], list[int]] = {}
        for index, keyed in enumerate(batch):
            by_file.setdefault(_file_of(keyed), []).append(index)
        _LOGGER.warning("a batch of %d rows from %d files failed (%s); answering each file's rows on their own",
                        len(batch), len(by_file), describe(failure))
        results: list = [None] * len(batch)
        for indices in by_file.values():
            part = [batch[i] for i in indices]
            try:
                answered = self._answer(part, model, inference_args)
            except _EXITS:
                raise
            except BaseException as exc:  # pylint: disable=broad-exception-caught
                failed = FailedForFile(describe(exc))
                answered = [(key, PredictionResult(example, failed)) for key, example in part]
            for index, item in zip(indices, answered):
                results[index] = item
        return results


def _failed_outcomes(element: Any) -> Iterator[RowOutcome]:
    """The RowOutcomes (keys) in a failed element: a batch of ``(key, example)``, or one keyed pair."""
    if isinstance(element, tuple) and element and isinstance(element[0], RowOutcome):
        yield element[0]
        return
    for item in element if isinstance(element, Iterable) else ():
        if isinstance(item, tuple) and item and isinstance(item[0], RowOutcome):
            yield item[0]


_ENDING = "an error that failed its rows as a batch ({})"


def failure_of(exc_repr: str) -> str:
    """The first line of an exception's repr (as Beam's dead-letter output keeps it), bounded."""
    first_line = (exc_repr.splitlines() or ["an unknown error"])[0]
    return first_line[:_ENDING_CHARS] + "…" if len(first_line) > _ENDING_CHARS else first_line


class _EndAttemptsFn(WorkerDoFn):
    """Ends the current attempt of every file whose rows were in a failed element; drops the rows.

    The input is a dead-letter element of Beam's ``with_exception_handling``: ``(element,
    (exception type, repr, traceback lines))``. The attempt's other chunks are then dropped
    as superseded (``StartChunk``) or stale (at commit), since nothing renews an ended attempt.
    PostgreSQL errors are not caught: without a record of the ending, the bundle must fail and
    be retried by the runner.
    """

    def __init__(self, pg: PostgresSettings):
        super().__init__(pg=pg)

    def process(self, failed):
        element, (_, exc_repr, trace) = failed
        attempts = {(o.event.uri, o.event.generation, o.attempt): (o.event, o.attempt)
                    for o in _failed_outcomes(element)}
        failure = failure_of(exc_repr)
        for event, attempt in attempts.values():
            # True once per attempt: the other failed batches or rows of an ended attempt say nothing.
            if self.pg.release(event, attempt, _ENDING.format(failure)):
                metrics.ATTEMPTS_ENDED.inc()
                _LOGGER.error("ended attempt %d of %s: an error that failed its rows as a batch (%s); the sweeper "
                              "starts the next one\n%s", attempt, event.key, failure, "".join(trace or [])[-4000:])
        return []


class AnswerQuestions(beam.PTransform):
    """Batches the rows of the chunks through the QA model; rows it cannot answer carry why.

    The handler tells a row that fails deterministically (a row error) from a resource error
    such as out-of-memory, which it retries with smaller batches and then raises (see
    ``QuestionAnsweringModelHandler.run_inference``). What still fails a batch, or turning its
    results into outcomes, ends the attempts of its files (``_EndAttemptsFn``) instead of
    failing the bundle.
    """

    def __init__(self, handler: QuestionAnsweringModelHandler, pg: PostgresSettings):
        super().__init__()
        self._handler = handler
        self._pg = pg
        self._start = _StartChunkFn(pg)

    def expand(self, chunks):
        rows = (chunks
                | "StartChunk" >> beam.ParDo(self._start)
                | "ExplodeChunk" >> beam.FlatMap(_explode).with_outputs(_NOT_ASKED, main="asked"))
        inferred, dead = (rows.asked
                          | "RunInference" >> RunInference(_ContainedKeyedHandler(self._handler))
                          .with_exception_handling())
        answered, unconverted = (inferred
                                 | "ToRowOutcome" >> beam.Map(_to_row_outcome).with_exception_handling())
        failed = [dead.failed_inferences, *dead.failed_preprocessing, *dead.failed_postprocessing, unconverted]
        _ = (failed
             | "FailedBatches" >> beam.Flatten()
             | "EndAttempts" >> beam.ParDo(_EndAttemptsFn(self._pg)))
        return (answered, rows[_NOT_ASKED]) | "MergeOutcomes" >> beam.Flatten()
