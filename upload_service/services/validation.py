"""Checking an upload with exactly the pipeline's rules (``beam_qa.csv_rows``) before it is stored."""

from __future__ import annotations

import csv
import io
from typing import BinaryIO

from beam_qa.csv_rows import REQUIRED_COLUMNS, FileError, decode_csv_bytes, normalise_header, parse_csv
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
    """Reads at most ``max_bytes`` (+1 to notice more), so a huge upload is never read whole.

    Raises:
        ApiError: 413 when the stream holds more than ``max_bytes``.
    """
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


def validate_csv(data: bytes, filename: str, *, max_bytes: int, max_rows: int) -> int:
    """Parses the file as the pipeline will; returns its number of data rows.

    Row problems (an empty question, extra cells) are not rejections: the pipeline answers the
    other rows and marks those in the ``error`` column, so the service accepts them too.

    Raises:
        ApiError: 413 for ``too_large``, 422 for every other ``FileError`` kind.
    """
    try:
        parsed = parse_csv(data, max_bytes=max_bytes, max_rows=max_rows)
    except FileError as exc:
        raise _rejection(exc, data, max_bytes=max_bytes, max_rows=max_rows) from exc
    return parsed.row_count


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
    # Only reached after parse_csv decoded the file and found its header, so both succeed.
    reader = csv.reader(io.StringIO(decode_csv_bytes(data), newline=""))
    header = next((r for r in reader if any(cell.strip() for cell in r)), [])
    names = {normalise_header(h) for h in header}
    return [c for c in REQUIRED_COLUMNS if c not in names]
