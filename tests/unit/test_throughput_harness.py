"""The throughput harness's pure parts: file shapes over the same rows, agreement, targets."""

from __future__ import annotations

import csv

from benchmarks import throughput


def test_the_three_shapes_split_the_same_rows():
    assert throughput.shapes(1000) == {"a": (1, 1000), "b": (100, 10), "c": (10, 100)}
    for files, per_file in throughput.shapes(1000).values():
        assert files * per_file == 1000


def test_write_shape_writes_every_row_once_in_order(tmp_path):
    rows = [{"question": f"q{i}", "context": f"c{i}"} for i in range(40)]
    incoming = throughput.write_shape(tmp_path, rows, 4, 10)
    files = sorted(incoming.glob("*.csv"))
    assert [f.name for f in files] == [f"part-{i:04d}.csv" for i in range(4)]
    seen = [r["question"] for f in files for r in csv.DictReader(f.open(encoding="utf-8"))]
    assert seen == [r["question"] for r in rows]


def test_agreement_compares_text_and_offsets_not_score_bits():
    a = [["Paris", 1, 6, 0.5], ["x", 0, 1, 0.1], None]
    b = [["Paris", 1, 6, 0.5000001], ["y", 0, 1, 0.1], None]
    assert throughput.agreement(a, b) == round(1 / 3, 4)
    assert throughput.agreement(a, b[:2]) is None


def test_targets_judge_what_was_measured():
    report = {
        "handler": {"bf16": {"vs_baseline": 3.2}},
        "pipeline": {
            "a": {"fp32": {"vs_baseline": 1.3, "mean_batch_size": 30.0, "max_batch_size": 32,
                           "answers_identical_to_handler": 1.0},
                  "bf16": {"vs_baseline": 2.4, "mean_batch_size": 20.0, "max_batch_size": 32}},
            "b": {"fp32": {"vs_baseline": 0.9, "mean_batch_size": 10.0, "max_batch_size": 32}},
        },
    }
    verdicts = {t["what"]: t["met"] for t in throughput.targets(report, "bf16")}
    assert verdicts["pipeline fp32 vs baseline, shape a"] is True
    assert verdicts["pipeline fp32 vs baseline, shape b"] is False
    assert verdicts["mean batch size / max_batch_size, shape a, fp32"] is True
    assert verdicts["mean batch size / max_batch_size, shape a, bf16"] is False
    assert "mean batch size / max_batch_size, shape b, fp32" not in verdicts  # only shapes a and c
    assert verdicts["handler in the best precision within the quality bound (bf16) vs baseline"] is True
    assert verdicts["whole bounded pipeline (bf16) vs baseline, shape a"] is False
    assert verdicts["pipeline fp32 answers identical to the handler's, shape a"] is True
