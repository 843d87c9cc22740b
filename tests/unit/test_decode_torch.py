"""Span scoring in torch (the GPU path) picks the pairs the numpy reference picks; run here on the CPU."""

import numpy as np
import pytest

from beam_qa.qa import decode, decode_torch

torch = pytest.importorskip("torch")


def _batch(seed: int, count: int = 10, width: int = 200):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(40, width + 1, count)
    start = rng.normal(0, 3, (count, width)).astype(np.float32)
    end = rng.normal(0, 3, (count, width)).astype(np.float32)
    allowed = np.zeros((count, width), dtype=bool)
    for window, length in enumerate(lengths):
        allowed[window, 12:length - 1] = True
        allowed[window, 0] = True
    return start, end, allowed, lengths


@pytest.mark.parametrize("seed", range(5))
def test_torch_top_pairs_finish_to_the_reference_candidates(seed):
    start, end, allowed, lengths = _batch(seed)
    want = decode.batch_candidates(start, end, allowed, lengths)
    starts, ends, values = decode_torch.top_pairs(torch.from_numpy(start), torch.from_numpy(end),
                                                  torch.from_numpy(allowed), torch.from_numpy(lengths),
                                                  max_answer_len=15, top_k=decode.CANDIDATES_PER_WINDOW)
    assert starts.shape == ends.shape == values.shape == (len(lengths), decode.CANDIDATES_PER_WINDOW + 1)
    got = decode.finish_candidates(starts, ends, values, allowed, lengths, top_k=decode.CANDIDATES_PER_WINDOW,
                                   reference=lambda w: pytest.fail("no ties in these windows"))
    for (gs, ge, gv), (ws, we, wv) in zip(got, want):
        assert gs.tolist() == ws.tolist() and ge.tolist() == we.tolist()
        np.testing.assert_allclose(gv, wv, rtol=1e-5)  # torch sums in its own order


def test_padding_and_question_tokens_never_start_or_end_a_pair():
    start, end, allowed, lengths = _batch(9)
    start[~allowed] = 50.0  # the best logits sit where no answer may be
    end[~allowed] = 50.0
    starts, ends, _ = decode_torch.top_pairs(torch.from_numpy(start), torch.from_numpy(end),
                                             torch.from_numpy(allowed), torch.from_numpy(lengths),
                                             max_answer_len=15, top_k=12)
    rows = np.arange(len(lengths))[:, None]
    assert allowed[rows, starts].all() and allowed[rows, np.minimum(ends, allowed.shape[1] - 1)].all()
    assert (starts > 0).all() and (ends >= starts).all() and (ends - starts < 15).all()
