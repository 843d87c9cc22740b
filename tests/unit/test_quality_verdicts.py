"""`make quality`'s verdicts: a measured loss on the other side of the bound from the table fails it."""

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
    assert problems == ["int8: measured loss 1.6 is beyond the bound 1.0, but MEASURED_F1_LOSS['int8'] says 0.1; "
                        "update beam_qa/qa/precision.py"]


def test_a_precision_the_table_rules_out_that_measures_within_the_bound_fails(monkeypatch):
    monkeypatch.setitem(precisions.MEASURED_F1_LOSS, "fp16", 2.5)
    problems = quality.verdicts(report(fp32=0.0, bf16=0.3, fp16=0.2, int8=0.1))
    assert problems == ["fp16: measured loss 0.2 is within the bound 1.0, but MEASURED_F1_LOSS['fp16'] says 2.5; "
                        "update beam_qa/qa/precision.py"]


def test_bf16_beyond_the_bound_fails_even_where_the_table_agrees(monkeypatch):
    monkeypatch.setitem(precisions.MEASURED_F1_LOSS, "bf16", 1.4)
    assert quality.verdicts(report(fp32=0.0, bf16=1.4)) == [
        "bf16 loses 1.4 F1 points, more than the bound 1.0"]
