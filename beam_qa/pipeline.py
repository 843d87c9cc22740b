"""The beam-qa graph: one composite transform per stage, shared by both modes, and nothing else.

``build_pipeline(p, config)`` reads one ``JobConfig`` (``beam_qa.config``); launching it (options,
model choice, runners) is ``beam_qa.launch``'s job.
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam import coders

from beam_qa import metrics, runtime
from beam_qa.answering import AnswerQuestions
from beam_qa.cleanup import DeleteFailedSource, DeleteSourceObject, QuarantineFile
from beam_qa.config import JobConfig
from beam_qa.qa.handler import QuestionAnsweringModelHandler
from beam_qa.qa.model_store import load_count
from beam_qa.reading import FILE_ERRORS, ClaimFiles, ReadCsvRows
from beam_qa.records import Chunk, ChunkRow, FileEvent, rebuild_chunk
from beam_qa.settings import PostgresSettings
from beam_qa.sinks.transforms import MarkFilesDone, RecordFileFailures, WriteAnswersCsv, WriteAnswersPostgres
from beam_qa.sources import MatchInputFiles, ReadGcsNotifications, SweepIncoming

_LOGGER = logging.getLogger(__name__)

READY_MESSAGE = "beam_qa pipeline ready"


def register_coders() -> None:
    """Schema-based coders for the records that cross a shuffle (stable across ``--update``)."""
    for record in (FileEvent, ChunkRow, Chunk):
        coders.registry.register_coder(record, coders.RowCoder)


def make_handler(config: JobConfig) -> QuestionAnsweringModelHandler:
    """The model handler of ``config`` (tests swap it for one that fails on purpose)."""
    return QuestionAnsweringModelHandler(config.model, config.storage)


class _WarmUpFn(beam.DoFn):
    """Opens the database (migrating the schema if needed) and loads the model, then says ready."""

    def __init__(self, handler: QuestionAnsweringModelHandler, pg: PostgresSettings):
        self._handler = handler
        self._pg = pg

    def process(self, _):
        runtime.postgres(self._pg)
        before = load_count()
        self._handler.load_model()
        if load_count() > before:
            metrics.MODEL_LOADS.inc(load_count() - before)
        _LOGGER.info(READY_MESSAGE)
        return []


class SpreadChunks(beam.PTransform):
    """Breaks fusion after reading: the chunks of one file go to many workers and threads.

    Without it, a file's read, every inference batch and its commits run in one work item on
    one thread (Dataflow fuses consecutive ParDos). Chunks travel with Beam's schema coder.
    """

    def expand(self, chunks):
        return (chunks
                | "AsChunks" >> beam.Map(rebuild_chunk).with_output_types(Chunk)
                | "Reshuffle" >> beam.Reshuffle()
                | "FromSchemaRows" >> beam.Map(rebuild_chunk))


def build_pipeline(p: beam.Pipeline, config: JobConfig) -> None:
    """Adds the whole beam-qa graph to ``p``.

    Args:
        p: the pipeline.
        config: the job's configuration (``beam_qa.launch.configure``).
    """
    register_coders()
    pg, files, source, outputs = config.postgres, config.storage, config.source, config.outputs
    handler = make_handler(config)
    if source.streaming:
        sweep = SweepIncoming(source.sweep, pg, files) if source.sweep else None
        events = p | "ReadGcsNotifications" >> ReadGcsNotifications(source, sweep)
        _ = (p | "WarmUpTrigger" >> beam.Create([None])
             | "WarmUpModel" >> beam.ParDo(_WarmUpFn(handler, pg)))
    else:
        events = p | "MatchInputFiles" >> MatchInputFiles(source, files)

    claims = events | "ClaimFiles" >> ClaimFiles(pg, outputs)
    read = claims | "ReadCsvRows" >> ReadCsvRows(config.inputs, pg, files)
    completed = (read.chunks
                 | "SpreadChunks" >> SpreadChunks()
                 | "AnswerQuestions" >> AnswerQuestions(handler, pg)
                 | "WriteAnswersPostgres" >> WriteAnswersPostgres(pg))
    written = completed | "WriteAnswersCsv" >> WriteAnswersCsv(outputs, pg, files)
    done = written | "MarkFilesDone" >> MarkFilesDone(pg)
    if not outputs.keep_source:
        _ = done | "DeleteSourceObject" >> DeleteSourceObject(files)

    failures = read[FILE_ERRORS]
    if not outputs.keep_source:
        failures = failures | "QuarantineFile" >> QuarantineFile(outputs, files, pg)
    recorded = failures | "RecordFileFailures" >> RecordFileFailures(pg)
    if not outputs.keep_source:
        _ = recorded | "DeleteFailedSource" >> DeleteFailedSource(files)
