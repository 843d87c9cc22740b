"""The launcher path: on Dataflow run() submits and returns, and the workers get the launcher's image."""

import pytest
from apache_beam.options.pipeline_options import WorkerOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

from beam_qa import launch
from beam_qa.launch import parse_options, run
from tests.unit.test_dataflow_graph import DATAFLOW_ARGS, offline  # noqa: F401  (offline is a fixture)

IMAGE = "us-central1-docker.pkg.dev/test-project/beam-qa/beam-qa-worker:built-in"
STREAMING = ["--input_subscription=projects/test-project/subscriptions/qa-uploads-pipeline",
             "--input_bucket=test-bucket"]
BOUNDED = ["--input_pattern=gs://test-bucket/incoming/**.csv"]
WITHOUT_IMAGE = [arg for arg in DATAFLOW_ARGS if not arg.startswith("--sdk_container_image=")]
LOCAL = ["--runner=DirectRunner", "--pg_dsn=dbname=x", "--model=/opt/beam_qa/model"]


@pytest.fixture
def submitted(monkeypatch):
    """Records what the DataflowRunner returned, and every wait_until_finish() call on it.

    The runner runs for real up to the submission (``--dry_run``): the graph is built and the job
    prepared. Only the model lookup is skipped, because the model lives in the worker image.
    """
    record = {"results": [], "waits": []}
    real_run_pipeline = DataflowRunner.run_pipeline

    def run_pipeline(self, p, options):
        result = real_run_pipeline(self, p, options)
        result.wait_until_finish = lambda duration=None: record["waits"].append(duration)
        record["results"].append(result)
        return result

    monkeypatch.setattr(DataflowRunner, "run_pipeline", run_pipeline)
    monkeypatch.setattr(launch, "check_model_available", lambda model: None)
    return record


@pytest.mark.parametrize("mode", [STREAMING, BOUNDED], ids=["streaming", "bounded"])
def test_launcher_submits_to_dataflow_and_returns_without_waiting(offline, submitted, mode):
    result = run(DATAFLOW_ARGS + mode)
    assert submitted["results"] == [result], "run() did not go through the DataflowRunner"
    assert result.job is not None and result.job.proto_pipeline.components.transforms
    assert submitted["waits"] == [], "the launcher called wait_until_finish() on a Dataflow job"


def test_only_local_runs_wait():
    assert launch.should_wait(parse_options(LOCAL + BOUNDED)) is True
    assert launch.should_wait(parse_options(LOCAL + STREAMING)) is True
    assert launch.should_wait(parse_options(LOCAL + STREAMING), streaming_test=True) is False
    assert launch.should_wait(parse_options(DATAFLOW_ARGS + BOUNDED)) is False
    assert launch.should_wait(parse_options(DATAFLOW_ARGS + STREAMING)) is False


def test_workers_default_to_the_image_the_launcher_runs_in(offline, submitted, monkeypatch):
    monkeypatch.setenv(launch.WORKER_IMAGE_ENV, IMAGE)
    assert parse_options(WITHOUT_IMAGE + STREAMING).view_as(WorkerOptions).sdk_container_image == IMAGE
    # And the job's SDK environment (what Dataflow starts on the workers) really is that image.
    environments = run(WITHOUT_IMAGE + STREAMING).job.proto_pipeline.components.environments.values()
    assert [beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image
            for env in environments if env.urn == common_urns.environments.DOCKER.urn] == [IMAGE]


def test_an_explicit_worker_image_wins(monkeypatch):
    monkeypatch.setenv(launch.WORKER_IMAGE_ENV, IMAGE)
    explicit = next(a for a in DATAFLOW_ARGS if a.startswith("--sdk_container_image=")).split("=", 1)[1]
    assert explicit != IMAGE
    assert parse_options(DATAFLOW_ARGS + STREAMING).view_as(WorkerOptions).sdk_container_image == explicit


def test_local_runs_get_no_worker_image(monkeypatch):
    monkeypatch.setenv(launch.WORKER_IMAGE_ENV, IMAGE)
    assert parse_options(LOCAL + BOUNDED).view_as(WorkerOptions).sdk_container_image is None


def test_dataflow_without_any_worker_image_is_refused_before_anything_runs(monkeypatch):
    monkeypatch.delenv(launch.WORKER_IMAGE_ENV, raising=False)
    with pytest.raises(ValueError, match="--sdk_container_image is required with the DataflowRunner"):
        parse_options(WITHOUT_IMAGE + STREAMING)
    # Staging the package another way is the one alternative to the image.
    opts = parse_options(WITHOUT_IMAGE + STREAMING + ["--setup_file=./setup.py"])
    assert opts.view_as(WorkerOptions).sdk_container_image is None
