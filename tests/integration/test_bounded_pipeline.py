"""Bounded mode over a local directory, with the real PostgreSQL."""

import pytest
from apache_beam.metrics.metric import MetricsFilter

from beam_qa.launch import run
from tests.conftest import csv_bytes, fresh_database, query, read_csv_text, squad_csv

pytestmark = pytest.mark.integration


def counters(result) -> dict[str, int]:
    found = result.metrics().query(MetricsFilter().with_namespace("beam_qa"))["counters"]
    totals: dict[str, int] = {}
    for item in found:
        totals[item.key.metric.name] = totals.get(item.key.metric.name, 0) + item.committed
    return totals


@pytest.fixture
def dsn():
    return fresh_database("beam_qa_it_bounded")


def test_bounded_run_answers_good_files_and_records_bad_ones(tmp_path, write_file, tiny_model, dsn):
    good = write_file("good.csv", squad_csv(0, 12))
    write_file("empty_questions.csv", csv_bytes(["question", "context", "extra"],
                                                [["Who?", "Alice and Bob.", "x"], ["", "ctx", "y"],
                                                 [" ", "ctx", "z"], ["When?", "In 1999.", "w"]]))
    write_file("no_context.csv", b"question,ctx\nq,c\n")
    write_file("latin1.csv", "question,context\nqu\u00e9,contexte\n".encode("latin-1"))
    write_file("notes.txt", b"not a csv")
    result = run([f"--input_pattern={tmp_path / 'in' / '*'}", f"--model={tiny_model}", f"--pg_dsn={dsn}"])

    files = dict((row[0].rsplit("/", 1)[1], row[1:]) for row in query(
        dsn, "SELECT source_uri, status, row_count, error FROM qa_files"))
    assert files["good.csv"][:2] == ("done", 12)
    assert files["empty_questions.csv"][:2] == ("done", 4)
    assert files["no_context.csv"][0] == "failed" and "missing column(s) context" in files["no_context.csv"][2]
    assert files["latin1.csv"][0] == "failed" and "not valid UTF-8" in files["latin1.csv"][2]
    assert "notes.txt" not in files

    answers = query(dsn, "SELECT row_index, error, answer FROM qa_answers WHERE source_uri LIKE %s "
                    "ORDER BY row_index", ("%empty_questions.csv",))
    assert [(i, e) for i, e, _ in answers] == [(0, None), (1, "empty question"), (2, "empty question"), (3, None)]
    assert answers[0][2] and answers[3][2]

    # Answers CSV in the input directory's answers/ folder, named by generation; sources gone,
    # bad files moved aside.
    outputs = dict((uri.rsplit("/", 1)[1], (generation, output)) for uri, generation, output in query(
        dsn, "SELECT source_uri, source_generation, output_uri FROM qa_files"))
    generation, output = outputs["empty_questions.csv"]
    assert output == str(tmp_path / "in" / "answers" / f"empty_questions.{generation}.answers.csv")
    rows = read_csv_text(open(output, encoding="utf-8").read())
    assert [r["extra"] for r in rows] == ["x", "y", "z", "w"]
    assert [r["error"] for r in rows] == ["", "empty question", "empty question", ""]
    assert all(r["context"][int(r["answer_start"]):int(r["answer_end"])] == r["answer"]
               for r in rows if not r["error"])
    assert not good.exists()
    generation, kept = outputs["no_context.csv"]
    assert kept == str(tmp_path / "in" / "errors" / f"no_context.{generation}.csv")
    assert (tmp_path / "in" / "errors" / f"no_context.{generation}.csv").read_bytes() == b"question,ctx\nq,c\n"
    assert not (tmp_path / "in" / "no_context.csv").exists()
    assert (tmp_path / "in" / "notes.txt").exists()

    metrics = counters(result)
    assert metrics["files_matched"] == 4
    assert metrics["files_claimed"] == 4
    assert metrics["files_received"] == 2
    assert metrics["files_done"] == 2
    assert metrics["files_failed"] == 2
    assert metrics["rows_answered"] == 14
    assert metrics["row_errors_empty_question"] == 2
    assert metrics["file_errors_missing_columns"] == 1
    assert metrics["file_errors_not_utf8"] == 1
    assert metrics["events_ignored_not_csv"] == 1


def test_rerunning_the_same_files_changes_nothing(tmp_path, write_file, tiny_model, dsn):
    source = write_file("a.csv", squad_csv(20, 5))
    args = [f"--input_pattern={tmp_path / 'in' / '*.csv'}", f"--model={tiny_model}", f"--pg_dsn={dsn}",
            "--keep_source"]
    run(args)
    first = query(dsn, "SELECT row_index, answer, score, answer_start, answer_end, processed_at FROM qa_answers "
                  "ORDER BY 1")
    answers = tmp_path / "in" / "answers" / f"a.{source.stat().st_mtime_ns}.answers.csv"
    csv_first, csv_mtime = answers.read_text(), answers.stat().st_mtime_ns
    result = run(args)
    # The version is done: the second run claims nothing, so nothing is answered or written again.
    assert counters(result).get("files_claimed", 0) == 0
    assert counters(result)["events_ignored_finished"] == 1
    assert query(dsn, "SELECT row_index, answer, score, answer_start, answer_end, processed_at FROM qa_answers "
                 "ORDER BY 1") == first
    assert query(dsn, "SELECT count(*), max(attempt) FROM qa_files") == [(1, 1)]
    assert answers.read_text() == csv_first and answers.stat().st_mtime_ns == csv_mtime
    assert source.exists()
