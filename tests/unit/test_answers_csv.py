"""The answers CSV: columns, order and spreadsheet-formula neutralisation."""

import csv
import io

from beam_qa.csv_rows import other_cells, parse_csv
from beam_qa.sinks.gcs_csv import neutralise_formula, render_answers_csv


def test_input_columns_then_answer_columns_in_row_order():
    parsed = parse_csv(b"id,question,context,note\nr0,q,ctx,=1+1\nr1,,ctx,=1+1\n", max_bytes=1000, max_rows=10)
    q_at, c_at = parsed.question_at, parsed.context_at
    stored = [(0, "q", "ctx", list(other_cells(parsed.rows[0].values, q_at, c_at)), "ctx", 0.25, 0, 3, None,
               "m@1 fp32 cpu"),
              (1, "", "ctx", list(other_cells(parsed.rows[1].values, q_at, c_at)), None, None, None, None,
               "empty question", None)]
    rows = list(csv.reader(io.StringIO(render_answers_csv(parsed.header, stored))))
    assert rows[0] == ["id", "question", "context", "note", "answer", "score", "answer_start", "answer_end",
                       "error", "model"]
    assert rows[1] == ["r0", "q", "ctx", "'=1+1", "ctx", "0.25", "0", "3", "", "m@1 fp32 cpu"]
    assert rows[2] == ["r1", "", "ctx", "'=1+1", "", "", "", "", "empty question", ""]


def test_cells_round_trip_through_other_cells_whatever_the_column_order():
    parsed = parse_csv(b"context,x,question,y\nc,1,q,2\n", max_bytes=1000, max_rows=10)
    others = other_cells(parsed.rows[0].values, parsed.question_at, parsed.context_at)
    assert others == ("1", "2")
    text = render_answers_csv(parsed.header, [(0, "q", "c", list(others), "c", 0.5, 0, 1, None, "m")])
    assert list(csv.reader(io.StringIO(text)))[1][:4] == ["c", "1", "q", "2"]


def test_formula_prefixes_are_neutralised():
    for cell in ("=SUM(A1)", "+1", "-2", "@cmd", "\tx"):
        assert neutralise_formula(cell) == "'" + cell
    assert neutralise_formula("plain") == "plain"


def test_every_cell_is_quoted_so_another_separator_cannot_start_a_formula():
    # A spreadsheet set to ";" splits an unquoted `x;=1+1` into `x` and the formula `=1+1`; quoted,
    # the whole cell is one string whatever the separator (OWASP: quote every field).
    header = ("id", "question", "context", "note")
    text = render_answers_csv(header, [(0, "q;=1+1", "c\tc", ["x;=1+1", "a,b"], "x", 0.5, 0, 1, None, "m")])
    lines = text.split("\r\n")
    assert lines[0] == '"id","question","context","note","answer","score","answer_start","answer_end","error","model"'
    assert lines[1] == '"x;=1+1","q;=1+1","c\tc","a,b","x","0.5","0","1","","m"'
    assert lines[2] == ""
    # Still read back cell for cell, and the prefix check still applies to each whole cell.
    assert list(csv.reader(io.StringIO(text)))[1][:4] == ["x;=1+1", "q;=1+1", "c\tc", "a,b"]
    assert render_answers_csv(("question", "context"), [(0, "=1+1", "c", [], "", None, None, None, None, None)]) \
        .split("\r\n")[1] == '"\'=1+1","c","","","","","",""'
