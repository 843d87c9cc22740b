"""A RunInference ModelHandler for extractive question answering."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from beam_qa import metrics, runtime
from beam_qa.errors import RowErrorKind
from beam_qa.qa import decode, forward
from beam_qa.qa.forward import usable_cpus  # noqa: F401  (beam_qa.launch sizes model calls with it)
from beam_qa.qa import precision as precisions
from beam_qa.qa.model_store import LoadedModel, load_count, load_model
from beam_qa.qa.windows import QaExample, describe, is_row_failure, least_padding_runs, micro_batches, tokenize
from beam_qa.settings import ModelSettings, StorageSettings

_LOGGER = logging.getLogger(__name__)

METRICS_NAMESPACE = metrics.NAMESPACE

# Padded tokens per forward pass. On a CPU, passes that stay cache-sized beat one big
# pass per row (see README "Throughput"); AMX's bf16 tiles want larger passes; a GPU wants
# large batches.
CPU_TOKENS_PER_FORWARD = 1024
CPU_AMX_BF16_TOKENS_PER_FORWARD = 4096
GPU_TOKENS_PER_FORWARD = 65536


# A batch that still hits a resource error when cut down to one row is retried this many
# times (with a pause) before the error escapes run_inference (and ends its file's attempt).
TRANSIENT_ATTEMPTS_PER_ROW = 3


def default_tokens_per_forward(device: str, precision: str = "fp32",
                               features: tuple[str, ...] | None = None) -> int:
    """The micro-batch budget for a resolved device (``cpu``, ``cuda`` or ``cuda:N``) and precision.

    ``features`` are the CPU's (default: this machine's, ``precision.cpu_features()``).
    """
    if str(device).startswith("cuda"):
        return GPU_TOKENS_PER_FORWARD
    if precision == "bf16":
        if "amx_bf16" in (precisions.cpu_features() if features is None else features):
            return CPU_AMX_BF16_TOKENS_PER_FORWARD
    return CPU_TOKENS_PER_FORWARD


class TransientInferenceError(RuntimeError):
    """A resource error (out of memory, ...) that in-process retries did not cure.

    It escapes ``run_inference`` instead of turning a passing shortage into row errors;
    AnswerQuestions (RunInference's exception handling) then ends the attempt of the file it came
    from, and the sweeper starts the next one, later and perhaps elsewhere (``beam_qa.answering``).
    """


def is_transient(exc: BaseException) -> bool:
    """Whether an exception from the model says "not now" rather than "never for this row"."""
    if isinstance(exc, (MemoryError, TransientInferenceError)):
        return True
    try:
        import torch
        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    # Allocation failures only: other CUDA errors (a device-side assert from a bad token id)
    # are deterministic for the row, and retrying them would loop.
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        marker in message for marker in ("out of memory", "can't allocate memory", "cannot allocate memory",
                                         "cublas_status_alloc_failed"))


@dataclasses.dataclass(frozen=True)
class QaPrediction:
    """The model's answer for one example, or why there is none."""

    span: decode.Span | None
    error: str = ""
    kind: str = ""  # the RowErrorKind value of ``error``


class QuestionAnsweringModelHandler(ModelHandler[QaExample, PredictionResult, LoadedModel]):
    """Batched extractive QA: fast tokenizer + AutoModelForQuestionAnswering.

    Long contexts are split into overlapping windows; windows of the whole batch are
    sorted by length and run in micro-batches padded only to their longest window
    (``beam_qa.qa.windows``). A micro-batch holds at most ``tokens_per_forward`` padded tokens:
    on a CPU, one huge forward pass is slower per row than several cache-sized ones. Spans are
    decoded for a whole micro-batch at once, on the GPU when the logits are there, and the passes
    overlap the work around them where that pays (``beam_qa.qa.forward``).
    """

    # How length-sorted windows are cut into micro-batches: run sizes from (lengths, budget).
    split_runs = staticmethod(least_padding_runs)

    def __init__(self, model: ModelSettings | str, storage: StorageSettings | None = None, **overrides: Any):
        """
        Args:
            model: the model's settings, or a model name or directory with default settings.
            storage: how to reach a gs:// model or watch pattern.
            **overrides: ``ModelSettings`` fields replacing those of ``model`` (tools and tests:
                ``QuestionAnsweringModelHandler(path, device="cpu", precision="int8")``).
        """
        super().__init__()
        settings = ModelSettings(model=model) if isinstance(model, str) else model
        self._settings = dataclasses.replace(settings, **overrides) if overrides else settings
        self._storage = storage or StorageSettings()
        self._model_name = self._settings.model
        self._unreported_loads = 0

    @property
    def settings(self) -> ModelSettings:
        return self._settings

    def load_model(self) -> LoadedModel:
        before = load_count()
        settings = self._settings
        if settings.inference_threads > 0:
            import torch
            if torch.get_num_threads() != settings.inference_threads:
                # Process-wide: every model call of this worker process shares the CPUs (forward slots).
                torch.set_num_threads(settings.inference_threads)
                _LOGGER.info("beam_qa model calls use %d intra-op threads, at most %d at once in pid %d",
                             settings.inference_threads, settings.concurrent_calls, os.getpid())
        if settings.watch_pattern:
            model = self._watcher().current()
        else:
            model = load_model(self._model_name, settings.device, settings.precision, settings.runtime)
        # RunInference loads in DoFn.setup(), outside any bundle, where a metric update is
        # lost; the count is reported with the next batch instead (see run_inference).
        self._unreported_loads += load_count() - before
        return model

    def _watcher(self):
        """This process's watcher of ``--model_watch_pattern`` (started, holding the newest model)."""
        from beam_qa.qa import model_watch
        settings = self._settings
        return model_watch.watcher(settings.watch_pattern, settings.watch_interval_secs, settings.device,
                                   settings.precision, settings.runtime, runtime.storage(self._storage))

    def update_model_path(self, model_path: str | None = None) -> None:
        """RunInference's hook for a new model: a directory, or its ``config.json``."""
        if model_path:
            self._model_name = model_path[:-len("/config.json")] if model_path.endswith("/config.json") else model_path

    def batch_elements_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"min_batch_size": self._settings.min_batch_size,
                                  "max_batch_size": self._settings.max_batch_size}
        if self._settings.max_batch_duration_secs is not None:
            kwargs["max_batch_duration_secs"] = self._settings.max_batch_duration_secs
        return kwargs

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def get_num_bytes(self, batch: Sequence[QaExample]) -> int:
        return sum(len(q.encode()) + len(c.encode()) for q, c in batch)

    def run_inference(
        self,
        batch: Sequence[QaExample],
        model: LoadedModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Answers a batch; returns exactly one PredictionResult per example, in order.

        Failures are isolated here rather than by RunInference's exception handling, which
        works per batch: it would turn a passing out-of-memory into row errors for a whole
        batch, and one bad row into errors for all its batch-mates. A resource error is
        retried with the batch cut in halves (down to single rows, a few times each) and then
        raised as ``TransientInferenceError``, which ends its file's attempt (``beam_qa.answering``);
        any other exception (a
        ``BaseException`` such as a native panic included; only ``KeyboardInterrupt``,
        ``SystemExit`` and ``GeneratorExit`` pass) is narrowed down by halving to the rows that
        cause it, which become ``model`` row errors. Rows whose work would be out of bounds get
        their row error before anything is tokenized (``beam_qa.qa.windows.check_rows``).
        """
        if self._unreported_loads:
            metrics.MODEL_LOADS.inc(self._unreported_loads)
            self._unreported_loads = 0
        if self._settings.watch_pattern:
            # The newest published model for every new batch (a batch never changes model midway).
            watcher = self._watcher()
            model = watcher.current()
            swaps = watcher.take_swaps()
            if swaps:
                metrics.MODEL_SWAPS.inc(swaps)
        predictions = self._answer_isolating(list(batch), model)
        return [PredictionResult(example, prediction, model.model_id) for example, prediction in zip(batch, predictions)]

    def _answer_isolating(self, batch: list[QaExample], model: LoadedModel) -> list[QaPrediction]:
        try:
            return self._answer(batch, model)
        except BaseException as exc:  # pylint: disable=broad-except
            # BaseException: a native panic (pyo3_runtime.PanicException) is one, and escaping here
            # it would fail the bundle, for ever on a streaming runner.
            if not is_row_failure(exc):
                raise
            if is_transient(exc):
                return self._retry_transient(batch, model, exc)
            if len(batch) == 1:
                _LOGGER.warning("the model failed on one row: %s", describe(exc, 300))
                return [QaPrediction(span=None, error=f"model failed on this row: {describe(exc, 300)}",
                                     kind=RowErrorKind.MODEL.value)]
            middle = len(batch) // 2
            return self._answer_isolating(batch[:middle], model) + self._answer_isolating(batch[middle:], model)

    def _retry_transient(self, batch: list[QaExample], model: LoadedModel, exc: BaseException) -> list[QaPrediction]:
        metrics.INFERENCE_RETRIES.inc()
        _LOGGER.warning("resource error on a batch of %d rows (%s: %s); retrying with smaller batches",
                        len(batch), type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
        forward.free_memory(model)
        if len(batch) > 1:
            middle = len(batch) // 2
            return self._answer_isolating(batch[:middle], model) + self._answer_isolating(batch[middle:], model)
        for attempt in range(1, TRANSIENT_ATTEMPTS_PER_ROW + 1):
            time.sleep(0.5 * 2 ** (attempt - 1))
            try:
                return self._answer(batch, model)
            except BaseException as again:  # pylint: disable=broad-except
                if not is_row_failure(again):
                    raise
                if not is_transient(again):
                    return self._answer_isolating(batch, model)
                metrics.INFERENCE_RETRIES.inc()
                exc = again
                forward.free_memory(model)
        raise TransientInferenceError(
            f"resource error persisted through {TRANSIENT_ATTEMPTS_PER_ROW} retries of one row: "
            f"{type(exc).__name__}: {exc}") from exc

    def _answer(self, batch: Sequence[QaExample], model: LoadedModel) -> list[QaPrediction]:
        settings = self._settings
        windows = tokenize(batch, model.tokenizer, max_seq_len=settings.max_seq_len, doc_stride=settings.doc_stride,
                           type_ids="token_type_ids" in forward.input_names(model.tokenizer),
                           max_windows=settings.window_limit())
        budget = settings.tokens_per_forward or default_tokens_per_forward(model.device, model.precision)
        plan = micro_batches(windows.lengths, budget, self.split_runs)
        # A batch whose every row is a row error has no window to run (and nothing to decode).
        found = forward.candidates(windows, plan, model, max_answer_len=settings.max_answer_len,
                                   concurrent_calls=settings.concurrent_calls,
                                   overlap=forward.overlap_pays(model.device)) if len(windows) else []
        bounds = windows.example_bounds(len(batch)).tolist()
        predictions = []
        for index, (_, context) in enumerate(batch):
            if index in windows.errors:
                kind, error = windows.errors[index]
                predictions.append(QaPrediction(span=None, error=error, kind=kind.value))
                continue
            # In window order (the tokenizer's): equal answers from several windows merge into the
            # first one's offsets, as in the reference, so the order matters.
            first, last = bounds[index], bounds[index + 1]
            encodings = windows.encodings[first:last]
            span = decode.best_answer(
                context, found[first:last],
                lambda w, s, e, encodings=encodings: decode.word_aligned_span(encodings[w], s, e))
            predictions.append(QaPrediction(span=span, error="" if span else "no answer span found",
                                            kind="" if span else RowErrorKind.NO_ANSWER.value))
        return predictions
