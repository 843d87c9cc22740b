"""An in-memory fake-gcs-server for integration tests that need GCS but not the whole stack."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator

from beam_qa.storage import Storage
from devtools.stack import _http, _port_open, fake_gcs_binary
from tests.e2e.support import free_port


@contextlib.contextmanager
def in_memory_gcs(bucket: str) -> Iterator[Storage]:
    """fake-gcs-server (in memory) on a free port holding ``bucket``, this process's clients pointed at it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [str(fake_gcs_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
         "-log-level", "warn", "-external-url", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    try:
        deadline = time.monotonic() + 30
        while not _port_open(f"127.0.0.1:{port}"):
            assert proc.poll() is None and time.monotonic() < deadline, "fake-gcs-server did not start"
            time.sleep(0.1)
        status, body = _http("POST", f"{url}/storage/v1/b", {"name": bucket})
        assert status == 200, body
        yield Storage(anonymous=True)
    finally:
        if saved is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved
        proc.terminate()
        proc.wait(timeout=10)
