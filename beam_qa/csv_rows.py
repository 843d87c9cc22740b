"""Reading and validating ``question,context`` CSV files: pure rules, no pipeline records.

The pipeline and the upload service both call ``parse_csv`` (the upload service before
anything reaches the bucket), so a file one accepts is a file the other accepts. Nothing
here imports Beam or torch.

Work and memory are bounded by the file's size (docs/security.md, "The pipeline"): every step
is linear, ``parse_csv`` checks the whole file while holding one line at a time, and its rows
are parsed again, one at a time, when they are iterated (``ParsedFile.iter_rows``). Messages
quote at most a few hundred characters of the input.
"""

from __future__ import annotations

import codecs
import collections
import csv
import dataclasses
import re
from collections.abc import Iterator, Sequence

from beam_qa.errors import FileErrorKind, RowErrorKind
from beam_qa.settings import InputSettings

REQUIRED_COLUMNS = ("question", "context")
ID_COLUMN = "id"

# How much of the input an error message quotes, and the most any file error message holds.
QUOTE_CHARS = 200
MAX_MESSAGE_CHARS = 1_000

_BOM = codecs.BOM_UTF8
_EOL = re.compile(rb"\r\n|\r|\n")
# Lines that are empty or hold only spaces, tabs and commas: blank records, skipped in one step
# at a record boundary (a file of nothing but newlines costs one regex match, not a loop). One
# character class, so that the match needs no memory per line.
_BLANK_LINES = re.compile(rb"[ \t,\r\n]*[\r\n]")
# A record's cells allowed before it is refused: csv.reader builds every cell of a record before
# we see it (up to ~100 bytes per cell: a 1-character astral string is an 80-byte object plus its
# list slot), so a line of millions of tiny cells would cost 20 to 30 times its size. Allowed:
# 4 per --max_columns column, or one per 16 bytes of the record, whichever is more, so that a row
# is refused only when its cells would cost more than ~6 times its size. Commas are counted first
# (C speed); only a record with more commas than that is split into cells by hand, because a
# quoted cell may hold any number of commas at no cost (a context that is a comma list).
_CELLS_PER_COLUMN = 4
_BYTES_PER_CELL = 16
# A quoted cell after its opening quote: anything but a quote, or a doubled quote, then the closing
# quote. Possessive, so that sre keeps no backtracking state per repetition (constant memory).
_QUOTED_CELL_REST = re.compile(rb'(?:[^"]++|"")*+"')
_UNQUOTED_CELL = re.compile(rb'[^,\r\n]*')
_UTF8_CHECK_CHUNK = 1 << 16


class FileError(ValueError):
    """A whole file cannot be processed; ``str(error)`` says why and what to do."""

    def __init__(self, kind: FileErrorKind | str, message: str):
        if len(message) > MAX_MESSAGE_CHARS:  # a last guard: every message below is bounded already
            message = message[:MAX_MESSAGE_CHARS - 1] + "…"
        super().__init__(message)
        # The plain value ("missing_columns"): it is stored, logged and used as a dict key.
        self.kind: str = FileErrorKind(kind).value


@dataclasses.dataclass(frozen=True)
class ParsedRow:
    """One data row.

    Attributes:
        row_index: 0-based position among the file's data rows (blank lines skipped).
        values: the row's cells as written, cut to the header's width. A short row is not
            padded (a missing cell reads as empty), so that a wide header costs nothing per row.
        question: the question cell.
        context: the context cell.
        row_id: the optional ``id`` cell, or None.
        error: why the row is not sent to the model (empty string when it is).
        error_kind: the ``RowErrorKind`` value of ``error`` (empty string when there is none).
    """

    row_index: int
    values: tuple[str, ...]
    question: str
    context: str
    row_id: str | None
    error: str = ""
    error_kind: str = ""


@dataclasses.dataclass(frozen=True)
class ParsedFile:
    """A file that passed every file-level check: its header and row count.

    Its rows are parsed again when iterated (``iter_rows``), so that a file never holds all its
    cells at once: the pipeline cuts them into chunks as they come.
    """

    header: tuple[str, ...]
    row_count: int
    _data: bytes = dataclasses.field(repr=False)
    _max_columns: int = dataclasses.field(repr=False)
    _max_context_chars: int = dataclasses.field(repr=False)

    @property
    def question_at(self) -> int:
        return question_and_context_at(self.header)[0]

    @property
    def context_at(self) -> int:
        return question_and_context_at(self.header)[1]

    def iter_rows(self) -> Iterator[ParsedRow]:
        """Every data row, in order, parsed one at a time."""
        names = [normalise_header(h) for h in self.header]
        q_at, c_at = names.index("question"), names.index("context")
        id_at = names.index(ID_COLUMN) if ID_COLUMN in names else None
        # parse_csv checked the limits: the same ones, with no blank-row limit, cannot fail here.
        records = _records(self._data, self._max_columns, self._max_context_chars, len(self._data))
        next(records)  # the header
        for index, (_, cells) in enumerate(records):
            yield _row(index, cells, len(self.header), q_at, c_at, id_at, self._max_context_chars)

    @property
    def rows(self) -> list[ParsedRow]:
        """Every data row in a list (small files and tests; the pipeline iterates ``iter_rows``)."""
        return list(self.iter_rows())


def question_and_context_at(header: Sequence[str]) -> tuple[int, int]:
    """Positions of the question and context columns in a (valid) header."""
    names = [normalise_header(h) for h in header]
    return names.index("question"), names.index("context")


def other_cells(values: Sequence[str], question_at: int, context_at: int) -> tuple[str, ...]:
    """A row's cells without its question and context (what ``qa_answers.other_cells`` keeps)."""
    return tuple(v for i, v in enumerate(values) if i not in (question_at, context_at))


def row_values(header_width: int, question_at: int, context_at: int, question: str, context: str,
               others: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The inverse of ``other_cells``: the row's cells in column order (missing ones empty)."""
    rest = iter(others)
    return tuple(question if i == question_at else context if i == context_at else next(rest, "")
                 for i in range(header_width))


def normalise_header(name: str) -> str:
    """``' Question '`` -> ``'question'``: header matching ignores case and spaces."""
    return "".join(name.split()).lower()


def quoted(names: Sequence[str], limit: int = QUOTE_CHARS) -> str:
    """``['a', 'b', … and 99998 more]``: a list of input names quoted in about ``limit`` characters."""
    shown: list[str] = []
    used = 0
    for name in names:
        piece = repr(name[:limit] + ("…" if len(name) > limit else ""))[:limit]
        if shown and used + len(piece) > limit:
            break
        shown.append(piece)
        used += len(piece) + 2
    more = len(names) - len(shown)
    return "[" + ", ".join(shown) + (f", … and {more} more" if more else "") + "]"


def check_bytes(data: bytes) -> None:
    """Raises a FileError unless ``data`` is NUL-free UTF-8 (with or without BOM), saying where it broke.

    The text is decoded in 64 KiB pieces and dropped: a file is never held decoded as a whole
    (a single astral character makes Python store a whole string at 4 bytes per character).
    """
    # NUL first: binary files (an .xlsx, a zip, an image renamed .csv) and UTF-16 text almost
    # always contain NUL bytes and deserve that diagnosis rather than "not UTF-8"; and
    # PostgreSQL TEXT cannot store NUL, so a stray one in a text file cannot be kept either.
    nul_at = data.find(b"\x00")
    if nul_at >= 0:
        raise FileError(
            FileErrorKind.BINARY, f"file contains a NUL byte at offset {nul_at}; it looks like a binary file "
            "(for example a spreadsheet, an archive or an image) or UTF-16 text, not a UTF-8 CSV; "
            "export it as CSV UTF-8 and upload it again")
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    for start in range(0, len(data), _UTF8_CHECK_CHUNK) or [0]:
        piece = view[start:start + _UTF8_CHECK_CHUNK]
        try:
            decoder.decode(piece, final=start + _UTF8_CHECK_CHUNK >= len(data))
        except UnicodeDecodeError as exc:
            offset = start - (len(exc.object) - len(piece)) + exc.start  # exc.object = carried bytes + piece
            raise FileError(
                FileErrorKind.NOT_UTF8,
                f"file is not valid UTF-8 (byte 0x{data[offset]:02x} at offset {offset}); "
                "save it as UTF-8 and upload it again") from exc


def decode_csv_bytes(data: bytes) -> str:
    """The text of a small file (UTF-8, with or without BOM), or a FileError saying where it broke."""
    check_bytes(data)
    return data.decode("utf-8-sig")


def parse_csv(data: bytes, *, max_bytes: int, max_rows: int,
              max_context_chars: int = InputSettings.max_context_chars,
              max_columns: int = InputSettings.max_columns) -> ParsedFile:
    """Checks one uploaded file as a whole; its rows are parsed when iterated.

    Args:
        data: the file's bytes.
        max_bytes: larger files are a file error.
        max_rows: files with more data rows are a file error.
        max_context_chars: a longer context is a row error.
        max_columns: a header with more columns is a file error.

    Returns:
        The header and the row count; ``iter_rows()`` gives one ParsedRow per data row (blank
        lines are skipped), row problems as row errors.

    Raises:
        FileError: when the file as a whole cannot be processed.
    """
    if len(data) > max_bytes:
        raise FileError(FileErrorKind.TOO_LARGE, f"file is {len(data)} bytes, over the limit of {max_bytes} bytes; "
                        "split it into smaller files")
    check_bytes(data)
    # A single cell may be as large as the file itself (the default limit is 128 KiB).
    csv.field_size_limit(max(max_bytes, csv.field_size_limit()))
    records = _records(data, max_columns, max_context_chars, max_rows)
    _, header = next(records, (0, None))
    if header is None:
        raise FileError(FileErrorKind.EMPTY, "file is empty; expected a header row with question and context columns")
    _check_header(header, max_columns)
    row_count = 0
    for _ in records:
        row_count += 1
        if row_count > max_rows:
            raise FileError(FileErrorKind.TOO_MANY_ROWS, f"file has more than {max_rows} data rows; "
                            "split it into smaller files")
    if not row_count:
        raise FileError(FileErrorKind.NO_ROWS, "file has a header but no data rows")
    return ParsedFile(header=tuple(header), row_count=row_count, _data=data, _max_columns=max_columns,
                      _max_context_chars=max_context_chars)


def _check_header(header: list[str], max_columns: int) -> None:
    if len(header) > max_columns:
        raise FileError(FileErrorKind.TOO_MANY_COLUMNS, f"header has {len(header)} columns, over the limit of "
                        f"{max_columns} (--max_columns); keep the columns you need: question, context and "
                        "optionally id")
    names = [normalise_header(h) for h in header]
    counts = collections.Counter(names)  # linear: one pass, not a count per name
    duplicates = sorted(n for n, seen in counts.items() if n and seen > 1)
    if duplicates:
        raise FileError(FileErrorKind.DUPLICATE_COLUMNS, f"header names repeated: {quoted(duplicates)[1:-1]}; "
                        "each column name must appear once")
    missing = [c for c in REQUIRED_COLUMNS if c not in counts]
    if missing:
        raise FileError(FileErrorKind.MISSING_COLUMNS, f"missing column(s) {', '.join(missing)} in header "
                        f"{quoted(header)}; the header must contain question and context")


def _row(index: int, cells: list[str], width: int, q_at: int, c_at: int, id_at: int | None,
         max_context_chars: int) -> ParsedRow:
    kind, error = None, ""
    if len(cells) > width:
        kind, error = RowErrorKind.EXTRA_FIELDS, f"row has {len(cells)} fields but the header has {width}"
        cells = cells[:width]
    values = tuple(cells)
    question = values[q_at] if q_at < len(values) else ""
    context = values[c_at] if c_at < len(values) else ""
    if kind is None and not question.strip():
        kind, error = RowErrorKind.EMPTY_QUESTION, "empty question"
    elif kind is None and not context.strip():
        kind, error = RowErrorKind.EMPTY_CONTEXT, "empty context"
    elif kind is None and len(context) > max_context_chars:
        kind, error = RowErrorKind.CONTEXT_TOO_LONG, (
            f"context has {len(context)} characters, over the limit of {max_context_chars} "
            "(--max_context_chars); split it into several rows")
    row_id = None if id_at is None else values[id_at] if id_at < len(values) else ""
    return ParsedRow(row_index=index, values=values, question=question, context=context, row_id=row_id,
                     error=error, error_kind=kind.value if kind else "")


def _records(data: bytes, max_columns: int, max_context_chars: int,
             max_blank: int) -> Iterator[tuple[int, list[str]]]:
    """``(line, cells)`` of every record with a non-blank cell, in order (``data`` is checked UTF-8).

    Raises:
        FileError: for a CSV syntax error, a record with more separators than it may hold, or more
            than ``max_blank`` blank records that took the CSV reader (``"",""``: they cost as
            much as rows; plain blank lines are skipped before it).
    """
    lines = _Lines(data, max_columns, max_context_chars)
    blank = 0
    # strict: an unterminated quote is an error instead of silently swallowing the rest of
    # the file into one cell (and a wrong row count).
    reader = csv.reader(lines, strict=True)
    while True:
        try:
            cells = next(reader, None)
        except csv.Error as exc:
            raise FileError(FileErrorKind.MALFORMED_CSV, f"CSV syntax error at line {lines.line}: {exc}; a quoted "
                            "cell must end with a closing quote followed by a comma or the end of the line "
                            "(write a quote inside a quoted cell as two quotes)") from exc
        if cells is None:
            return
        lines.record_done()
        if any(cell.strip() for cell in cells):
            lines.header_read = True
            yield lines.line, cells
            continue
        blank += 1
        if blank > max_blank:
            raise FileError(FileErrorKind.TOO_MANY_ROWS, f"file has more than {max_blank} empty rows; "
                            "remove them")


class _Lines:
    """The physical lines of checked UTF-8 bytes, decoded one at a time, for ``csv.reader``.

    ``csv.reader`` reads lines only until its record is complete, so the lines given between two
    ``record_done()`` calls are one record's: their separators are counted before it splits them.
    """

    def __init__(self, data: bytes, max_columns: int, max_context_chars: int):
        self._data = data
        self._pos = len(_BOM) if data.startswith(_BOM) else 0
        self._limits = (max_columns, max_context_chars)
        self._min_cells = _CELLS_PER_COLUMN * max_columns
        self._at_record_start = True
        self._separators = 0
        self._bytes = 0
        self._record_start = 0  # where the record being read starts
        self._cells = 0  # the record's cells counted by hand so far (``_count_cells``)
        self._counted_to = 0  # where that count stopped (maybe past this line: a quoted cell)
        self.line = 0  # physical lines read so far (what csv.reader's line_num counts)
        self.header_read = False

    def record_done(self) -> None:
        self._at_record_start = True
        self._separators = self._bytes = self._cells = 0

    def _count_cells(self, line_end: int, allowed: int) -> int:
        """The record's cells up to ``line_end`` (at least), as csv.reader (strict) splits them.

        Resumes where the last call stopped, so a record is scanned once, and stops once the
        count passes ``allowed``. A quoted cell is skipped whole, wherever it ends; what csv.reader would refuse
        (text after a closing quote, a quote never closed) ends the count: the reader raises.
        """
        data, size = self._data, len(self._data)
        pos, cells = self._counted_to, self._cells
        if cells == 0:  # the record's first cell starts at its first byte
            pos, cells = self._record_start, 1
        while pos < line_end and cells <= allowed:
            if data[pos:pos + 1] == b'"':
                quoted = _QUOTED_CELL_REST.match(data, pos + 1)
                if quoted is None:  # never closed: csv.reader reports it
                    pos = size
                    break
                pos = quoted.end()
            else:
                pos = _UNQUOTED_CELL.match(data, pos).end()
            if data[pos:pos + 1] != b",":  # the end of the record, or text csv.reader refuses
                pos = size
                break
            pos += 1
            cells += 1
        self._counted_to, self._cells = pos, cells
        return cells

    def __iter__(self) -> Iterator[str]:
        data, size, view = self._data, len(self._data), memoryview(self._data)
        while self._pos < size:
            start = self._pos
            if self._at_record_start and (blank := _BLANK_LINES.match(data, start)):
                end = blank.end()
                self.line += data.count(b"\n", start, end) + data.count(b"\r", start, end) - data.count(
                    b"\r\n", start, end)
                self._pos = end
                continue
            if self._at_record_start:  # after the blank lines skipped above
                self._record_start = self._counted_to = start
            eol = _EOL.search(data, start)
            end = eol.end() if eol else size
            self._separators += data.count(b",", start, end)
            self._bytes += end - start
            allowed = max(self._min_cells, self._bytes // _BYTES_PER_CELL)
            if self._separators >= allowed and self._count_cells(end, allowed) > allowed:
                raise FileError(FileErrorKind.TOO_MANY_COLUMNS, (
                    f"{'the row at' if self.header_read else 'the header, at'} line {self.line + 1}, holds "
                    f"more than {allowed} cells in {self._bytes} bytes, more "
                    f"than --max_columns ({self._limits[0]}) columns could need; check that the file is "
                    "comma-separated and that its quotes are closed"))
            self._pos = end
            self.line += 1
            self._at_record_start = False
            yield str(view[start:end], "utf-8")
