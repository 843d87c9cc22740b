"""The launcher: from argv to one ``JobConfig``, then a submitted or finished job.

``configure(argv)`` parses and validates the options once, applies the environment's defaults
for local runs, settles the model the job starts with and the model calls per worker process;
``run(config)`` builds the graph (``beam_qa.pipeline.build_pipeline``) and runs it. The command
line (``beam_qa/cli.py``) adds its own preflight on the same object. This module knows runners;
it never builds a transform.

On Dataflow, ``python -m beam_qa`` runs inside the Flex Template launcher (the image built from
``Dockerfile.worker``). Two things follow from the Flex Template documentation:

- The launcher must not block on the job: it builds the graph, submits it and exits. Dataflow
  waits for the launcher to finish and fails the launch with "Timeout in polling result file"
  when "the program that constructs the graph takes too long to finish"
  (https://cloud.google.com/dataflow/docs/guides/troubleshoot-templates#timeout-polling); a
  launcher that calls ``wait_until_finish()`` on a streaming job never finishes. Google's sample
  (python-docs-samples ``dataflow/flex-templates/pipeline_with_dependencies``) likewise ends
  ``run()`` at ``pipeline.run()``.
- The workers must run the same image, or they start Beam's stock SDK image, which has no
  ``beam_qa`` and fails on the first bundle. The image records its own name at build time
  (``Dockerfile.worker``'s ``WORKER_IMAGE`` build argument becomes ``BEAM_QA_WORKER_IMAGE``),
  and ``--sdk_container_image`` defaults to it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import (DebugOptions, DirectOptions, PipelineOptions, SetupOptions,
                                                  StandardOptions, WorkerOptions)

from beam_qa import config as job_config
from beam_qa import metrics, runtime
from beam_qa.config import JobConfig
from beam_qa.errors import UsageError
from beam_qa.options import DEFAULT_MODEL, QaOptions, is_dataflow
from beam_qa.pipeline import build_pipeline
from beam_qa.qa.handler import usable_cpus
from beam_qa.qa.model_store import ModelNotFoundError, advice, check_model_available
from beam_qa.qa.model_manifest import MANIFEST
from beam_qa.qa.model_watch import newest_published
from beam_qa.settings import StorageSettings

_LOGGER = logging.getLogger(__name__)

# Set by Dockerfile.worker from its WORKER_IMAGE build argument: the image's own reference.
WORKER_IMAGE_ENV = "BEAM_QA_WORKER_IMAGE"


def default_worker_image(opts: PipelineOptions, environ: Mapping[str, str] = os.environ) -> None:
    """On Dataflow, defaults ``--sdk_container_image`` to the image this launcher runs in.

    An explicit ``--sdk_container_image`` always wins. Without one, the image named by
    ``BEAM_QA_WORKER_IMAGE`` is used. Without either, the job would start Beam's stock image,
    which lacks ``beam_qa``, unless the package is staged some other way (``--setup_file`` or
    ``--extra_package``).

    Args:
        opts: the parsed options; changed in place.
        environ: where to read ``BEAM_QA_WORKER_IMAGE`` (the process environment by default).

    Raises:
        UsageError: on Dataflow, when no worker image is known and nothing stages ``beam_qa``.
    """
    if not is_dataflow(opts):
        return
    worker = opts.view_as(WorkerOptions)
    if worker.sdk_container_image:
        return
    image = environ.get(WORKER_IMAGE_ENV, "").strip()
    if image:
        worker.sdk_container_image = image
        _LOGGER.info("workers will run this launcher's image %s (%s)", image, WORKER_IMAGE_ENV)
        return
    setup = opts.view_as(SetupOptions)
    if setup.setup_file or setup.extra_packages:
        return
    raise UsageError(
        "--sdk_container_image is required with the DataflowRunner: without it the workers start "
        "Beam's stock image, which has no beam_qa. Pass the image built from Dockerfile.worker "
        "(docs/deploy.md, step 5); a launch from that image defaults to it when it was built with "
        "--build-arg WORKER_IMAGE=...")


def should_wait(opts: PipelineOptions, *, streaming_test: bool = False) -> bool:
    """Whether ``run()`` blocks until the job ends.

    Never on Dataflow, where the launcher must return once the job is submitted. Locally, a
    bounded run waits for its result; so does a streaming run of the real pipeline, whose
    process is the stream. A streaming test pipeline returns at once so that the test can feed
    and stop it.

    Args:
        opts: the parsed options.
        streaming_test: True when a streaming graph was built into a caller's TestPipeline.
    """
    return not is_dataflow(opts) and not streaming_test


def model_concurrency(opts: QaOptions) -> tuple[int, int]:
    """``(intra-op threads per model call, model calls at once per process)`` for this run.

    A worker process runs several bundles at once, each calling the model; together they
    should use the process's share of the CPUs, not oversubscribe them. On Dataflow a Python
    worker VM runs one SDK process per vCPU (unless ``no_use_multiple_sdk_containers``): one
    single-threaded call at a time per process. With one SDK process per VM (GPU workers), one
    call at a time with torch's own thread count. Locally, ``--direct_num_workers`` calls at
    once, each with its share of the usable CPUs. Threads 0 means torch's default.
    """
    cpus, inference_threads = usable_cpus(), opts.inference_threads
    if is_dataflow(opts):
        experiments = opts.view_as(DebugOptions).experiments or []
        if "no_use_multiple_sdk_containers" in experiments:
            return inference_threads, 1
        return inference_threads or 1, 1
    workers = opts.view_as(DirectOptions).direct_num_workers
    if workers is None:
        workers = 1
    elif workers <= 0:  # Beam's "as many as there are CPUs"
        workers = cpus
    threads = inference_threads or max(1, cpus // workers)
    return threads, max(1, min(workers, cpus // threads))


def parse_options(argv: Sequence[str] | None = None) -> QaOptions:
    """Parses and validates the options; applies environment defaults for local runs.

    Raises:
        UsageError: for invalid or incomplete options, before anything runs.
    """
    opts = PipelineOptions(None if argv is None else list(argv)).view_as(QaOptions)
    if not opts.pg_dsn and os.environ.get("QA_PG_DSN"):
        opts.pg_dsn = os.environ["QA_PG_DSN"]
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        opts.gcs_anonymous = True
    if not opts.model:
        # The worker image sets QA_MODEL to the model baked into it (Dockerfile.worker).
        opts.model = os.environ.get("QA_MODEL") or DEFAULT_MODEL
    opts.validate_qa()
    default_worker_image(opts)
    if opts.input_subscription:
        opts.view_as(StandardOptions).streaming = True
    return opts


def resolve_model(opts: QaOptions) -> str:
    """The model the job starts with, checked to exist (its config.json or manifest only; weights load on workers).

    With ``--model_watch_pattern`` that is the newest one published there.

    Raises:
        ModelNotFoundError: with what to pass instead.
    """
    if not opts.model_watch_pattern:
        check_model_available(opts.model)
        return opts.model
    newest = newest_published(opts.model_watch_pattern,
                              runtime.storage(StorageSettings(anonymous=bool(opts.gcs_anonymous))))
    if newest is None:
        raise ModelNotFoundError(advice(opts.model_watch_pattern, "no model is published there (a directory "
                                        f"with its {MANIFEST}, written last)"))
    if opts.model and opts.model != newest.directory and opts.model != DEFAULT_MODEL:
        _LOGGER.info("--model %s is ignored: --model_watch_pattern picks the newest published model", opts.model)
    _LOGGER.info("models are watched under %s; the newest is %s", opts.model_watch_pattern, newest.directory)
    check_model_available(newest.directory)
    return newest.directory


def configure(argv: Sequence[str] | None = None) -> JobConfig:
    """The job's one configuration: options parsed and validated once, the model resolved.

    Raises:
        UsageError: for a bad option or combination, or a model that cannot be found.
    """
    opts = parse_options(argv)
    model = resolve_model(opts)
    return job_config.from_options(opts, model=model,
                                   concurrency=model_concurrency(opts))


def run(job: JobConfig | Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None):
    """Builds the graph of ``job`` (a configuration, or the argv to make one) and runs it.

    Args:
        job: the configuration, or command-line arguments (default: sys.argv).
        test_pipeline: a TestPipeline to build into instead of a new Pipeline.

    Returns:
        The PipelineResult: finished in local bounded mode; on Dataflow, the submitted job.
    """
    config = job if isinstance(job, JobConfig) else configure(job)
    pipeline = test_pipeline or beam.Pipeline(options=config.options)
    build_pipeline(pipeline, config)
    # On Dataflow the launcher only submits the job (and the console shows these figures).
    wait = should_wait(config.options, streaming_test=config.streaming and test_pipeline is not None)
    try:
        with metrics.status_reporting(config.status_interval_secs if wait else 0, bounded=not config.streaming):
            result = pipeline.run()
            if wait:
                result.wait_until_finish()
    finally:
        if wait:
            # A local run executed the DoFns in this process: give its pools, watchers and models back.
            runtime.close()
    return result
