"""The batched span decoder gives the reference decoder's candidates bit for bit, window by window."""

import numpy as np
import pytest

from beam_qa.qa import decode


def _batch(rng, count, width, *, integer_logits=False, shortest=1):
    lengths = rng.integers(shortest, width + 1, count)
    lengths[0] = width  # one window fills the width
    shape = (count, width)
    if integer_logits:  # many exactly equal products: the reference's tie order decides
        start, end = rng.integers(-2, 3, shape).astype(np.float32), rng.integers(-2, 3, shape).astype(np.float32)
    else:
        start, end = rng.normal(0, 3, shape).astype(np.float32), rng.normal(0, 3, shape).astype(np.float32)
    allowed = np.zeros(shape, dtype=bool)
    for window, length in enumerate(lengths):
        question = int(rng.integers(0, max(1, length // 3)))
        allowed[window, question + 1:max(question + 1, length - 1)] = True  # context, then the last [SEP]
        allowed[window, 0] = length > 0 and rng.random() > 0.05  # CLS (rarely a model without one)
    start[~allowed] = rng.normal(0, 30, int((~allowed).sum()))  # question/padding logits must not matter
    return start, end, allowed, lengths


def _reference(start, end, allowed, lengths, **kwargs):
    return [decode.window_candidates(start[w, :n], end[w, :n], ~allowed[w, :n], **kwargs)
            for w, n in enumerate(lengths)]


def _assert_identical(got, want):
    assert len(got) == len(want)
    for (gs, ge, gv), (ws, we, wv) in zip(got, want):
        assert gs.tolist() == ws.tolist() and ge.tolist() == we.tolist()
        assert gv.dtype == wv.dtype == np.float32
        assert gv.tobytes() == wv.tobytes()  # the same bits, not merely close


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("width", [5, 17, 64, 130, 384, 521])
def test_batched_candidates_equal_the_reference_window_by_window(seed, width):
    rng = np.random.default_rng(seed * 1000 + width)
    start, end, allowed, lengths = _batch(rng, 9, width)
    got = decode.batch_candidates(start, end, allowed, lengths)
    _assert_identical(got, _reference(start, end, allowed, lengths))


@pytest.mark.parametrize("seed", range(4))
def test_ties_and_tiny_windows_take_the_references_own_order(seed):
    rng = np.random.default_rng(seed)
    start, end, allowed, lengths = _batch(rng, 12, 40, integer_logits=True)
    lengths[1:4] = [1, 2, 3]  # fewer pairs than candidates asked for
    got = decode.batch_candidates(start, end, allowed, lengths)
    _assert_identical(got, _reference(start, end, allowed, lengths))


@pytest.mark.parametrize("max_answer_len, top_k", [(1, 12), (3, 1), (15, 1), (15, 30), (30, 12)])
def test_other_answer_lengths_and_candidate_counts(max_answer_len, top_k):
    rng = np.random.default_rng(max_answer_len * 100 + top_k)
    start, end, allowed, lengths = _batch(rng, 8, 90)
    kwargs = dict(max_answer_len=max_answer_len, top_k=top_k)
    _assert_identical(decode.batch_candidates(start, end, allowed, lengths, **kwargs),
                      _reference(start, end, allowed, lengths, **kwargs))


def test_a_window_with_no_context_token_gives_what_the_reference_gives():
    start = np.zeros((2, 6), dtype=np.float32)
    allowed = np.zeros((2, 6), dtype=bool)
    allowed[1, [0, 3, 4]] = True
    lengths = np.array([6, 6])
    _assert_identical(decode.batch_candidates(start, start, allowed, lengths),
                      _reference(start, start, allowed, lengths))


def test_an_empty_batch_has_no_candidates():
    empty = np.zeros((0, 8), dtype=np.float32)
    assert decode.batch_candidates(empty, empty, empty.astype(bool), np.zeros(0, dtype=int)) == []


def test_windows_whose_best_scores_differ_never_need_the_reference(monkeypatch):
    rng = np.random.default_rng(11)
    start, end, allowed, lengths = _batch(rng, 16, 200, shortest=60)
    want = _reference(start, end, allowed, lengths)

    def reference_called(*args, **kwargs):
        raise AssertionError("the band path should have decided this window")
    monkeypatch.setattr(decode, "window_candidates", reference_called)
    _assert_identical(decode.batch_candidates(start, end, allowed, lengths), want)
