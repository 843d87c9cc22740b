"""make equivalence's row comparison: scores relative to their size, failures only alike when their errors are."""

from __future__ import annotations


import pytest

from benchmarks import equivalence

ROW = {"kind": "squad", "question": "Where?", "context": "In Paris."}


def answer(score: float, start: int = 3, text: str = "Paris") -> dict:
    return {"answer": text, "start": start, "end": start + len(text), "score": score}


def agreed(reference: dict, ours: dict) -> bool:
    return equivalence.compare([ROW], [reference], [ours])["agreed"] == 1


@pytest.mark.parametrize("reference, ours, expected", [
    # The random-weight model's scores are about 1e-4: batching moves them in the 6th digit.
    (answer(1.2345e-4), answer(1.2345e-4 * (1 + 3e-6)), True),
    (answer(1.2345e-4), answer(1.2345e-4 * 1.01), False),        # 1% off: a real difference
    (answer(1.2345e-4), answer(4.0e-4), False),                   # the old absolute 1e-3 let this pass
    (answer(0.66), answer(0.66 * (1 + 5e-5)), True),
    (answer(1.2345e-4), answer(1.2345e-4, start=0, text="In"), False),
])
def test_answers_agree_on_the_span_and_the_score_relative_to_its_size(reference, ours, expected):
    assert agreed(reference, ours) is expected


TRUNCATION = "Truncation error: Sequence to truncate too short to respect the provided max_length"


@pytest.mark.parametrize("reference, ours, expected", [
    ({"error": f"Exception: {TRUNCATION}"}, {"error": f"question too long for max_seq_len 384: {TRUNCATION}"}, True),
    ({"error": f"Exception: {TRUNCATION}"}, {"error": "empty question"}, False),
    ({"error": "ValueError: context is empty"}, {"error": "model failed on this row: IndexError: index out of range"},
     False),
    ({"error": f"Exception: {TRUNCATION}"}, answer(1e-4), False),
    (answer(1e-4), {"error": "empty context"}, False),
])
def test_two_failures_agree_only_when_they_fail_alike(reference, ours, expected):
    assert agreed(reference, ours) is expected


def test_the_report_names_the_largest_relative_score_difference():
    report = equivalence.compare([ROW, ROW], [answer(1e-4), answer(2e-4)], [answer(1e-4 * (1 + 2e-6)), answer(2e-4)])
    assert report["agreement"] == 1.0
    assert report["max_relative_score_diff_on_same_spans"] == pytest.approx(2e-6, rel=1e-3)
