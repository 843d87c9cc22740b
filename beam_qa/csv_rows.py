"""Reading and validating ``question,context`` CSV files: pure rules, no pipeline records.

The pipeline and the upload service both call ``parse_csv`` (the upload service before
anything reaches the bucket), so a file one accepts is a file the other accepts. Nothing
here imports Beam or torch.
"""

from __future__ import annotations

import csv
import dataclasses
import io

from beam_qa.errors import FileErrorKind, RowErrorKind
from beam_qa.settings import InputSettings

REQUIRED_COLUMNS = ("question", "context")
ID_COLUMN = "id"


class FileError(ValueError):
    """A whole file cannot be processed; ``str(error)`` says why and what to do."""

    def __init__(self, kind: FileErrorKind | str, message: str):
        super().__init__(message)
        # The plain value ("missing_columns"): it is stored, logged and used as a dict key.
        self.kind: str = FileErrorKind(kind).value


@dataclasses.dataclass(frozen=True)
class ParsedRow:
    """One data row.

    Attributes:
        row_index: 0-based position among the file's data rows (blank lines skipped).
        values: the row's cells, aligned with the header (padded or cut to its width).
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
    header: tuple[str, ...]
    rows: list[ParsedRow]

    @property
    def row_count(self) -> int:
        return len(self.rows)

    @property
    def question_at(self) -> int:
        return question_and_context_at(self.header)[0]

    @property
    def context_at(self) -> int:
        return question_and_context_at(self.header)[1]


def question_and_context_at(header: tuple[str, ...] | list[str]) -> tuple[int, int]:
    """Positions of the question and context columns in a (valid) header."""
    names = [normalise_header(h) for h in header]
    return names.index("question"), names.index("context")


def other_cells(values: tuple[str, ...], question_at: int, context_at: int) -> tuple[str, ...]:
    """A row's cells without its question and context (what ``qa_answers.other_cells`` keeps)."""
    return tuple(v for i, v in enumerate(values) if i not in (question_at, context_at))


def row_values(header_width: int, question_at: int, context_at: int, question: str, context: str,
               others: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The inverse of ``other_cells``: the row's cells in column order."""
    rest = iter(others)
    return tuple(question if i == question_at else context if i == context_at else next(rest, "")
                 for i in range(header_width))


def normalise_header(name: str) -> str:
    """``' Question '`` -> ``'question'``: header matching ignores case and spaces."""
    return "".join(name.split()).lower()


def decode_csv_bytes(data: bytes) -> str:
    """Decodes UTF-8 (with or without BOM) or raises a FileError saying where it broke."""
    # NUL first: binary files (an .xlsx, a zip, an image renamed .csv) and UTF-16 text almost
    # always contain NUL bytes and deserve that diagnosis rather than "not UTF-8"; and
    # PostgreSQL TEXT cannot store NUL, so a stray one in a text file cannot be kept either.
    nul_at = data.find(b"\x00")
    if nul_at >= 0:
        raise FileError(
            FileErrorKind.BINARY, f"file contains a NUL byte at offset {nul_at}; it looks like a binary file "
            "(for example a spreadsheet, an archive or an image) or UTF-16 text, not a UTF-8 CSV; "
            "export it as CSV UTF-8 and upload it again")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FileError(
            FileErrorKind.NOT_UTF8,
            f"file is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8 and upload it again") from exc
    return text


def parse_csv(data: bytes, *, max_bytes: int, max_rows: int,
              max_context_chars: int = InputSettings.max_context_chars) -> ParsedFile:
    """Parses one uploaded file into rows; row problems become row errors.

    Args:
        data: the file's bytes.
        max_bytes: larger files are a file error.
        max_rows: files with more data rows are a file error.
        max_context_chars: a longer context is a row error.

    Returns:
        The header and one ParsedRow per data row (blank lines are skipped).

    Raises:
        FileError: when the file as a whole cannot be processed.
    """
    if len(data) > max_bytes:
        raise FileError(FileErrorKind.TOO_LARGE, f"file is {len(data)} bytes, over the limit of {max_bytes} bytes; "
                        "split it into smaller files")
    text = decode_csv_bytes(data)
    # A single cell may be as large as the file itself (the default limit is 128 KiB).
    csv.field_size_limit(max(max_bytes, csv.field_size_limit()))
    # strict: an unterminated quote is an error instead of silently swallowing the rest of
    # the file into one cell (and a wrong row count).
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next((r for r in reader if any(cell.strip() for cell in r)), None)
        if header is None:
            raise FileError(FileErrorKind.EMPTY, "file is empty; expected a header row with question and context columns")
        names = [normalise_header(h) for h in header]
        duplicates = sorted({n for n in names if n and names.count(n) > 1})
        if duplicates:
            raise FileError(FileErrorKind.DUPLICATE_COLUMNS, f"header names repeated: {', '.join(duplicates)}; "
                            "each column name must appear once")
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise FileError(FileErrorKind.MISSING_COLUMNS, f"missing column(s) {', '.join(missing)} in header "
                            f"{header!r}; the header must contain question and context")
        q_at, c_at = names.index("question"), names.index("context")
        id_at = names.index(ID_COLUMN) if ID_COLUMN in names else None
        raw_rows = []
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            raw_rows.append(cells)
            if len(raw_rows) > max_rows:
                raise FileError(FileErrorKind.TOO_MANY_ROWS, f"file has more than {max_rows} data rows; "
                                "split it into smaller files")
    except csv.Error as exc:
        raise FileError(FileErrorKind.MALFORMED_CSV, f"CSV syntax error at line {reader.line_num}: {exc}; a quoted cell "
                        "must end with a closing quote followed by a comma or the end of the line "
                        "(write a quote inside a quoted cell as two quotes)") from exc
    if not raw_rows:
        raise FileError(FileErrorKind.NO_ROWS, "file has a header but no data rows")

    width = len(header)
    rows = []
    for index, cells in enumerate(raw_rows):
        kind, error = None, ""
        if len(cells) > width:
            kind, error = RowErrorKind.EXTRA_FIELDS, f"row has {len(cells)} fields but the header has {width}"
            cells = cells[:width]
        values = tuple(cells) + ("",) * (width - len(cells))
        question, context = values[q_at], values[c_at]
        if kind is None and not question.strip():
            kind, error = RowErrorKind.EMPTY_QUESTION, "empty question"
        elif kind is None and not context.strip():
            kind, error = RowErrorKind.EMPTY_CONTEXT, "empty context"
        elif kind is None and len(context) > max_context_chars:
            kind, error = RowErrorKind.CONTEXT_TOO_LONG, (
                f"context has {len(context)} characters, over the limit of {max_context_chars} "
                "(--max_context_chars); split it into several rows")
        rows.append(ParsedRow(
            row_index=index, values=values, question=question, context=context,
            row_id=values[id_at] if id_at is not None else None, error=error,
            error_kind=kind.value if kind else ""))
    return ParsedFile(header=tuple(header), rows=rows)
