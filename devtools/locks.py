"""The dependency locks in ``requirements/``: resolved once from ``setup.py``, installed everywhere.

``make lock`` (``python -m devtools.locks compile``) resolves ``setup.py``'s requirements into one
lock file per use, each pinning every distribution with the sha256 hashes of all its files:

- ``requirements/dev.txt``: all three extras, what ``make install`` (and so ``.ci/run``) installs;
- ``requirements/pipeline.txt``: ``beam-qa[pipeline]``, what ``Dockerfile.worker`` installs;
- ``requirements/upload.txt``: ``beam-qa[upload]``, what ``Dockerfile.upload`` installs.

The image locks are resolved under the dev lock as a constraint, so a distribution has the same
version in every lock. torch is the one exception: each build installs its own build of the one
version that ``requirements/torch.txt`` pins (the CPU wheel locally and in the CPU image, a CUDA
wheel in the GPU image), so the locks hold torch's dependencies but not torch itself.

Why ``uv pip compile`` rather than pip-tools' ``pip-compile``: uv resolves for a named target
(``--python-version``, ``--python-platform``), so the locks fit the images' Linux x86_64 Python 3.11
whichever machine runs ``make lock``; it reads the hashes from the index instead of downloading
every file (pip-tools downloads each wheel it cannot find hashes for, hundreds of MB for torch's
neighbours); and it resolves Beam's large dependency tree in seconds, where pip's backtracking
resolver takes minutes. uv itself is pinned by the dev lock.

``make install`` installs with plain pip (``--require-hashes --no-deps``), which honours the
machine's pip configuration, then ``python -m devtools.locks sync`` removes whatever the lock does
not name and fails unless the virtualenv holds exactly the locked versions.
"""

from __future__ import annotations

import argparse
import re
import runpy
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
LOCK_DIR = REPO / "requirements"
TORCH_PIN = LOCK_DIR / "torch.txt"

# Each lock and the setup.py extras it resolves. The dev lock comes first: the others are
# resolved under it as a constraint.
LOCKS: dict[str, tuple[str, ...]] = {
    "dev": ("pipeline", "upload", "dev"),
    "pipeline": ("pipeline",),
    "upload": ("upload",),
}
# The images' interpreter and platform (Dockerfile.worker, Dockerfile.upload): the locks are
# resolved for it wherever make lock runs.
TARGET_PYTHON = "3.11"
TARGET_PLATFORM = "x86_64-manylinux_2_28"
# Installed by its pinned version in each build, never from a lock (see the module docstring).
UNLOCKED = "torch"
# In a virtualenv but in no lock: the installer itself, and the project (installed editable).
NOT_DEPENDENCIES = frozenset({"pip", "beam-qa"})
# Where the CPU build of torch is found when no local copy is configured for pip: its metadata,
# unlike that of PyPI's CUDA build, names no NVIDIA libraries.
TORCH_CPU_LINKS = "https://download.pytorch.org/whl/cpu/torch/"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.M)


def canonical(name: str) -> str:
    """A distribution name in the normalized form of PEP 503 (``Foo_Bar`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_path(name: str) -> Path:
    """The file of lock ``name`` (a key of ``LOCKS``)."""
    return LOCK_DIR / f"{name}.txt"


def read_pins(path: Path) -> dict[str, str]:
    """Canonical name -> pinned version of every ``name==version`` line of a requirements file."""
    return {canonical(name): version for name, version in _PIN.findall(path.read_text(encoding="utf-8"))}


def torch_version() -> str:
    """The torch version every build installs (``requirements/torch.txt``)."""
    return read_pins(TORCH_PIN)[UNLOCKED]


def declared() -> dict[str, list[str]]:
    """setup.py's requirements: ``""`` -> install_requires, and each extra -> its own list.

    Read by running setup.py with ``setuptools.setup`` replaced, so the answer is what setup.py
    says now, not what an earlier ``pip install -e .`` recorded.
    """
    with mock.patch("setuptools.setup") as setup:
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    kwargs = setup.call_args.kwargs
    return {"": list(kwargs["install_requires"]), **{k: list(v) for k, v in kwargs["extras_require"].items()}}


def closure(requirements: list[str]) -> set[str]:
    """Canonical names of ``requirements`` and everything they need, read from installed metadata.

    The markers are evaluated for this interpreter, which make install checks is the locks'
    target (Python 3.11 on Linux); every distribution of the dev lock is installed here.
    """
    from packaging.requirements import Requirement  # a dev dependency: not needed by make lock's bootstrap
    found: set[str] = set()
    pending = [(Requirement(line), "") for line in requirements]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        req, parent_extra = pending.pop()
        if req.marker and not req.marker.evaluate({"extra": parent_extra}):
            continue
        key = (canonical(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        found.add(key[0])
        for line in metadata.distribution(req.name).requires or []:
            child = Requirement(line)
            # A requirement of one of the requested extras carries the marker extra == "name".
            for extra in ("", *req.extras):
                if not child.marker or child.marker.evaluate({"extra": extra}):
                    pending.append((child, extra))
                    break
    return found


def installed() -> dict[str, str]:
    """Canonical name -> version of every distribution installed into this environment.

    Only its site-packages are read: sys.path also holds the checkout (beam-qa's egg-info) and,
    once setuptools is imported, setuptools' own vendored copies, which pip never installed.
    """
    folders = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    return {canonical(dist.metadata["Name"]): dist.version for dist in metadata.distributions(path=folders)}


def venv_differences(lock: str = "dev") -> list[str]:
    """How this interpreter's distributions differ from lock ``lock`` plus the pinned torch.

    Returns:
        one line per distribution that is missing, at another version, or not in the lock; empty
        when the environment holds exactly the locked versions.
    """
    wanted = {**read_pins(lock_path(lock)), UNLOCKED: torch_version()}
    have = {name: version for name, version in installed().items() if name not in NOT_DEPENDENCIES}
    problems = []
    for name, version in sorted(wanted.items()):
        # A local build label (2.13.0+cpu) names the build, not another release.
        got = have.get(name, "").split("+")[0]
        if not got:
            problems.append(f"{name}=={version} is locked but not installed")
        elif got != version:
            problems.append(f"{name} {have[name]} is installed, the lock says {version}")
    problems += [f"{name} {have[name]} is installed but in no lock" for name in sorted(set(have) - set(wanted))]
    return problems


def sync(lock: str = "dev") -> int:
    """Uninstalls what lock ``lock`` does not name, then checks the environment against it.

    pip installs what a lock names but never removes what an older lock named; this is the
    removal half of pip-tools' ``pip-sync``, kept here because ``pip-sync`` would also remove
    torch, which no lock names.
    """
    wanted = set(read_pins(lock_path(lock))) | {UNLOCKED} | NOT_DEPENDENCIES
    extraneous = sorted(set(installed()) - wanted)
    if extraneous:
        print(f"removing what {lock_path(lock).relative_to(REPO)} does not name: {', '.join(extraneous)}")
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", *extraneous], check=True)
    problems = venv_differences(lock)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        print(f"error: the virtualenv does not match {lock_path(lock).relative_to(REPO)}; rerun make install",
              file=sys.stderr)
    return 1 if problems else 0


def pip_find_links() -> list[str]:
    """The ``find-links`` locations of this machine's pip configuration (``pip config list``)."""
    result = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            check=False)
    found = []
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            found += value.strip().strip("'\"").split()
    return found


def torch_links() -> str:
    """Where uv finds the CPU build of the pinned torch: a local copy pip is configured with, else PyTorch's index."""
    wheel = f"torch-{torch_version()}+cpu-*.whl"
    for location in pip_find_links():
        folder = Path(location.removeprefix("file://"))
        if folder.is_dir() and any(folder.glob(wheel)):
            return str(folder)
    return TORCH_CPU_LINKS


def compile_command(lock: str, uv: str, links: str) -> list[str]:
    """The ``uv pip compile`` command line that writes lock ``lock``."""
    command = [uv, "pip", "compile", "setup.py", "--quiet", "--generate-hashes",
               "--python-version", TARGET_PYTHON, "--python-platform", TARGET_PLATFORM,
               "--custom-compile-command", "make lock", "--find-links", links,
               "--constraint", str(TORCH_PIN.relative_to(REPO)), "--no-emit-package", UNLOCKED,
               "--output-file", str(lock_path(lock).relative_to(REPO))]
    for extra in LOCKS[lock]:
        command += ["--extra", extra]
    if lock != "dev":
        command += ["--constraint", str(lock_path("dev").relative_to(REPO))]
    return command


def compile_locks(upgrade: bool = False) -> None:
    """Writes every lock; keeps the locked versions that still fit unless ``upgrade``.

    Without ``upgrade`` uv starts from the versions in the existing dev lock, so a change to
    ``setup.py`` moves only what it must.
    """
    uv = str(Path(sys.executable).with_name("uv"))
    links = torch_links()
    for lock in LOCKS:
        command = compile_command(lock, uv, links)
        if lock == "dev" and upgrade:
            command.append("--upgrade")
        print(f"==> {lock_path(lock).relative_to(REPO)}", flush=True)
        subprocess.run(command, cwd=REPO, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The dependency locks in requirements/.")
    commands = parser.add_subparsers(dest="command", required=True)
    compile_parser = commands.add_parser("compile", help="resolve setup.py into the locks (make lock)")
    compile_parser.add_argument("--upgrade", action="store_true",
                                help="move every distribution to its newest allowed version (make upgrade-locks)")
    commands.add_parser("sync", help="make this virtualenv hold exactly the dev lock (make install)")
    args = parser.parse_args(argv)
    if args.command == "compile":
        compile_locks(upgrade=args.upgrade)
        return 0
    return sync()


if __name__ == "__main__":
    sys.exit(main())
