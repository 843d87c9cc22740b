"""make run's preflight: one line per missing prerequisite, with the command that installs it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from devtools import stack

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stack_command(command: str, path: str, run_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path, "QA_RUN_DIR": str(run_dir),
           "QA_PUBSUB_HOST": f"127.0.0.1:{free_port()}", "QA_GCS_URL": f"http://127.0.0.1:{free_port()}",
           "QA_PG_DSN": f"host=127.0.0.1 port={free_port()} user=postgres dbname=beam_qa"}
    return subprocess.run([sys.executable, "-m", "devtools.stack", command], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120, check=False)


def test_run_without_gcloud_java_or_postgresql_says_what_to_install_and_starts_nothing(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    run_dir = tmp_path / "run"
    result = stack_command("run", str(empty), run_dir)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    missing = [line for line in result.stderr.splitlines() if line.startswith("MISSING")]
    assert [line.split(":")[0] for line in missing] == ["MISSING gcloud", "MISSING java", "MISSING postgresql"]
    assert "apt-get install google-cloud-cli google-cloud-cli-pubsub-emulator" in missing[0]
    assert "apt-get install default-jre-headless" in missing[1]
    assert "apt-get install postgresql" in missing[2] and "Connection refused" in missing[2]
    assert "Nothing was started" in result.stderr
    # Nothing was started: not even the run directory (logs, pid files) was created.
    assert not run_dir.exists()


def test_gcloud_without_the_emulator_component_is_reported(tmp_path):
    sdk = tmp_path / "sdk"
    (sdk / "bin").mkdir(parents=True)
    gcloud = sdk / "bin" / "gcloud"
    gcloud.write_text("#!/bin/sh\nexit 0\n")
    gcloud.chmod(0o755)
    checks = {c.name: c for c in _with_path(str(sdk / "bin"), stack.check_gcloud)}
    assert checks["gcloud"].ok
    assert not checks["pubsub-emulator"].ok and "google-cloud-cli-pubsub-emulator" in checks["pubsub-emulator"].detail

    (sdk / "platform" / "pubsub-emulator").mkdir(parents=True)
    checks = {c.name: c for c in _with_path(str(sdk / "bin"), stack.check_gcloud)}
    assert checks["pubsub-emulator"].ok


def _with_path(path: str, function):
    saved = os.environ["PATH"]
    os.environ["PATH"] = path
    try:
        return function()
    finally:
        os.environ["PATH"] = saved


def test_check_lists_each_prerequisite_on_one_line(tmp_path):
    result = stack_command("check", os.environ["PATH"], tmp_path / "run")
    lines = result.stdout.splitlines()
    assert [line.split(":")[0].split()[-1] for line in lines] == [
        "gcloud", "pubsub-emulator", "java", "postgresql", "fake-gcs-server"]
    # PostgreSQL was pointed at a free port, so it is missing whatever else this machine has.
    assert lines[3].startswith("MISSING postgresql") and result.returncode == 2
    assert all(line.startswith(("ok ", "MISSING ")) for line in lines), lines


def test_the_dsn_is_read_without_psycopg_before_install():
    host_port = stack._dsn_host_port  # pylint: disable=protected-access
    assert host_port("host=db.local port=6543 user=x dbname=y") == ("db.local", 6543)
    assert host_port("dbname=y") == ("localhost", 5432)
    assert host_port("postgresql://u:p@10.0.0.5:5433/db") == ("10.0.0.5", 5433)
