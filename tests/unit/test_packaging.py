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
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "-e '.[pipeline,upload,dev]'" in makefile
    assert set(extras()) == {"", "pipeline", "upload", "dev"}
