"""Writes the images' pinned requirements: one extra's runtime packages, pinned to this venv.

The pins come from the resolved virtualenv the tests ran in, so each image gets exactly the
versions that passed. Only ``beam-qa``'s common dependencies and the chosen extra are followed
(never ``dev``). Regenerate both files after changing ``setup.py`` and reinstalling:

    .venv/bin/python -m devtools.worker_requirements pipeline > requirements-worker.txt
    .venv/bin/python -m devtools.worker_requirements upload > requirements-upload.txt
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PROJECT = "beam-qa"

# Which image installs which extra, and the file its pins go to.
TARGETS = {
    "pipeline": ("Dockerfile.worker", "requirements-worker.txt"),
    "upload": ("Dockerfile.upload", "requirements-upload.txt"),
}

_TORCH_NOTE = """\
# torch is pinned without its local build label (+cpu / +cuXXX): the Dockerfile installs it
# first from the PyTorch index chosen by its TORCH_INDEX_URL build argument.
"""


def header(extra: str) -> str:
    """The comment block at the top of the requirements file for ``extra``."""
    dockerfile, target = TARGETS[extra]
    text = (f"# Fully pinned runtime dependencies of beam-qa[{extra}] for {dockerfile} (no dev tools).\n"
            "# Generated from the resolved virtualenv; do not edit by hand. Regenerate with:\n"
            f"#   .venv/bin/python -m devtools.worker_requirements {extra} > {target}\n")
    return text + (_TORCH_NOTE if extra == "pipeline" else "")


def _closure(root: str, extras: frozenset[str] = frozenset()) -> dict[str, str]:
    """Name -> installed version for ``root``'s runtime dependencies with ``extras``, transitively."""
    found: dict[str, str] = {}
    pending: list[tuple[str, frozenset[str]]] = [(root, extras)]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, wanted = pending.pop()
        key = (canonicalize_name(name), wanted)
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(name)
        if canonicalize_name(name) != canonicalize_name(root):
            found[canonicalize_name(name)] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            environments = [{"extra": extra} for extra in wanted] + [{"extra": ""}]
            if req.marker and not any(req.marker.evaluate(env) for env in environments):
                continue
            pending.append((req.name, frozenset(req.extras)))
    return found


def render(extra: str) -> str:
    """The requirements file for ``extra`` (``pipeline`` or ``upload``)."""
    lines = [header(extra)]
    for name, version in sorted(_closure(PROJECT, frozenset({extra})).items()):
        lines.append(f"{name}=={Version(version).public}\n")
    return "".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extra", choices=sorted(TARGETS), help="the image's extra: pipeline (Dataflow "
                        "worker, requirements-worker.txt) or upload (Cloud Run, requirements-upload.txt)")
    sys.stdout.write(render(parser.parse_args(argv).extra))


if __name__ == "__main__":
    main()
