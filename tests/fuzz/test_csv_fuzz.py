"""Property-based tests of the CSV reader: any bytes in, a file error or rows out, in bounded memory.

The pipeline checks a file with ``parse_csv`` and then cuts its rows into chunks
(``beam_qa.reading._chunks`` over ``ParsedFile.iter_rows``); the upload service calls the same
``parse_csv``. Whatever the bytes (any Unicode, NULs, BOMs, CR-only lines, huge cells, stray
quotes, tens of thousands of columns), three properties must hold:

* it terminates (the run ends: there is no deadline, the test's own timeout guards);
* the file is a ``FileError`` of a known kind raised by ``parse_csv``, or rows each of which is a
  row to answer or a row error of a known kind; nothing else is raised, and iterating the rows
  of an accepted file raises nothing at all (the pipeline does not catch it there);
* the memory it allocates stays within docs/security.md's bound, measured with ``tracemalloc`` as
  ``tests/unit/test_parse_memory.py`` does: 1 x the file + 13 x its longest record + 512 KiB. A
  record is a CSV record: a quoted cell may span physical lines, and csv.reader builds such a
  cell whole (4 bytes per character), so its lines count as one.

``make test`` runs the ``ci`` profile (tests/fuzz/conftest.py), ``make fuzz`` the ``fuzz`` one.
"""

from __future__ import annotations

import csv
import tracemalloc
from collections.abc import Iterator

from hypothesis import example, given
from hypothesis import strategies as st

from beam_qa.csv_rows import MAX_MESSAGE_CHARS, FileError, parse_csv
from beam_qa.errors import FileErrorKind, RowErrorKind
from beam_qa.reading import _chunks  # pylint: disable=protected-access
from beam_qa.records import Claim, FileEvent
from beam_qa.settings import InputSettings

FILE_BYTES = 1.0
LONGEST_RECORD = 13.0
CONSTANT = 512 * 1024

# The kinds parse_csv may decide (the others are decided by the pipeline around it).
PARSE_KINDS = {FileErrorKind.TOO_LARGE, FileErrorKind.NOT_UTF8, FileErrorKind.BINARY, FileErrorKind.EMPTY,
               FileErrorKind.DUPLICATE_COLUMNS, FileErrorKind.MISSING_COLUMNS, FileErrorKind.TOO_MANY_COLUMNS,
               FileErrorKind.TOO_MANY_ROWS, FileErrorKind.MALFORMED_CSV, FileErrorKind.NO_ROWS}
ROW_KINDS = {k.value for k in RowErrorKind}
BOM = "\ufeff"
# Characters that steer a CSV reader, given more often than st.characters alone would.
SPECIAL = [",", '"', "\r", "\n", "\x00", BOM, " ", "\t", "\u2028", "\x0b", "\x1c", "\x85"]
EOLS = ["\n", "\r", "\r\n"]

any_char = st.characters(codec="utf-8")  # every code point UTF-8 can carry (no lone surrogates)
cell_text = st.text(st.one_of(st.sampled_from(SPECIAL), any_char), max_size=24)
header_name = st.one_of(st.sampled_from(["question", "context", "id", " Question ", "CONTEXT", "", BOM + "question"]),
                        cell_text)
limits = st.fixed_dictionaries({
    "max_rows": st.sampled_from([1, 3, InputSettings.max_rows]),
    "max_context_chars": st.sampled_from([1, 40, InputSettings.max_context_chars]),
    "max_columns": st.sampled_from([2, 3, InputSettings.max_columns]),
})


def _cell(text: str, quoting: int) -> str:
    """A cell written quoted (quotes doubled), quoted carelessly (quotes not doubled), or as is."""
    if quoting == 0:
        return text
    if quoting == 1:
        return '"' + text.replace('"', '""') + '"'
    return '"' + text + ('"' if quoting == 2 else "")


@st.composite
def csv_texts(draw) -> bytes:
    """A CSV-like file: a header, rows of cells, any line ends, maybe BOMs, maybe broken quoting."""
    header = draw(st.lists(header_name, max_size=6))
    if draw(st.booleans()):
        header = ["question", "context", *header]
    records = [header, *draw(st.lists(st.lists(cell_text, max_size=8), max_size=8))]
    quoting = st.sampled_from([0, 0, 1, 1, 2, 3])
    eol = draw(st.sampled_from(EOLS))
    lines = []
    for cells in records:
        written = ",".join(_cell(text, draw(quoting)) for text in cells)
        lines.append(written + (draw(st.sampled_from(EOLS)) if draw(st.booleans()) else eol))
    text = draw(st.sampled_from(["", BOM, BOM + BOM])) + "".join(lines)
    if draw(st.booleans()):
        text = text[:draw(st.integers(0, len(text)))]  # cut anywhere, a quote left open included
    return text.encode("utf-8")


@st.composite
def huge_or_wide(draw) -> bytes:
    """One huge cell (maybe spanning many lines), or a record of thousands of cells."""
    char = draw(st.one_of(st.sampled_from(["a", "é", "語", "\U0001F600", ",", '""', " ", "\r", "\n"]), any_char))
    head = draw(st.sampled_from(["question,context", "id,question,context", "context,question", ""]))
    if draw(st.booleans()):
        body = char * draw(st.integers(0, 300_000))
        row = "q," + _cell(body, draw(st.sampled_from([0, 1, 2, 3])))
    else:
        cell = char * draw(st.integers(0, 3))
        row = ",".join([cell] * draw(st.integers(1, 60_000)))
        if draw(st.booleans()):  # the wide record as the header
            head, row = row, "q,c"
    eol = draw(st.sampled_from(EOLS))
    return (head + eol + row + eol + draw(st.sampled_from(["", "q,c" + eol]))).encode("utf-8")


def _longest_record(data: bytes) -> int:
    """The longest CSV record in bytes, found without beam_qa: csv.reader fed one line at a time.

    A record the reader refuses counts to the end of the file (the reader may have read that far).
    Not UTF-8: the longest physical line (the file is refused before any record is read).
    """
    lines = data.splitlines(keepends=True)  # b"\n", b"\r" and b"\r\n", as the reader splits them
    longest = max(map(len, lines), default=0)
    consumed = 0

    def fed() -> Iterator[str]:
        nonlocal consumed
        for line in lines:
            consumed += len(line)
            yield line.decode("utf-8")

    start = 0
    reader = csv.reader(fed(), strict=True)
    try:
        for _ in reader:
            longest, start = max(longest, consumed - start), consumed
    except (csv.Error, UnicodeDecodeError):
        longest = max(longest, len(data) - start)
    return longest


def _check(data: bytes, *, max_rows: int = InputSettings.max_rows,
           max_context_chars: int = InputSettings.max_context_chars,
           max_columns: int = InputSettings.max_columns) -> None:
    """Reads ``data`` as the pipeline does and asserts the three properties."""
    max_bytes = InputSettings.max_file_bytes
    csv.field_size_limit(max(max_bytes, csv.field_size_limit()))  # as parse_csv sets it, for _longest_record
    longest = _longest_record(data)
    rows = 0
    tracemalloc.start()
    try:
        try:
            parsed = parse_csv(data, max_bytes=max_bytes, max_rows=max_rows, max_context_chars=max_context_chars,
                               max_columns=max_columns)
        except FileError as exc:
            parsed, error = None, exc
        if parsed is not None:
            event = FileEvent("/in/f.csv", 1, len(data), "/in", "f.csv", 0.0)
            # The rows are checked as they come and dropped, as the pipeline drops each chunk.
            for chunk in _chunks(Claim(event, 1), parsed, 3):
                for row in chunk.rows:
                    assert row.row_index == rows
                    rows += 1
                    assert all(isinstance(cell, str) for cell in row.others)
                    if row.error_kind:
                        assert row.error_kind in ROW_KINDS and row.error, row
                    else:
                        assert not row.error and row.question.strip() and row.context.strip(), row
                        assert len(row.context) <= max_context_chars
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if parsed is None:
        assert error.kind in PARSE_KINDS, error.kind
        assert 0 < len(str(error)) <= MAX_MESSAGE_CHARS
    else:
        assert 0 < rows == parsed.row_count <= max_rows
    bound = FILE_BYTES * len(data) + LONGEST_RECORD * longest + CONSTANT
    assert peak <= bound, (peak, bound, len(data), longest)


@given(st.one_of(st.binary(max_size=4_000),
                 st.tuples(st.sampled_from([b"question,context\n", b"\xef\xbb\xbfid,question,context\r\n",
                                            b"question,context\rq,"]),
                           st.binary(max_size=4_000)).map(b"".join)),
       limits)
@example(b"\x00question,context\nq,c\n", {})
@example(b"\xef\xbb\xbf\xef\xbb\xbfquestion,context\rq,c\r", {})
def test_any_bytes_are_a_file_error_or_rows(data, limit):
    _check(data, **limit)


@given(csv_texts(), limits)
@example('question,context\r"a\rb","c,\r\nd"\rq,"""x"""\r'.encode(), {})
def test_any_csv_text_is_a_file_error_or_rows(data, limit):
    _check(data, **limit)


@given(huge_or_wide())
@example(b"question,context\nq," + "\U0001F600,".encode() * 53_999 + b"x\n")  # found by this test
@example(b"question,context\nq," + b'"x\n",' * 53_999 + b'"x"\n')
@example(b'question,context\nWhich?,"' + b"1,2,3,4,5,6,7,8,9," * 5_000 + b'"\n')
def test_huge_cells_and_wide_records_stay_within_the_memory_bound(data):
    _check(data)
