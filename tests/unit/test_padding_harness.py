"""The padding benchmark's pure parts: batches as the file shapes deliver them, and the token counts."""

from __future__ import annotations

from benchmarks import padding
from beam_qa.qa.windows import greedy_runs, least_padding_runs


def test_shape_b_batches_hold_every_row_once_in_whole_ten_row_files():
    rows = [{"question": f"q{i}", "context": f"c{i}"} for i in range(100)]
    a = padding.batches(rows, "a", 32, seed=0)
    assert [len(batch) for batch in a] == [32, 32, 32, 4]
    assert [r for batch in a for r in batch] == rows
    b = [r for batch in padding.batches(rows, "b", 32, seed=0) for r in batch]
    assert sorted(b, key=lambda r: int(r["question"][1:])) == rows and b != rows
    for start in range(0, 100, 10):  # each file's ten rows stay together, in order
        first = b.index(rows[start])
        assert b[first:first + 10] == rows[start:start + 10]


def test_counts_are_the_tokens_each_split_sends_through_the_model():
    lengths = [[10, 10, 10, 200, 200, 200], [50]]
    greedy = padding.count(lengths, 800, greedy_runs)
    least = padding.count(lengths, 800, least_padding_runs)
    assert greedy == {"real_tokens": 680, "padded_tokens": 1250, "passes": 3, "padding_share": round(1 - 680 / 1250, 4)}
    assert least["real_tokens"] == 680 and least["padded_tokens"] == 680 and least["passes"] == 3
