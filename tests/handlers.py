"""Model handlers for tests that need to see or disturb the model calls of a real pipeline run.

They live in an importable module (not a test file) because the runner pickles the handler into
the graph: the in-process local runners then unpickle a copy that still updates this module's
globals. Tests put them in place with ``monkeypatch.setattr(beam_qa.pipeline, "make_handler", ...)``.
"""

from __future__ import annotations

import dataclasses
import threading

from beam_qa.qa.handler import QuestionAnsweringModelHandler

# question -> the thread that answered it (RecordingHandler)
ANSWERED_ON: dict[str, int] = {}
# how many more forward passes must fail (FlakyHandler)
FAILURES_LEFT = [0]
# one callable per batch, called (and dropped) before that batch is answered (HookedHandler)
BEFORE_BATCHES: list = []
# FailingBatchHandler: a batch holding a row whose question contains FAIL_MARKER[0] raises FAIL_WITH[0]()
FAIL_MARKER = ["<fail this batch>"]
FAIL_WITH: list = [None]
FORWARD_CALLS = [0]
_LOCK = threading.Lock()


class RecordingHandler(QuestionAnsweringModelHandler):
    """Records which thread answered each question."""

    def run_inference(self, batch, model, inference_args=None):
        results = super().run_inference(batch, model, inference_args)
        with _LOCK:
            for question, _ in batch:
                ANSWERED_ON[question] = threading.get_ident()
        return results


class HookedHandler(QuestionAnsweringModelHandler):
    """The real handler; before each batch, calls the next callable of ``BEFORE_BATCHES`` (if any)."""

    def run_inference(self, batch, model, inference_args=None):
        with _LOCK:
            hook = BEFORE_BATCHES.pop(0) if BEFORE_BATCHES else None
        if hook:
            hook()
        return super().run_inference(batch, model, inference_args)


class _FailingForward:
    """Wraps a model: its next ``FAILURES_LEFT`` forward passes raise an out-of-memory error."""

    def __init__(self, model, error_factory):
        self._model = model
        self._error_factory = error_factory

    def __call__(self, **inputs):
        with _LOCK:
            FORWARD_CALLS[0] += 1
            fail = FAILURES_LEFT[0] > 0
            if fail:
                FAILURES_LEFT[0] -= 1
        if fail:
            raise self._error_factory()
        return self._model(**inputs)


def out_of_memory():
    import torch
    return torch.OutOfMemoryError("out of memory (injected by the test): tried to allocate 2.00 GiB")


class FlakyHandler(QuestionAnsweringModelHandler):
    """The real handler on the real model, whose forward pass raises OOM ``FAILURES_LEFT`` times."""

    def load_model(self):
        loaded = super().load_model()
        # A copy: the process-wide cache keeps the real model for everyone else.
        return dataclasses.replace(loaded, model=_FailingForward(loaded.model, out_of_memory))


class InjectedPanic(BaseException):
    """Stands for ``pyo3_runtime.PanicException``: a BaseException, not an Exception."""


class FailingBatchHandler(QuestionAnsweringModelHandler):
    """The real handler, except that every batch holding a marked question fails as a whole.

    The error escapes ``run_inference`` the way a resource error does once the handler's own
    retries are spent (``TransientInferenceError``), or a panic raised outside the per-row work.
    """

    def run_inference(self, batch, model, inference_args=None):
        if any(FAIL_MARKER[0] in question for question, _ in batch):
            raise FAIL_WITH[0]()
        return super().run_inference(batch, model, inference_args)


class FlakyFailingBatchHandler(FailingBatchHandler, FlakyHandler):
    """Both: marked batches fail for good, and the forward pass runs out of memory ``FAILURES_LEFT`` times."""


def install(monkeypatch, handler_class) -> None:
    """Makes the pipeline build its usual handler, but as an instance of ``handler_class``.

    The subclasses above add no state, so re-classing the handler ``make_handler`` built keeps
    every option exactly as the pipeline set it.
    """
    import beam_qa.pipeline as pipeline
    original = pipeline.make_handler

    def make_handler(opts):
        handler = original(opts)
        handler.__class__ = handler_class
        return handler
    monkeypatch.setattr(pipeline, "make_handler", make_handler)


class InjectedPanic(BaseException):
    """Stands for ``pyo3_runtime.PanicException``: a BaseException that ``except Exception`` misses."""


class _PanicOnToken:
    """Wraps a model: a forward pass whose inputs hold ``token_id`` raises ``InjectedPanic``."""

    def __init__(self, model, token_id: int):
        self._model = model
        self._token_id = token_id

    def __call__(self, **inputs):
        if (inputs["input_ids"] == self._token_id).any():
            raise InjectedPanic(f"injected by the test: token {self._token_id} in the batch")
        return self._model(**inputs)


class PanickingHandler(QuestionAnsweringModelHandler):
    """The real handler on the real model, whose forward pass panics on any window holding
    the tokenizer's mask token (write ``[MASK]`` in a question)."""

    def load_model(self):
        loaded = super().load_model()
        return dataclasses.replace(loaded, model=_PanicOnToken(loaded.model, loaded.tokenizer.mask_token_id))
