"""`make quality`'s verdicts: a precision the table allows that loses more than the bound fails it."""

from __future__ import annotations

import pytest

from beam_qa.qa import precision as precisions
from benchmarks import quality

TABLE = {"fp32": 0.0, "bf16": 0.3, "fp16": 0.1, "int8": 0.1}


def report(**losses: float) -> dict:
    return {"precisions": {name: {"f1_loss_vs_fp32": loss} for name, loss in losses.items()}}


@pytest.fixture(autouse=True)
def table(monkeypatch):
    monkeypatch.setattr(precisions, "MEASURED_F1_LOSS", dict(TABLE))
    monkeypatch.setattr(precisions, "QUALITY_BOUND_F1", 1.0)


def test_measurements_on_the_tables_side_of_the_bound_pass():
    # Not equal to the table: on the same side of the bound (noise of a few answers is allowed).
    assert quality.verdicts(report(fp32=0.0, bf16=0.9, fp16=-0.6, int8=0.5)) == []


def test_a_precision_the_table_allows_that_loses_more_than_the_bound_fails():
    problems = quality.verdicts(report(fp32=0.0, bf16=0.3, fp16=0.1, int8=1.6))
    assert quality.notes(report(fp32=0.0, bf16=0.3, fp16=0.1, int8=1.6)) == []
    assert problems == ["int8: measured loss 1.6 is beyond the bound 1.0, but MEASURED_F1_LOSS['int8'] says 0.1; "
                        "update beam_qa/qa/precision.py"]


def test_a_precision_the_table_rules_out_that_measures_within_the_bound_is_a_note_not_a_failure(monkeypatch):
    """The table keeps the largest loss of any machine: a smaller one here is no contradiction."""
    monkeypatch.setitem(precisions.MEASURED_F1_LOSS, "int8", 2.5)
    measured = report(fp32=0.0, bf16=0.3, fp16=0.1, int8=0.1)
    assert quality.verdicts(measured) == []
    assert quality.notes(measured) == [
        "int8: measured loss 0.1 is within the bound here; the table keeps 2.5, the largest measured elsewhere, "
        "so auto does not choose it"]


def test_a_larger_loss_than_recorded_within_the_bound_is_a_note(monkeypatch):
    measured = report(fp32=0.0, bf16=0.6)
    assert quality.verdicts(measured) == []
    assert quality.notes(measured) == [
        "bf16: measured loss 0.6 is above the recorded 0.3 (both within the bound): the table keeps the largest"]


def test_a_loss_beyond_the_bound_that_the_table_records_passes(monkeypatch):
    monkeypatch.setitem(precisions.MEASURED_F1_LOSS, "int8", 2.6)
    assert quality.verdicts(report(fp32=0.0, int8=2.9)) == []


def test_bf16_beyond_the_bound_fails_even_where_the_table_agrees(monkeypatch):
    monkeypatch.setitem(precisions.MEASURED_F1_LOSS, "bf16", 1.4)
    assert quality.verdicts(report(fp32=0.0, bf16=1.4)) == [
        "bf16 loses 1.4 F1 points, more than the bound 1.0"]
