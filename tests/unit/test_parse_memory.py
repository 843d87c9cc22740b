"""Memory per byte of a parsed file: measured here, and the figures given in docs/security.md.

What a worker holds while it reads one file beyond the file's own bytes: ``parse_csv`` checks
the whole file, then its rows are parsed again and cut into chunks one at a time
(``beam_qa.reading``), each chunk dropped once emitted (the runner takes it). ``tracemalloc``
counts every allocation Python makes (objects, the csv module's buffers), so its peak is that
cost. The bound asserted is the one documented:

    peak <= 1 x the file's size + 13 x its longest line + 512 KiB

A file of ordinary rows costs a fraction of its size; a file that is one huge cell costs a few
times that cell (Python keeps a string at 1, 2 or 4 bytes per character, by its widest one, and
the csv module builds each cell in a 4-byte-per-character buffer); the constant is the UTF-8
check's 64 KiB pieces and the header's names (at most --max_columns of them). Run with ``-s``
to see the figures as JSON.
"""

from __future__ import annotations

import json
import time
import tracemalloc

import pytest

from beam_qa.csv_rows import parse_csv
from beam_qa.reading import _chunks  # pylint: disable=protected-access
from beam_qa.records import Claim, FileEvent

FILE_BYTES = 1.0
LONGEST_LINE = 13.0
CONSTANT = 512 * 1024


def _rows(count: int) -> bytes:
    return b"id,question,context\n" + b"".join(
        f"r{i},Question number {i}?,Context number {i} of a long file.\n".encode() for i in range(count))


SHAPES = {
    "20k ordinary rows": lambda: _rows(20_000),
    "50k tiny rows (q,c)": lambda: b"question,context\n" + b"q,c\n" * 50_000,
    "1,000 columns, short rows": lambda: ",".join(["question", "context"] + [f"c{i}" for i in range(998)]).encode()
    + b"\n" + b"q,c\n" * 20_000,
    "rows of 4,000 tiny cells": lambda: b"question,context\n" + (b"ab," * 3_999 + b"ab\n") * 50,
    "one 1 MB ASCII cell": lambda: b'question,context\nq,"' + b"word " * 200_000 + b'"\n',
    "one 1 MB cell with an emoji": lambda: b'question,context\nq,"' + "\U0001F600".encode() + b"word " * 200_000
    + b'"\n',
}


def _read_all(data: bytes) -> int:
    """What a worker does with a file: check it, then cut it into chunks, dropping each."""
    parsed = parse_csv(data, max_bytes=len(data), max_rows=100_000, max_context_chars=2_000_000)
    event = FileEvent("/in/f.csv", 1, len(data), "/in", "f.csv", 0.0)
    return sum(len(chunk.rows) for chunk in _chunks(Claim(event, 1), parsed, 64))


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_memory_per_byte_of_a_parsed_file(shape):
    data = SHAPES[shape]()
    longest = max(len(line) for line in data.splitlines())
    tracemalloc.start()
    try:
        started = time.perf_counter()
        rows = _read_all(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(json.dumps({"shape": shape, "bytes": len(data), "rows": rows, "longest_line": longest,
                      "peak_bytes": peak, "peak_per_file_byte": round(peak / len(data), 3),
                      "peak_per_longest_line_byte": round(peak / longest, 2),
                      "secs_under_tracemalloc": round(time.perf_counter() - started, 2)}))
    assert rows > 0
    assert peak <= FILE_BYTES * len(data) + LONGEST_LINE * longest + CONSTANT, (peak, len(data), longest)
