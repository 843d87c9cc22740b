"""A batch's windows as arrays: the same tokens, masks and order as one tokenizer call per window."""

import numpy as np
import pytest

from beam_qa.errors import RowErrorKind
from beam_qa.qa.windows import (check_rows, least_padding_runs, micro_batches, min_new_tokens, tokenize,
                                windows_needed)
from tests.long_rows import text_of_tokens


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model)


BATCH = [
    ("Who?", "Alice met Bob in Paris."),
    ("Which token?", " ".join(f"token{i}" for i in range(700))),  # several windows
    ("q " * 600, "a question longer than any window"),              # a row error, not a batch failure
    ("Where?", "Short."),
]


def test_arrays_hold_each_windows_tokens_and_the_reference_answer_mask(tokenizer):
    windows = tokenize(BATCH, tokenizer, max_seq_len=64, doc_stride=16, type_ids=True)
    assert set(windows.errors) == {2} and windows.errors[2][0] is RowErrorKind.QUESTION_TOO_LONG
    assert windows.errors[2][1].startswith("question too long for max_seq_len 64: ")
    reference = []
    for index, (question, context) in enumerate(BATCH):
        if index == 2:
            continue
        encoded = tokenizer(question, context, truncation="only_second", max_length=64, stride=16,
                            return_overflowing_tokens=True)
        reference += [(index, enc) for enc in encoded.encodings]
    assert windows.example.tolist() == [index for index, _ in reference]
    assert len(windows) == len(reference) > 4
    for row, (_, enc) in enumerate(reference):
        length = len(enc.ids)
        assert windows.lengths[row] == length
        assert windows.ids[row, :length].tolist() == enc.ids
        assert (windows.ids[row, length:] == tokenizer.pad_token_id).all()
        assert windows.type_ids[row, :length].tolist() == enc.type_ids
        # The reference's p_mask: not the context, except CLS; negated, and nothing on padding.
        p_mask = np.array([sid != 1 for sid in enc.sequence_ids], dtype=bool)
        p_mask[np.asarray(enc.ids) == tokenizer.cls_token_id] = False
        assert windows.allowed[row, :length].tolist() == (~p_mask).tolist()
        assert not windows.allowed[row, length:].any()
    bounds = windows.example_bounds(len(BATCH)).tolist()
    assert [bounds[i + 1] - bounds[i] for i in range(len(BATCH))] == [
        sum(1 for index, _ in reference if index == i) for i in range(len(BATCH))]


def test_model_inputs_are_padded_to_the_longest_window_asked_for(tokenizer):
    windows = tokenize(BATCH[:2], tokenizer, max_seq_len=64, doc_stride=16)
    rows = np.array([0, 1])
    inputs = windows.inputs(rows, ["input_ids", "attention_mask", "token_type_ids"])
    width = int(windows.lengths[rows].max())
    assert set(inputs) == {"input_ids", "attention_mask"}  # no type ids were asked of the tokenizer
    assert inputs["input_ids"].shape == inputs["attention_mask"].shape == (2, width)
    assert inputs["attention_mask"].sum(axis=1).tolist() == windows.lengths[rows].tolist()


def test_a_batch_of_only_failed_rows_has_no_windows(tokenizer):
    windows = tokenize([("q " * 600, "ctx")], tokenizer, max_seq_len=64, doc_stride=16)
    assert len(windows) == 0 and set(windows.errors) == {0}
    assert micro_batches(windows.lengths, 1024) == []


def test_a_gpu_sized_batch_of_short_windows_is_split_within_the_budget():
    lengths = sorted(np.random.default_rng(0).integers(20, 384, 4000).tolist())
    runs = least_padding_runs(lengths, 65536)
    assert sum(runs) == 4000 and all(size * lengths[sum(runs[:i + 1]) - 1] <= 65536 for i, size in enumerate(runs))


def _windows_per_row(windows, rows: int) -> list[int]:
    bounds = windows.example_bounds(rows).tolist()
    return [bounds[i + 1] - bounds[i] for i in range(rows)]


def test_a_question_that_would_panic_the_tokenizer_is_a_row_error_and_its_batch_mates_are_windowed(tokenizer):
    """272 tokens leave the context 109 of a 384-token window, fewer than doc_stride 128: the
    tokenizers library panics (a BaseException) for the whole batch call."""
    context = text_of_tokens(tokenizer, 1000)
    batch = [("Who?", "Alice met Bob in Paris."), (text_of_tokens(tokenizer, 272), context),
             (text_of_tokens(tokenizer, 1), context)]
    windows = tokenize(batch, tokenizer, max_seq_len=384, doc_stride=128)
    assert set(windows.errors) == {1}
    kind, message = windows.errors[1]
    assert kind is RowErrorKind.QUESTION_TOO_LONG
    assert message == ("question too long for max_seq_len 384: 272 tokens; with doc_stride 128 a question may have "
                       "at most 189 tokens, so that each window adds 64 new context tokens; shorten the question")
    assert _windows_per_row(windows, 3) == [1, 0, windows_needed(1000, 384 - 3 - 1, 128)]


def test_a_question_that_leaves_one_new_token_per_window_is_a_row_error_before_any_window(tokenizer):
    """252 tokens: each window would advance by one token, about 5,900 windows for 6,000 tokens."""
    context = text_of_tokens(tokenizer, 6000)
    question = text_of_tokens(tokenizer, 252)
    assert windows_needed(6000, 384 - 3 - 252, 128) == 5872
    short = text_of_tokens(tokenizer, 1)
    windows = tokenize([(question, context), (short, context)], tokenizer, max_seq_len=384, doc_stride=128)
    assert windows.errors[0][0] is RowErrorKind.QUESTION_TOO_LONG and "252 tokens" in windows.errors[0][1]
    assert _windows_per_row(windows, 2) == [0, windows_needed(6000, 384 - 3 - 1, 128)] == [0, 24]


def test_the_longest_question_allowed_still_advances_each_window_by_the_minimum(tokenizer):
    assert min_new_tokens(384, 128, 3) == 64 and min_new_tokens(64, 16, 3) == 8
    assert min_new_tokens(384, 300, 3) == 40  # half of what an empty question leaves, when less than half the stride
    context = text_of_tokens(tokenizer, 2000)
    longest = text_of_tokens(tokenizer, 189)
    windows = tokenize([(longest, context)], tokenizer, max_seq_len=384, doc_stride=128)
    assert windows.errors == {}
    assert len(windows) == windows_needed(2000, 384 - 3 - 189, 128) == 1 + -(-(2000 - 192) // 64)
    assert set(check_rows([(longest + " the", context)], tokenizer, max_seq_len=384, doc_stride=128)) == {0}


@pytest.mark.parametrize("question_tokens, context_tokens", [(0, 0), (5, 100), (5, 376), (5, 377), (40, 2000),
                                                              (100, 341), (189, 5000)])
def test_the_window_count_is_the_tokenizers(tokenizer, question_tokens, context_tokens):
    question = text_of_tokens(tokenizer, question_tokens)
    context = text_of_tokens(tokenizer, context_tokens)
    windows = tokenize([(question, context)], tokenizer, max_seq_len=384, doc_stride=128)
    assert len(windows) == windows_needed(context_tokens, 384 - 3 - question_tokens, 128)


def test_a_row_that_needs_more_windows_than_the_limit_is_a_context_error_with_no_window(tokenizer):
    context = text_of_tokens(tokenizer, 2000)
    batch = [(text_of_tokens(tokenizer, 1), context), ("Who?", "Alice met Bob in Paris.")]
    needed = windows_needed(2000, 384 - 3 - 1, 128)
    assert needed == 8
    windows = tokenize(batch, tokenizer, max_seq_len=384, doc_stride=128, max_windows=needed - 1)
    kind, message = windows.errors[0]
    assert kind is RowErrorKind.CONTEXT_TOO_LONG and message.startswith("context needs 8 windows with this question, "
                                                                         "over the limit of 7 a row")
    assert _windows_per_row(windows, 2) == [0, 1]
    assert tokenize(batch, tokenizer, max_seq_len=384, doc_stride=128, max_windows=needed).errors == {}


def test_a_megabyte_question_is_too_long_without_being_tokenized(tokenizer):
    batch = [("why " * 250_000, "ctx"), ("Who?", "Alice.")]
    errors = check_rows(batch, tokenizer, max_seq_len=384, doc_stride=128)
    assert errors[0][0] is RowErrorKind.QUESTION_TOO_LONG and "1,000,000 characters" in errors[0][1]
    assert set(errors) == {0}


class _PanicsOnOneRow:
    """A tokenizer whose pair call panics (as tokenizers does) when a pair holds ``marker``."""

    def __init__(self, tokenizer, marker: str, error: BaseException):
        self._tokenizer, self._marker, self._error = tokenizer, marker, error

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, text, text_pair=None, **kwargs):
        pairs = text_pair if isinstance(text_pair, list) else [text_pair]
        if any(pair is not None and self._marker in pair for pair in pairs):
            raise self._error
        return self._tokenizer(text, text_pair, **kwargs)


class _InjectedPanic(BaseException):
    """Stands for pyo3_runtime.PanicException: a BaseException, not an Exception."""


def test_whatever_the_tokenizer_raises_for_one_row_is_that_rows_error(tokenizer):
    panicking = _PanicsOnOneRow(tokenizer, "boom", _InjectedPanic("stride must be strictly less than max_len"))
    batch = [("Who?", "Alice met Bob."), ("Why?", "It went boom."), ("Where?", "In Paris.")]
    windows = tokenize(batch, panicking, max_seq_len=64, doc_stride=16)
    assert windows.errors == {1: (RowErrorKind.MODEL, "the tokenizer failed on this row: _InjectedPanic: "
                                                      "stride must be strictly less than max_len")}
    assert _windows_per_row(windows, 3) == [1, 0, 1]


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(1), MemoryError()])
def test_an_interrupt_or_a_shortage_of_memory_is_never_a_row_error(tokenizer, error):
    """A shortage of memory goes up to the handler, which retries it in smaller batches."""
    batch = [("Who?", "Alice met Bob."), ("Why?", "It went boom.")]
    with pytest.raises(type(error)):
        tokenize(batch, _PanicsOnOneRow(tokenizer, "boom", error), max_seq_len=64, doc_stride=16)


def test_windows_beyond_the_limit_never_reach_the_model_even_if_the_bound_from_bytes_is_wrong(tokenizer, monkeypatch):
    """The bound from a context's UTF-8 length holds for WordPiece and byte-level tokenizers; for
    one that makes more tokens than bytes, the windows the tokenizer made are counted too."""
    import beam_qa.qa.windows as windows_module
    monkeypatch.setattr(windows_module, "windows_needed", lambda *args: 1)
    batch = [(text_of_tokens(tokenizer, 1), text_of_tokens(tokenizer, 2000)), ("Who?", "Alice met Bob in Paris.")]
    windows = tokenize(batch, tokenizer, max_seq_len=384, doc_stride=128, type_ids=True, max_windows=7)
    assert windows.errors[0][0] is RowErrorKind.CONTEXT_TOO_LONG and "needs 8 windows" in windows.errors[0][1]
    assert _windows_per_row(windows, 2) == [0, 1] and len(windows.encodings) == len(windows.type_ids) == 1
    assert windows.ids.shape[0] == windows.allowed.shape[0] == 1


def test_short_questions_and_contexts_are_checked_without_a_tokenizer_call(tokenizer):
    """The usual row is settled by UTF-8 lengths, so the checks add no tokenizer call to the batch's one."""
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def __call__(self, *args, **kwargs):
            calls.append(args)
            return tokenizer(*args, **kwargs)

    batch = [("Who met Bob?", "Alice met Bob in Paris."), ("Où est la tour ?", "À Paris. " * 500)]
    assert check_rows(batch, Counting(), max_seq_len=384, doc_stride=128, max_windows=398) == {}
    assert calls == []
    long_question = text_of_tokens(tokenizer, 100)
    assert check_rows([(long_question, "ctx")], Counting(), max_seq_len=384, doc_stride=128) == {}
    assert calls == [([long_question],)]
