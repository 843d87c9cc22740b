"""Failing closed at start-up: ``python -m upload_service`` as deployed, in a real process."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import fresh_database
from tests.upload.conftest import API_KEYS, REPO, create_bucket, free_port, key_header, serve

pytestmark = pytest.mark.integration


def start(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    """Runs the service expecting it to refuse to start (it would otherwise serve until killed)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("QA_")} | env
    environment.pop("K_SERVICE", None)
    return subprocess.run([sys.executable, "-m", "upload_service", *args], capture_output=True, text=True,
                          env=environment, cwd=REPO, timeout=timeout, check=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7"])
def test_without_keys_it_refuses_to_listen_beyond_loopback_with_one_error_line(host):
    port = free_port()
    result = start("--host", host, "--port", str(port))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no API keys are configured"), result.stderr
    assert "QA_API_KEYS" in lines[0] and "QA_AUTH=none" in lines[0] and host in lines[0]
    assert "Uvicorn running" not in result.stdout + result.stderr


def test_bad_auth_settings_are_one_error_line():
    for env, text in (({"QA_API_KEYS": "alice=not-a-hash"}, "QA_API_KEYS"),
                      ({"QA_API_KEYS": API_KEYS, "QA_AUTH": "none"}, "QA_AUTH=none"),
                      ({"QA_AUTH": "maybe"}, "QA_AUTH")):
        result = start("--host", "127.0.0.1", "--port", str(free_port()), **env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith("error: invalid settings:") and text in lines[0], lines[0]


@pytest.mark.parametrize("auth", ["none", "keys", "loopback"])
def test_it_starts_with_keys_with_auth_none_or_on_loopback_and_says_so(auth, fake_gcs_url, tmp_path):
    bucket = f"qa-start-{os.urandom(4).hex()}"
    create_bucket(fake_gcs_url, bucket)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("QA_")}, "QA_BUCKET": bucket,
           "QA_GCS_URL": fake_gcs_url, "QA_APPLY_MIGRATIONS": "true",
           "QA_PG_DSN": fresh_database("beam_qa_upload_start"),
           "QA_UPLOAD_HOST": "127.0.0.1" if auth == "loopback" else "0.0.0.0"}
    env |= {"none": {"QA_AUTH": "none"}, "keys": {"QA_API_KEYS": API_KEYS}, "loopback": {}}[auth]
    log = tmp_path / "upload.log"
    with serve(env, log) as url:
        listed = httpx.get(f"{url}/uploads", headers=key_header("alice"), timeout=30)
    text = log.read_text()
    # Served from 127.0.0.1, a loopback caller: open without keys, and alice's key with them.
    assert listed.status_code == 200, listed.text
    warnings = [line for line in text.splitlines() if "WARNING" in line and "authentication" in line]
    if auth == "keys":
        assert warnings == []
    elif auth == "none":
        assert len(warnings) == 1 and "QA_AUTH=none" in warnings[0] and "sees every upload" in warnings[0]
    else:
        assert len(warnings) == 1 and "loopback" in warnings[0]


def test_on_cloud_run_a_bare_uvicorn_without_keys_refuses_to_start():
    """Dockerfile.upload may start uvicorn itself; on Cloud Run the app refuses at start-up."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("QA_")} | {"K_SERVICE": "beam-qa-upload"}
    result = subprocess.run([sys.executable, "-m", "uvicorn", "upload_service.main:app", "--host", "127.0.0.1",
                             "--port", str(free_port())], capture_output=True, text=True, env=environment, cwd=REPO,
                            timeout=60, check=False)
    assert result.returncode != 0
    assert "error: no API keys are configured and 0.0.0.0 is not a loopback address" in result.stdout + result.stderr
