"""Checking an upload with exactly the pipeline's rules (``beam_qa.csv_rows``) before it is stored."""

from __future__ import annotations

import codecs
import csv
import io
import re
from typing import BinaryIO

from beam_qa.csv_rows import REQUIRED_COLUMNS, FileError, normalise_header, parse_csv
from upload_service.core.errors import ApiError
from upload_service.core.naming import is_csv_name

_CHUNK = 1024 * 1024

_HINTS = {
    "not_utf8": "Save the file as UTF-8 (for example 'CSV UTF-8' in a spreadsheet's Save As) and upload it again.",
    "binary": "Upload a comma-separated text file; this looks binary (a spreadsheet renamed to .csv?). "
              "Export it as CSV first.",
    "empty": "Add a header row with question and context columns, then one row per question.",
    "duplicate_columns": "Give every header column a distinct name.",
    "malformed_csv": "Check the quoting near that line: a quoted cell must be closed, and a quote inside "
                     "a quoted cell is written twice (\"\").",
    "no_rows": "Add at least one data row below the header.",
}


def read_capped(stream: BinaryIO, max_bytes: int) -> bytes:
    """Reads the whole upload in one piece of its own size, once it is known to be at most ``max_bytes``.

    The multipart parser has spooled the file already (``UploadFile.file``, seekable); its size
    is read first, so a file over the limit is refused without being read, and an accepted one
    is read into one ``bytes`` of exactly its size (no chunks joined: one copy, not two).

    Raises:
        ApiError: 413 when the stream holds more than ``max_bytes``.
    """
    try:
        start = stream.tell()
        size = stream.seek(0, io.SEEK_END) - start
        stream.seek(start)
    except (AttributeError, OSError, ValueError):
        size = None  # not seekable: read it in pieces
    if size is not None:
        if size > max_bytes:
            raise too_large(max_bytes)
        data = stream.read(size)
        if stream.read(1):  # grew meanwhile: never trust a size over the bytes
            raise too_large(max_bytes)
        return data
    chunks, total = [], 0
    while chunk := stream.read(min(_CHUNK, max_bytes + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise too_large(max_bytes)
    return b"".join(chunks)


def too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "too_large", f"file is over the limit of {max_bytes} bytes",
                    hint=f"Split it into files of at most {max_bytes} bytes ({max_bytes / 2**20:.0f} MiB) each.",
                    details={"limit_bytes": max_bytes})


def check_name(filename: str | None) -> None:
    """Raises a 415 ApiError unless the name ends in ``.csv`` (the pipeline ignores others)."""
    if not filename or not is_csv_name(filename):
        raise ApiError(415, "not_csv", f"file name {filename!r} does not end in .csv",
                       hint="Upload a comma-separated text file whose name ends in .csv, with question "
                            "and context columns.")


def validate_csv(data: bytes, filename: str, *, max_bytes: int, max_rows: int, max_row_bytes: int) -> int:
    """Parses the file as the pipeline will; returns its number of data rows.

    Row problems (an empty question, extra cells) are not rejections: the pipeline answers the
    other rows and marks those in the ``error`` column, so the service accepts them too. Before
    the pipeline's parser runs, no record (one row, its quoted line breaks included) may be longer
    than ``max_row_bytes``: the parser holds a record in memory at about 13 times its size.

    Raises:
        ApiError: 413 for ``too_large``; 422 ``row_too_large`` for a record over ``max_row_bytes``;
            422 for every other ``FileError`` kind.
    """
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    # A NUL byte: parse_csv's first check calls the file binary; it is not a CSV whose rows count.
    longest = longest_record(data, max_row_bytes, max_rows) if b"\x00" not in data else None
    if longest is not None:
        line, size = longest
        raise ApiError(422, "row_too_large", f"the row at line {line} is {'at least ' if size is None else ''}"
                       f"{max_row_bytes + 1 if size is None else size} bytes, over the limit of {max_row_bytes} "
                       "bytes a row (QA_MAX_ROW_BYTES); a quoted cell may also have lost its closing quote",
                       hint="Split long contexts into several rows (the pipeline answers contexts of at most "
                            "--max_context_chars characters), and check that every quoted cell is closed.",
                       details={"line": line, "limit_bytes": max_row_bytes})
    try:
        parsed = parse_csv(data, max_bytes=max_bytes, max_rows=max_rows)
    except FileError as exc:
        raise _rejection(exc, data, max_bytes=max_bytes, max_rows=max_rows) from exc
    return parsed.row_count


# One CSV record of checked UTF-8, as csv.reader (excel dialect, strict) splits it: fields separated
# by commas, each quoted ("..." with "" inside, followed by a separator or the end) or unquoted (not
# starting with a quote). Possessive quantifiers: no backtracking, so the regex engine keeps no
# state per field and runs in time linear in the record.
_QUOTED = rb'"[^"]*+(?:""[^"]*+)*+"'
_FIELD = rb"(?:" + _QUOTED + rb"(?=[,\r\n]|\Z)|(?!\")[^,\r\n]*+)"
_RECORD = re.compile(_FIELD + rb"(?:," + _FIELD + rb")*+")
_CLOSED_QUOTE = re.compile(_QUOTED)
_EOL = re.compile(rb"\r\n|\r|\n")
# Lines of nothing but spaces, tabs and commas, as beam_qa.csv_rows skips them.
_BLANK_LINES = re.compile(rb"[ \t,\r\n]*[\r\n]")


def longest_record(data: bytes, max_row_bytes: int, max_rows: int) -> tuple[int, int | None] | None:
    """The first record longer than ``max_row_bytes``, as ``(line, bytes)``, or None.

    Linear in the file, at the regex engine's speed, with no copy of it: one regex match per record,
    none per field or per character. Bytes of ``None`` mean a quote that is never closed: the CSV
    reader would take the rest of the file (more than the limit) into one cell. Stops after
    ``2 * max_rows + 2`` records: ``parse_csv`` refuses a file with more rows (or blank records)
    before it reads further.
    """
    pos = 3 if data.startswith(codecs.BOM_UTF8) else 0
    line, size = 1, len(data)
    for _ in range(2 * max_rows + 2):
        if blank := _BLANK_LINES.match(data, pos):
            line += _line_breaks(data, pos, blank.end())
            pos = blank.end()
        if pos >= size:
            return None
        start = pos
        match = _RECORD.match(data, pos)
        end = match.end() if match else pos
        if end < size and data[end] == ord(",") and match:
            end += 1  # the field after this separator did not match: it starts with a quote
        if end < size and data[end] == ord('"'):
            # A quoted field that is not followed by a separator (csv.reader's strict error, left
            # to parse_csv), or one that is never closed: the reader would read to the end.
            closed = _CLOSED_QUOTE.match(data, end)
            if closed is None:
                return (line, None) if size - start > max_row_bytes else None
            end = closed.end()
        if end - start > max_row_bytes:
            return line, end - start
        if end < size and data[end] not in b"\r\n":
            return None  # malformed: parse_csv says where
        line += _line_breaks(data, start, end)
        eol = _EOL.match(data, end)
        if eol is None:
            return None
        line += 1
        pos = eol.end()
    return None


def _line_breaks(data: bytes, start: int, end: int) -> int:
    return data.count(b"\n", start, end) + data.count(b"\r", start, end) - data.count(b"\r\n", start, end)


def _rejection(exc: FileError, data: bytes, *, max_bytes: int, max_rows: int) -> ApiError:
    if exc.kind == "too_large":
        return too_large(max_bytes)
    details = None
    hint = _HINTS.get(exc.kind)
    if exc.kind == "too_many_rows":
        hint = f"Split it into files of at most {max_rows} data rows each."
        details = {"limit_rows": max_rows}
    elif exc.kind == "missing_columns":
        missing = _missing_columns(data)
        details = {"missing": missing, "required": list(REQUIRED_COLUMNS)}
        hint = (f"Add the column(s) {', '.join(missing)} to the header row (names are matched ignoring "
                "case and spaces); an id column is optional.")
    return ApiError(422, exc.kind, str(exc), hint=hint, details=details)


def _missing_columns(data: bytes) -> list[str]:
    """The required columns the header lacks; only the header record is decoded (not the file again).

    Only reached after parse_csv found the header, and after ``longest_record`` bounded every
    record, so the header is at most QA_MAX_ROW_BYTES.
    """
    pos = 3 if data.startswith(codecs.BOM_UTF8) else 0
    if blank := _BLANK_LINES.match(data, pos):
        pos = blank.end()
    match = _RECORD.match(data, pos)
    end = match.end() if match else pos
    reader = csv.reader([data[pos:end].decode("utf-8")], strict=True)
    header = next(reader, [])
    names = {normalise_header(h) for h in header}
    return [c for c in REQUIRED_COLUMNS if c not in names]
