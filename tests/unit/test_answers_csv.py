"""The answers CSV: columns, order and spreadsheet-formula neutralisation."""

import csv
import io

from beam_qa.events import FileEvent
from beam_qa.records import FileAnswers, FileManifest, QaRow, RowAnswer
from beam_qa.sinks.gcs_csv import neutralise_formula, render_answers_csv


def test_input_columns_then_answer_columns_in_row_order():
    event = FileEvent("gs://b/incoming/a.csv", 1, -1, "gs://b/", "a.csv", 0.0)
    m = FileManifest(event, ("id", "question", "context", "note"), 2)
    rows = [QaRow(m, i, (f"r{i}", "q", "ctx", "=1+1"), "q", "ctx", f"r{i}") for i in range(2)]
    result = FileAnswers(m, (RowAnswer(rows[0], "ctx", 0.25, 0, 3), RowAnswer(rows[1], error="empty question")))
    parsed = list(csv.reader(io.StringIO(render_answers_csv(result))))
    assert parsed[0] == ["id", "question", "context", "note", "answer", "score", "answer_start", "answer_end", "error"]
    assert parsed[1] == ["r0", "q", "ctx", "'=1+1", "ctx", "0.25", "0", "3", ""]
    assert parsed[2] == ["r1", "q", "ctx", "'=1+1", "", "", "", "", "empty question"]


def test_formula_prefixes_are_neutralised():
    for cell in ("=SUM(A1)", "+1", "-2", "@cmd", "\tx"):
        assert neutralise_formula(cell) == "'" + cell
    assert neutralise_formula("plain") == "plain"
