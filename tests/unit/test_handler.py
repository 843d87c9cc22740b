"""The QA ModelHandler on a real (tiny, random-weight) model."""

import numpy as np
import pytest

from beam_qa.qa.handler import QuestionAnsweringModelHandler
from beam_qa.qa.model_store import load_count, load_model


@pytest.fixture(scope="module")
def handler(tiny_model):
    return QuestionAnsweringModelHandler(tiny_model, device="cpu")


def test_one_result_per_example_in_order_also_for_a_batch_of_one(handler):
    model = handler.load_model()
    single = list(handler.run_inference([("Who?", "Alice met Bob in Paris.")], model))
    assert len(single) == 1 and single[0].example == ("Who?", "Alice met Bob in Paris.")
    batch = [(f"Question {i}?", f"Context number {i} with words " * (i + 1)) for i in range(7)]
    results = list(handler.run_inference(batch, model))
    assert [r.example for r in results] == batch


def test_answers_are_substrings_at_their_offsets(handler):
    model = handler.load_model()
    context = "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris."
    (result,) = handler.run_inference([("Where is the tower?", context)], model)
    span = result.inference.span
    assert span is not None and 0 <= span.start < span.end <= len(context)
    assert context[span.start:span.end] == span.answer
    assert 0.0 < span.score <= 1.0


def test_long_contexts_are_windowed_and_batched_like_single_rows(handler):
    model = handler.load_model()
    long_context = " ".join(f"token{i}" for i in range(1500))
    rows = [("Which token?", long_context), ("Short?", "A short context."), ("Other?", long_context[:3000])]
    batched = [r.inference.span for r in handler.run_inference(rows, model)]
    one_by_one = [next(iter(handler.run_inference([row], model))).inference.span for row in rows]
    for got, want in zip(batched, one_by_one):
        assert (got.answer, got.start, got.end) == (want.answer, want.start, want.end)
        assert got.score == pytest.approx(want.score, abs=1e-4)
    assert batched[0].start >= 0 and long_context[batched[0].start:batched[0].end] == batched[0].answer


def test_a_question_too_long_for_the_window_is_a_row_error_not_a_batch_failure(handler):
    model = handler.load_model()
    rows = [("q " * 600, "context"), ("Fine?", "A fine context.")]
    results = list(handler.run_inference(rows, model))
    assert results[0].inference.span is None and "question too long" in results[0].inference.error
    assert results[1].inference.span is not None


def test_model_loads_once_per_process(tiny_model):
    first = load_model(tiny_model, "cpu")
    before = load_count()
    for _ in range(3):
        assert QuestionAnsweringModelHandler(tiny_model, device="cpu").load_model() is first
    assert load_count() == before


def test_device_auto_picks_cpu_without_a_gpu_and_cuda_is_refused(monkeypatch):
    import torch
    from beam_qa.qa.model_store import resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


def test_batching_knobs_reach_batch_elements():
    handler = QuestionAnsweringModelHandler("m", min_batch_size=4, max_batch_size=16, max_batch_duration_secs=0.5)
    assert handler.batch_elements_kwargs() == {
        "min_batch_size": 4, "max_batch_size": 16, "max_batch_duration_secs": 0.5}


def _window_by_window(handler, model, question, context):
    """The reference's orchestration: every window on its own, unpadded, in window order."""
    import torch
    from beam_qa.qa import decode
    encoded = model.tokenizer(question, context, truncation="only_second", max_length=384, stride=128,
                              return_overflowing_tokens=True)
    windows = []
    for enc in encoded.encodings:
        p_mask = np.array([sid != 1 for sid in enc.sequence_ids], dtype=bool)
        p_mask[0] = False  # CLS
        with torch.inference_mode():
            out = model.model(input_ids=torch.tensor([enc.ids]), attention_mask=torch.tensor([enc.attention_mask]))
        windows.append((enc, decode.window_candidates(out.start_logits[0].numpy(), out.end_logits[0].numpy(), p_mask)))
    return decode.best_answer(context, [c for _, c in windows],
                              lambda w, s, e: decode.word_aligned_span(windows[w][0], s, e))


def test_equal_answers_in_several_windows_keep_the_first_windows_offsets(handler):
    # The same sentences in every window: equal answer texts from several windows are
    # merged, and the merged answer must keep the offsets of the earliest window even
    # though the handler runs windows sorted by length (the last window is the shortest).
    model = handler.load_model()
    context = " ".join(["The cat sat on the mat near the door."] * 120)
    question = "Where did the cat sit?"
    (result,) = handler.run_inference([(question, context)], model)
    want = _window_by_window(handler, model, question, context)
    got = result.inference.span
    assert (got.answer, got.start, got.end) == (want.answer, want.start, want.end)
    assert got.score == pytest.approx(want.score, abs=1e-5)


def test_micro_batches_stay_within_the_token_budget_and_keep_every_window():
    from beam_qa.qa.windows import micro_batches
    lengths = np.array([384, 12, 40, 384, 41, 100, 200, 40, 384])
    chunks = micro_batches(lengths, 800)
    assert sorted(int(w) for chunk in chunks for w in chunk) == list(range(len(lengths)))
    assert [int(lengths[w]) for chunk in chunks for w in chunk] == sorted(lengths.tolist())
    for chunk in chunks:
        assert len(chunk) * lengths[chunk].max() <= 800 or len(chunk) == 1
    # A window longer than the whole budget still runs, alone.
    assert [len(c) for c in micro_batches(np.array([384, 384]), 100)] == [1, 1]
    assert micro_batches(np.array([], dtype=int), 800) == []


def _padded(lengths, runs):
    total, begin = 0, 0
    for size in runs:
        total += size * lengths[begin + size - 1]
        begin += size
    return total


def test_the_split_pads_least_with_no_more_passes_than_the_greedy_fill():
    from beam_qa.qa.windows import greedy_runs, least_padding_runs
    # The greedy fill packs three short windows with a long one and pads them all to 200.
    lengths = [10, 10, 10, 200, 200, 200]
    assert greedy_runs(lengths, 800) == [4, 2]
    assert _padded(lengths, greedy_runs(lengths, 800)) == 1200
    assert least_padding_runs(lengths, 800) == [3, 3]
    assert _padded(lengths, [3, 3]) == 630
    assert least_padding_runs([], 800) == []
    assert least_padding_runs([500, 900], 800) == [1, 1]  # longer than the budget: alone


def test_the_split_is_the_least_padding_one_among_all_splits_within_budget_and_pass_count():
    import itertools
    import random

    from beam_qa.qa.windows import greedy_runs, least_padding_runs
    rng = random.Random(7)
    for _ in range(300):
        budget = rng.choice([300, 800, 1024])
        lengths = sorted(rng.randint(5, 384) for _ in range(rng.randint(1, 9)))
        runs = least_padding_runs(lengths, budget)
        most = len(greedy_runs(lengths, budget))
        assert sum(runs) == len(lengths) and len(runs) <= most

        def fits(split):
            begin = 0
            for size in split:
                if size > 1 and size * lengths[begin + size - 1] > budget:
                    return False
                begin += size
            return True

        splits = []
        for cuts in itertools.product([0, 1], repeat=len(lengths) - 1):
            split, size = [], 1
            for cut in cuts:
                if cut:
                    split.append(size)
                    size = 0
                size += 1
            split.append(size)
            if len(split) <= most and fits(split):
                splits.append(split)
        assert fits(runs)
        assert _padded(lengths, runs) == min(_padded(lengths, split) for split in splits)


def test_gpus_get_a_larger_micro_batch_budget_than_cpus():
    from beam_qa.qa.handler import CPU_TOKENS_PER_FORWARD, default_tokens_per_forward
    assert default_tokens_per_forward("cpu") == CPU_TOKENS_PER_FORWARD
    assert default_tokens_per_forward("cuda") > 8 * CPU_TOKENS_PER_FORWARD
    assert default_tokens_per_forward("cuda:1") == default_tokens_per_forward("cuda")


def test_bf16_on_a_cpu_with_amx_gets_larger_passes_and_nothing_else_does():
    from beam_qa.qa.handler import CPU_AMX_BF16_TOKENS_PER_FORWARD, CPU_TOKENS_PER_FORWARD, default_tokens_per_forward
    amx = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    zen4 = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni")
    assert default_tokens_per_forward("cpu", "bf16", amx) == CPU_AMX_BF16_TOKENS_PER_FORWARD > CPU_TOKENS_PER_FORWARD
    assert default_tokens_per_forward("cpu", "bf16", zen4) == CPU_TOKENS_PER_FORWARD
    assert default_tokens_per_forward("cpu", "int8", amx) == CPU_TOKENS_PER_FORWARD
    assert default_tokens_per_forward("cpu", "fp32", amx) == CPU_TOKENS_PER_FORWARD


@pytest.mark.parametrize("error, transient", [
    (MemoryError(), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried"), True),
    (RuntimeError("CUDA error: device-side assert triggered"), False),
    (IndexError("index out of range in self"), False),
    (ValueError("bad input"), False),
])
def test_only_resource_errors_count_as_transient(error, transient):
    import torch
    from beam_qa.qa.handler import is_transient
    assert is_transient(error) is transient
    assert is_transient(torch.OutOfMemoryError("out of memory"))


def _outcomes(results) -> list[str]:
    return [r.inference.kind or "answered" for r in results]


def test_a_question_that_would_panic_the_tokenizer_is_its_rows_error_and_batch_mates_are_answered(handler):
    """A 272-token question over a context of several windows: the tokenizers library panics
    (pyo3_runtime.PanicException, a BaseException) unless the row is refused before tokenizing."""
    from tests.long_rows import text_of_tokens
    tokenizer = handler.load_model().tokenizer
    context = text_of_tokens(tokenizer, 1000)
    rows = [("Who?", "Alice met Bob in Paris."), (text_of_tokens(tokenizer, 272), context), ("Which?", context)]
    results = list(handler.run_inference(rows, handler.load_model()))
    assert _outcomes(results) == ["answered", "question_too_long", "answered"]
    assert results[1].inference.error.startswith("question too long for max_seq_len 384: 272 tokens;")


def test_a_question_that_advances_each_window_by_one_token_is_refused_before_any_window(handler, monkeypatch):
    from beam_qa.qa import forward
    from tests.long_rows import text_of_tokens
    model = handler.load_model()
    context = text_of_tokens(model.tokenizer, 6000)
    seen = []
    real = forward.candidates
    monkeypatch.setattr(forward, "candidates", lambda windows, plan, *a, **k: (seen.append(len(windows)),
                                                                              real(windows, plan, *a, **k))[1])
    rows = [(text_of_tokens(model.tokenizer, 252), context), ("Where?", context)]
    results = list(handler.run_inference(rows, model))
    assert _outcomes(results) == ["question_too_long", "answered"]
    assert seen and max(seen) <= 25  # the other row's windows only, not about 5,900 more
    assert handler.settings.window_limit() == 398


def test_a_base_exception_from_the_model_on_one_row_is_that_rows_error(tiny_model):
    from tests.handlers import PanickingHandler
    handler = PanickingHandler(tiny_model, device="cpu")
    model = handler.load_model()
    rows = [("Who?", "Alice met Bob in Paris."), ("[MASK] where?", "In Paris."), ("Where?", "In Paris, France.")]
    results = list(handler.run_inference(rows, model))
    assert _outcomes(results) == ["answered", "model", "answered"]
    assert results[1].inference.error == ("model failed on this row: InjectedPanic: injected by the test: "
                                          f"token {model.tokenizer.mask_token_id} in the batch")


def test_an_interrupt_from_the_model_is_not_a_row_error(tiny_model, monkeypatch):
    import tests.handlers as handlers
    monkeypatch.setattr(handlers, "InjectedPanic", KeyboardInterrupt)  # raised by name at call time
    handler = handlers.PanickingHandler(tiny_model, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        handler.run_inference([("[MASK]?", "In Paris.")], handler.load_model())


def test_a_batch_of_only_refused_rows_keeps_each_rows_own_error(handler):
    """No window to run: each row keeps its question_too_long, not a model failure of the empty batch."""
    results = list(handler.run_inference([("q " * 600, "context"), ("why " * 300, "more context")],
                                         handler.load_model()))
    assert _outcomes(results) == ["question_too_long", "question_too_long"]


def test_a_question_that_spells_the_cls_token_gets_a_span_of_its_own_context(handler):
    """Found by tests/fuzz/test_windows_fuzz.py: "[CLS]" in a question is a CLS token, which the
    reference also lets be an answer, reading its offsets in the context (a span past its end)."""
    model = handler.load_model()
    for context in ("", "Paris", "It is in Paris, France."):
        (result,) = handler.run_inference([("[CLS] [CLS] where?", context)], model)
        span = result.inference.span
        assert span is not None and 0 <= span.start <= span.end <= len(context), (context, span)
        assert context[span.start:span.end] == span.answer
