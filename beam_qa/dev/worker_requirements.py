"""Writes requirements-worker.txt: every package the worker image needs, pinned to this venv.

The pins come from the resolved virtualenv the tests ran in, so the image gets exactly the
versions that passed. Only ``beam-qa``'s runtime dependencies (not the ``dev`` extra) are
followed. Regenerate after changing ``install_requires`` and reinstalling:

    .venv/bin/python -m beam_qa.dev.worker_requirements > requirements-worker.txt
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PROJECT = "beam-qa"

HEADER = """\
# Fully pinned runtime dependencies of beam-qa for Dockerfile.worker (no dev tools).
# Generated from the resolved virtualenv; do not edit by hand. Regenerate with:
#   .venv/bin/python -m beam_qa.dev.worker_requirements > requirements-worker.txt
# torch is pinned without its local build label (+cpu / +cuXXX): the Dockerfile installs it
# first from the PyTorch index chosen by its TORCH_INDEX_URL build argument.
"""


def _closure(root: str) -> dict[str, str]:
    """Name -> installed version for ``root``'s runtime dependencies, transitively."""
    found: dict[str, str] = {}
    pending: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        key = (canonicalize_name(name), extras)
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(name)
        if canonicalize_name(name) != canonicalize_name(root):
            found[canonicalize_name(name)] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if req.marker and not any(req.marker.evaluate(env) for env in environments):
                continue
            pending.append((req.name, frozenset(req.extras)))
    return found


def render() -> str:
    lines = [HEADER]
    for name, version in sorted(_closure(PROJECT).items()):
        lines.append(f"{name}=={Version(version).public}\n")
    return "".join(lines)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
