"""``CI`` is read one way, by one helper (tests/ci.py), wherever the suite asks whether it runs in CI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.ci import in_ci

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value, expected", [
    ("true", True), ("True", True), ("TRUE", True), ("1", True), ("yes", True), ("on", True), (" true ", True),
    (None, False), ("", False), ("0", False), ("false", False), ("False", False), (" FALSE ", False),
])
def test_any_non_empty_value_but_0_or_false_means_ci(value, expected):
    assert in_ci({} if value is None else {"CI": value}) is expected


def test_the_process_environment_is_read_by_default(monkeypatch):
    monkeypatch.setenv("CI", "True")
    assert in_ci() is True
    monkeypatch.setenv("CI", "0")
    assert in_ci() is False


def test_nothing_else_reads_ci_itself():
    """A second reading (say, comparing ``CI`` with ``"true"`` exactly) would let ``CI=True`` skip silently."""
    pattern = re.compile(r"""(environ\.get\(|environ\[|getenv\()\s*["']CI["']""")
    readers = [str(path.relative_to(REPO)) for folder in ("tests", "beam_qa", "benchmarks", "upload_service")
               for path in (REPO / folder).rglob("*.py")
               if pattern.search(path.read_text(encoding="utf-8")) and path != REPO / "tests" / "ci.py"]
    assert readers == []
