"""make bench's harness end to end on a small model: fresh processes, real CSVs, a fresh database."""

from __future__ import annotations

import json
import os
import time

import pytest

from beam_qa.qa import precision as precisions
from benchmarks import throughput

pytestmark = pytest.mark.integration


def test_pipeline_shapes_read_back_the_handlers_answers_and_runinference_batch_sizes(tiny_model, capsys):
    started = time.monotonic()
    throughput.main(["--model", tiny_model, "--rows", "40", "--variants", "handler,pipeline",
                     "--precisions", "fp32", "--shapes", "a,b", "--batch-size", "8",
                     "--pipeline-args=--status_interval_secs=0"])
    wall_s = time.monotonic() - started
    report = json.loads(capsys.readouterr().out)
    assert report["pipeline_args"] == ["--status_interval_secs=0"]
    # The machine as it is, not as assumed.
    assert report["machine"]["cpu_features"] == list(precisions.cpu_features())
    assert report["machine"]["cores"] == os.cpu_count()
    handler = report["handler"]["fp32"]
    assert handler["rows"] == 40 and " fp32 cpu(" in handler["model_id"]
    assert_rate(handler, 40)
    # Five batches of 8 were timed, each within the timed run.
    assert 0 < handler["batch_latency_ms"]["p50"] <= handler["batch_latency_ms"]["p95"] <= handler["elapsed_s"] * 1000
    timed = handler["elapsed_s"]
    for shape, (files, per_file) in (("a", (1, 40)), ("b", (4, 10))):
        run = report["pipeline"][shape]["fp32"]
        assert (run["files"], run["rows_per_file"]) == (files, per_file)
        assert run["files_done"] == files and run["answers_csv_files"] == files and run["rows_stored"] == 40
        # RunInference's own distribution: every row went through a batch of at most 8.
        assert run["batches"] >= 40 / 8 and run["mean_batch_size"] == round(40 / run["batches"], 1) <= 8
        assert run["answers_identical_to_handler"] == 1.0
        assert_rate(run, 40)
        timed += run["elapsed_s"]
    # The figures are times of this run: together no longer than the call that measured them.
    assert timed <= wall_s
    whats = {t["what"] for t in report["targets"]}
    assert "pipeline fp32 answers identical to the handler's, shape a" in whats


def assert_rate(result: dict, rows: int) -> None:
    """rows_per_s is ``rows`` over the run's own seconds (elapsed_s is rounded to 0.01 s)."""
    elapsed = result["elapsed_s"]
    assert elapsed > 0
    assert rows / (elapsed + 0.005) - 0.01 <= result["rows_per_s"] <= rows / max(elapsed - 0.005, 1e-3) + 0.01, result
