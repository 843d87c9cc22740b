"""Options are validated before any graph is built."""

from pathlib import Path

import pytest

from beam_qa.launch import parse_options

BASE = ["--pg_dsn=dbname=x"]


@pytest.mark.parametrize("argv, message", [
    ([], "exactly one of"),
    (["--input_pattern=a", "--input_subscription=projects/local-project/subscriptions/s1x"], "exactly one of"),
    (["--input_subscription=bogus"], "projects/PROJECT/subscriptions/NAME"),
    (["--input_pattern=x", "--answers_prefix=incoming/answers/"], "would trigger it again"),
    (["--input_pattern=x", "--error_prefix=incoming/bad/"], "would trigger it again"),
    (["--input_pattern=x", "--doc_stride=400"], "doc_stride"),
    (["--input_pattern=x", "--min_batch_size=9", "--max_batch_size=4"], "min_batch_size"),
    (["--input_pattern=x", "--precision=int8", "--device=cuda"], "CPU-only"),
    (["--input_subscription=projects/local-project/subscriptions/s1x"], "--input_bucket is required"),
    (["--input_subscription=projects/local-project/subscriptions/s1x", "--sweep_interval_secs=0"],
     "--input_bucket is required"),
    (["--input_subscription=projects/local-project/subscriptions/s1x", "--input_bucket=gs://b/"],
     "not a bucket name"),
])
def test_invalid_combinations_are_rejected(argv, message, monkeypatch):
    monkeypatch.delenv("QA_PG_DSN", raising=False)
    with pytest.raises(ValueError, match=message):
        parse_options(BASE + argv)


def test_pg_dsn_is_required(monkeypatch):
    monkeypatch.delenv("QA_PG_DSN", raising=False)
    with pytest.raises(ValueError, match="--pg_dsn is required"):
        parse_options(["--input_pattern=x"])


def test_streaming_mode_is_selected_by_the_subscription():
    from apache_beam.options.pipeline_options import StandardOptions
    opts = parse_options(BASE + ["--input_subscription=projects/local-project/subscriptions/qa-uploads",
                                 "--input_bucket=qa-local"])
    assert opts.view_as(StandardOptions).streaming is True
    assert opts.incoming_prefix == "incoming/"
    assert (opts.sweep_interval_secs, opts.sweep_grace_secs) == (300.0, 300.0)


def test_streaming_needs_the_bucket_even_without_the_sweeper():
    """Only the bucket's own notifications are processed, so the bucket is required whatever the sweeper does."""
    from beam_qa.config import from_options
    opts = parse_options(BASE + ["--input_subscription=projects/local-project/subscriptions/qa-uploads",
                                 "--sweep_interval_secs=0", "--input_bucket=qa-local"])
    config = from_options(opts, model="m")
    assert config.source.sweep is None and config.source.bucket == "qa-local"


def test_missing_model_fails_with_advice(tmp_path):
    from beam_qa.qa.model_store import ModelNotFoundError, check_model_available
    with pytest.raises(ModelNotFoundError, match="Pass --model"):
        check_model_available(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        check_model_available(str(tmp_path / "empty"))


def test_unreachable_hub_model_fails_at_start_with_advice(monkeypatch):
    from beam_qa.qa.model_store import ModelNotFoundError, check_model_available
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="local directory holding config.json"):
        check_model_available("distilbert/distilbert-base-cased-distilled-squad")


@pytest.mark.parametrize("extra, expected", [
    ([], 32), (["--device=cpu"], 32), (["--device=auto"], 32), (["--device=cuda"], 256),
    (["--device=cuda", "--max_batch_size=64"], 64), (["--max_batch_size=8"], 8),
])
def test_max_batch_size_defaults_by_device(extra, expected):
    assert parse_options(BASE + ["--input_pattern=x"] + extra).max_batch_size == expected


def test_the_dev_stack_never_prints_or_passes_a_database_password():
    from devtools.stack import Stack, StackConfig, redacted_dsn
    dsn = "host=127.0.0.1 dbname=beam_qa user=qa password=s3cret-pw"
    assert "s3cret-pw" not in redacted_dsn(dsn) and "password=***" in redacted_dsn(dsn)
    assert redacted_dsn("postgresql://qa:s3cret-pw@db/beam_qa").count("s3cret-pw") == 0
    config = StackConfig(pg_dsn=dsn, run_dir=Path("/tmp/unused"))
    command = Stack(config).pipeline_command("/models/tiny")
    assert not [arg for arg in command if "s3cret-pw" in arg]
    assert config.client_env()["QA_PG_DSN"] == dsn  # how the pipeline gets it instead


@pytest.mark.parametrize("extra, expected", [
    ([], (8, 1)),                                                          # one local worker: all CPUs
    (["--direct_num_workers=4"], (2, 4)),                                  # four share them
    (["--direct_num_workers=4", "--inference_threads=1"], (1, 4)),
    (["--direct_num_workers=0"], (1, 8)),                                  # Beam's "one per CPU"
    (["--runner=DataflowRunner", "--sdk_container_image=img"], (1, 1)),  # one SDK process per vCPU
    (["--runner=DataflowRunner", "--sdk_container_image=img", "--experiments=no_use_multiple_sdk_containers"], (0, 1)),
])
def test_model_calls_share_the_cpus_without_oversubscribing_them(extra, expected, monkeypatch):
    from beam_qa import launch
    monkeypatch.setattr(launch, "usable_cpus", lambda: 8)
    assert launch.model_concurrency(parse_options(BASE + ["--input_pattern=x"] + extra)) == expected


def test_the_handler_is_built_from_one_model_settings_object(monkeypatch):
    from beam_qa import launch, pipeline
    from beam_qa.config import from_options
    monkeypatch.setattr(launch, "usable_cpus", lambda: 4)
    opts = parse_options(BASE + ["--input_pattern=x", "--precision=bf16", "--runtime=torch", "--max_seq_len=256",
                                 "--max_batch_size=8", "--max_batch_duration_secs=2", "--direct_num_workers=2",
                                 "--model_watch_pattern=gs://b/models/*/beam_qa_manifest.json", "--gcs_anonymous"])
    config = from_options(opts, model=opts.model, concurrency=launch.model_concurrency(opts))
    settings = config.model
    assert (settings.precision, settings.runtime, settings.max_seq_len) == ("bf16", "torch", 256)
    assert (settings.inference_threads, settings.concurrent_calls) == (2, 2)
    handler = pipeline.make_handler(config)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 8, "max_batch_size": 8,
                                               "max_batch_duration_secs": 2.0}
    assert handler.settings is settings  # the one settings object, whole
    assert (handler.settings.precision, handler.settings.runtime, handler.settings.max_seq_len) == (
        "bf16", "torch", 256)
    assert (handler.settings.inference_threads, handler.settings.concurrent_calls) == (2, 2)
    assert handler.settings.watch_pattern == "gs://b/models/*/beam_qa_manifest.json" and handler._storage.anonymous


def test_the_windows_a_row_may_take_follow_max_context_chars_and_the_windows():
    from beam_qa.config import from_options
    from beam_qa.settings import ModelSettings, windows_per_row
    assert ModelSettings(model="m").window_limit() == windows_per_row(100_000, 384, 128) == 398
    opts = parse_options(BASE + ["--input_pattern=x", "--max_context_chars=4000", "--max_seq_len=64", "--doc_stride=16"])
    config = from_options(opts, model=opts.model)
    assert config.model.window_limit() == 1 + -(-4000 // (64 - 16 - 4)) == 92
