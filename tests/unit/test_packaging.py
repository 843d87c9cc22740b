"""The upload service runs without the pipeline's heavy part: no Beam, no torch, no transformers.

Its image installs only ``beam-qa[upload]`` (Dockerfile.upload), yet it imports the pipeline's
parse rules (``beam_qa.csv_rows``). A subprocess that refuses those imports proves the chain,
including the imports the service makes lazily inside functions.
"""

import ast
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PIPELINE_ONLY = ("apache_beam", "torch", "transformers", "tokenizers")

# Refuses every pipeline-only import, then imports the upload service and builds its app.
BLOCKED_IMPORTS = """
import importlib, importlib.abc, sys

BLOCKED = {blocked!r}

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"the upload service imported {{name}}")

sys.meta_path.insert(0, Refuse())
for module in {modules!r}:
    importlib.import_module(module)
from upload_service.main import create_app
create_app()
print("imported", len({modules!r}), "modules")
"""


def upload_service_modules() -> list[str]:
    """Every upload_service module, and every beam_qa module any of them imports (also lazily)."""
    modules, beam_qa_imports = [], set()
    for path in sorted((REPO / "upload_service").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("beam_qa"):
                beam_qa_imports.add(node.module)
            elif isinstance(node, ast.Import):
                beam_qa_imports.update(a.name for a in node.names if a.name.startswith("beam_qa"))
    return modules + sorted(beam_qa_imports)


def test_the_upload_service_imports_neither_beam_nor_torch():
    modules = upload_service_modules()
    assert "beam_qa.csv_rows" in modules, "the service no longer uses the pipeline's parse rules?"
    result = subprocess.run([sys.executable, "-c", BLOCKED_IMPORTS.format(blocked=PIPELINE_ONLY, modules=modules)],
                            cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"imported {len(modules)} modules" in result.stdout


def test_the_blocker_really_blocks():
    """The same harness fails as soon as a module imports Beam, so the test above can fail."""
    result = subprocess.run([sys.executable, "-c", BLOCKED_IMPORTS.format(blocked=PIPELINE_ONLY,
                                                                          modules=["beam_qa.pipeline"])],
                            cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode != 0 and "the upload service imported apache_beam" in result.stderr


def extras() -> dict[str, set[str]]:
    """Requirement names per extra ("" for install_requires), from beam-qa's installed metadata."""
    found: dict[str, set[str]] = {"": set()}
    for line in metadata.distribution("beam-qa").requires or []:
        req = Requirement(line)
        extra = re.search(r'extra == "([^"]+)"', str(req.marker)) if req.marker else None
        found.setdefault(extra.group(1) if extra else "", set()).add(canonicalize_name(req.name))
    return found


@pytest.mark.parametrize("extra, forbidden", [
    ("", {"apache-beam", "torch", "transformers", "fastapi", "uvicorn"}),
    ("upload", {"apache-beam", "torch", "transformers", "tokenizers"}),
    ("pipeline", {"fastapi", "uvicorn", "python-multipart", "pydantic-settings"}),
])
def test_setup_py_keeps_each_part_to_its_extra(extra, forbidden):
    names = extras()[extra]
    assert names, f"no requirements found for {extra!r}"
    assert not names & forbidden, f"{extra or 'install_requires'} brings {sorted(names & forbidden)}"


def test_make_install_installs_every_part_for_development():
    """make install takes the dev lock, which resolves all three extras, then beam-qa itself."""
    from devtools.locks import LOCKS
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "pip install --progress-bar on --require-hashes --no-deps -r requirements/dev.txt" in makefile
    assert "pip install --quiet --no-deps -e ." in makefile
    assert LOCKS["dev"] == ("pipeline", "upload", "dev")
    assert set(extras()) == {"", "pipeline", "upload", "dev"}


# Lists, from inside a virtualenv, what the beam-qa distribution installed there.
INSTALLED_FILES = """
import json, sys
from importlib import metadata
dist = metadata.distribution("beam-qa")
print(json.dumps({"files": [str(f) for f in dist.files],
                  "top_level": (dist.read_text("top_level.txt") or "").split(),
                  "requires": dist.requires or []}))
"""


def test_the_worker_images_install_ships_no_development_tools(tmp_path):
    """``pip install .[pipeline]`` in a clean virtualenv, as Dockerfile.worker does: no devtools/.

    The wheel is built from a copy of this checkout (devtools/ included) with this venv's locked
    setuptools, then installed into a new virtualenv with --no-deps: the dependencies the extra
    would bring are the pipeline lock's, which tests/unit/test_locks.py keeps free of dev tools.
    """
    import json
    import shutil
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".run", ".cache", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    assert (source / "devtools" / "stack.py").exists()
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheels), str(source)], check=True, timeout=300, capture_output=True)
    (wheel,) = wheels.glob("beam_qa-*.whl")
    clean = tmp_path / "clean"
    subprocess.run([sys.executable, "-m", "venv", str(clean)], check=True, timeout=300)
    python = clean / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", f"{wheel}[pipeline]"],
                   check=True, timeout=300, capture_output=True)

    # Run outside the checkout, so nothing is importable from it.
    found = json.loads(subprocess.run([str(python), "-c", INSTALLED_FILES], cwd=tmp_path, capture_output=True,
                                      text=True, check=True, timeout=120).stdout)
    assert sorted(found["top_level"]) == ["beam_qa", "upload_service"]
    packaged = {name.split("/")[0] for name in found["files"] if not name.startswith(("beam_qa-", "../"))}
    assert packaged == {"beam_qa", "upload_service"}, packaged
    assert not [name for name in found["files"] if name.startswith(("devtools/", "beam_qa/dev/"))]
    assert any(name == "beam_qa/pipeline.py" for name in found["files"])
    for module in ("devtools", "devtools.stack", "beam_qa.dev"):
        result = subprocess.run([str(python), "-c", f"import {module}"], cwd=tmp_path, capture_output=True,
                                text=True, timeout=120, check=False)
        assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr, (module, result.stderr)
    # The extra the image asks for names no development tool either.
    pipeline = {canonicalize_name(Requirement(line).name) for line in found["requires"]
                if "extra ==" not in line or 'extra == "pipeline"' in line}
    dev_only = extras()["dev"] - extras()["pipeline"] - extras()[""]
    assert dev_only and not pipeline & dev_only, sorted(pipeline & dev_only)
