"""The service decides who calls, and from where, before it reads anything; and a request's memory is bounded.

Issue 31 item 5 and the service's smaller findings: authorisation never depends on an address a
header can set (the image's own command line, and the app wrapped as the image wraps it); a
keyless POST is refused before its body is read; a huge cell is refused cheaply; a page of answers
is bounded by bytes; a request path cannot forge a log line; keyless /readyz calls share their
backend round trips; a cross-site POST is refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import select
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import httpx
import pytest

from tests.conftest import csv_bytes, fresh_database
from tests.upload.conftest import (API_KEYS, REPO, PipelineRecords, bucket_names, create_bucket, free_port,
                                   key_header, served)

pytestmark = pytest.mark.integration

GOOD = csv_bytes(["question", "context"], [["Where?", "In Paris."]])
MIB = 1024 * 1024
LOOPBACK_CLAIM = {"X-Forwarded-For": "127.0.0.1"}


def post(client, data: bytes = GOOD, headers: dict | None = None, name: str = "q.csv"):
    return client.post("/uploads", files={"file": (name, data, "text/csv")}, headers=headers or {})


# ----------------------------------------------------------------------------- the image's command


def image_command() -> tuple[list[str], dict[str, str]]:
    """Dockerfile.upload's CMD (with its ENTRYPOINT, if any) and the ENV it sets, as the image runs them."""
    text = (REPO / "Dockerfile.upload").read_text(encoding="utf-8")
    instructions = re.sub(r"\\\n", " ", text).splitlines()
    env: dict[str, str] = {}
    entrypoint: list[str] = []
    command: list[str] = []
    for line in instructions:
        keyword, _, rest = line.strip().partition(" ")
        if keyword == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                env[name] = value
        elif keyword in ("CMD", "ENTRYPOINT"):
            argv = json.loads(rest) if rest.strip().startswith("[") else ["sh", "-c", rest]
            if keyword == "CMD":
                command = argv
            else:
                entrypoint = argv
    assert command or entrypoint, "Dockerfile.upload has no CMD"
    return entrypoint + command, env


def local_command(argv: list[str]) -> list[str]:
    """The image's command run here: its python is this virtualenv's (uvicorn too, through PATH)."""
    return [sys.executable if argv[0] in ("python", "python3") else argv[0], *argv[1:]]


def local_env(image_env: dict[str, str], **extra: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("QA_") and k != "K_SERVICE"}
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    return environment | image_env | extra


def test_the_image_command_without_keys_refuses_to_start_on_its_address_with_one_line():
    argv, image_env = image_command()
    assert image_env.get("QA_UPLOAD_HOST", "0.0.0.0") == "0.0.0.0" or "0.0.0.0" in " ".join(argv)
    # In a network namespace of its own (when this machine allows one), so that even a broken
    # refusal would listen on nothing another machine could reach.
    isolate = ["unshare", "-rn"] if shutil.which("unshare") and subprocess.run(
        ["unshare", "-rn", "true"], capture_output=True, check=False).returncode == 0 else []
    environment = local_env(image_env, PORT=str(free_port()))
    if not isolate:
        environment["QA_UPLOAD_HOST"] = "192.0.2.7"  # TEST-NET: not this machine's, so nothing can listen
    with subprocess.Popen([*isolate, *local_command(argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=environment, cwd=REPO) as proc:
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the image's command started without keys on a non-loopback address:\n{out}{err}")
    lines = err.strip().splitlines()
    assert proc.returncode == 2, out + err
    assert len(lines) == 1 and lines[0].startswith("error: no API keys are configured and "), err
    assert "QA_API_KEYS" in lines[0] and "QA_AUTH=none" in lines[0]
    assert "Uvicorn running" not in out + err


def test_with_keys_the_image_command_refuses_a_keyless_caller_that_claims_to_be_loopback(fake_gcs_url, tmp_path):
    argv, image_env = image_command()
    # On loopback only: this test's listener is never reachable from another machine.
    argv = [part.replace("0.0.0.0", "127.0.0.1") for part in argv]
    bucket = f"qa-door-{os.urandom(4).hex()}"
    create_bucket(fake_gcs_url, bucket)
    port = free_port()
    environment = local_env(image_env, PORT=str(port), QA_UPLOAD_HOST="127.0.0.1", QA_API_KEYS=API_KEYS,
                            QA_BUCKET=bucket, QA_GCS_URL=fake_gcs_url, QA_APPLY_MIGRATIONS="true",
                            QA_PG_DSN=fresh_database("beam_qa_upload_door"))
    log_path = tmp_path / "upload.log"
    with open(log_path, "wb") as log, subprocess.Popen(local_command(argv), stdout=log, stderr=subprocess.STDOUT,
                                                        env=environment, cwd=REPO) as proc:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(proc, url, log_path)
            with httpx.Client(base_url=url, timeout=30) as client:
                listed = client.get("/uploads", headers=LOOPBACK_CLAIM)
                posted = post(client, headers=LOOPBACK_CLAIM)
                real = client.get("/uploads", headers=key_header("alice"))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert listed.status_code == 401 and listed.json()["error"] == "unauthorized", listed.text
    assert posted.status_code == 401, posted.text
    assert real.status_code == 200, real.text
    assert bucket_names(fake_gcs_url, bucket) == []


def wait_until_up(proc, url: str, log_path: Path) -> None:
    for _ in range(300):
        assert proc.poll() is None, log_path.read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(log_path.read_text())


def test_without_keys_a_remote_caller_claiming_loopback_in_x_forwarded_for_is_refused(make_client):
    """In process, the app wrapped as uvicorn --proxy-headers --forwarded-allow-ips='*' wraps it."""
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    client = make_client(as_client=None, api_keys=None)
    stored = post(make_client(auth="none"), GOOD)  # something there to see
    assert stored.status_code == 201
    wrapped = ProxyHeadersMiddleware(client.app, trusted_hosts="*")

    async def call(server: str, peer: str, headers: dict) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=wrapped, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{server}") as remote:
            return [await remote.get("/uploads", headers=headers),
                    await remote.post("/uploads", files={"file": ("q.csv", GOOD, "text/csv")}, headers=headers)]

    # A connection that reached the service on its public address, from 203.0.113.7, however it is
    # forwarded or whatever it claims.
    for headers in ({}, LOOPBACK_CLAIM, {"X-Forwarded-For": "::1"}, {"X-Forwarded-For": "10.0.0.1, 127.0.0.1"}):
        for response in asyncio.run(call("192.0.2.10:8080", "203.0.113.7", headers)):
            assert response.status_code == 401, (headers, response.status_code, response.text)
    assert bucket_names(client.settings.gcs_url, client.settings.bucket) == []
    # A connection to the loopback address comes from this machine, whatever it claims.
    listed, posted = asyncio.run(call("127.0.0.1:8000", "127.0.0.1", {"X-Forwarded-For": "203.0.113.7"}))
    assert listed.status_code == 200 and posted.status_code == 201, (listed.text, posted.text)


# ----------------------------------------------------------------------------- the body, after the key


def keyless_post_consumed(url: str, total: int, *, chunk: int = 64 * 1024) -> tuple[int, bytes]:
    """Streams a keyless multipart POST of ``total`` bytes; returns how many bytes of it were
    consumed before the response arrived or the connection closed, and the response's first bytes.

    The client's own send buffer is kept small, so bytes count as consumed only once the server's
    side has taken them (its kernel buffer, then the service).
    """
    host, port = url.removeprefix("http://").split(":")
    boundary = "door" + os.urandom(8).hex()
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.csv\"\r\n"
            "Content-Type: text/csv\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    body_size = len(head) + total + len(tail)

    def body():
        yield head
        row = b"question,context\n"
        yield row
        sent = len(row)
        while sent < total:
            piece = b"q," + b"a" * (min(chunk, total - sent) - 3) + b"\n"
            sent += len(piece)
            yield piece
        yield tail

    consumed = 0
    response = b""
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        sock.sendall((f"POST /uploads HTTP/1.1\r\nHost: {host}:{port}\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                      f"Content-Length: {body_size}\r\n\r\n").encode())
        try:
            for piece in body():
                view = memoryview(piece)
                while view:
                    readable, writable, _ = select.select([sock], [sock], [], 60)
                    if readable:
                        raise StopIteration
                    assert writable, "the connection stalled"
                    sent = sock.send(view)
                    consumed += sent
                    view = view[sent:]
        except (StopIteration, BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk_read := sock.recv(65536):
                response += chunk_read
                if b"\r\n\r\n" in response and len(response) > 200:
                    break
        except (ConnectionResetError, socket.timeout):
            pass
    return consumed, response


def test_a_keyless_24_mib_post_is_refused_having_read_at_most_1_mib(fake_gcs_url, tmp_path):
    with served(fake_gcs_url, tmp_path / "upload.log", QA_API_KEYS=API_KEYS, QA_AUTH=None) as url:
        consumed, response = keyless_post_consumed(url, 24 * MIB)
        # The service still serves, and with a key the same kind of upload goes through.
        ok = httpx.post(f"{url}/uploads", files={"file": ("q.csv", GOOD, "text/csv")}, headers=key_header("alice"),
                        timeout=30)
    assert consumed <= MIB, f"{consumed} bytes of the keyless body were taken before it was refused"
    if response:
        assert response.startswith(b"HTTP/1.1 401"), response[:200]
    assert ok.status_code == 201, ok.text


# ----------------------------------------------------------------------------- memory per request


def test_a_32_mib_single_cell_upload_is_refused_cheaply(make_client):
    client = make_client(max_upload_bytes=40 * MIB)
    data = b"question,context\nWhere?," + b"a" * (32 * MIB) + b"\n"
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        response = post(client, data, name="huge.csv")
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    # The test client's multipart copy of the request and the service's one read of the file; the
    # parser (about 13 times the longest line, over 400 MiB here) never runs.
    assert peak < 3 * len(data) + 8 * MIB, f"peak {peak / MIB:.0f} MiB for a {len(data) / MIB:.0f} MiB upload"
    assert response.status_code == 422 and response.json()["error"] == "row_too_large", response.text
    assert response.json()["details"] == {"line": 2, "limit_bytes": client.settings.max_row_bytes,
                                          "upload_id": response.json()["details"]["upload_id"]}
    assert bucket_names(client.settings.gcs_url, client.settings.bucket) == []


def test_rows_up_to_the_limit_are_accepted_and_a_long_quoted_multiline_cell_is_not(make_client):
    client = make_client(max_row_bytes=64 * 1024)
    fits = csv_bytes(["question", "context"], [["Where?", "x" * (60 * 1024)], ["Who?", "Ann."]])
    assert post(client, fits).status_code == 201
    quoted = b'question,context\nWhere?,"' + b"a line, with a comma\n" * 4000 + b'"\n'
    refused = post(client, quoted)
    assert refused.status_code == 422 and refused.json()["error"] == "row_too_large", refused.text
    unclosed = b'question,context\nWhere?,"' + b"no closing quote\n" * 8000
    assert post(client, unclosed).json()["error"] == "row_too_large"
    missing = post(client, b"question,ctx\nq,c\n")
    assert missing.status_code == 422 and missing.json()["details"]["missing"] == ["context"]


def test_a_page_of_answers_with_huge_rows_is_bounded_by_bytes(make_client):
    max_page_bytes = 4096
    client = make_client(pg_dsn=fresh_database("beam_qa_upload_door_paging"), max_page_bytes=max_page_bytes)
    accepted = post(client, csv_bytes(["question", "context"], [["q", "c"]] * 3)).json()
    huge = "All work and no play. " * 10_000  # 220,000 bytes
    pipeline = PipelineRecords(client.settings.pg_dsn, accepted, client.settings.bucket)
    pipeline.received(3)
    pipeline.commit([(i, str(i), f"Question {i}?", huge, "play", 0.5, 12, 16, None) for i in range(3)], 3)
    pipeline.done(3, 0, f"gs://{client.settings.bucket}/answers/huge.answers.csv")

    offset, seen = 0, []
    while offset is not None:
        page = client.get(f"/uploads/{accepted['upload_id']}/answers", params={"offset": offset, "limit": 100})
        assert page.status_code == 200, page.text
        # JSON around at most twice the page's text: every row's text is at most max_page_bytes.
        assert len(page.content) < 2 * max_page_bytes + 2048, len(page.content)
        body = page.json()
        for answer in body["answers"]:
            assert answer["truncated"] is True
            assert answer["context"] == huge[:max_page_bytes // 20]
            seen.append(answer["row_index"])
        offset = body["next_offset"]
    assert seen == [0, 1, 2]


# ----------------------------------------------------------------------------- the smaller ones


def test_a_request_path_cannot_forge_a_log_line(make_client, caplog):
    from upload_service.core.logs import REQUEST_LOGGER, TEXT_FORMAT
    client = make_client()
    forged = "2026-12-08 00:00:00,000 INFO upload_service.requests: GET /uploads 200 1.0 ms client=admin"
    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        response = client.get("/%0D%0A" + forged.replace(" ", "%20"))
    assert response.status_code == 404
    lines = [logging.Formatter(TEXT_FORMAT).format(r) for r in caplog.records if r.name == REQUEST_LOGGER]
    assert len(lines) == 1, lines
    assert "\n" not in lines[0] and "\r" not in lines[0], lines[0]
    assert lines[0].split(" INFO ")[0] != "2026-12-08 00:00:00,000"
    assert "/%0D%0A2026-12-08%2000:00:00" in lines[0], lines[0]
    record = next(r for r in caplog.records if r.name == REQUEST_LOGGER)
    assert "\n" not in record.httpRequest["requestUrl"]


def test_keyless_readiness_calls_share_their_backend_round_trips(make_client, monkeypatch):
    from upload_service.api.routes import health
    from upload_service.services.db import Database
    from upload_service.services.gcs import UploadStore

    monkeypatch.setattr(health, "READY_CACHE_SECS", 3600.0, raising=False)  # no clock in this test
    trips = {"gcs": 0, "postgres": 0}
    gcs_ping, pg_ping = UploadStore.ping, Database.ping

    def counted(name, ping):
        def wrapper(self, *args, **kwargs):
            trips[name] += 1
            return ping(self, *args, **kwargs)
        return wrapper
    monkeypatch.setattr(UploadStore, "ping", counted("gcs", gcs_ping))
    monkeypatch.setattr(Database, "ping", counted("postgres", pg_ping))

    client = make_client()
    nobody = client.as_(None)
    for _ in range(20):
        response = nobody.get("/readyz")
        assert response.status_code == 200 and response.json() == {"status": "ready"}
    assert trips == {"gcs": 1, "postgres": 1}
    # With a key, the checks are fresh (an operator sees the state of now).
    assert client.get("/readyz").json()["checks"]["postgres"]["ok"]
    assert trips == {"gcs": 2, "postgres": 2}


@pytest.mark.parametrize("headers, allowed", [
    ({}, True),
    ({"Sec-Fetch-Site": "same-origin"}, True),
    ({"Sec-Fetch-Site": "none"}, True),
    ({"Origin": "http://testserver"}, True),
    ({"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, False),
    ({"Sec-Fetch-Site": "same-site"}, False),
    ({"Origin": "https://evil.example"}, False),
    ({"Origin": "null"}, False),
    ({"Sec-Fetch-Site": "cross-site", "Origin": "http://testserver"}, False),
])
def test_a_cross_site_post_is_refused(make_client, headers, allowed):
    client = make_client()
    response = post(client, headers=headers)
    if allowed:
        assert response.status_code == 201, response.text
        assert len(bucket_names(client.settings.gcs_url, client.settings.bucket)) == 1
    else:
        assert response.status_code == 403 and response.json()["error"] == "cross_site", response.text
        assert bucket_names(client.settings.gcs_url, client.settings.bucket) == []
