"""Reading and validating ``question,context`` CSV files."""

from __future__ import annotations

import csv
import dataclasses
import io

from beam_qa.events import FileEvent
from beam_qa.records import FileManifest, QaRow

REQUIRED_COLUMNS = ("question", "context")
ID_COLUMN = "id"


class FileError(ValueError):
    """A whole file cannot be processed; ``str(error)`` says why and what to do."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class ParsedFile:
    manifest: FileManifest
    rows: list[QaRow]


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
            "binary", f"file contains a NUL byte at offset {nul_at}; it looks like a binary file "
            "(for example a spreadsheet, an archive or an image) or UTF-16 text, not a UTF-8 CSV; "
            "export it as CSV UTF-8 and upload it again")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FileError(
            "not_utf8",
            f"file is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8 and upload it again") from exc
    return text


def parse_csv(data: bytes, event: FileEvent, *, max_bytes: int, max_rows: int) -> ParsedFile:
    """Parses one uploaded file into rows; row problems become row errors.

    Args:
        data: the file's bytes.
        event: the file version the bytes belong to.
        max_bytes: larger files are a file error.
        max_rows: files with more data rows are a file error.

    Returns:
        The manifest and one QaRow per data row (blank lines are skipped).

    Raises:
        FileError: when the file as a whole cannot be processed.
    """
    if len(data) > max_bytes:
        raise FileError("too_large", f"file is {len(data)} bytes, over the limit of {max_bytes} bytes; "
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
            raise FileError("empty", "file is empty; expected a header row with question and context columns")
        names = [normalise_header(h) for h in header]
        duplicates = sorted({n for n in names if n and names.count(n) > 1})
        if duplicates:
            raise FileError("duplicate_columns", f"header names repeated: {', '.join(duplicates)}; "
                            "each column name must appear once")
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise FileError("missing_columns", f"missing column(s) {', '.join(missing)} in header "
                            f"{header!r}; the header must contain question and context")
        q_at, c_at = names.index("question"), names.index("context")
        id_at = names.index(ID_COLUMN) if ID_COLUMN in names else None
        raw_rows = []
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            raw_rows.append(cells)
            if len(raw_rows) > max_rows:
                raise FileError("too_many_rows", f"file has more than {max_rows} data rows; "
                                "split it into smaller files")
    except csv.Error as exc:
        raise FileError("malformed_csv", f"CSV syntax error at line {reader.line_num}: {exc}; a quoted cell "
                        "must end with a closing quote followed by a comma or the end of the line "
                        "(write a quote inside a quoted cell as two quotes)") from exc
    if not raw_rows:
        raise FileError("no_rows", "file has a header but no data rows")

    manifest = FileManifest(event=event, header=tuple(header), row_count=len(raw_rows))
    width = len(header)
    rows = []
    for index, cells in enumerate(raw_rows):
        error = ""
        if len(cells) > width:
            error = f"row has {len(cells)} fields but the header has {width}"
            cells = cells[:width]
        values = tuple(cells) + ("",) * (width - len(cells))
        question, context = values[q_at], values[c_at]
        if not error and not question.strip():
            error = "empty question"
        elif not error and not context.strip():
            error = "empty context"
        rows.append(QaRow(
            manifest=manifest, row_index=index, values=values, question=question,
            context=context, row_id=values[id_at] if id_at is not None else None, error=error))
    return ParsedFile(manifest=manifest, rows=rows)


def row_error_reason(error: str) -> str:
    """A short metric-friendly label for a row error message."""
    if error.startswith("row has"):
        return "extra_fields"
    return error.replace(" ", "_")
