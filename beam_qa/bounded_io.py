"""Reading what comes from outside within limits: capped (and inflated) downloads, safe local names.

Pure helpers for ``beam_qa.storage``; nothing here talks to a client.
"""

from __future__ import annotations

import os
import zlib


class ContentTooLarge(ValueError):
    """A file's content (inflated, for a gzip-encoded object) is longer than the limit it was read under."""

    def __init__(self, uri: str, limit: int, encoding: str):
        stored = f" (stored with Content-Encoding: {encoding}; it inflates to more)" if encoding else ""
        super().__init__(f"{uri} is over {limit} bytes{stored}")
        self.limit = limit
        self.encoding = encoding


class ContentEncodingError(ValueError):
    """An object's declared Content-Encoding does not match its bytes (not gzip data, or cut short)."""


class UnsafeName(ValueError):
    """An object name that would leave the folder it is copied into."""


def check_relative_name(name: str) -> list[str]:
    """The segments of a plain relative object name, or UnsafeName.

    Refused: empty names and segments (``a//b``, a leading ``/``: an absolute path once joined),
    ``.`` and ``..`` segments, backslashes and NUL.
    """
    parts = name.split("/")
    if not name or "\\" in name or "\x00" in name or any(part in ("", ".", "..") for part in parts):
        raise UnsafeName(f"object name {name[:200]!r} is not a plain relative path")
    return parts


def safe_join(folder: str, name: str) -> str:
    """``folder/name`` for a plain relative object name (``check_relative_name``), or UnsafeName.

    What passes cannot leave ``folder``; the resolved path is checked once more all the same.
    """
    path = os.path.join(folder, *check_relative_name(name))
    root = os.path.realpath(folder)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise UnsafeName(f"object name {name[:200]!r} leaves {folder}")
    return path


class HashingWriter:
    """Writes to a file and a hash at once, counting bytes."""

    def __init__(self, handle, digest):
        self._handle = handle
        self._digest = digest
        self.written = 0

    def write(self, data: bytes) -> None:
        self._handle.write(data)
        self._digest.update(data)
        self.written += len(data)


class CappedSink:
    """A download's destination: inflates gzip under ``limit`` and refuses content past it."""

    def __init__(self, uri: str, limit: int, encoding: str, out):
        self._uri = uri
        self._limit = limit
        self._encoding = encoding
        self._out = out
        self._gzip = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None
        self._written = 0

    def _emit(self, data: bytes) -> None:
        self._written += len(data)
        if self._written > self._limit:
            raise ContentTooLarge(self._uri, self._limit, self._encoding)
        self._out.write(data)

    def write(self, raw: bytes) -> int:
        if self._gzip is None:
            self._emit(raw)
            return len(raw)
        data = raw
        try:
            while data:
                # max_length: never more than one byte past the limit is inflated at once.
                self._emit(self._gzip.decompress(data, self._limit - self._written + 1))
                data = self._gzip.unconsumed_tail
                if self._gzip.eof and self._gzip.unused_data:  # a further gzip member
                    data = self._gzip.unused_data + data
                    self._gzip = zlib.decompressobj(16 + zlib.MAX_WBITS)
        except zlib.error as exc:
            raise ContentEncodingError(f"stored with Content-Encoding: gzip but its bytes are not gzip data "
                                       f"({exc})") from exc
        return len(raw)

    def close(self) -> None:
        if self._gzip is not None and not self._gzip.eof:
            raise ContentEncodingError("stored with Content-Encoding: gzip but its gzip data is cut short")

