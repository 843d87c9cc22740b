"""The beam-qa flags (``QaOptions``), validated before the graph is built.

Defaults come from the settings objects (``beam_qa/settings.py``), the one place they are
written; ``beam_qa.config`` turns the validated options into those objects once per run.
"""

from __future__ import annotations

import argparse
import re

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from beam_qa.errors import UsageError
from beam_qa.qa import precision as precisions
from beam_qa.settings import InputSettings, ModelSettings, OutputSettings, PostgresSettings, SourceSettings, SweepSettings

DEFAULT_MODEL = "distilbert/distilbert-base-cased-distilled-squad"

# Secret Manager secret version resource name (the password for --pg_dsn).
SECRET_VERSION_RE = re.compile(r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$")

_BUCKET_RE = re.compile(r"^[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]$")

# Chosen with benchmarks/throughput.py (docs/benchmarks.md): on a CPU the model's forward
# passes are split into ~1k-token micro-batches anyway, so larger batches gain little and
# only add latency; a GPU keeps getting faster with larger batches.
CPU_MAX_BATCH_SIZE = ModelSettings.max_batch_size
GPU_MAX_BATCH_SIZE = 256

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

_SUBSCRIPTION_RE = re.compile(r"^projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/subscriptions/[A-Za-z][-\w.~+%]{2,254}$")


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _flag(value: str) -> bool:
    """A switch that also takes an explicit value: Flex Templates pass ``--keep_source=true``."""
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected zero or a positive number, got {value!r}")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


def is_dataflow(opts: PipelineOptions) -> bool:
    """True when ``--runner`` names Dataflow (``DataflowRunner``, ``TestDataflowRunner``, an instance)."""
    runner = opts.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) else type(runner).__name__
    return runner is not None and "dataflow" in name.lower()


def _has_password(dsn: str) -> bool:
    """Whether a libpq connection string or URL carries a password."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict
    try:
        return bool(conninfo_to_dict(dsn).get("password"))
    except ProgrammingError as exc:
        raise UsageError(f"--pg_dsn is not a libpq connection string or URL: {str(exc).splitlines()[0]}") from exc


class QaOptions(PipelineOptions):
    """Every beam-qa flag (docs/configuration.md lists them, generated from this class)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        # The groups `python -m beam_qa --help` shows, in this order (beam_qa/cli.py).
        src = parser.add_argument_group("input", "Which files are read, and which are accepted.")
        model = parser.add_argument_group("model", "The question-answering model and how it reads a context.")
        out = parser.add_argument_group("outputs", "Where answers and failed files go.")
        sink = parser.add_argument_group("PostgreSQL", "The database that receives qa_files and qa_answers.")
        tuning = parser.add_argument_group("tuning", "Batching and the model's threads.")
        status = parser.add_argument_group("logging and monitoring")
        src.add_argument(
            "--input_subscription",
            help="Pub/Sub subscription receiving the bucket's OBJECT_FINALIZE notifications "
            "(projects/P/subscriptions/S). Selects streaming mode.")
        src.add_argument(
            "--input_pattern",
            help="Glob of existing CSV files (local path or gs://bucket/prefix/*.csv). "
            "Selects bounded mode, for backfills and batch runs.")
        src.add_argument(
            "--input_bucket",
            help="Streaming (required): the bucket whose notifications --input_subscription receives. "
            "Notifications for any other bucket are ignored (counted as events_ignored_other_bucket), and "
            "the sweeper lists gs://BUCKET/INCOMING_PREFIX.")
        src.add_argument(
            "--sweep_interval_secs", type=_non_negative_float, default=SweepSettings.interval_secs,
            help="Streaming: every N seconds (and once at start-up) re-emit incoming CSVs that "
            "have no done or failed record and no live lease; 0 turns the sweeper off.")
        src.add_argument(
            "--sweep_grace_secs", type=_non_negative_float, default=SweepSettings.grace_secs,
            help="The sweeper leaves files younger than this alone (their notification is on its "
            "way). Whether a file is retried depends on its lease (--lease_secs), not on its age.")
        src.add_argument(
            "--incoming_prefix", default=SourceSettings.incoming_prefix,
            help="Only objects whose name starts with this prefix are processed (streaming).")
        out.add_argument(
            "--answers_prefix", default=OutputSettings.answers_prefix,
            help="Where answers CSVs go: an object-name prefix in the source's bucket "
            "(or, for local sources, a directory relative to the input directory), "
            "or an absolute gs:// or local location.")
        out.add_argument(
            "--error_prefix", default=OutputSettings.error_prefix,
            help="Where files that cannot be processed are moved; same forms as --answers_prefix.")
        out.add_argument(
            "--keep_source", nargs="?", const=True, default=False, type=_flag,
            help="Do not delete or move source files after processing (bounded backfills).")
        src.add_argument(
            "--max_file_bytes", type=_positive_int, default=InputSettings.max_file_bytes,
            help="Files larger than this are rejected as a file error.")
        src.add_argument(
            "--max_rows", type=_positive_int, default=InputSettings.max_rows,
            help="Files with more data rows than this are rejected as a file error.")
        src.add_argument(
            "--max_context_chars", type=_positive_int, default=InputSettings.max_context_chars,
            help="A row whose context has more characters than this is a row error (the rest of its "
            f"file is answered). Default: {InputSettings.max_context_chars:,}, about 100 windows of 384 tokens. "
            "It also bounds the windows of one row: as many as a context this long needs at one token a "
            "character (398 with the defaults); a row that needs more is a row error.")
        src.add_argument(
            "--max_columns", type=_positive_int, default=InputSettings.max_columns,
            help="A header with more columns than this is a file error (too_many_columns), and so is a row "
            f"holding far more commas than that. Default: {InputSettings.max_columns:,} (docs/security.md).")

        model.add_argument(
            "--model", default=None,
            help="Hugging Face model id, local directory or gs:// directory (checked against its "
            "beam_qa_manifest.json) of an extractive question-answering model with a fast tokenizer. "
            f"Default: $QA_MODEL (the worker image sets it to its baked-in model), else {DEFAULT_MODEL}.")
        model.add_argument(
            "--model_watch_pattern", default=None,
            help="Pick up newly published models without stopping the job: a glob of model manifests, for "
            "example gs://my-models/models/*/beam_qa_manifest.json, in a bucket uploaders cannot write. Workers "
            "use the directory of the newest one (copy a model directory there, its manifest last), refuse one "
            "whose files do not match its manifest, and switch to a newer one within "
            "--model_watch_interval_secs; --model is then ignored (docs/deploy.md).")
        model.add_argument(
            "--model_watch_interval_secs", type=_positive_float, default=ModelSettings.watch_interval_secs,
            help="How often each worker looks for a newer model under --model_watch_pattern.")
        model.add_argument(
            "--device", choices=["auto", "cpu", "cuda"], default=ModelSettings.device,
            help="Where the model runs; auto picks CUDA when a GPU is visible.")
        model.add_argument(
            "--precision", choices=list(precisions.CHOICES), default=ModelSettings.precision,
            help="Numeric precision of the forward pass: fp32 (default: answers identical to the "
            "reference pipeline's); bf16 (CPU with AVX-512 BF16 or AMX, or CUDA); fp16 (CUDA); int8 (CPU, ONNX Runtime); "
            "auto: the fastest the device supports whose measured SQuAD F1 loss is at most "
            f"{precisions.QUALITY_BOUND_F1} point (docs/benchmarks.md).")
        model.add_argument(
            "--runtime", choices=list(precisions.RUNTIMES), default=ModelSettings.runtime,
            help="What runs the forward pass: auto (default) takes ONNX Runtime for fp32 and int8 on a "
            "CPU, where its fused graph gives torch's answers (exported once per machine, cached under "
            "$QA_ONNX_CACHE), and torch elsewhere; torch or onnxruntime force one.")
        model.add_argument("--max_seq_len", type=_positive_int, default=ModelSettings.max_seq_len,
                           help="Tokens per window (question + context + special tokens).")
        model.add_argument("--doc_stride", type=_positive_int, default=ModelSettings.doc_stride,
                           help="Overlap in tokens between windows of a long context.")
        model.add_argument("--max_answer_len", type=_positive_int, default=ModelSettings.max_answer_len,
                           help="Longest answer span in tokens.")
        tuning.add_argument(
            "--chunk_size", type=_positive_int, default=InputSettings.chunk_size,
            help="Rows per chunk: a file's rows are cut into chunks that are spread over workers and "
            f"committed to PostgreSQL together. Default: {InputSettings.chunk_size} (docs/design.md).")
        tuning.add_argument(
            "--min_batch_size", type=_positive_int, default=None,
            help="Smallest RunInference batch. Default: --max_batch_size, so that every batch is full "
            "while rows are waiting (a bundle's last batch may be smaller).")
        tuning.add_argument(
            "--max_batch_size", type=_positive_int, default=None,
            help=f"Largest RunInference batch (rows). Default: {CPU_MAX_BATCH_SIZE}, or "
            f"{GPU_MAX_BATCH_SIZE} with --device cuda (a GPU wants large batches).")
        tuning.add_argument(
            "--max_batch_duration_secs", type=_positive_float, default=None,
            help="Streaming: longest time a row waits for its batch to fill (stateful batching across "
            "bundles). Unset: batches are formed within each bundle, which holds whole chunks.")
        tuning.add_argument(
            "--inference_threads", type=int, default=ModelSettings.inference_threads,
            help="Intra-op threads per model call. 0 (default): the usable CPUs divided by the model "
            "calls that run at once in a worker process (--direct_num_workers locally; on Dataflow 1, "
            "as it runs one SDK process per vCPU, unless no_use_multiple_sdk_containers is set).")

        sink.add_argument(
            "--pg_dsn", default=None,
            help="PostgreSQL connection string (libpq form or URL) for qa_answers/qa_files. "
            "Default: $QA_PG_DSN; one of the two is required.")
        sink.add_argument(
            "--pg_password_secret", default=None,
            help="Secret Manager secret version holding the PostgreSQL password "
            "(projects/P/secrets/S/versions/V). Read by the workers when they connect; "
            "--pg_dsn then carries no password.")
        sink.add_argument(
            "--pg_pool_size", type=_positive_int, default=PostgresSettings.pool_size,
            help="Most PostgreSQL connections one worker process opens; every step of the process "
            "shares them (docs/deploy.md \"Connection budget\").")
        sink.add_argument(
            "--lease_secs", type=_positive_float, default=PostgresSettings.lease_secs,
            help="How long an attempt at a file holds it without a heartbeat. The worker that started "
            "it renews the lease every third of this while it lives; a new attempt (sweeper, repeated "
            "notification) starts only once it has expired.")
        sink.add_argument(
            "--max_attempts", type=_positive_int, default=PostgresSettings.max_attempts,
            help="Attempts at a file version before it is failed as gave_up (with how the last attempt "
            "ended) and moved under --error_prefix, instead of retried; an attempt whose worker died "
            f"counts. Default: {PostgresSettings.max_attempts}.")
        src.add_argument(
            "--gcs_anonymous", nargs="?", const=True, default=False, type=_flag,
            help="Use an anonymous GCS client (emulators). Implied when STORAGE_EMULATOR_HOST is set.")

        status.add_argument(
            "--status_interval_secs", type=_non_negative_float, default=30.0,
            help="Local runs: log a one-line status (files, rows, rows/s, latency) every N "
            "seconds; 0 turns it off. On Dataflow the same figures are the job's metrics.")
        status.add_argument(
            "--log_level", type=str.upper, choices=LOG_LEVELS, default="INFO",
            help="Log level of python -m beam_qa (the launcher, and the whole pipeline when it runs "
            "locally). DEBUG also prints the traceback behind a usage error. Dataflow workers "
            "use Beam's --default_sdk_harness_log_level.")

    def validate_qa(self) -> None:
        """Checks the combination of options; raises ValueError with what to change.

        Raises:
            UsageError: when the options cannot make a working pipeline.
        """
        if bool(self.input_subscription) == bool(self.input_pattern):
            raise UsageError(
                "Pass exactly one of --input_subscription (streaming) or --input_pattern (bounded).")
        if self.input_subscription and not _SUBSCRIPTION_RE.match(self.input_subscription):
            raise UsageError(
                f"--input_subscription {self.input_subscription!r} is not of the form "
                "projects/PROJECT/subscriptions/NAME.")
        if not self.pg_dsn:
            raise UsageError("--pg_dsn is required (for example host=127.0.0.1 dbname=beam_qa user=postgres).")
        if self.input_subscription and not self.input_bucket:
            raise UsageError(
                "--input_bucket is required with --input_subscription: only notifications for that bucket "
                "are processed (a name like my-bucket, no gs://).")
        if self.input_subscription and not _BUCKET_RE.match(self.input_bucket):
            raise UsageError(
                f"--input_bucket {self.input_bucket!r} is not a bucket name: pass the bucket the "
                "subscription's notifications come from, a name like my-bucket (no gs://).")
        if self.input_subscription and not self.incoming_prefix:
            raise UsageError("--incoming_prefix must not be empty in streaming mode: the pipeline "
                             "would re-trigger itself on its own answers and error files.")
        for flag in ("answers_prefix", "error_prefix"):
            value = getattr(self, flag)
            if not value:
                raise UsageError(f"--{flag} must not be empty.")
            if self.incoming_prefix and value.startswith(self.incoming_prefix):
                raise UsageError(
                    f"--{flag} {value!r} lies under --incoming_prefix {self.incoming_prefix!r}: "
                    "the pipeline's own outputs would trigger it again.")
        if self.doc_stride >= self.max_seq_len:
            raise UsageError(f"--doc_stride ({self.doc_stride}) must be smaller than "
                             f"--max_seq_len ({self.max_seq_len}).")
        if self.max_batch_size is None:
            self.max_batch_size = GPU_MAX_BATCH_SIZE if self.device == "cuda" else CPU_MAX_BATCH_SIZE
        if self.min_batch_size is None:
            self.min_batch_size = self.max_batch_size
        if self.min_batch_size > self.max_batch_size:
            raise UsageError("--min_batch_size must not exceed --max_batch_size.")
        if self.pg_password_secret and not SECRET_VERSION_RE.match(self.pg_password_secret):
            raise UsageError(
                f"--pg_password_secret {self.pg_password_secret!r} is not of the form "
                "projects/PROJECT/secrets/NAME/versions/VERSION.")
        if (self.pg_password_secret or is_dataflow(self)) and _has_password(self.pg_dsn):
            # Dataflow stores the job's options and shows them in its console.
            raise UsageError("--pg_dsn must not contain a password when --pg_password_secret is given or the "
                             "runner is Dataflow (the job's options are stored and shown in its console): put "
                             "the password in Secret Manager and pass --pg_password_secret="
                             "projects/PROJECT/secrets/NAME/versions/VERSION.")
        if self.precision == "int8" and self.device == "cuda":
            raise UsageError("--precision int8 is CPU-only; on CUDA use fp16, bf16 or auto.")
        if self.runtime == "onnxruntime" and self.device == "cuda":
            raise UsageError("--runtime onnxruntime runs on a CPU only; on CUDA pass --runtime auto or torch.")
        if self.runtime == "torch" and self.precision == "int8":
            raise UsageError("--precision int8 runs on ONNX Runtime only; pass --runtime auto or onnxruntime.")
        if self.model_watch_pattern:
            from beam_qa.qa.model_watch import check_pattern
            check_pattern(self.model_watch_pattern)
        if self.inference_threads < 0:
            raise UsageError("--inference_threads must be 0 (automatic) or a positive number of threads.")
