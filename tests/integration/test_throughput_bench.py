"""make bench's harness end to end on a small model: fresh processes, real CSVs, a fresh database."""

from __future__ import annotations

import json

import pytest

from benchmarks import throughput

pytestmark = pytest.mark.integration


def test_pipeline_shapes_read_back_the_handlers_answers_and_runinference_batch_sizes(tiny_model, capsys):
    throughput.main(["--model", tiny_model, "--rows", "40", "--variants", "handler,pipeline",
                     "--precisions", "fp32", "--shapes", "a,b", "--batch-size", "8",
                     "--pipeline-args=--status_interval_secs=0"])
    report = json.loads(capsys.readouterr().out)
    assert report["pipeline_args"] == ["--status_interval_secs=0"]
    assert report["machine"]["cpu_features"] is not None
    handler = report["handler"]["fp32"]
    assert handler["rows"] == 40 and handler["rows_per_s"] > 0 and " fp32 cpu(" in handler["model_id"]
    for shape, (files, per_file) in (("a", (1, 40)), ("b", (4, 10))):
        run = report["pipeline"][shape]["fp32"]
        assert (run["files"], run["rows_per_file"]) == (files, per_file)
        assert run["files_done"] == files and run["answers_csv_files"] == files and run["rows_stored"] == 40
        # RunInference's own distribution: every row went through a batch of at most 8.
        assert run["batches"] >= 40 / 8 and 1 <= run["mean_batch_size"] <= 8
        assert run["answers_identical_to_handler"] == 1.0
        assert run["elapsed_s"] > 0
    whats = {t["what"] for t in report["targets"]}
    assert "pipeline fp32 answers identical to the handler's, shape a" in whats
