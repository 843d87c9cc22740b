"""Settings, one frozen object per concern, built once from ``QaOptions`` (``beam_qa.config``).

Each stage takes the one object it needs (the way DataflowTemplates parses a spec once)
instead of a DSN, a model name, a secret name and a flag threaded through its constructor.
They are small, picklable values: they travel in the job graph, so they never hold a
password (``PostgresSettings.password_secret`` is the name of a Secret Manager version, read
on the workers). Their field defaults are the only place a default is written: the command
line's flags (``beam_qa/options.py``) take theirs from here.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PostgresSettings:
    """Where answers and file records go, and how hard to try.

    Attributes:
        dsn: libpq connection string or URL, without a password when ``password_secret`` is set.
        password_secret: Secret Manager version holding the password, or None.
        pool_size: most connections one worker process opens (shared by all its DoFns).
        retry_secs: how long a write retries a lost connection before the bundle gives up.
        lease_secs: how long an attempt at a file holds it without a heartbeat.
        max_attempts: attempts at a file version before it is failed (``gave_up``) instead of
            retried; an attempt whose worker died without a word counts.
    """

    dsn: str
    password_secret: str | None = None
    pool_size: int = 4
    retry_secs: float = 120.0
    lease_secs: float = 120.0
    max_attempts: int = 3


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """Which model answers, how it runs and how RunInference batches its rows.

    Attributes:
        model: local directory, gs:// directory or Hugging Face model id.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16``, ``fp16``, ``int8`` or ``auto`` (beam_qa/qa/precision.py).
        runtime: ``auto``, ``torch`` or ``onnxruntime``.
        max_seq_len, doc_stride, max_answer_len: the windowing and decoding of long contexts.
        min_batch_size, max_batch_size, max_batch_duration_secs: RunInference's BatchElements.
        tokens_per_forward: padded tokens per forward pass, or None for the device's default.
        inference_threads: intra-op threads per model call; 0 keeps torch's default.
        concurrent_calls: model calls at once in one worker process.
        watch_pattern, watch_interval_secs: where new model versions appear, how often to look.
        max_windows_per_row: the most windows one row may take (more is a ``context_too_long``
            row error); None derives it from ``InputSettings.max_context_chars`` (``window_limit``).
    """

    model: str
    device: str = "auto"
    precision: str = "fp32"
    runtime: str = "auto"
    max_seq_len: int = 384
    doc_stride: int = 128
    max_answer_len: int = 15
    min_batch_size: int = 1
    max_batch_size: int = 32
    max_batch_duration_secs: float | None = None
    tokens_per_forward: int | None = None
    inference_threads: int = 0
    concurrent_calls: int = 1
    watch_pattern: str | None = None
    watch_interval_secs: float = 60.0
    max_windows_per_row: int | None = None

    def window_limit(self) -> int:
        """``max_windows_per_row``, or the one ``InputSettings.max_context_chars`` implies."""
        if self.max_windows_per_row is not None:
            return self.max_windows_per_row
        return windows_per_row(InputSettings.max_context_chars, self.max_seq_len, self.doc_stride)


# The most special tokens a pair takes in the supported tokenizers (BERT's 3, RoBERTa's 4).
_PAIR_SPECIAL_TOKENS = 4


def windows_per_row(max_context_chars: int, max_seq_len: int, doc_stride: int) -> int:
    """The most windows one row may take: as many as a context of ``max_context_chars`` tokens
    (a WordPiece tokenizer makes at most one token per character) needs with an empty question.

    So the limit takes nothing from a row that ``--max_context_chars`` lets through with an
    ordinary question; a long question (down to the fewest new tokens per window,
    ``beam_qa.qa.windows.min_new_tokens``) over a long, dense context may exceed it, and is then a
    ``context_too_long`` row error instead of up to four times the work. Defaults: 398 windows.
    """
    per_window = max(1, max_seq_len - doc_stride - _PAIR_SPECIAL_TOKENS)
    return 1 + -(-max_context_chars // per_window)


@dataclasses.dataclass(frozen=True)
class StorageSettings:
    """How to reach GCS (or local files)."""

    anonymous: bool = False


@dataclasses.dataclass(frozen=True)
class InputSettings:
    """What is read and how it is cut into chunks.

    Attributes:
        max_file_bytes: larger files are a file error.
        max_rows: files with more data rows are a file error.
        max_context_chars: longer contexts are a row error.
        max_columns: a header with more columns is a file error.
        chunk_size: rows per chunk, the unit spread over workers and committed together.
    """

    max_file_bytes: int = 50 * 1024 * 1024
    max_rows: int = 200_000
    # About 100 windows of 384 tokens for an English context (~4 characters a token, 256 new
    # tokens a window): a few seconds of a CPU core in fp32. A longer cell is a row error rather
    # than minutes of one worker's time.
    max_context_chars: int = 100_000
    # Far more than a question-answering file needs (question, context, an id and a few notes)
    # and more than most spreadsheet exports hold, yet it keeps a header's checks and a row's
    # cells small whatever the file: a row is never padded to the header (docs/security.md).
    max_columns: int = 1_000
    # Two CPU batches: a bundle's batches are full and a 1,000-row file is spread over 16 units of work.
    chunk_size: int = 64


@dataclasses.dataclass(frozen=True)
class OutputSettings:
    """Where answers CSVs and failed files go, and whether sources are removed."""

    answers_prefix: str = "answers/"
    error_prefix: str = "errors/"
    keep_source: bool = False


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """The streaming sweeper: which bucket and prefix, how often, how old a file must be.

    ``delete_finished``: delete the source of a version that is ``done`` (or ``failed`` and
    kept under the error prefix) whose own delete failed; off with ``--keep_source``.

    ``page_size``: objects per page of the listing, and so the most versions one PostgreSQL
    statement of a sweep carries: a sweep's memory and statements stay bounded whatever the
    prefix holds. 1,000 is the most one GCS list request returns.
    """

    bucket: str
    interval_secs: float = 300.0
    grace_secs: float = 300.0
    incoming_prefix: str = "incoming/"
    delete_finished: bool = True
    page_size: int = 1000


@dataclasses.dataclass(frozen=True)
class SourceSettings:
    """Where file events come from: a subscription (streaming) or a file pattern (bounded).

    Attributes:
        subscription: Pub/Sub subscription of the bucket's notifications, or None.
        pattern: glob of existing files, or None (exactly one of the two is set).
        incoming_prefix: only objects under it are processed; stripped to name the outputs.
        sweep: the streaming sweeper, or None when it is off (and always in bounded mode).
        bucket: streaming: the only bucket whose notifications are accepted (``--input_bucket``).
    """

    subscription: str | None = None
    pattern: str | None = None
    incoming_prefix: str = "incoming/"
    sweep: SweepSettings | None = None
    bucket: str | None = None

    @property
    def streaming(self) -> bool:
        return self.subscription is not None
