"""The windowing and answering of arbitrary rows: every row is an answer or a row error, never an exception.

Rows are built from drawn words (any Unicode, NULs, BOMs, CR-only line ends) repeated into
questions of 0 to 2,000 words and contexts of 0 to 20,000, so that long texts cost nothing to
draw; the real handler answers them on the tiny model, with the default windows (384 tokens,
stride 128) or smaller ones. The properties, for every drawn batch:

* it terminates, and every row is an answer (a span of its own context) or a row error of a kind
  in ``RowErrorKind``, in order, one result per row;
* the memory stays within the documented bound: a row that reaches the model has at most
  ``ModelSettings.window_limit()`` windows, each adding at least ``min_new_tokens`` new context
  tokens (``beam_qa/qa/windows.py``; about 140 KB of the process's memory per window), and a
  question that leaves less is a ``question_too_long`` error.
"""

from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import event, given, strategies as st

from beam_qa.errors import RowErrorKind
from beam_qa.qa import handler as handler_module
from beam_qa.qa.handler import QuestionAnsweringModelHandler
from beam_qa.qa.windows import min_new_tokens

# Words a real text holds, and the characters careless or hostile input brings.
_WORDS = ("the", "tower", "Paris", "1889", "é", "埃菲尔铁塔", "?", "Normans", "[SEP]", "[CLS]", "😀", "a-b")
_ODD = ("\x00", "\ufeff", "\r", "\n", "\r\n", "\t", "\u2028", "\u200b", "\ud7ff", "\U0010ffff", " ", "")

_word = st.one_of(st.sampled_from(_WORDS), st.sampled_from(_ODD),
                  st.text(st.characters(codec=None), min_size=1, max_size=8))
_separator = st.sampled_from([" ", "  ", "\r", "\n", "\r\n", "\x00", "\ufeff", "", "\t"])
# (max_seq_len, doc_stride, max_windows_per_row): the defaults, small windows that make short texts
# overflow, and a low window limit that long contexts reach.
_WINDOWS = [(384, 128, None), (64, 16, None), (128, 96, None), (32, 8, 12)]


@st.composite
def _text(draw, most_words: int) -> str:
    """A text of up to ``most_words`` drawn words, built by repeating a few of them."""
    words = draw(st.lists(_word, min_size=1, max_size=5))
    count = draw(st.one_of(st.integers(0, 40), st.integers(0, most_words)))
    separator = draw(_separator)
    return separator.join(words[i % len(words)] for i in range(count))


_row = st.tuples(_text(2_000), _text(20_000))


@pytest.fixture(scope="module")
def handlers(tiny_model):
    return {shape: QuestionAnsweringModelHandler(tiny_model, device="cpu", max_seq_len=shape[0], doc_stride=shape[1],
                                                 max_windows_per_row=shape[2])
            for shape in _WINDOWS}


@given(rows=st.lists(_row, min_size=1, max_size=4), shape=st.sampled_from(_WINDOWS))
def test_every_row_is_an_answer_or_a_row_error_within_the_window_bound(handlers, rows, shape):
    handler = handlers[shape]
    model = handler.load_model()
    max_seq_len, doc_stride, _ = shape
    specials = model.tokenizer.num_special_tokens_to_add(pair=True)
    least_new = min_new_tokens(max_seq_len, doc_stride, specials)
    limit = handler.settings.window_limit()
    windowed = []
    real_tokenize = handler_module.tokenize

    def recording_tokenize(batch, tokenizer, **kwargs):
        windows = real_tokenize(batch, tokenizer, **kwargs)
        windowed.append((list(batch), windows))
        return windows

    with mock.patch.object(handler_module, "tokenize", recording_tokenize):
        results = list(handler.run_inference(rows, model))

    assert [r.example for r in results] == rows
    for (question, context), result in zip(rows, results):
        prediction = result.inference
        event(f"outcome: {prediction.kind or 'answered'}")
        if prediction.span is None:
            assert prediction.error and RowErrorKind(prediction.kind), prediction
        else:
            span = prediction.span
            assert not prediction.error and 0 <= span.start <= span.end <= len(context)
            assert context[span.start:span.end] == span.answer
    for batch, windows in windowed:
        bounds = windows.example_bounds(len(batch)).tolist()
        for index, (question, _) in enumerate(batch):
            count = bounds[index + 1] - bounds[index]
            event(f"windows of a row: {'0' if not count else '1' if count == 1 else '2-9' if count < 10 else '10+'}")
            assert count <= limit
            if count:
                question_tokens = len(model.tokenizer(question, add_special_tokens=False)["input_ids"])
                assert max_seq_len - specials - question_tokens - doc_stride >= least_new
            else:
                assert index in windows.errors
