"""AnswerQuestions: chunks of rows -> RowOutcomes through RunInference.

The chunks arrive here after a Reshuffle (``SpreadChunks`` in the pipeline), so the rows of one
large file are answered by many workers and threads at once, and every bundle holds whole
chunks: RunInference's batches fill up to ``--max_batch_size`` whatever the file shape.
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from beam_qa import metrics
from beam_qa.runtime import WorkerDoFn
from beam_qa.qa.handler import QaPrediction, QuestionAnsweringModelHandler
from beam_qa.records import Chunk, RowOutcome
from beam_qa.settings import PostgresSettings

_LOGGER = logging.getLogger(__name__)

_NOT_ASKED = "not_asked"


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
    prediction: QaPrediction = result.inference
    model = str(result.model_id or "")
    if prediction.span is None:
        metrics.ROW_ERRORS.inc()
        metrics.row_errors(prediction.kind).inc()
        return outcome._replace(error=prediction.error, error_kind=prediction.kind, model=model)
    span = prediction.span
    metrics.ROWS_ANSWERED.inc()
    return outcome._replace(answer=span.answer, score=span.score, start=span.start, end=span.end, model=model)


class AnswerQuestions(beam.PTransform):
    """Batches the rows of the chunks through the QA model; rows it cannot answer carry why.

    The handler tells a row that fails deterministically (a row error) from a resource error
    such as out-of-memory, which it retries with smaller batches and then lets fail the bundle
    so that the runner retries it (see ``QuestionAnsweringModelHandler.run_inference``).
    """

    def __init__(self, handler: QuestionAnsweringModelHandler, pg: PostgresSettings):
        super().__init__()
        self._handler = handler
        self._start = _StartChunkFn(pg)

    def expand(self, chunks):
        rows = (chunks
                | "StartChunk" >> beam.ParDo(self._start)
                | "ExplodeChunk" >> beam.FlatMap(_explode).with_outputs(_NOT_ASKED, main="asked"))
        answered = (rows.asked
                    | "RunInference" >> RunInference(KeyedModelHandler(self._handler))
                    | "ToRowOutcome" >> beam.Map(_to_row_outcome))
        return (answered, rows[_NOT_ASKED]) | "MergeOutcomes" >> beam.Flatten()
