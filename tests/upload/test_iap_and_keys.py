"""Behind Identity-Aware Proxy the verified e-mail is the client (assertions signed here with a local
ES256 key, its public key served over HTTP as IAP publishes its own); and the key-making command."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.auth import crypt, jwt

from tests.conftest import csv_bytes
from tests.upload.conftest import REPO

pytestmark = pytest.mark.integration

AUDIENCE = "/projects/123456/global/backendServices/789"
GOOD = csv_bytes(["question", "context"], [["Where?", "In Paris."]])


def pem_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def iap_keys():
    """Two signing keys; only ``"iap-1"`` is published, at a local URL."""
    published, stranger = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    certs = json.dumps({"iap-1": published.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()}).encode()
    fetched = []

    class Certs(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            fetched.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(certs)

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Certs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield {"url": f"http://127.0.0.1:{server.server_port}/iap/verify/public_key", "fetched": fetched,
               "published": published, "stranger": stranger}
    finally:
        server.shutdown()


def assertion(key, email: str, *, kid: str = "iap-1", audience: str = AUDIENCE, expires_in: int = 600,
              issuer: str = "https://cloud.google.com/iap") -> str:
    now = int(time.time())
    signer = crypt.ES256Signer.from_string(pem_private(key), kid)
    claims = {"iss": issuer, "aud": audience, "email": email, "sub": f"accounts.google.com:{email}",
              "iat": now - 5, "exp": now + expires_in}
    return jwt.encode(signer, claims).decode()


def test_the_verified_iap_identity_is_the_owner(make_client, iap_keys):
    client = make_client(as_client=None, api_keys=None, iap_audience=AUDIENCE, iap_certs_url=iap_keys["url"])
    as_ann = {"X-Goog-IAP-JWT-Assertion": assertion(iap_keys["published"], "Ann@example.com")}
    as_ben = {"X-Goog-IAP-JWT-Assertion": assertion(iap_keys["published"], "ben@example.com")}
    accepted = client.post("/uploads", files={"file": ("q.csv", GOOD, "text/csv")}, headers=as_ann)
    assert accepted.status_code == 201, accepted.text
    upload_id = accepted.json()["upload_id"]
    assert [u["upload_id"] for u in client.get("/uploads", headers=as_ann).json()["uploads"]] == [upload_id]
    assert client.get("/uploads", headers=as_ben).json()["uploads"] == []
    assert client.get(f"/uploads/{upload_id}", headers=as_ben).status_code == 404
    from tests.conftest import query
    assert query(client.settings.pg_dsn, "SELECT owner FROM qa_uploads WHERE upload_id = %s", (upload_id,)) == [
        ("ann@example.com",)]

    forged = {
        "no assertion": {},
        "another key": assertion(iap_keys["stranger"], "ann@example.com"),
        "unknown key id": assertion(iap_keys["stranger"], "ann@example.com", kid="iap-2"),
        "another audience": assertion(iap_keys["published"], "ann@example.com", audience="/projects/1/x"),
        "expired": assertion(iap_keys["published"], "ann@example.com", expires_in=-60),
        "another issuer": assertion(iap_keys["published"], "ann@example.com", issuer="https://evil.example"),
        "not a JWT": "e30.e30.e30",
    }
    for case, value in forged.items():
        headers = {"X-Goog-IAP-JWT-Assertion": value} if isinstance(value, str) else value
        response = client.get("/uploads", headers=headers)
        assert response.status_code == 401, (case, response.text)
    assert len(iap_keys["fetched"]) <= 2, "IAP's keys are cached, not fetched per request"


def test_the_keys_command_makes_a_key_whose_pair_the_service_accepts(make_client):
    result = subprocess.run([sys.executable, "-m", "upload_service.keys", "carol", "dave"], capture_output=True,
                            text=True, cwd=REPO, check=True, timeout=60)
    lines = result.stdout.strip().splitlines()
    keys = dict(line.split(": key ") for line in lines[:2])
    assert set(keys) == {"carol", "dave"} and lines[2].startswith("QA_API_KEYS=carol=")
    setting = lines[2].split("=", 1)[1]
    assert all(key not in setting for key in keys.values())
    client = make_client(as_client=None, api_keys=setting)
    carol = {"Authorization": f"Bearer {keys['carol']}"}
    accepted = client.post("/uploads", files={"file": ("q.csv", GOOD, "text/csv")}, headers=carol)
    assert accepted.status_code == 201
    dave = client.get(f"/uploads/{accepted.json()['upload_id']}", headers={"X-API-Key": keys["dave"]})
    assert dave.status_code == 404
    bad = subprocess.run([sys.executable, "-m", "upload_service.keys", "not@valid"], capture_output=True, text=True,
                         cwd=REPO, check=False, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
