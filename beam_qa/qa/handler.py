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


@dataclasses.dataclass(frozen=True)
class QaPrediction:
    """The model's answer for one example, or why there is none."""

    span: decode.Span | None
    error: str = ""


@dataclasses.dataclass(frozen=True)
class _Window:
    example: int
    encoding: Any
    p_mask: np.ndarray

    @property
    def length(self) -> int:
        return len(self.encoding.ids)


class QuestionAnsweringModelHandler(ModelHandler[QaExample, PredictionResult, LoadedModel]):
    """Batched extractive QA: fast tokenizer + AutoModelForQuestionAnswering.

    Long contexts are split into overlapping windows; windows of the whole batch are
    sorted by length and run in micro-batches padded only to their longest window.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        quantize: str = "none",
        max_seq_len: int = 384,
        doc_stride: int = 128,
        max_answer_len: int = 15,
        min_batch_size: int = 1,
        max_batch_size: int = 32,
        max_batch_duration_secs: float | None = None,
        windows_per_forward: int = 32,
    ):
        super().__init__()
        self._model_name = model
        self._device = device
        self._quantize = quantize
        self._max_seq_len = max_seq_len
        self._doc_stride = doc_stride
        self._max_answer_len = max_answer_len
        self._windows_per_forward = windows_per_forward
        self._batch_kwargs: dict[str, Any] = {
            "min_batch_size": min_batch_size, "max_batch_size": max_batch_size}
        if max_batch_duration_secs is not None:
            self._batch_kwargs["max_batch_duration_secs"] = max_batch_duration_secs

    def load_model(self) -> LoadedModel:
        before = load_count()
        model = load_model(self._model_name, self._device, self._quantize)
        if load_count() > before:
            metrics.counter("model_loads").inc()
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
        windows, errors = self._tokenize(batch, model.tokenizer)
        candidates: list[list] = [[] for _ in batch]
        window_of: list[list[_Window]] = [[] for _ in batch]
        for chunk, (starts, ends) in self._forward(windows, model):
            for window, start_logits, end_logits in zip(chunk, starts, ends):
                length = window.length
                candidates[window.example].append(decode.window_candidates(
                    start_logits[:length], end_logits[:length], window.p_mask,
                    max_answer_len=self._max_answer_len))
                window_of[window.example].append(window)
        results = []
        for index, (question, context) in enumerate(batch):
            if errors.get(index):
                prediction = QaPrediction(span=None, error=errors[index])
            else:
                encodings = window_of[index]
                span = decode.best_answer(
                    context, candidates[index],
                    lambda w, s, e, encodings=encodings: decode.word_aligned_span(encodings[w].encoding, s, e))
                prediction = QaPrediction(span=span, error="" if span else "no answer span found")
            results.append(PredictionResult((question, context), prediction, self._model_name))
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
        for example, encoding in per_example:
            sequence_ids = encoding.sequence_ids
            p_mask = np.array([sid != 1 for sid in sequence_ids], dtype=bool)
            if cls_id is not None:
                p_mask[np.asarray(encoding.ids) == cls_id] = False
            windows.append(_Window(example=int(example), encoding=encoding, p_mask=p_mask))
        return windows, errors

    def _forward(self, windows: list[_Window], model: LoadedModel):
        """Yields ``(chunk, (start_logits, end_logits))`` per length-sorted micro-batch."""
        import torch
        ordered = sorted(windows, key=lambda w: w.length)
        input_names = [n for n in model.tokenizer.model_input_names
                       if n in ("input_ids", "attention_mask", "token_type_ids")]
        pad_id = model.tokenizer.pad_token_id or 0
        for offset in range(0, len(ordered), self._windows_per_forward):
            chunk = ordered[offset:offset + self._windows_per_forward]
            width = max(w.length for w in chunk)
            ids = np.full((len(chunk), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            types = np.zeros((len(chunk), width), dtype=np.int64)
            for row, window in enumerate(chunk):
                ids[row, :window.length] = window.encoding.ids
                mask[row, :window.length] = 1
                types[row, :window.length] = window.encoding.type_ids
            arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            inputs = {name: torch.from_numpy(arrays[name]).to(model.device) for name in input_names}
            with torch.inference_mode():
                output = model.model(**inputs)
            yield chunk, (output.start_logits.float().cpu().numpy(), output.end_logits.float().cpu().numpy())
