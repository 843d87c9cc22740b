"""How ``run()`` launches a job: which image the Dataflow workers run, and whether to wait.

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
from collections.abc import Mapping

from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions, WorkerOptions

_LOGGER = logging.getLogger(__name__)

# Set by Dockerfile.worker from its WORKER_IMAGE build argument: the image's own reference.
WORKER_IMAGE_ENV = "BEAM_QA_WORKER_IMAGE"


def is_dataflow(opts: PipelineOptions) -> bool:
    """True when ``--runner`` names Dataflow (``DataflowRunner``, ``TestDataflowRunner``, an instance)."""
    runner = opts.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) else type(runner).__name__
    return runner is not None and "dataflow" in name.lower()


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
        ValueError: on Dataflow, when no worker image is known and nothing stages ``beam_qa``.
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
    raise ValueError(
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
