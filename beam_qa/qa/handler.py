"""A RunInference ModelHandler for extractive question answering."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from beam_qa import metrics, runtime
from beam_qa.errors import RowErrorKind
from beam_qa.qa import decode
from beam_qa.qa import precision as precisions
from beam_qa.qa.model_store import LoadedModel, load_count, load_model
from beam_qa.settings import ModelSettings, StorageSettings

_LOGGER = logging.getLogger(__name__)

METRICS_NAMESPACE = metrics.NAMESPACE

QaExample = tuple[str, str]  # (question, context)

# Padded tokens per forward pass. On a CPU, passes that stay cache-sized beat one big
# pass per row (see README "Throughput"); AMX's bf16 tiles want larger passes; a GPU wants
# large batches.
CPU_TOKENS_PER_FORWARD = 1024
CPU_AMX_BF16_TOKENS_PER_FORWARD = 4096
GPU_TOKENS_PER_FORWARD = 65536


# A batch that still hits a resource error when cut down to one row is retried this many
# times (with a pause) before the error fails the bundle.
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


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def greedy_runs(lengths: Sequence[int], budget: int) -> list[int]:
    """Run sizes that fill each run in turn up to ``budget`` padded tokens (one window at least).

    ``lengths`` are sorted ascending, so a run is padded to its last window.
    """
    runs: list[int] = []
    for length in lengths:
        if runs and (runs[-1] + 1) * length <= budget:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs


def least_padding_runs(lengths: Sequence[int], budget: int) -> list[int]:
    """Run sizes over ascending ``lengths``: as few runs as ``greedy_runs``, padded the least.

    The greedy fill cuts wherever the budget runs out and pads each run to its longest window;
    on a batch that mixes rows of many files that wastes compute (``python -m
    benchmarks.padding`` counts it). This is our own small dynamic programme, since no library
    splits a sorted sequence under a budget: the least padded tokens covering the first ``j``
    windows in ``k`` runs, for ``k`` up to the greedy count (fewer runs win a tie), in
    O(runs x windows x windows per run) with numpy over the last dimension.
    """
    sizes = np.asarray(lengths, dtype=np.int64)
    count = len(sizes)
    if count == 0:
        return []
    most = len(greedy_runs(lengths, budget))
    # The run that ends at window j (exclusive) holds at most budget // its last window, one at least.
    first = [max(0, j - max(1, budget // int(sizes[j - 1]))) for j in range(1, count + 1)]
    padded = np.full(count + 1, np.inf)
    padded[0] = 0.0
    starts: list[np.ndarray] = []
    best_padding, best_runs = np.inf, 0
    for runs in range(1, most + 1):
        now = np.full(count + 1, np.inf)
        start = np.zeros(count + 1, dtype=np.int64)
        for j in range(1, count + 1):
            lo = first[j - 1]
            cost = padded[lo:j] + (j - np.arange(lo, j)) * sizes[j - 1]
            at = int(np.argmin(cost))
            now[j], start[j] = cost[at], lo + at
        starts.append(start)
        padded = now
        if padded[count] < best_padding:
            best_padding, best_runs = padded[count], runs
    out, end = [], count
    for runs in range(best_runs, 0, -1):
        begin = int(starts[runs - 1][end])
        out.append(end - begin)
        end = begin
    return out[::-1]


class TransientInferenceError(RuntimeError):
    """A resource error (out of memory, ...) that in-process retries did not cure.

    It escapes RunInference and fails the bundle, so that the runner retries the bundle
    (Dataflow, later and perhaps elsewhere) instead of turning a passing shortage into row errors.
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


@dataclasses.dataclass(frozen=True)
class _Window:
    example: int
    order: int  # position in tokenizer output: window order within its example
    encoding: Any
    p_mask: np.ndarray

    @property
    def length(self) -> int:
        return len(self.encoding.ids)


class QuestionAnsweringModelHandler(ModelHandler[QaExample, PredictionResult, LoadedModel]):
    """Batched extractive QA: fast tokenizer + AutoModelForQuestionAnswering.

    Long contexts are split into overlapping windows; windows of the whole batch are
    sorted by length and run in micro-batches padded only to their longest window. A
    micro-batch holds at most ``tokens_per_forward`` padded tokens: on a CPU, one huge
    forward pass is slower per row than several cache-sized ones.
    """

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
        raised as ``TransientInferenceError`` to fail the bundle; any other error is narrowed
        down by halving to the rows that cause it, which become row errors.
        """
        if self._unreported_loads:
            metrics.MODEL_LOADS.inc(self._unreported_loads)
            self._unreported_loads = 0
        if self._settings.watch_pattern:
            # The newest published model for every new batch (a batch never changes model midway).
            model = self._watcher().current()
        predictions = self._answer_isolating(list(batch), model)
        return [PredictionResult(example, prediction, model.model_id) for example, prediction in zip(batch, predictions)]

    def _answer_isolating(self, batch: list[QaExample], model: LoadedModel) -> list[QaPrediction]:
        try:
            return self._answer(batch, model)
        except Exception as exc:  # pylint: disable=broad-except
            if is_transient(exc):
                return self._retry_transient(batch, model, exc)
            if len(batch) == 1:
                first_line = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
                _LOGGER.warning("the model failed on one row: %s: %s", type(exc).__name__, first_line)
                return [QaPrediction(span=None, error=f"model failed on this row: {type(exc).__name__}: {first_line}",
                                     kind=RowErrorKind.MODEL.value)]
            middle = len(batch) // 2
            return self._answer_isolating(batch[:middle], model) + self._answer_isolating(batch[middle:], model)

    def _retry_transient(self, batch: list[QaExample], model: LoadedModel, exc: BaseException) -> list[QaPrediction]:
        metrics.INFERENCE_RETRIES.inc()
        _LOGGER.warning("resource error on a batch of %d rows (%s: %s); retrying with smaller batches",
                        len(batch), type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
        _free_memory(model)
        if len(batch) > 1:
            middle = len(batch) // 2
            return self._answer_isolating(batch[:middle], model) + self._answer_isolating(batch[middle:], model)
        for attempt in range(1, TRANSIENT_ATTEMPTS_PER_ROW + 1):
            time.sleep(0.5 * 2 ** (attempt - 1))
            try:
                return self._answer(batch, model)
            except Exception as again:  # pylint: disable=broad-except
                if not is_transient(again):
                    return self._answer_isolating(batch, model)
                metrics.INFERENCE_RETRIES.inc()
                exc = again
                _free_memory(model)
        raise TransientInferenceError(
            f"resource error persisted through {TRANSIENT_ATTEMPTS_PER_ROW} retries of one row: "
            f"{type(exc).__name__}: {exc}") from exc

    def _answer(self, batch: Sequence[QaExample], model: LoadedModel) -> list[QaPrediction]:
        windows, errors = self._tokenize(batch, model.tokenizer)
        decoded: list[list[tuple[_Window, tuple]]] = [[] for _ in batch]
        for chunk, (starts, ends) in self._forward(windows, model):
            for window, start_logits, end_logits in zip(chunk, starts, ends):
                length = window.length
                decoded[window.example].append((window, decode.window_candidates(
                    start_logits[:length], end_logits[:length], window.p_mask,
                    max_answer_len=self._settings.max_answer_len)))
        predictions = []
        for index, (_, context) in enumerate(batch):
            if errors.get(index):
                predictions.append(QaPrediction(span=None, error=errors[index],
                                                kind=RowErrorKind.QUESTION_TOO_LONG.value))
                continue
            # Back to window order: equal answers from several windows merge into the
            # first one's offsets, as in the reference, so the order matters.
            in_order = sorted(decoded[index], key=lambda item: item[0].order)
            encodings = [window.encoding for window, _ in in_order]
            span = decode.best_answer(
                context, [candidates for _, candidates in in_order],
                lambda w, s, e, encodings=encodings: decode.word_aligned_span(encodings[w], s, e))
            predictions.append(QaPrediction(span=span, error="" if span else "no answer span found",
                                            kind="" if span else RowErrorKind.NO_ANSWER.value))
        return predictions

    def _tokenize(self, batch: Sequence[QaExample], tokenizer) -> tuple[list[_Window], dict[int, str]]:
        kwargs = dict(truncation="only_second", max_length=self._settings.max_seq_len, stride=self._settings.doc_stride,
                      return_overflowing_tokens=True, padding=False)
        questions = [q for q, _ in batch]
        contexts = [c for _, c in batch]
        errors: dict[int, str] = {}
        try:
            encoded = tokenizer(questions, contexts, **kwargs)
            per_example = [(encoded["overflow_to_sample_mapping"][i], enc)
                           for i, enc in enumerate(encoded.encodings)]
        except Exception:  # pylint: disable=broad-except
            # One example that cannot be windowed (a question longer than the window)
            # fails the whole batch call; redo it one by one to isolate it.
            per_example = []
            for index, (question, context) in enumerate(batch):
                try:
                    single = tokenizer(question, context, **kwargs)
                except Exception as exc:  # pylint: disable=broad-except
                    errors[index] = f"question too long for max_seq_len {self._settings.max_seq_len}: {exc}"
                    continue
                per_example.extend((index, enc) for enc in single.encodings)
        cls_id = tokenizer.cls_token_id
        windows = []
        for order, (example, encoding) in enumerate(per_example):
            sequence_ids = encoding.sequence_ids
            p_mask = np.array([sid != 1 for sid in sequence_ids], dtype=bool)
            if cls_id is not None:
                p_mask[np.asarray(encoding.ids) == cls_id] = False
            windows.append(_Window(example=int(example), order=order, encoding=encoding, p_mask=p_mask))
        return windows, errors

    # How length-sorted windows are cut into micro-batches: run sizes from (lengths, budget).
    split_runs = staticmethod(least_padding_runs)

    @classmethod
    def _micro_batches(cls, ordered: list[_Window], budget: int):
        """Splits length-sorted windows into runs of at most ``budget`` padded tokens (``split_runs``)."""
        begin = 0
        for size in cls.split_runs([window.length for window in ordered], budget):
            yield ordered[begin:begin + size]
            begin += size

    def _forward(self, windows: list[_Window], model: LoadedModel):
        """Yields ``(chunk, (start_logits, end_logits))`` per length-sorted micro-batch."""
        import torch
        ordered = sorted(windows, key=lambda w: w.length)
        input_names = [n for n in model.tokenizer.model_input_names
                       if n in ("input_ids", "attention_mask", "token_type_ids")]
        pad_id = model.tokenizer.pad_token_id or 0
        budget = self._settings.tokens_per_forward or default_tokens_per_forward(model.device, model.precision)
        for chunk in self._micro_batches(ordered, budget):
            width = chunk[-1].length
            ids = np.full((len(chunk), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            types = np.zeros((len(chunk), width), dtype=np.int64)
            for row, window in enumerate(chunk):
                ids[row, :window.length] = window.encoding.ids
                mask[row, :window.length] = 1
                types[row, :window.length] = window.encoding.type_ids
            arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            inputs = {name: torch.from_numpy(arrays[name]).to(model.device) for name in input_names}
            with runtime.current().forward_slots(self._settings.concurrent_calls), torch.inference_mode():
                output = model.model(**inputs)
            yield chunk, (output.start_logits.float().cpu().numpy(), output.end_logits.float().cpu().numpy())


def _free_memory(model: LoadedModel) -> None:
    """Gives cached memory back before a retry (the CUDA caching allocator keeps freed blocks)."""
    gc.collect()
    if str(model.device).startswith("cuda"):
        import torch
        torch.cuda.empty_cache()
