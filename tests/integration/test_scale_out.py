"""Bounded runs on several local workers: spread, nothing lost or doubled, bounded connections.

Beam's FnApiRunner runs the bounded pipeline with ``--direct_num_workers`` workers
(``--direct_running_mode=multi_threading``), which is the closest the local runners come to
Dataflow's many bundles per process: one DoFn instance per concurrent bundle, all in one
process. A sampler thread reads PostgreSQL while the run goes on.
"""

from __future__ import annotations

import csv
import logging
import threading
import time

import psycopg
import pytest

from beam_qa.launch import run
from devtools.squad import squad_rows
from tests import handlers
from tests.conftest import fresh_database, query

pytestmark = pytest.mark.integration

FILES = 50
ROWS_PER_FILE = 10
BIG_ROWS = 500
WORKERS = 4
POOL_SIZE = 3


class Sampler:
    """Polls pg_stat_activity and qa_files every few milliseconds from its own connection."""

    def __init__(self, dsn: str, dbname: str):
        self._conn = psycopg.connect(dsn, autocommit=True, application_name="beam_qa-test-sampler")
        self._dbname = dbname
        self.connections: list[int] = []
        self.progress: list[tuple[int, int]] = []  # (files done, files in qa_files)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._conn.close()

    def _loop(self):
        while not self._stop.wait(0.02):
            (count,) = self._conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'beam_qa'",
                (self._dbname,)).fetchone()
            self.connections.append(count)
            if self._conn.execute("SELECT to_regclass('qa_files')").fetchone()[0] is not None:
                self.progress.append(self._conn.execute(
                    "SELECT count(*) FILTER (WHERE status = 'done'), count(*) FROM qa_files").fetchone())


def _write_files(folder) -> dict[str, int]:
    """50 files of 10 SQuAD rows and one of 500; every question is unique (the recorder keys on it)."""
    source = squad_rows(FILES * ROWS_PER_FILE + BIG_ROWS)
    counts = {}

    def write(name: str, rows: list[dict]):
        with open(folder / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "question", "context"])
            writer.writerows([[f"{name}-{i}", f"{r['question']} [{name} {i}]", r["context"]]
                              for i, r in enumerate(rows)])
        counts[name] = len(rows)
    for index in range(FILES):
        write(f"small-{index:02d}.csv", source[index * ROWS_PER_FILE:(index + 1) * ROWS_PER_FILE])
    write("big.csv", source[FILES * ROWS_PER_FILE:])
    return counts


@pytest.fixture(scope="module")
def parallel_run(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("scale-out") / "in"
    folder.mkdir()
    counts = _write_files(folder)
    dsn = fresh_database("beam_qa_scale_out")
    dbname = dsn.rsplit("dbname=", 1)[1]
    handlers.ANSWERED_ON.clear()
    capture = _Capture()
    logger = logging.getLogger("beam_qa")
    level = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as patch, Sampler(dsn, dbname) as sampler:
            handlers.install(patch, handlers.RecordingHandler)
            started = time.monotonic()
            run([f"--input_pattern={folder / '*.csv'}", f"--model={tiny_model}", f"--pg_dsn={dsn}",
                 "--keep_source", f"--direct_num_workers={WORKERS}", "--direct_running_mode=multi_threading",
                 f"--pg_pool_size={POOL_SIZE}", "--chunk_size=32", "--max_batch_size=16"])
            elapsed = time.monotonic() - started
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
    return {"folder": folder, "counts": counts, "dsn": dsn, "sampler": sampler, "logs": capture.lines,
            "elapsed": elapsed, "answered_on": dict(handlers.ANSWERED_ON)}


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_every_file_is_answered_once_and_nothing_is_lost_or_doubled(parallel_run):
    dsn, counts = parallel_run["dsn"], parallel_run["counts"]
    files = {uri.rsplit("/", 1)[1]: rest for uri, *rest in query(
        dsn, "SELECT source_uri, status, attempt, row_count FROM qa_files")}
    assert files == {name: ["done", 1, rows] for name, rows in counts.items()}
    per_file = dict(query(dsn, "SELECT regexp_replace(source_uri, '^.*/', ''), count(*) FROM qa_answers "
                               "GROUP BY 1"))
    assert per_file == counts
    assert query(dsn, "SELECT count(*), count(DISTINCT (source_uri, row_index)), count(answer) "
                      "FROM qa_answers") == [(sum(counts.values()),) * 3]
    assert query(dsn, "SELECT count(*) FROM qa_chunks") == [(0,)]  # nothing left behind
    for uri, output in query(dsn, "SELECT source_uri, output_uri FROM qa_files"):
        with open(output, encoding="utf-8") as handle:
            assert len(list(csv.DictReader(handle))) == counts[uri.rsplit("/", 1)[1]]


def test_a_large_files_rows_are_answered_on_several_workers(parallel_run):
    big = {thread for question, thread in parallel_run["answered_on"].items() if "[big.csv " in question}
    assert len([q for q in parallel_run["answered_on"] if "[big.csv " in q]) == BIG_ROWS
    assert len(big) >= 2, "the 500-row file was answered on one thread: its chunks were not spread"


def test_connections_stay_within_the_per_process_budget_and_ddl_runs_once(parallel_run):
    sampler = parallel_run["sampler"]
    assert sampler.connections and max(sampler.connections) >= 1, "the sampler saw no pipeline connection"
    assert max(sampler.connections) <= POOL_SIZE, max(sampler.connections)
    logs = parallel_run["logs"]
    assert sum("PostgreSQL pool opened" in line for line in logs) == 1
    assert sum("beam_qa schema migrated" in line for line in logs) == 1


def test_files_reach_done_while_the_run_is_still_going(parallel_run):
    total = len(parallel_run["counts"])
    partial = [(done, seen) for done, seen in parallel_run["sampler"].progress if 0 < done < total]
    assert partial, f"no file was done before the last one: {parallel_run['sampler'].progress[-5:]}"


def test_a_second_run_on_a_current_schema_runs_no_ddl(parallel_run, tiny_model, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="beam_qa")
    (tmp_path / "one.csv").write_text("question,context\nWho?,Alice.\n", encoding="utf-8")
    run([f"--input_pattern={tmp_path / '*.csv'}", f"--model={tiny_model}", f"--pg_dsn={parallel_run['dsn']}",
         "--keep_source"])
    assert "PostgreSQL pool opened" in caplog.text
    assert "schema migrated" not in caplog.text
