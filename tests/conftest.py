"""Shared fixtures: a small offline model, PostgreSQL databases, sample CSVs."""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# PostgreSQL for the tests: the server QA_TEST_PG_DSN names (a DSN without dbname, for example
# "host=127.0.0.1 port=5432 user=postgres"), else an embedded server (devtools/postgres.py) that
# pytest_configure starts for this session, in a temporary folder, and pytest_unconfigure stops.
# Its DSN is then put in QA_TEST_PG_DSN, so that processes the tests start see it too.
PG_BASE_DSN = os.environ.get("QA_TEST_PG_DSN", "")
_EMBEDDED_PG = None


def choose_test_postgres(environ: dict[str, str] | os._Environ) -> tuple[str, object | None]:
    """The tests' base DSN and the embedded server started for it (``None`` when QA_TEST_PG_DSN is set).

    Sets ``environ["QA_TEST_PG_DSN"]`` to the embedded server's DSN when it starts one.
    """
    if environ.get("QA_TEST_PG_DSN"):
        return environ["QA_TEST_PG_DSN"], None
    from devtools.postgres import TemporaryPostgres
    server = TemporaryPostgres(prefix="beam-qa-test-pg-")
    try:
        port = server.start()
    except BaseException:
        server.close()
        raise
    environ["QA_TEST_PG_DSN"] = f"host=127.0.0.1 port={port} user=postgres"
    return environ["QA_TEST_PG_DSN"], server


def pytest_configure(config):  # pylint: disable=unused-argument
    global PG_BASE_DSN, _EMBEDDED_PG  # pylint: disable=global-statement
    PG_BASE_DSN, _EMBEDDED_PG = choose_test_postgres(os.environ)


def pytest_unconfigure(config):  # pylint: disable=unused-argument
    global _EMBEDDED_PG  # pylint: disable=global-statement
    if _EMBEDDED_PG is not None:
        _EMBEDDED_PG.close()
        _EMBEDDED_PG = None


@pytest.fixture
def stack_run_dir() -> Iterator[Path]:
    """A run directory for a stack that starts its own embedded PostgreSQL, outside pytest's temporary root.

    As root the embedded server runs as another user, who must traverse the folders above its
    data; pytest resets its root (/tmp/pytest-of-USER) to mode 0700 whenever a test session
    starts, which would lock the server out mid-test on a machine running several sessions.
    """
    import tempfile
    folder = Path(tempfile.mkdtemp(prefix="beam-qa-stack-"))
    yield folder / "run"
    shutil.rmtree(folder, ignore_errors=True)


def pytest_report_header(config):  # pylint: disable=unused-argument
    where = "embedded, started for this run" if _EMBEDDED_PG is not None else "QA_TEST_PG_DSN"
    return f"postgresql: {PG_BASE_DSN} ({where})"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A random-weight DistilBERT QA model and tokenizer, built offline once per session."""
    from devtools.tiny_model import build_model
    return str(build_model(tmp_path_factory.mktemp("model") / "tiny", "tiny"))


@pytest.fixture(scope="session")
def base_model(tmp_path_factory) -> str:
    """A DistilBERT-base-sized QA model with random weights: real compute, about 10 rows/s on 2 cores."""
    from devtools.tiny_model import build_model
    return str(build_model(tmp_path_factory.mktemp("model") / "base", "base"))


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The demo model (a real QA model): the full build when one is cached, else the quick recipe.

    The quick recipe is built here when nothing is cached (a fresh clone, CI), once: it stays
    under ``.cache/demo-model/`` for later runs, as ``make demo-model`` would leave it.
    """
    from devtools import demo_model
    return demo_model.built_model() or demo_model.build(recipe=demo_model.RECIPES["quick"])


# A word the poisoned model's tokenizer knows but its embeddings do not: any batch holding
# it makes the real forward pass raise "index out of range" (either runtime), like a model/tokenizer mismatch would.
POISON = "qqboomqq"


def poisoned_model(tiny_model: str, target: Path) -> str:
    """A copy of the tiny model whose tokenizer has one token (``POISON``) without an embedding."""
    from transformers import AutoTokenizer
    shutil.copytree(tiny_model, target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    assert tokenizer.add_tokens([POISON]) == 1
    tokenizer.save_pretrained(target)
    return str(target)


# Test runs that share one PostgreSQL server side by side (several checkouts of the project)
# set this so that their databases never collide.
DB_PREFIX = os.environ.get("QA_TEST_DB_PREFIX", "")


def fresh_database(name: str) -> str:
    """Drops and recreates database ``QA_TEST_DB_PREFIX + name``; returns its DSN."""
    import psycopg
    name = DB_PREFIX + name
    with psycopg.connect(f"{PG_BASE_DSN} dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_BASE_DSN} dbname={name}"


def query(dsn: str, sql: str, params: tuple = ()) -> list[tuple]:
    import psycopg
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def csv_bytes(header: list[str], rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def squad_csv(start: int, count: int) -> bytes:
    """``id,question,context`` rows taken from the shared SQuAD sample."""
    from devtools.squad import squad_rows
    rows = squad_rows(start + count)[start:]
    return csv_bytes(["id", "question", "context"], [[r["id"], r["question"], r["context"]] for r in rows])


def read_csv_text(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture
def write_file(tmp_path):
    def _write(name: str, data: bytes) -> Path:
        path = tmp_path / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path
    return _write
