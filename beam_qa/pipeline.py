"""The beam-qa graph: one composite transform per stage, shared by both modes."""

from __future__ import annotations

import logging
import os

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from beam_qa import metrics
from beam_qa.answering import AnswerQuestions
from beam_qa.assembly import AssemblePerFile
from beam_qa.cleanup import DeleteFailedSource, DeleteSourceObject, QuarantineFile
from beam_qa.options import DEFAULT_MODEL, QaOptions
from beam_qa.qa.handler import QuestionAnsweringModelHandler
from beam_qa.qa.model_store import check_model_available, load_count, load_model
from beam_qa.reading import FILE_ERRORS, MANIFESTS, ROW_ERRORS, ReadCsvRows
from beam_qa.sinks.postgres import PostgresWriter
from beam_qa.sinks.transforms import RecordFileFailures, RecordFilesReceived, WriteAnswersCsv, WriteAnswersPostgres
from beam_qa.sources import MatchInputFiles, ReadGcsNotifications, SweepIncoming

_LOGGER = logging.getLogger(__name__)

READY_MESSAGE = "beam_qa pipeline ready"


def make_handler(opts: QaOptions) -> QuestionAnsweringModelHandler:
    return QuestionAnsweringModelHandler(
        opts.model, device=opts.device, precision=opts.precision, max_seq_len=opts.max_seq_len,
        doc_stride=opts.doc_stride, max_answer_len=opts.max_answer_len,
        min_batch_size=opts.min_batch_size, max_batch_size=opts.max_batch_size,
        max_batch_duration_secs=opts.max_batch_duration_secs)


class _WarmUpFn(beam.DoFn):
    """Creates the schema and loads the model before the first file arrives, then says ready."""

    def __init__(self, model: str, device: str, precision: str, pg_dsn: str, pg_password_secret: str | None = None):
        self._model = model
        self._device = device
        self._precision = precision
        self._pg_dsn = pg_dsn
        self._pg_password_secret = pg_password_secret

    def process(self, _):
        writer = PostgresWriter(self._pg_dsn, model=self._model, password_secret=self._pg_password_secret)
        writer.open()  # creates the schema if missing
        writer.close()
        before = load_count()
        load_model(self._model, self._device, self._precision)
        if load_count() > before:
            metrics.counter("model_loads").inc()
        _LOGGER.info(READY_MESSAGE)
        return []


def build_pipeline(p: beam.Pipeline, opts: QaOptions) -> None:
    """Adds the whole beam-qa graph to ``p``.

    Args:
        p: the pipeline.
        opts: validated options (see ``QaOptions.validate_qa``).
    """
    anonymous = opts.gcs_anonymous
    if opts.input_subscription:
        sweep = None
        if opts.sweep_interval_secs:
            sweep = SweepIncoming(opts.input_bucket, opts.incoming_prefix, opts.sweep_interval_secs,
                                  opts.sweep_grace_secs, opts.pg_dsn, opts.model, anonymous,
                                  opts.pg_password_secret)
        events = p | "ReadGcsNotifications" >> ReadGcsNotifications(
            opts.input_subscription, opts.incoming_prefix, sweep, retry_after_secs=opts.sweep_grace_secs)
        _ = (p | "WarmUpTrigger" >> beam.Create([None])
             | "WarmUpModel" >> beam.ParDo(_WarmUpFn(opts.model, opts.device, opts.precision, opts.pg_dsn,
                                                     opts.pg_password_secret)))
    else:
        events = p | "MatchInputFiles" >> MatchInputFiles(opts.input_pattern, opts.incoming_prefix, anonymous)

    read = events | "ReadCsvRows" >> ReadCsvRows(opts.max_file_bytes, opts.max_rows, anonymous)
    _ = read[MANIFESTS] | "RecordFilesReceived" >> RecordFilesReceived(
        opts.pg_dsn, opts.model, password_secret=opts.pg_password_secret)

    answered = read.rows | "AnswerQuestions" >> AnswerQuestions(make_handler(opts))
    files = ((answered, read[ROW_ERRORS]) | "AllRowOutcomes" >> beam.Flatten()
             | "AssemblePerFile" >> AssemblePerFile())
    written = (files
               | "WriteAnswersCsv" >> WriteAnswersCsv(opts.answers_prefix, anonymous)
               | "WriteAnswersPostgres" >> WriteAnswersPostgres(
                   opts.pg_dsn, opts.model, password_secret=opts.pg_password_secret))
    failures = read[FILE_ERRORS]
    if not opts.keep_source:
        _ = written | "DeleteSourceObject" >> DeleteSourceObject(anonymous)
        failures = failures | "QuarantineFile" >> QuarantineFile(opts.error_prefix, anonymous)
    recorded = failures | "RecordFileFailures" >> RecordFileFailures(
        opts.pg_dsn, opts.model, password_secret=opts.pg_password_secret)
    if not opts.keep_source:
        _ = recorded | "DeleteFailedSource" >> DeleteFailedSource(anonymous)


def parse_options(argv: list[str] | None = None) -> QaOptions:
    """Parses and validates options; applies environment defaults for local runs.

    Raises:
        ValueError: for invalid or incomplete options, before anything runs.
    """
    opts = PipelineOptions(argv).view_as(QaOptions)
    if not opts.pg_dsn and os.environ.get("QA_PG_DSN"):
        opts.pg_dsn = os.environ["QA_PG_DSN"]
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        opts.gcs_anonymous = True
    if not opts.model:
        # The worker image sets QA_MODEL to the model baked into it (Dockerfile.worker).
        opts.model = os.environ.get("QA_MODEL") or DEFAULT_MODEL
    opts.validate_qa()
    if opts.input_subscription:
        opts.view_as(StandardOptions).streaming = True
    return opts


def run(argv: list[str] | None = None, test_pipeline: beam.Pipeline | None = None):
    """Validates the options, checks the model can be found, builds and runs the graph.

    Args:
        argv: command-line arguments (default: sys.argv).
        test_pipeline: a TestPipeline to build into instead of a new Pipeline.

    Returns:
        The PipelineResult (already finished in bounded mode).
    """
    opts = parse_options(argv)
    check_model_available(opts.model)
    pipeline = test_pipeline or beam.Pipeline(options=opts)
    build_pipeline(pipeline, opts)
    wait = not opts.input_subscription or test_pipeline is None
    # On Dataflow the console shows these figures; the launcher only submits the job.
    local = "Dataflow" not in str(opts.view_as(StandardOptions).runner)
    with metrics.status_reporting(opts.status_interval_secs if wait and local else 0):
        result = pipeline.run()
        if wait:
            result.wait_until_finish()
    return result
