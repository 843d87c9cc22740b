"""The upload service's row-length check agrees with the CSV reader it protects, on arbitrary text.

``upload_service.services.validation.longest_record`` finds records over ``QA_MAX_ROW_BYTES`` with
one regex match per record, before ``parse_csv`` (whose reader holds a record at about 13 times its
size) runs. Properties: it never refuses a file whose rows all fit, it always finds the first row
that does not, and whenever it lets a file through, no cell the reader would build is longer
than the limit.
"""

from __future__ import annotations

import csv
import io
import re

from hypothesis import given
from hypothesis import strategies as st

from upload_service.services.validation import longest_record

MAX_ROWS = 200_000

# Text rich in what CSV treats specially, plus any Unicode.
_CHARS = st.one_of(st.sampled_from(['"', ",", "\n", "\r", " ", "a", "é", "🙂"]), st.characters(codec="utf-8"))
# The physical lines as beam_qa.csv_rows gives them to csv.reader: \r\n, \r and \n end a line.
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
_CELL = st.text(_CHARS, max_size=40)


@given(st.lists(st.lists(_CELL, min_size=1, max_size=5), min_size=1, max_size=12))
def test_rows_written_by_csv_writer_are_measured_exactly(rows):
    rows = [["x" + row[0].replace("\x00", ""), *(c.replace("\x00", "") for c in row[1:])] for row in rows]
    records = []
    for row in rows:
        buffer = io.StringIO()
        # \r\n: Python 3.11's writer quotes a cell holding a character of its line terminator only.
        csv.writer(buffer, lineterminator="\r\n").writerow(row)
        records.append(buffer.getvalue().encode("utf-8"))
    data = b"".join(records)
    lengths = [len(r) - 2 for r in records]  # without the line break
    longest = max(lengths)
    assert longest_record(data, longest, MAX_ROWS) is None
    first = next(i for i, n in enumerate(lengths) if n > longest - 1)
    line = 1 + sum(r.count(b"\n") + r.count(b"\r") - r.count(b"\r\n") for r in records[:first])
    assert longest_record(data, longest - 1, MAX_ROWS) == (line, longest)


@given(st.text(_CHARS, max_size=300), st.integers(min_value=1, max_value=60))
def test_whatever_it_lets_through_holds_no_longer_cell(text, limit):
    data = text.replace("\x00", "").encode("utf-8")
    if longest_record(data, limit, MAX_ROWS) is not None:
        return
    try:
        lines = _LINE.findall(data.decode("utf-8-sig"))
        cells = [cell for record in csv.reader(lines, strict=True) for cell in record]
    except csv.Error:
        return  # parse_csv refuses it (not_utf8, malformed_csv) before building more
    assert all(len(cell.encode("utf-8")) <= limit for cell in cells), (limit, cells)
