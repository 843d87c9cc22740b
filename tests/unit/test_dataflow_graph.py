"""The job graph builds for the DataflowRunner (dry run: nothing is submitted) with stable step names.

Step names are what ``--update`` matches between the running job and its replacement, so the
top-level list below is part of the deployment contract (docs/deploy.md, "Update"). When a
stage is added, renamed or removed on purpose, edit the list here and say in the change that
running jobs need ``--transform_name_mapping`` (renames) or a drain-and-replace (removals).
"""

import json
import re
import socket
from pathlib import Path

import apache_beam as beam
import pytest

import beam_qa
from beam_qa import secret_manager
from beam_qa.config import from_options
from beam_qa.launch import model_concurrency, parse_options
from beam_qa.pipeline import build_pipeline

STREAMING_STEPS = [
    "ReadGcsNotifications",
    "WarmUpTrigger",
    "WarmUpModel",
    "ClaimFiles",
    "ReadCsvRows",
    "SpreadChunks",
    "AnswerQuestions",
    "WriteAnswersPostgres",
    "WriteAnswersCsv",
    "MarkFilesDone",
    "DeleteSourceObject",
    "QuarantineFile",
    "RecordFileFailures",
    "DeleteFailedSource",
]

BOUNDED_KEEP_SOURCE_STEPS = [
    "MatchInputFiles",
    "ClaimFiles",
    "ReadCsvRows",
    "SpreadChunks",
    "AnswerQuestions",
    "WriteAnswersPostgres",
    "WriteAnswersCsv",
    "MarkFilesDone",
    "RecordFileFailures",
]

SECRET = "projects/test-project/secrets/beam-qa-pg-password/versions/3"

DATAFLOW_ARGS = [
    "--runner=DataflowRunner", "--project=test-project", "--region=us-central1",
    "--temp_location=gs://test-bucket/tmp", "--staging_location=gs://test-bucket/staging",
    "--job_name=beam-qa-graph-test", "--no_auth", "--dry_run=True", "--sdk_location=container",
    "--sdk_container_image=us-central1-docker.pkg.dev/test-project/beam-qa/beam-qa-worker:test",
    "--pg_dsn=host=10.0.0.3 dbname=beam_qa user=beam_qa", f"--pg_password_secret={SECRET}",
    # A directory in the worker image: the model check runs in run(), not in build_pipeline(),
    # and is not needed to build the graph.
    "--model=/opt/beam_qa/model",
]


@pytest.fixture
def offline(monkeypatch):
    """No network and no credentials: any connection attempt or secret read fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access while building the graph: {args!r}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(secret_manager, "access_secret_version", refuse)
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST"):
        monkeypatch.delenv(name, raising=False)


def dry_run(argv: list[str]):
    """Builds the graph for Dataflow and runs the runner up to (not including) job submission."""
    opts = parse_options(DATAFLOW_ARGS + argv)
    pipeline = beam.Pipeline(options=opts)
    build_pipeline(pipeline, from_options(opts, model=opts.model, concurrency=model_concurrency(opts)))
    result = pipeline.run()
    return result.job


def top_level_steps(job) -> list[str]:
    proto = job.proto_pipeline
    (root_id,) = proto.root_transform_ids
    root = proto.components.transforms[root_id]
    return [proto.components.transforms[t].unique_name for t in root.subtransforms]


def all_step_names(job) -> list[str]:
    return [t.unique_name for t in job.proto_pipeline.components.transforms.values() if t.unique_name]


def assert_stable_names(names: list[str]) -> None:
    """Unique, and no label derived from a line of beam_qa's code (it would move with every edit).

    Beam's own composites (Create, PeriodicImpulse) label lambdas by their line in Beam's
    sources; those are fixed by the pinned Beam version.
    """
    assert len(names) == len(set(names))
    own_files = {path.name for path in Path(beam_qa.__file__).parent.rglob("*.py")}
    for name in names:
        assert " at 0x" not in name, name
        for source in re.findall(r"<lambda at ([\w.]+\.py):\d+>", name):
            assert source not in own_files, f"unlabelled lambda from beam_qa/{source}: {name}"


def test_streaming_graph_builds_for_dataflow_with_stable_step_names(offline):
    job = dry_run(["--input_subscription=projects/test-project/subscriptions/qa-uploads-pipeline",
                   "--input_bucket=test-bucket"])
    assert json.loads(job.json())["type"] == "JOB_TYPE_STREAMING"
    assert top_level_steps(job) == STREAMING_STEPS
    assert_stable_names(all_step_names(job))


def test_bounded_graph_builds_for_dataflow_with_stable_step_names(offline):
    job = dry_run(["--input_pattern=gs://test-bucket/incoming/**.csv", "--keep_source"])
    assert json.loads(job.json())["type"] == "JOB_TYPE_BATCH"
    assert top_level_steps(job) == BOUNDED_KEEP_SOURCE_STEPS
    assert_stable_names(all_step_names(job))


GROUP_BY_KEY = "beam:transform:group_by_key:v1"


def _producers(proto) -> dict[str, str]:
    """PCollection id -> the id of the leaf transform that produces it."""
    return {pcoll: tid for tid, t in proto.components.transforms.items() if not t.subtransforms
            for pcoll in t.outputs.values()}


def _upstream_leaves(proto, transform_id: str) -> set[str]:
    """Every leaf transform the given transform's inputs come from, transitively."""
    producers, seen, todo = _producers(proto), set(), [transform_id]
    while todo:
        for pcoll in proto.components.transforms[todo.pop()].inputs.values():
            producer = producers.get(pcoll)
            if producer and producer not in seen:
                seen.add(producer)
                todo.append(producer)
    return seen


@pytest.mark.parametrize("mode", ["streaming", "bounded"])
def test_a_files_rows_cross_a_shuffle_between_reading_and_inference(offline, mode):
    """Fusion is broken after reading: RunInference never runs in the work item that read the file.

    On Dataflow consecutive ParDos are fused into one work item; only a shuffle (GroupByKey)
    separates them. Every path from the CSV parsing step to the model call must cross one,
    and it must be SpreadChunks' (the chunks of a file, keyed at random).
    """
    args = (["--input_subscription=projects/test-project/subscriptions/qa-uploads-pipeline",
             "--input_bucket=test-bucket"] if mode == "streaming"
            else ["--input_pattern=gs://test-bucket/incoming/**.csv"])
    proto = dry_run(args).proto_pipeline
    names = {tid: t.unique_name for tid, t in proto.components.transforms.items()}

    def leaf(prefix: str) -> str:
        (found,) = [tid for tid, t in proto.components.transforms.items()
                    if t.unique_name.startswith(prefix) and not t.subtransforms]
        return found
    inference = leaf("AnswerQuestions/RunInference/BeamML_RunInference")
    parse = leaf("ReadCsvRows/ParseCsv")
    upstream = _upstream_leaves(proto, inference)
    assert parse in upstream
    shuffles = {tid for tid in upstream if proto.components.transforms[tid].spec.urn == GROUP_BY_KEY}
    assert shuffles and all(names[tid].startswith("SpreadChunks/") for tid in shuffles
                            if parse in _upstream_leaves(proto, tid))
    # Remove the shuffle and the model call is no longer reachable from the parser.
    producers = _producers(proto)
    reachable, todo = set(), [inference]
    while todo:
        for pcoll in proto.components.transforms[todo.pop()].inputs.values():
            producer = producers.get(pcoll)
            if producer and producer not in reachable and producer not in shuffles:
                reachable.add(producer)
                todo.append(producer)
    assert parse not in reachable, "a path from ReadCsvRows to RunInference avoids the shuffle"


PASSWORD = "pw-graph-4e1f-never-in-a-job"


def pickled_functions(job) -> list[bytes]:
    """Every DoFn of the job graph as the raw pickle a worker unpickles (Beam stores it compressed)."""
    import base64
    import bz2
    import zlib

    from apache_beam.portability.api import beam_runner_api_pb2
    found = []
    for transform in job.proto_pipeline.components.transforms.values():
        if transform.spec.urn != "beam:transform:pardo:v1":
            continue
        packed = base64.b64decode(beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload).do_fn.payload)
        found.append(bz2.decompress(packed) if packed.startswith(b"BZh") else zlib.decompress(packed))
    return found


def test_job_carries_the_secret_name_but_never_a_password(offline, monkeypatch):
    from beam_qa import runtime
    from beam_qa.settings import PostgresSettings
    from beam_qa.store.postgres import PostgresStore
    fetched = []
    monkeypatch.setattr(secret_manager, "access_secret_version", lambda name: fetched.append(name) or PASSWORD)
    monkeypatch.setattr(PostgresStore, "open", lambda self: None)
    try:
        # The password is in this process (a store fetched it), where a careless stage could capture it.
        runtime.postgres(PostgresSettings("host=10.0.0.3 dbname=beam_qa user=beam_qa", password_secret=SECRET))
        job = dry_run(["--input_subscription=projects/test-project/subscriptions/qa-uploads-pipeline",
                       "--input_bucket=test-bucket"])
    finally:
        runtime.close()
    assert fetched == [SECRET], "building the graph read the secret"
    options = json.dumps(job.options.get_all_options(drop_default=True))
    assert SECRET in options and PASSWORD not in options
    functions = pickled_functions(job)
    # The stages that connect carry the secret's name (so this reads the graph's real contents) ...
    assert sum(SECRET.encode() in pickled for pickled in functions) >= 3
    # ... and no stage carries the password.
    assert not [pickled for pickled in functions if PASSWORD.encode() in pickled]
    assert PASSWORD not in job.json()
