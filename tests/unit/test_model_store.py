"""Loading per precision: one load per (model, device, precision), model_id says exactly what answers."""

from __future__ import annotations

import re
import warnings

import pytest

from beam_qa.qa import precision as precisions
from beam_qa.qa.handler import QuestionAnsweringModelHandler
from beam_qa.qa.model_store import load_count, load_model

ROWS = [("Where is the tower?", "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris."),
        ("Who met Bob?", "Alice met Bob in Paris on a rainy day in April.")]


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QA_ONNX_CACHE", str(tmp_path_factory.getbasetemp() / "onnx-cache"))


def test_model_id_names_weights_precision_device_and_runtime(tiny_model):
    loaded = load_model(tiny_model, "cpu", "fp32")
    match = re.fullmatch(rf"{re.escape(tiny_model)}@([0-9a-f]{{12}}) fp32 cpu\((.*)\) onnxruntime", loaded.model_id)
    assert match, loaded.model_id
    assert match.group(2) == precisions.describe_device("cpu")[4:-1]
    # The revision is the weights' content hash: the same files give the same id.
    import hashlib
    from pathlib import Path
    digest = hashlib.sha256(Path(tiny_model, "model.safetensors").read_bytes()).hexdigest()[:12]
    assert match.group(1) == digest


def test_the_handler_returns_the_model_id_with_every_answer(tiny_model):
    handler = QuestionAnsweringModelHandler(tiny_model, device="cpu", precision="bf16")
    model = handler.load_model()
    results = list(handler.run_inference(ROWS, model))
    assert [r.model_id for r in results] == [model.model_id] * 2
    assert " bf16 cpu(" in model.model_id


def test_one_load_per_model_device_and_precision(tiny_model):
    first = load_model(tiny_model, "cpu", "bf16")
    before = load_count()
    assert load_model(tiny_model, "cpu", "bf16") is first
    assert load_count() == before
    other = load_model(tiny_model, "cpu", "fp32")
    assert other is not first and other.precision == "fp32"


def test_auto_resolves_before_the_cache_key(tiny_model):
    chosen = precisions.choose("cpu")
    assert load_model(tiny_model, "cpu", "auto") is load_model(tiny_model, "cpu", chosen)


def test_bf16_answers_are_spans_of_the_context(tiny_model):
    import torch
    handler = QuestionAnsweringModelHandler(tiny_model, device="cpu", precision="bf16")
    model = handler.load_model()
    # The whole model is cast once (no autocast re-casting the weights on every call).
    assert {p.dtype for p in model.model.parameters()} == {torch.bfloat16}
    for (question, context), result in zip(ROWS, handler.run_inference(ROWS, model)):
        span = result.inference.span
        assert span and context[span.start:span.end] == span.answer


def test_int8_runs_through_onnx_runtime_without_deprecation_warnings(tiny_model):
    handler = QuestionAnsweringModelHandler(tiny_model, device="cpu", precision="int8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = handler.load_model()
        results = list(handler.run_inference(ROWS, model))
    deprecations = [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert deprecations == []
    assert type(model.model).__name__ == "OnnxQaRunner" and " int8 cpu(" in model.model_id
    for got, (_, context) in zip(results, ROWS):
        span = got.inference.span
        assert span and context[span.start:span.end] == span.answer


def test_int8_gives_fp32s_answers_with_scores_within_5_percent(tiny_model):
    """Same model, int8 weights: the same spans, and scores close *relative to their own size*.

    The tiny model's weights are random, so its scores are small (about 1e-4 to 1e-2) and its
    spans are the argmax of nearly flat logits: any real change to the arithmetic moves most of
    them. Per-channel int8 keeps all but a near-tie or two and most scores within a fraction of a
    percent; how far the odd one moves depends on the CPU's int8 kernels (one score moved 46% on a
    CI machine, none more than 1% on an AVX2-only one), so the bound is on nine rows in ten, as for
    the spans.
    """
    from devtools.squad import squad_rows
    rows = ROWS + [(r["question"], r["context"]) for r in squad_rows(40)]
    answers = {}
    for precision in ("fp32", "int8"):
        handler = QuestionAnsweringModelHandler(tiny_model, device="cpu", precision=precision)
        answers[precision] = [r.inference.span for r in handler.run_inference(rows, handler.load_model())]
    pairs = list(zip(answers["fp32"], answers["int8"]))
    same = [(a, b) for a, b in pairs if (a.start, a.end) == (b.start, b.end)]
    assert len(same) >= 0.9 * len(rows), f"int8 agrees with fp32 on {len(same)} of {len(rows)} spans"
    differences = sorted(abs(b.score - a.score) / a.score for a, b in same)
    close = [d for d in differences if d <= 0.05]
    assert len(close) >= 0.9 * len(rows), f"{len(close)} of {len(rows)} int8 scores within 5% of fp32's: " \
                                          f"the worst differ by {[f'{d:.1%}' for d in differences[-5:]]}"


def test_fp32_on_a_cpu_runs_on_onnx_runtime_by_default_with_torchs_answers(tiny_model):
    """The fused ONNX graph is the same fp32 arithmetic: the answers and scores match torch eager."""
    rows = ROWS + [(f"Which number is {i}?", " ".join(f"number {j} is here." for j in range(i, i + 40)))
                   for i in range(6)]
    ort = QuestionAnsweringModelHandler(tiny_model, device="cpu", precision="fp32")
    eager = QuestionAnsweringModelHandler(tiny_model, device="cpu", precision="fp32", runtime="torch")
    ort_model, eager_model = ort.load_model(), eager.load_model()
    assert type(ort_model.model).__name__ == "OnnxQaRunner" and ort_model.model_id.endswith(" onnxruntime")
    assert type(eager_model.model).__name__ != "OnnxQaRunner" and not eager_model.model_id.endswith("onnxruntime")
    for got, want in zip(ort.run_inference(rows, ort_model), eager.run_inference(rows, eager_model)):
        a, b = got.inference.span, want.inference.span
        assert (a.answer, a.start, a.end) == (b.answer, b.start, b.end)
        assert a.score == pytest.approx(b.score, abs=1e-4)


@pytest.mark.parametrize("runtime, precision, device, expected", [
    ("auto", "fp32", "cpu", "onnxruntime"), ("auto", "int8", "cpu", "onnxruntime"),
    ("auto", "bf16", "cpu", "torch"), ("auto", "fp16", "cuda", "torch"), ("auto", "fp32", "cuda", "torch"),
    ("torch", "fp32", "cpu", "torch"), ("onnxruntime", "fp32", "cpu", "onnxruntime"),
    ("torch", "int8", "cpu", ValueError), ("onnxruntime", "bf16", "cpu", ValueError),
    ("onnxruntime", "fp16", "cuda", ValueError),
])
def test_the_runtime_follows_precision_and_device(runtime, precision, device, expected):
    if expected is ValueError:
        with pytest.raises(ValueError, match="--runtime auto"):
            precisions.resolve_runtime(runtime, precision, device)
    else:
        assert precisions.resolve_runtime(runtime, precision, device) == expected


def test_an_onnx_file_is_built_once_and_a_racing_build_leaves_nothing_behind(tmp_path, monkeypatch):
    import shutil

    from beam_qa.qa.onnx_runtime import _build_once
    builds = []

    def build(staging):
        builds.append(staging)
        (staging / "model.onnx").write_text(f"build {len(builds)}")

    directory = tmp_path / "rev-fp32"
    first = _build_once(directory, "model.onnx", build)
    assert first.read_text() == "build 1"
    assert _build_once(directory, "model.onnx", build) == first and len(builds) == 1  # cached

    # A process that looked before another one finished: it builds too, and its rename loses.
    shutil.rmtree(directory)
    directory.mkdir()
    (directory / "model.onnx").write_text("the winner's")
    real_is_file = type(first).is_file
    monkeypatch.setattr(type(first), "is_file", lambda self: self != first and real_is_file(self))
    assert _build_once(directory, "model.onnx", build).read_text() == "the winner's"
    assert len(builds) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rev-fp32"]  # no staging folder left
