"""Object names for uploads: never able to leave ``<incoming prefix><upload id>/``."""

from __future__ import annotations

import re
import unicodedata
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
