"""Object names for uploads: never able to leave ``<incoming prefix><upload id>/``."""

from __future__ import annotations

import re
import unicodedata
import urllib.parse
import uuid

MAX_NAME_CHARS = 120
_UNSAFE = re.compile(r"[^\w.-]+")
_DOTS = re.compile(r"\.{2,}")
UPLOAD_ID_PATTERN = r"^[0-9a-f]{32}$"


def new_upload_id() -> str:
    """A random id (32 hex digits); one upload, one folder under the incoming prefix."""
    return uuid.uuid4().hex


def is_csv_name(name: str) -> bool:
    """The pipeline only processes objects whose name ends in ``.csv`` (any case)."""
    return name.strip().lower().endswith(".csv")


def sanitise_filename(name: str) -> str:
    """A safe single path segment ending in ``.csv``.

    Only the last segment of the client's name is kept (``/`` and ``\\`` both separate), after
    NFKC normalisation so that look-alike slashes become real ones first. Anything but letters,
    digits, ``_``, ``-`` and ``.`` becomes ``_``; runs of dots collapse, so ``..`` cannot appear;
    leading dots go. The result is never empty, never a path and at most 120 characters.

    Args:
        name: the file name the client sent.

    Returns:
        For example ``"../../etc/Q 1.csv"`` -> ``"Q_1.csv"``.
    """
    base = unicodedata.normalize("NFKC", name)
    base = re.split(r"[/\\]", base)[-1]
    base = "".join(ch if ch.isprintable() else "_" for ch in base)
    base = _DOTS.sub(".", _UNSAFE.sub("_", base))
    stem = base[:-4] if base.lower().endswith(".csv") else base
    stem = stem.strip("._-")[: MAX_NAME_CHARS - 4] or "upload"
    return stem + ".csv"


def display_name(name: str | None) -> str:
    """The client's file name for the history of a refused upload: never part of a path.

    The last segment, printable, at most 120 characters (``"../Q 1.xlsx"`` -> ``"Q 1.xlsx"``).
    """
    base = re.split(r"[/\\]", unicodedata.normalize("NFKC", name or ""))[-1]
    base = "".join(ch if ch.isprintable() else "_" for ch in base).strip()
    return base[:MAX_NAME_CHARS] or "upload"


def object_name(incoming_prefix: str, upload_id: str, filename: str) -> str:
    """``<incoming prefix><upload id>/<sanitised name>``."""
    return f"{incoming_prefix}{upload_id}/{sanitise_filename(filename)}"


def content_disposition(filename: str) -> str:
    """An ``attachment`` header value that carries any file name (RFC 6266, RFC 8187).

    HTTP header values are Latin-1 at most, so the name goes as UTF-8 percent-encoded in
    ``filename*``, which browsers prefer, and as an ASCII stand-in in ``filename`` for older clients.

    Args:
        filename: for example ``"質問_リスト.17.answers.csv"``.

    Returns:
        ``attachment; filename="_____.17.answers.csv"; filename*=UTF-8''%E8%B3%AA...``.
    """
    fallback = "".join(ch if " " <= ch <= "~" and ch not in '"\\' else "_" for ch in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"
