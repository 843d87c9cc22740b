"""``JobConfig``: one job's settings, resolved once from its options (model included).

``beam_qa.launch.configure`` builds it from the command line; the preflight, the graph
(``beam_qa.pipeline.build_pipeline``) and the runner all read this one object, and each stage
receives the per-concern settings it needs (``beam_qa/settings.py``), whole.
"""

from __future__ import annotations

import dataclasses

from apache_beam.options.pipeline_options import PipelineOptions

from beam_qa.options import QaOptions
from beam_qa.settings import (InputSettings, ModelSettings, OutputSettings, PostgresSettings, SourceSettings,
                              StorageSettings, SweepSettings, windows_per_row)


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Everything one run needs, per concern.

    Attributes:
        options: Beam's options for the runner (``--runner``, ``--project``, ...), validated.
        source: where file events come from (subscription or pattern, prefix, sweeper).
        inputs: limits on each file and how it is cut into chunks.
        model: the resolved model and how it runs.
        outputs: where answers and failed files go.
        postgres: the coordination database.
        storage: how GCS is reached.
        status_interval_secs: local runs log a status line this often (0: never).
    """

    options: PipelineOptions
    source: SourceSettings
    inputs: InputSettings
    model: ModelSettings
    outputs: OutputSettings
    postgres: PostgresSettings
    storage: StorageSettings
    status_interval_secs: float = 30.0

    @property
    def streaming(self) -> bool:
        return self.source.streaming


def from_options(opts: QaOptions, *, model: str, concurrency: tuple[int, int] = (0, 1)) -> JobConfig:
    """The settings objects of validated options.

    Args:
        opts: options that passed ``QaOptions.validate_qa``.
        model: the model the job starts with, as resolved on the launcher.
        concurrency: ``(intra-op threads per model call, model calls at once per process)``,
            which depends on the runner (``beam_qa.launch.model_concurrency``).
    """
    sweep = None
    if opts.input_subscription and opts.sweep_interval_secs:
        sweep = SweepSettings(bucket=opts.input_bucket, interval_secs=opts.sweep_interval_secs,
                              grace_secs=opts.sweep_grace_secs, incoming_prefix=opts.incoming_prefix,
                              delete_finished=not opts.keep_source)
    threads, calls = concurrency
    return JobConfig(
        options=opts,
        source=SourceSettings(subscription=opts.input_subscription or None, pattern=opts.input_pattern or None,
                              incoming_prefix=opts.incoming_prefix, sweep=sweep,
                              bucket=opts.input_bucket if opts.input_subscription else None),
        inputs=InputSettings(max_file_bytes=opts.max_file_bytes, max_rows=opts.max_rows,
                             max_context_chars=opts.max_context_chars, max_columns=opts.max_columns,
                             chunk_size=opts.chunk_size),
        model=ModelSettings(
            model=model, device=opts.device, precision=opts.precision, runtime=opts.runtime,
            max_seq_len=opts.max_seq_len, doc_stride=opts.doc_stride, max_answer_len=opts.max_answer_len,
            min_batch_size=opts.min_batch_size, max_batch_size=opts.max_batch_size,
            max_batch_duration_secs=opts.max_batch_duration_secs, inference_threads=threads,
            concurrent_calls=calls, watch_pattern=opts.model_watch_pattern,
            watch_interval_secs=opts.model_watch_interval_secs,
            max_windows_per_row=windows_per_row(opts.max_context_chars, opts.max_seq_len, opts.doc_stride)),
        outputs=OutputSettings(answers_prefix=opts.answers_prefix, error_prefix=opts.error_prefix,
                               keep_source=bool(opts.keep_source)),
        postgres=PostgresSettings(dsn=opts.pg_dsn, password_secret=opts.pg_password_secret,
                                  pool_size=opts.pg_pool_size, lease_secs=opts.lease_secs,
                                  max_attempts=opts.max_attempts),
        storage=StorageSettings(anonymous=bool(opts.gcs_anonymous)),
        status_interval_secs=opts.status_interval_secs,
    )
