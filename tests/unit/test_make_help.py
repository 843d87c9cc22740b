"""`make help` lists every target of the Makefile with its one-line description."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def phony_targets() -> list[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return re.search(r"^\.PHONY:(.*)$", text, re.M).group(1).split()


def test_make_help_lists_every_target_once_with_one_line():
    if shutil.which("make") is None:
        pytest.fail("make is required (sudo apt-get install make)")
    result = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, timeout=60,
                            check=True)
    listed = {}
    for line in result.stdout.splitlines():
        match = re.fullmatch(r"  make (\S+)\s+(.+)", line)
        assert match, f"not a target line: {line!r}"
        assert match.group(1) not in listed, f"{match.group(1)} listed twice"
        listed[match.group(1)] = match.group(2)
    assert sorted(listed) == sorted(phony_targets())
    for target, description in listed.items():
        assert description.endswith("."), (target, description)


def test_plain_make_shows_the_help():
    plain = subprocess.run(["make", "-s"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert plain.stdout == subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True,
                                          timeout=60, check=True).stdout
