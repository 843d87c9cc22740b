"""Pipeline options for beam-qa, validated before the graph is built."""

from __future__ import annotations

import argparse
import re

from apache_beam.options.pipeline_options import PipelineOptions

from beam_qa.qa import precision as precisions

DEFAULT_MODEL = "distilbert/distilbert-base-cased-distilled-squad"

# Secret Manager secret version resource name (the password for --pg_dsn).
SECRET_VERSION_RE = re.compile(r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$")

_BUCKET_RE = re.compile(r"^[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]$")

# Chosen with benchmarks/throughput.py (README "Performance"): on a CPU the model's forward
# passes are split into ~1k-token micro-batches anyway, so larger batches gain little and
# only add latency; a GPU keeps getting faster with larger batches.
CPU_MAX_BATCH_SIZE = 32
GPU_MAX_BATCH_SIZE = 256

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


class QaOptions(PipelineOptions):
    """Every beam-qa flag. See README.md "Configuration" for the table."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        src = parser.add_argument_group("input")
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
            help="Streaming: the bucket whose notifications --input_subscription receives. The "
            "sweeper lists gs://BUCKET/INCOMING_PREFIX; required unless --sweep_interval_secs=0.")
        src.add_argument(
            "--sweep_interval_secs", type=_non_negative_float, default=300.0,
            help="Streaming: every N seconds (and once at start-up) re-emit incoming CSVs that "
            "have no done or failed record; 0 turns the sweeper off.")
        src.add_argument(
            "--sweep_grace_secs", type=_non_negative_float, default=300.0,
            help="The sweeper leaves files younger than this alone, and retries a file at most "
            "once per this period; keep it above the time your largest file takes.")
        src.add_argument(
            "--incoming_prefix", default="incoming/",
            help="Only objects whose name starts with this prefix are processed (streaming).")
        src.add_argument(
            "--answers_prefix", default="answers/",
            help="Where answers CSVs go: an object-name prefix in the source's bucket "
            "(or, for local sources, a directory relative to the input directory), "
            "or an absolute gs:// or local location.")
        src.add_argument(
            "--error_prefix", default="errors/",
            help="Where files that cannot be processed are moved; same forms as --answers_prefix.")
        src.add_argument(
            "--keep_source", nargs="?", const=True, default=False, type=_flag,
            help="Do not delete or move source files after processing (bounded backfills).")
        src.add_argument(
            "--max_file_bytes", type=_positive_int, default=50 * 1024 * 1024,
            help="Files larger than this are rejected as a file error.")
        src.add_argument(
            "--max_rows", type=_positive_int, default=200_000,
            help="Files with more data rows than this are rejected as a file error.")

        model = parser.add_argument_group("model")
        model.add_argument(
            "--model", default=None,
            help="Hugging Face model id, local directory or gs:// directory of an extractive "
            f"question-answering model with a fast tokenizer. Default: $QA_MODEL (the worker "
            f"image sets it to its baked-in model), else {DEFAULT_MODEL}.")
        model.add_argument(
            "--device", choices=["auto", "cpu", "cuda"], default="auto",
            help="Where the model runs; auto picks CUDA when a GPU is visible.")
        model.add_argument(
            "--precision", choices=list(precisions.CHOICES), default="fp32",
            help="Numeric precision of the forward pass: fp32 (default: answers identical to the "
            "reference pipeline's); bf16 (CPU autocast or CUDA); fp16 (CUDA); int8 (CPU, ONNX Runtime); "
            "auto: the fastest the device supports whose measured SQuAD F1 loss is at most "
            f"{precisions.QUALITY_BOUND_F1} point (README \"Precision and answer quality\").")
        model.add_argument("--max_seq_len", type=_positive_int, default=384,
                           help="Tokens per window (question + context + special tokens).")
        model.add_argument("--doc_stride", type=_positive_int, default=128,
                           help="Overlap in tokens between windows of a long context.")
        model.add_argument("--max_answer_len", type=_positive_int, default=15,
                           help="Longest answer span in tokens.")
        model.add_argument("--min_batch_size", type=_positive_int, default=1,
                           help="Smallest RunInference batch.")
        model.add_argument(
            "--max_batch_size", type=_positive_int, default=None,
            help=f"Largest RunInference batch (rows). Default: {CPU_MAX_BATCH_SIZE}, or "
            f"{GPU_MAX_BATCH_SIZE} with --device cuda (a GPU wants large batches).")
        model.add_argument(
            "--max_batch_duration_secs", type=_positive_float, default=None,
            help="Streaming: longest time a row waits for its batch to fill. Unset: batches "
            "are formed within each bundle, which already holds whole files.")

        sink = parser.add_argument_group("sinks")
        sink.add_argument(
            "--pg_dsn", default=None,
            help="PostgreSQL connection string (libpq form or URL) for qa_answers/qa_files.")
        sink.add_argument(
            "--pg_password_secret", default=None,
            help="Secret Manager secret version holding the PostgreSQL password "
            "(projects/P/secrets/S/versions/V). Read by the workers when they connect; "
            "--pg_dsn then carries no password.")
        sink.add_argument(
            "--gcs_anonymous", nargs="?", const=True, default=False, type=_flag,
            help="Use an anonymous GCS client (emulators). Implied when STORAGE_EMULATOR_HOST is set.")

        status = parser.add_argument_group("monitoring")
        status.add_argument(
            "--status_interval_secs", type=_non_negative_float, default=30.0,
            help="Local runs: log a one-line status (files, rows, rows/s, latency) every N "
            "seconds; 0 turns it off. On Dataflow the same figures are the job's metrics.")

    def validate_qa(self) -> None:
        """Checks the combination of options; raises ValueError with what to change.

        Raises:
            ValueError: when the options cannot make a working pipeline.
        """
        if bool(self.input_subscription) == bool(self.input_pattern):
            raise ValueError(
                "Pass exactly one of --input_subscription (streaming) or --input_pattern (bounded).")
        if self.input_subscription and not _SUBSCRIPTION_RE.match(self.input_subscription):
            raise ValueError(
                f"--input_subscription {self.input_subscription!r} is not of the form "
                "projects/PROJECT/subscriptions/NAME.")
        if not self.pg_dsn:
            raise ValueError("--pg_dsn is required (for example host=127.0.0.1 dbname=beam_qa user=postgres).")
        if self.input_subscription and self.sweep_interval_secs and not _BUCKET_RE.match(self.input_bucket or ""):
            raise ValueError(
                f"--input_bucket {self.input_bucket!r} is not a bucket name: the sweeper needs the "
                "bucket the subscription's notifications come from (a name like my-bucket, no gs://), "
                "or pass --sweep_interval_secs=0 to turn the sweeper off.")
        if self.input_subscription and not self.incoming_prefix:
            raise ValueError("--incoming_prefix must not be empty in streaming mode: the pipeline "
                             "would re-trigger itself on its own answers and error files.")
        for flag in ("answers_prefix", "error_prefix"):
            value = getattr(self, flag)
            if not value:
                raise ValueError(f"--{flag} must not be empty.")
            if self.incoming_prefix and value.startswith(self.incoming_prefix):
                raise ValueError(
                    f"--{flag} {value!r} lies under --incoming_prefix {self.incoming_prefix!r}: "
                    "the pipeline's own outputs would trigger it again.")
        if self.doc_stride >= self.max_seq_len:
            raise ValueError(f"--doc_stride ({self.doc_stride}) must be smaller than "
                             f"--max_seq_len ({self.max_seq_len}).")
        if self.max_batch_size is None:
            self.max_batch_size = GPU_MAX_BATCH_SIZE if self.device == "cuda" else CPU_MAX_BATCH_SIZE
        if self.min_batch_size > self.max_batch_size:
            raise ValueError("--min_batch_size must not exceed --max_batch_size.")
        if self.pg_password_secret:
            if not SECRET_VERSION_RE.match(self.pg_password_secret):
                raise ValueError(
                    f"--pg_password_secret {self.pg_password_secret!r} is not of the form "
                    "projects/PROJECT/secrets/NAME/versions/VERSION.")
            from psycopg.conninfo import conninfo_to_dict
            if "password" in conninfo_to_dict(self.pg_dsn):
                raise ValueError("--pg_dsn must not contain a password when --pg_password_secret "
                                 "is given: the password would be stored in the job graph.")
        if self.precision == "int8" and self.device == "cuda":
            raise ValueError("--precision int8 is CPU-only; on CUDA use fp16, bf16 or auto.")
