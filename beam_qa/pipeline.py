"""The beam-qa graph: one composite transform per stage, shared by both modes."""

from __future__ import annotations

import logging
import os

import apache_beam as beam
from apache_beam import coders
from apache_beam.options.pipeline_options import DebugOptions, DirectOptions, PipelineOptions, StandardOptions

from beam_qa import clients, launch, metrics
from beam_qa.answering import AnswerQuestions
from beam_qa.cleanup import DeleteFailedSource, DeleteSourceObject, QuarantineFile
from beam_qa.options import DEFAULT_MODEL, QaOptions
from beam_qa.qa.handler import QuestionAnsweringModelHandler, usable_cpus
from beam_qa.qa import model_watch
from beam_qa.qa.model_store import check_model_available, load_count
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


def model_concurrency(opts: QaOptions) -> tuple[int, int]:
    """``(intra-op threads per model call, model calls at once per process)`` for this run.

    A worker process runs several bundles at once, each calling the model; together they
    should use the process's share of the CPUs, not oversubscribe them. On Dataflow a Python
    worker VM runs one SDK process per vCPU (unless ``no_use_multiple_sdk_containers``): one
    single-threaded call at a time per process. With one SDK process per VM (GPU workers), one
    call at a time with torch's own thread count. Locally, ``--direct_num_workers`` calls at
    once, each with its share of the usable CPUs. Threads 0 means torch's default.
    """
    cpus = usable_cpus()
    if "Dataflow" in str(opts.view_as(StandardOptions).runner):
        experiments = opts.view_as(DebugOptions).experiments or []
        if "no_use_multiple_sdk_containers" in experiments:
            return opts.inference_threads, 1
        return opts.inference_threads or 1, 1
    workers = opts.view_as(DirectOptions).direct_num_workers
    if workers is None:
        workers = 1
    elif workers <= 0:  # Beam's "as many as there are CPUs"
        workers = cpus
    threads = opts.inference_threads or max(1, cpus // workers)
    return threads, max(1, min(workers, cpus // threads))


def make_handler(opts: QaOptions) -> QuestionAnsweringModelHandler:
    return QuestionAnsweringModelHandler.from_settings(opts.model_settings(model_concurrency(opts)),
                                                       opts.storage_settings())


class _WarmUpFn(beam.DoFn):
    """Opens the database (migrating the schema if needed) and loads the model, then says ready."""

    def __init__(self, handler: QuestionAnsweringModelHandler, pg: PostgresSettings):
        self._handler = handler
        self._pg = pg

    def process(self, _):
        clients.postgres(self._pg)
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


def build_pipeline(p: beam.Pipeline, opts: QaOptions) -> None:
    """Adds the whole beam-qa graph to ``p``.

    Args:
        p: the pipeline.
        opts: validated options (see ``QaOptions.validate_qa``).
    """
    register_coders()
    pg, files = opts.postgres_settings(), opts.storage_settings()
    inputs, outputs = opts.input_settings(), opts.output_settings()
    handler = make_handler(opts)
    if opts.input_subscription:
        sweep_settings = opts.sweep_settings()
        sweep = SweepIncoming(sweep_settings, opts.incoming_prefix, pg, files) if sweep_settings else None
        events = p | "ReadGcsNotifications" >> ReadGcsNotifications(
            opts.input_subscription, opts.incoming_prefix, sweep)
        _ = (p | "WarmUpTrigger" >> beam.Create([None])
             | "WarmUpModel" >> beam.ParDo(_WarmUpFn(handler, pg)))
    else:
        events = p | "MatchInputFiles" >> MatchInputFiles(opts.input_pattern, opts.incoming_prefix, files)

    claims = events | "ClaimFiles" >> ClaimFiles(pg)
    read = claims | "ReadCsvRows" >> ReadCsvRows(inputs, pg, files)
    completed = (read.chunks
                 | "SpreadChunks" >> SpreadChunks()
                 | "AnswerQuestions" >> AnswerQuestions(handler, pg)
                 | "WriteAnswersPostgres" >> WriteAnswersPostgres(pg))
    written = completed | "WriteAnswersCsv" >> WriteAnswersCsv(outputs.answers_prefix, pg, files)
    done = written | "MarkFilesDone" >> MarkFilesDone(pg)
    if not outputs.keep_source:
        _ = done | "DeleteSourceObject" >> DeleteSourceObject(files)

    failures = read[FILE_ERRORS]
    if not outputs.keep_source:
        failures = failures | "QuarantineFile" >> QuarantineFile(outputs.error_prefix, files)
    recorded = failures | "RecordFileFailures" >> RecordFileFailures(pg)
    if not outputs.keep_source:
        _ = recorded | "DeleteFailedSource" >> DeleteFailedSource(files)


def newest_model(opts: QaOptions) -> str:
    """The newest model published under ``--model_watch_pattern`` (what the workers start with).

    Raises:
        ModelNotFoundError: when nothing is published there yet.
    """
    from beam_qa.qa.model_store import ModelNotFoundError, advice
    from beam_qa.qa.model_watch import newest_published
    newest = newest_published(opts.model_watch_pattern, clients.storage(opts.storage_settings()))
    if newest is None:
        raise ModelNotFoundError(advice(opts.model_watch_pattern, "no model is published there (a directory "
                                        "with its config.json, written last)"))
    if opts.model and opts.model != newest.directory and opts.model != DEFAULT_MODEL:
        _LOGGER.info("--model %s is ignored: --model_watch_pattern picks the newest published model", opts.model)
    _LOGGER.info("models are watched under %s; the newest is %s", opts.model_watch_pattern, newest.directory)
    return newest.directory


def resolve_model(opts: QaOptions) -> None:
    """Settles which model the job starts with, and checks it can be found (its config.json only).

    With ``--model_watch_pattern`` that is the newest published one. Runs on the launcher,
    before the graph is built.

    Raises:
        ModelNotFoundError: with what to pass instead.
    """
    if opts.model_watch_pattern:
        opts.model = newest_model(opts)
    check_model_available(opts.model)


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
    launch.default_worker_image(opts)
    if opts.input_subscription:
        opts.view_as(StandardOptions).streaming = True
    return opts


def run(argv: list[str] | None = None, test_pipeline: beam.Pipeline | None = None):
    """Validates the options, checks the model can be found, builds and runs the graph.

    Args:
        argv: command-line arguments (default: sys.argv).
        test_pipeline: a TestPipeline to build into instead of a new Pipeline.

    Returns:
        The PipelineResult: finished in local bounded mode; on Dataflow, the submitted job.
    """
    opts = parse_options(argv)
    resolve_model(opts)
    pipeline = test_pipeline or beam.Pipeline(options=opts)
    build_pipeline(pipeline, opts)
    # On Dataflow the launcher only submits the job (and the console shows these figures).
    wait = launch.should_wait(opts, streaming_test=bool(opts.input_subscription) and test_pipeline is not None)
    try:
        with metrics.status_reporting(opts.status_interval_secs if wait else 0,
                                      bounded=not opts.input_subscription):
            result = pipeline.run()
            if wait:
                result.wait_until_finish()
    finally:
        if wait:
            # A local run executed the DoFns in this process: give its pools and watchers back.
            model_watch.stop_all()
            clients.close_all()
    return result
