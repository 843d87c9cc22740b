"""The forward passes of a batch: overlapped or not, decoded in numpy or in torch, the same candidates."""

import dataclasses

import numpy as np
import pytest

from beam_qa.qa import forward
from beam_qa.qa.handler import QuestionAnsweringModelHandler
from beam_qa.qa.windows import micro_batches, tokenize


@pytest.fixture(scope="module")
def loaded(tiny_model):
    return QuestionAnsweringModelHandler(tiny_model, device="cpu").load_model()


def _batch():
    from devtools.squad import squad_rows
    rows = [(r["question"], r["context"]) for r in squad_rows(limit=40)]
    rows.append(("Which token?", " ".join(f"token{i}" for i in range(900))))  # several windows
    return rows


def _windows(loaded, batch):
    windows = tokenize(batch, loaded.tokenizer, max_seq_len=384, doc_stride=128)
    return windows, micro_batches(windows.lengths, 1024)


def _same(a, b, *, exact: bool):
    assert len(a) == len(b)
    for (sa, ea, va), (sb, eb, vb) in zip(a, b):
        assert sa.tolist() == sb.tolist() and ea.tolist() == eb.tolist()
        if exact:
            assert va.tobytes() == vb.tobytes()
        else:
            np.testing.assert_allclose(va, vb, rtol=1e-5)


def test_overlapped_passes_give_the_same_candidates_bit_for_bit(loaded):
    windows, plan = _windows(loaded, _batch())
    assert len(plan) > 3
    kwargs = dict(max_answer_len=15, concurrent_calls=1)
    serial = forward.candidates(windows, plan, loaded, overlap=False, **kwargs)
    overlapped = forward.candidates(windows, plan, loaded, overlap=True, **kwargs)
    assert all(c is not None for c in serial)
    _same(serial, overlapped, exact=True)


def test_scoring_in_torch_where_the_logits_are_picks_the_same_spans(loaded):
    windows, plan = _windows(loaded, _batch())
    kwargs = dict(max_answer_len=15, concurrent_calls=1)
    numpy_path = forward.candidates(windows, plan, loaded, overlap=False, **kwargs)
    for overlap in (False, True):
        torch_path = forward.candidates(windows, plan, loaded, overlap=overlap, device_decode=True, **kwargs)
        _same(numpy_path, torch_path, exact=False)


class _FailsOnThirdPass:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, **inputs):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("boom on the third pass")
        return self.inner(**inputs)


@pytest.mark.parametrize("overlap", [False, True])
def test_a_failing_pass_raises_to_the_caller_and_the_rest_of_the_batch_is_not_run(loaded, overlap):
    windows, plan = _windows(loaded, _batch())
    failing = _FailsOnThirdPass(loaded.model)
    model = dataclasses.replace(loaded, model=failing)
    with pytest.raises(RuntimeError, match="third pass"):
        forward.candidates(windows, plan, model, max_answer_len=15, concurrent_calls=1, overlap=overlap)
    # Overlapped, the pass queued behind the failing one may have run (it is waited for before the
    # error is raised, so that no pass of this batch runs beside a retry); none after it.
    assert failing.calls == 3 if not overlap else 3 <= failing.calls <= 4
    assert failing.calls < len(plan)


def test_a_gpu_always_overlaps_and_a_cpu_only_with_a_core_to_spare(monkeypatch):
    import torch
    assert forward.overlap_pays("cuda") and forward.overlap_pays("cuda:1")
    monkeypatch.setattr(forward, "usable_cpus", lambda: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert not forward.overlap_pays("cpu")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert forward.overlap_pays("cpu")
