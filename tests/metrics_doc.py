"""docs/metrics.md's metric tables, read the same way by the metrics and the dashboard tests."""

from __future__ import annotations

import re
from pathlib import Path

from beam_qa.errors import FileErrorKind, RowErrorKind

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"

# A table row named ``x_<kind>`` stands for one metric per kind of that family.
FAMILIES = {"file_errors_<kind>": [f"file_errors_{k.value}" for k in FileErrorKind],
            "row_errors_<kind>": [f"row_errors_{k.value}" for k in RowErrorKind]}


def documented() -> dict[str, str]:
    """``name -> kind`` for every metric in docs/metrics.md's tables (families expanded)."""
    rows = re.findall(r"^\| `([a-z0-9_<>]+)` \| (counter|distribution) \|", DOC.read_text(encoding="utf-8"), re.M)
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), "a metric is listed twice"
    return {member: kind for name, kind in rows for member in FAMILIES.get(name, [name])}
