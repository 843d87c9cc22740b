"""A RunInference ModelHandler for extractive question answering."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from beam_qa import metrics
from beam_qa.qa import decode
from beam_qa.qa.model_store import LoadedModel, load_count, load_model

_LOGGER = logging.getLogger(__name__)

METRICS_NAMESPACE = metrics.NAMESPACE

QaExample = tuple[str, str]  # (question, context)

# Padded tokens per forward pass. On a CPU, passes that stay cache-sized beat one big
# pass per row (see README "Performance"); a GPU wants large batches.
CPU_TOKENS_PER_FORWARD = 1024
GPU_TOKENS_PER_FORWARD = 65536


def default_tokens_per_forward(device: str) -> int:
    """The micro-batch budget for a resolved device (``cpu``, ``cuda`` or ``cuda:N``)."""
    return GPU_TOKENS_PER_FORWARD if str(device).startswith("cuda") else CPU_TOKENS_PER_FORWARD


@dataclasses.dataclass(frozen=True)
class QaPrediction:
    """The model's answer for one example, or why there is none."""

    span: decode.Span | None
    error: str = ""


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

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        precision: str = "fp32",
        max_seq_len: int = 384,
        doc_stride: int = 128,
        max_answer_len: int = 15,
        min_batch_size: int = 1,
        max_batch_size: int = 32,
        max_batch_duration_secs: float | None = None,
        tokens_per_forward: int | None = None,
    ):
        super().__init__()
        self._model_name = model
        self._device = device
        self._precision = precision
        self._max_seq_len = max_seq_len
        self._doc_stride = doc_stride
        self._max_answer_len = max_answer_len
        self._tokens_per_forward = tokens_per_forward
        self._unreported_loads = 0
        self._batch_kwargs: dict[str, Any] = {
            "min_batch_size": min_batch_size, "max_batch_size": max_batch_size}
        if max_batch_duration_secs is not None:
            self._batch_kwargs["max_batch_duration_secs"] = max_batch_duration_secs

    def load_model(self) -> LoadedModel:
        before = load_count()
        model = load_model(self._model_name, self._device, self._precision)
        # RunInference loads in DoFn.setup(), outside any bundle, where a metric update is
        # lost; the count is reported with the next batch instead (see run_inference).
        self._unreported_loads += load_count() - before
        return model

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return dict(self._batch_kwargs)

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
        """Answers a batch; returns exactly one PredictionResult per example, in order."""
        if self._unreported_loads:
            metrics.counter("model_loads").inc(self._unreported_loads)
            self._unreported_loads = 0
        windows, errors = self._tokenize(batch, model.tokenizer)
        decoded: list[list[tuple[_Window, tuple]]] = [[] for _ in batch]
        for chunk, (starts, ends) in self._forward(windows, model):
            for window, start_logits, end_logits in zip(chunk, starts, ends):
                length = window.length
                decoded[window.example].append((window, decode.window_candidates(
                    start_logits[:length], end_logits[:length], window.p_mask,
                    max_answer_len=self._max_answer_len)))
        results = []
        for index, (question, context) in enumerate(batch):
            if errors.get(index):
                prediction = QaPrediction(span=None, error=errors[index])
            else:
                # Back to window order: equal answers from several windows merge into the
                # first one's offsets, as in the reference, so the order matters.
                in_order = sorted(decoded[index], key=lambda item: item[0].order)
                encodings = [window.encoding for window, _ in in_order]
                span = decode.best_answer(
                    context, [candidates for _, candidates in in_order],
                    lambda w, s, e, encodings=encodings: decode.word_aligned_span(encodings[w], s, e))
                prediction = QaPrediction(span=span, error="" if span else "no answer span found")
            results.append(PredictionResult((question, context), prediction, model.model_id))
        return results

    def _tokenize(self, batch: Sequence[QaExample], tokenizer) -> tuple[list[_Window], dict[int, str]]:
        kwargs = dict(truncation="only_second", max_length=self._max_seq_len, stride=self._doc_stride,
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
                    errors[index] = f"question too long for max_seq_len {self._max_seq_len}: {exc}"
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

    @staticmethod
    def _micro_batches(ordered: list[_Window], budget: int):
        """Splits length-sorted windows into runs of at most ``budget`` padded tokens (one window at least)."""
        chunk: list[_Window] = []
        for window in ordered:
            # Sorted by length, so the newest window sets the padded width.
            if chunk and (len(chunk) + 1) * window.length > budget:
                yield chunk
                chunk = []
            chunk.append(window)
        if chunk:
            yield chunk

    def _forward(self, windows: list[_Window], model: LoadedModel):
        """Yields ``(chunk, (start_logits, end_logits))`` per length-sorted micro-batch."""
        import torch
        ordered = sorted(windows, key=lambda w: w.length)
        input_names = [n for n in model.tokenizer.model_input_names
                       if n in ("input_ids", "attention_mask", "token_type_ids")]
        pad_id = model.tokenizer.pad_token_id or 0
        budget = self._tokens_per_forward or default_tokens_per_forward(model.device)
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
            with torch.inference_mode(), model.autocast():
                output = model.model(**inputs)
            yield chunk, (output.start_logits.float().cpu().numpy(), output.end_logits.float().cpu().numpy())
