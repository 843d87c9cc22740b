"""make bench-overhead's harness end to end on a few rows: fresh processes, real CSVs, a fresh database."""

from __future__ import annotations

import json

import pytest

from benchmarks import overhead

pytestmark = pytest.mark.integration


def test_runs_are_checked_and_the_stage_table_is_filled(tiny_model, capsys):
    overhead.main(["--model", tiny_model, "--rows", "60", "--shapes", "1x60,3x20", "--runners", "default",
                   "--startup-rows", "20", "--stage-rows", "40", "--real-rows", "0"])
    report = json.loads(capsys.readouterr().out)
    assert report["machine"]["cpu_features"] is not None and "load_average_at_end" in report["machine"]
    runs = report["pipeline"]["default"]
    assert runs["startup_run"]["all_stored_and_done"] and runs["startup_run"]["rows"] == 20
    for shape, files in (("1x60", 1), ("3x20", 3)):
        run = runs[shape]
        assert (run["files"], run["rows"], run["rows_stored"], run["files_done"], run["answers_csv_files"]) == (
            files, 60, 60, files, files)
        assert run["all_stored_and_done"] and run["cpu_s"] > 0
    stages = report["stages"]
    assert stages["rows"] == 40 and stages["answered"] == 40
    per_row = stages["cpu_us_per_row"]
    for stage in ("reading", "tokenizing", "splitting", "model", "decoding", "postgres", "csv"):
        assert per_row[stage] >= 0, stage
    assert "beam" in stages["breakdown_us_per_row"]
    assert len(report["targets"]) == 2 and all(t["target"] == 2000 for t in report["targets"])
