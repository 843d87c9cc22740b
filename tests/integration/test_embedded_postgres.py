"""The embedded PostgreSQL (devtools/postgres.py): what the stack and the tests use when no DSN is configured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from devtools import postgres
from devtools.stack import Stack, StackConfig, down
from tests.conftest import choose_test_postgres

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]



def server_facts(dsn: str) -> tuple[str, str, str]:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return conn.execute("SELECT current_setting('server_version'), current_setting('listen_addresses'), "
                            "current_user").fetchone()


def test_the_stack_starts_an_embedded_server_in_its_run_dir_when_no_dsn_is_configured(stack_run_dir):
    config = StackConfig(pg_dsn="", run_dir=stack_run_dir)
    stack = Stack(config)
    stack.start_postgres()
    try:
        port = postgres.EmbeddedPostgres(config.pg_data_dir).port()
        assert port and port != 5432
        assert config.pg_dsn == f"host=127.0.0.1 port={port} user=postgres dbname=beam_qa"
        stack.ensure_database()
        version, listening, user = server_facts(config.pg_dsn)
        assert version.startswith("18.") and listening == "127.0.0.1" and user == "postgres"
        assert (config.pg_data_dir / "PG_VERSION").read_text().strip() == "18"
        # What the pipeline and the upload service are given.
        assert config.client_env()["QA_PG_DSN"] == stack.upload_env()["QA_PG_DSN"] == config.pg_dsn

        # A second stack on the same run dir (make up after make up) reuses the running server.
        again = StackConfig(pg_dsn="", run_dir=config.run_dir)
        Stack(again).start_postgres()
        assert again.pg_dsn == config.pg_dsn
        if os.geteuid() == 0:  # PostgreSQL refuses root: the server runs as its own user
            owner = (config.pg_data_dir / "PG_VERSION").stat().st_uid
            assert owner != 0 and owner == postgres._server_account().pw_uid  # pylint: disable=protected-access
    finally:
        stack.stop()
    assert postgres.EmbeddedPostgres(config.pg_data_dir).port() is None
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(config.pg_dsn, connect_timeout=3)


def test_down_stops_the_embedded_server_that_up_left_running(stack_run_dir):
    config = StackConfig(pg_dsn="", run_dir=stack_run_dir)
    stack = Stack(config)
    stack.start_postgres()
    stack.detach()  # as make up does
    try:
        assert server_facts(config.pg_dsn.replace("dbname=beam_qa", "dbname=postgres"))[0].startswith("18.")
        assert down(StackConfig(pg_dsn="", run_dir=config.run_dir)) == ["postgres (embedded)"]
    finally:
        postgres.EmbeddedPostgres(config.pg_data_dir).stop()
    assert postgres.EmbeddedPostgres(config.pg_data_dir).port() is None
    assert down(StackConfig(pg_dsn="", run_dir=config.run_dir)) == []
    # Its data stays for the next make up, which starts it again on a new free port.
    stack = Stack(StackConfig(pg_dsn="", run_dir=config.run_dir))
    stack.start_postgres()
    try:
        assert server_facts(stack.config.pg_dsn.replace("dbname=beam_qa", "dbname=postgres"))[0].startswith("18.")
    finally:
        stack.stop()


def test_the_test_run_uses_a_configured_server_else_starts_its_own():
    """tests/conftest.py's choice: QA_TEST_PG_DSN wins; unset, an embedded server is started and exported."""
    configured = {"QA_TEST_PG_DSN": "host=db.example port=6543 user=qa"}
    assert choose_test_postgres(configured) == ("host=db.example port=6543 user=qa", None)

    environ: dict[str, str] = {}
    dsn, server = choose_test_postgres(environ)
    try:
        assert environ == {"QA_TEST_PG_DSN": dsn} and dsn == f"host=127.0.0.1 port={server.port()} user=postgres"
        assert server_facts(f"{dsn} dbname=postgres")[0].startswith("18.")
    finally:
        server.close()
    assert not server.data_dir.exists()


def test_a_command_runs_beside_a_temporary_server():
    """make bench / make bench-load: python -m devtools.postgres run -- COMMAND."""
    environment = {k: v for k, v in os.environ.items() if k not in ("QA_TEST_PG_DSN", "QA_BENCH_PG_DSN")}
    probe = ("import os, psycopg; dsn = os.environ['QA_BENCH_PG_DSN']; assert dsn == os.environ['QA_TEST_PG_DSN']; "
             "print(psycopg.connect(dsn + ' dbname=postgres').execute('SHOW server_version').fetchone()[0])")
    result = subprocess.run([sys.executable, "-m", "devtools.postgres", "run", "--", sys.executable, "-c", probe],
                            cwd=REPO, env=environment, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("18.")
    assert "embedded PostgreSQL 18." in result.stdout

    failing = subprocess.run([sys.executable, "-m", "devtools.postgres", "run", "--", sys.executable, "-c",
                              "raise SystemExit(3)"], cwd=REPO, env=environment, capture_output=True, text=True,
                             timeout=180, check=False)
    assert failing.returncode == 3, "the command's exit status is passed on"
