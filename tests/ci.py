"""How the suite tells CI from a developer's machine: one reading of ``CI`` for every test.

CI systems set ``CI`` to ``true``, ``True``, ``1`` or ``yes``; anything non-empty other than
``0`` or ``false`` (any case) counts. Under CI a missing prerequisite is a failure, since CI is
where it must be present; elsewhere it is a skip that says what to install.
"""

from __future__ import annotations

import os

import pytest


def in_ci(environ: dict[str, str] | None = None) -> bool:
    """Whether ``CI`` is set to anything but empty, ``0`` or ``false``."""
    value = (os.environ if environ is None else environ).get("CI", "").strip().lower()
    return value not in ("", "0", "false")


def missing(reason: str) -> None:
    """Fails under CI, skips elsewhere; ``reason`` says what is missing and how to get it."""
    if in_ci():
        pytest.fail(f"{reason}; CI must run this test")
    pytest.skip(reason)
