"""A batch's windows as arrays: the same tokens, masks and order as one tokenizer call per window."""

import numpy as np
import pytest

from beam_qa.qa.windows import least_padding_runs, micro_batches, tokenize


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
    assert set(windows.errors) == {2} and "question too long" in windows.errors[2]
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
