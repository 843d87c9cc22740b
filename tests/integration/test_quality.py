"""`make quality` in the suite: the recorded F1-loss table that `--precision auto` decides by holds.

``benchmarks.quality`` measures EM/F1 of the demo model on its held-out articles in every
precision and fails when a precision that ``MEASURED_F1_LOSS`` puts within the bound loses more
than the bound (or bf16 does). Here it measures the demo model the
suite uses (``demo_model_dir``: the full build when cached, else the quick recipe), so every
`make test`, CI included, checks the table against a measurement.
"""

from __future__ import annotations

import json

import pytest

from beam_qa.qa import precision as precisions
from benchmarks import quality

# fp16 has no fast path on a CPU (measured as a proxy for CUDA): minutes on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def test_every_precision_keeps_the_answer_quality_the_table_records(demo_model_dir, capsys):
    code = quality.main([])
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == str(demo_model_dir)
    assert set(report["precisions"]) == set(precisions.PRECISIONS)
    assert report["problems"] == [], report["problems"]
    assert code == 0
    # A real model, not random weights: fp32 answers a fair share of the held-out questions.
    assert report["precisions"]["fp32"]["f1"] >= 30, report["precisions"]["fp32"]
