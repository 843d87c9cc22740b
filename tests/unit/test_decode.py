"""Span decoding against hand-built logits: no model needed."""

import numpy as np
import pytest

from beam_qa.qa import decode

# A window laid out as: [CLS] q q [SEP] c0 c1 c2 c3 c4 c5 [SEP]
P_MASK = np.array([0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
CONTEXT_TOKENS = range(4, 10)


def logits(peaks: dict[int, float], length: int = 11) -> np.ndarray:
    out = np.zeros(length, dtype=np.float32)
    for index, value in peaks.items():
        out[index] = value
    return out


def best(start, end, p_mask=P_MASK, **kwargs):
    starts, ends, scores = decode.window_candidates(start, end, p_mask, **kwargs)
    return int(starts[0]), int(ends[0]), float(scores[0])


def test_answer_at_the_very_start_of_the_context():
    assert best(logits({4: 10}), logits({4: 10}))[:2] == (4, 4)


def test_answer_at_the_very_end_of_the_context():
    assert best(logits({9: 10}), logits({9: 10}))[:2] == (9, 9)


def test_span_never_crosses_into_the_question_or_separators():
    # The question tokens carry the highest logits; they must be ignored.
    start = logits({1: 50, 2: 50, 5: 3})
    end = logits({2: 50, 3: 50, 6: 3})
    s, e, _ = best(start, end)
    assert s in CONTEXT_TOKENS and e in CONTEXT_TOKENS
    starts, ends, _ = decode.window_candidates(start, end, P_MASK)
    assert all(int(x) not in (1, 2, 3, 10) for x in list(starts) + list(ends))


def test_end_before_start_is_never_chosen():
    s, e, _ = best(logits({8: 10}), logits({5: 10}))
    assert s <= e


def test_max_answer_len_cuts_off_long_spans():
    start, end = logits({4: 10}), logits({9: 10})
    s, e, _ = best(start, end, max_answer_len=15)
    assert (s, e) == (4, 9)
    s, e, _ = best(start, end, max_answer_len=3)
    assert e - s < 3


def test_scores_are_products_of_window_softmaxes():
    start, end = logits({5: 4.0}), logits({6: 4.0})
    s, e, score = best(start, end)
    allowed = ~P_MASK
    p_start = np.exp(start[allowed]) / np.exp(start[allowed]).sum()
    p_end = np.exp(end[allowed]) / np.exp(end[allowed]).sum()
    # index of token 5 / 6 among allowed positions (CLS is allowed at position 0)
    assert (s, e) == (5, 6)
    assert score == pytest.approx(p_start[2] * p_end[3], rel=1e-5)


def test_padding_is_excluded_from_softmax():
    padded_p_mask = np.concatenate([P_MASK, np.zeros(5, dtype=bool)])
    attention = np.concatenate([np.ones(11), np.zeros(5)]).astype(int)
    start, end = logits({5: 4.0}, 16), logits({6: 4.0}, 16)
    start[11:] = 100  # garbage logits on padding
    unpadded = best(logits({5: 4.0}), logits({6: 4.0}))
    padded = best(start, end, padded_p_mask, attention_mask=attention)
    assert padded[:2] == unpadded[:2]
    assert padded[2] == pytest.approx(unpadded[2], rel=1e-6)


def _spans_for(window_spans):
    return lambda w, s, e: (window_spans[w][s][0], window_spans[w][e][1])


def test_best_span_can_come_from_a_later_window():
    context = "alpha beta gamma delta"
    # token -> char spans per window (window 0 covers alpha beta, window 1 gamma delta)
    spans = [{4: (0, 5), 5: (6, 10)}, {4: (11, 16), 5: (17, 22)}]
    weak = (np.array([4]), np.array([4]), np.array([0.2], dtype=np.float32))
    strong = (np.array([5]), np.array([5]), np.array([0.7], dtype=np.float32))
    span = decode.best_answer(context, [weak, strong], _spans_for(spans))
    assert (span.answer, span.start, span.end) == ("delta", 17, 22)
    assert span.score == pytest.approx(0.7)


def test_equal_answers_across_windows_add_up_ignoring_case():
    context = "Paris is in France. paris again. Lyon."
    spans = [{4: (0, 5)}, {4: (20, 25)}, {4: (33, 37)}]
    a = (np.array([4]), np.array([4]), np.array([0.3], dtype=np.float32))
    b = (np.array([4]), np.array([4]), np.array([0.3], dtype=np.float32))
    c = (np.array([4]), np.array([4]), np.array([0.5], dtype=np.float32))
    span = decode.best_answer(context, [a, b, c], _spans_for(spans))
    # "Paris" (0.3) + "paris" (0.3) beat "Lyon" (0.5); the first occurrence keeps its offsets.
    assert (span.answer, span.start, span.end) == ("Paris", 0, 5)
    assert span.score == pytest.approx(0.6)


def test_no_candidates_gives_none():
    empty = (np.array([], dtype=int), np.array([], dtype=int), np.array([], dtype=np.float32))
    assert decode.best_answer("ctx", [empty], lambda w, s, e: (0, 0)) is None


def test_word_alignment_widens_subword_tokens(tiny_model):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    # Whatever corpus trained the tokenizer, one of these long words splits into pieces.
    for word in ("uncharacteristically", "counterrevolutionaries", "internationalization", "hydroxychloroquine"):
        context = f"The {word} tower"
        enc = tokenizer("Which?", context).encodings[0]
        pieces = [i for i, (s, e) in enumerate(enc.offsets)
                  if enc.sequence_ids[i] == 1 and 4 <= s < 4 + len(word)]
        if len(pieces) > 1:
            break
    assert len(pieces) > 1, "no test word split into word pieces"
    # a span covering only the middle piece still yields the whole word
    assert decode.word_aligned_span(enc, pieces[1], pieces[1]) == (4, 4 + len(word))
