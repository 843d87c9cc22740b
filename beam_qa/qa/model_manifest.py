"""A published model's manifest: the size and SHA-256 of each of its files, written last.

Publishing a model under gs:// means copying its files, then its manifest
(``beam_qa_manifest.json``) last: the manifest is what marks the model as published
(``--model_watch_pattern`` watches manifests). A worker copies exactly the files the manifest
names, each into the model's own local folder (a name that would leave it is refused) and
checked against its size and checksum as it arrives; a model that does not match is refused
(``ModelRefusedError``) and the running model stays in place (``beam_qa/qa/model_watch.py``).

The manifest proves a model is complete and unchanged since it was published; who may publish
is decided by IAM (docs/deploy.md: models live where uploaders cannot write).

Write one with ``python -m beam_qa.qa.model_manifest MODEL_DIR`` before copying the directory.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

from beam_qa.bounded_io import UnsafeName, check_relative_name
from beam_qa.errors import UsageError

MANIFEST = "beam_qa_manifest.json"
# A manifest is a few hundred bytes a file: these bounds only stop a hostile one early.
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILES = 1_000
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ModelRefusedError(UsageError):
    """A published model that does not match its manifest (or has none that can be read)."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def build(folder: Path) -> dict:
    """The manifest of a local model directory: every file but the manifest and hidden ones."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name == MANIFEST or any(part.startswith(".") for part in name.split("/")):
            continue
        files[name] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    if "config.json" not in files:
        raise UsageError(f"{folder} has no config.json: it is not a model directory")
    return {"format": 1, "files": files}


def write(folder: Path) -> Path:
    """Writes ``folder/beam_qa_manifest.json``; returns its path."""
    target = folder / MANIFEST
    target.write_text(json.dumps(build(folder), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return target


def parse(data: bytes) -> dict[str, tuple[int, str]]:
    """``{name: (size, sha256)}`` of a manifest's bytes.

    Raises:
        ModelRefusedError: when it is not a manifest, or names a file outside the model's folder.
    """
    try:
        files = json.loads(data.decode("utf-8"))["files"]
        if not isinstance(files, dict) or not 0 < len(files) <= MAX_FILES:
            raise ValueError(f"it lists {len(files)} files, expected 1 to {MAX_FILES}")
        found = {}
        for name, entry in files.items():
            check_relative_name(name)
            size, sha = entry["size"], entry["sha256"]
            if not isinstance(size, int) or size < 0 or not isinstance(sha, str) or not _SHA256.fullmatch(sha):
                raise ValueError(f"the entry of {name[:100]!r} is not a size and a SHA-256")
            found[name] = (size, sha)
    except UnsafeName as exc:
        raise ModelRefusedError(f"its {MANIFEST} names a file outside the model's folder: {exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelRefusedError(f"its {MANIFEST} is not a manifest ({str(exc)[:200]})") from exc
    if "config.json" not in found:
        raise ModelRefusedError(f"its {MANIFEST} does not list config.json")
    return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m beam_qa.qa.model_manifest MODEL_DIR", file=sys.stderr)
        return 2
    try:
        print(write(Path(args[0])))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
