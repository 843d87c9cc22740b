"""Shared fixtures: a small offline model, PostgreSQL databases, sample CSVs."""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path

import pytest

PG_BASE_DSN = os.environ.get("QA_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A random-weight DistilBERT QA model and tokenizer, built offline once per session."""
    from beam_qa.dev.tiny_model import build_model
    return str(build_model(tmp_path_factory.mktemp("model") / "tiny", "tiny"))


@pytest.fixture(scope="session")
def base_model(tmp_path_factory) -> str:
    """A DistilBERT-base-sized QA model with random weights: real compute, about 10 rows/s on 2 cores."""
    from beam_qa.dev.tiny_model import build_model
    return str(build_model(tmp_path_factory.mktemp("model") / "base", "base"))


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The demo model (a real QA model): the full build when one is cached, else the quick recipe.

    The quick recipe is built here when nothing is cached (a fresh clone, CI), once: it stays
    under ``.cache/demo-model/`` for later runs, as ``make demo-model`` would leave it.
    """
    from beam_qa.dev import demo_model
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
    from beam_qa.dev.squad import squad_rows
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
