"""AnswerQuestions: rows -> RowAnswers through RunInference, failures included."""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from beam_qa import metrics
from beam_qa.qa.handler import QaPrediction, QuestionAnsweringModelHandler
from beam_qa.records import QaRow, RowAnswer

_LOGGER = logging.getLogger(__name__)


def _to_keyed_example(row: QaRow) -> tuple[QaRow, tuple[str, str]]:
    return row, (row.question, row.context)


def _to_row_answer(keyed_result) -> RowAnswer:
    row, result = keyed_result
    prediction: QaPrediction = result.inference
    if prediction.span is None:
        metrics.counter("row_errors").inc()
        metrics.counter("row_errors_model").inc()
        return RowAnswer(row=row, error=prediction.error)
    span = prediction.span
    metrics.counter("rows_answered").inc()
    return RowAnswer(row=row, answer=span.answer, score=span.score, start=span.start, end=span.end)


def _failed_batch_to_answers(failure):
    """A batch the model raised on: each of its rows becomes a row error."""
    batch, exception = failure
    if isinstance(exception, tuple):  # (type, repr, traceback) from Beam's exception wrapper
        message = str(exception[1])
    else:
        message = repr(exception)
    _LOGGER.warning("inference failed for a batch of %d rows: %s", len(batch), message.splitlines()[0])
    for row, _ in batch:
        metrics.counter("row_errors").inc()
        metrics.counter("row_errors_model").inc()
        yield RowAnswer(row=row, error=f"model failed on this batch: {message.splitlines()[0][:300]}")


class AnswerQuestions(beam.PTransform):
    """Batches rows through the QA model; a failing batch becomes row errors, not a crash."""

    def __init__(self, handler: QuestionAnsweringModelHandler):
        super().__init__()
        self._handler = handler

    def expand(self, rows):
        main, failures = (
            rows
            | "KeyByRow" >> beam.Map(_to_keyed_example)
            | "RunInference" >> RunInference(KeyedModelHandler(self._handler)).with_exception_handling())
        answered = main | "ToRowAnswer" >> beam.Map(_to_row_answer)
        failed = failures.failed_inferences | "FailedToRowErrors" >> beam.FlatMap(_failed_batch_to_answers)
        return (answered, failed) | "MergeOutcomes" >> beam.Flatten()
