"""Pipeline options for beam-qa, validated before the graph is built."""

from __future__ import annotations

import argparse
import re

from apache_beam.options.pipeline_options import PipelineOptions

DEFAULT_MODEL = "distilbert/distilbert-base-cased-distilled-squad"

_SUBSCRIPTION_RE = re.compile(r"^projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/subscriptions/[A-Za-z][-\w.~+%]{2,254}$")


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
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
            "--keep_source", action="store_true", default=False,
            help="Do not delete or move source files after processing (bounded backfills).")
        src.add_argument(
            "--max_file_bytes", type=_positive_int, default=50 * 1024 * 1024,
            help="Files larger than this are rejected as a file error.")
        src.add_argument(
            "--max_rows", type=_positive_int, default=200_000,
            help="Files with more data rows than this are rejected as a file error.")

        model = parser.add_argument_group("model")
        model.add_argument(
            "--model", default=DEFAULT_MODEL,
            help="Hugging Face model id, local directory or gs:// directory of an extractive "
            "question-answering model with a fast tokenizer.")
        model.add_argument(
            "--device", choices=["auto", "cpu", "cuda"], default="auto",
            help="Where the model runs; auto picks CUDA when a GPU is visible.")
        model.add_argument(
            "--quantize", choices=["none", "int8"], default="none",
            help="int8: PyTorch dynamic quantization of the Linear layers (CPU only).")
        model.add_argument("--max_seq_len", type=_positive_int, default=384,
                           help="Tokens per window (question + context + special tokens).")
        model.add_argument("--doc_stride", type=_positive_int, default=128,
                           help="Overlap in tokens between windows of a long context.")
        model.add_argument("--max_answer_len", type=_positive_int, default=15,
                           help="Longest answer span in tokens.")
        model.add_argument("--min_batch_size", type=_positive_int, default=1,
                           help="Smallest RunInference batch.")
        model.add_argument("--max_batch_size", type=_positive_int, default=32,
                           help="Largest RunInference batch (rows).")
        model.add_argument(
            "--max_batch_duration_secs", type=_positive_float, default=None,
            help="Streaming: longest time a row waits for its batch to fill. Unset: batches "
            "are formed within each bundle, which already holds whole files.")

        sink = parser.add_argument_group("sinks")
        sink.add_argument(
            "--pg_dsn", default=None,
            help="PostgreSQL connection string (libpq form or URL) for qa_answers/qa_files.")
        sink.add_argument(
            "--gcs_anonymous", action="store_true", default=False,
            help="Use an anonymous GCS client (emulators). Implied when STORAGE_EMULATOR_HOST is set.")

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
        if self.min_batch_size > self.max_batch_size:
            raise ValueError("--min_batch_size must not exceed --max_batch_size.")
        if self.quantize == "int8" and self.device == "cuda":
            raise ValueError("--quantize int8 is CPU-only; on CUDA the model runs in fp16.")
