"""Clients and owners, safe retries and safe responses, over HTTP: ``python -m upload_service`` as
deployed, with two API keys, against a real fake-gcs-server and PostgreSQL; the pipeline's rows are
written with the pipeline's own store (tests/e2e covers the same with the pipeline running)."""

from __future__ import annotations

import concurrent.futures
import os
import urllib.parse

import httpx
import pytest

from tests.conftest import csv_bytes, fresh_database
from tests.upload.conftest import API_KEYS, KEYS, PipelineRecords, bucket_names, create_bucket, key_header, serve

pytestmark = pytest.mark.integration

GOOD = csv_bytes(["id", "question", "context"], [["1", "Where is the tower?", "The tower is in Paris."],
                                                 ["2", "Who built it?", "Gustave Eiffel's company built it."]])
ANSWERS_CSV = ("id,question,context,answer,score,answer_start,answer_end,error\r\n"
               "1,Where is the tower?,The tower is in Paris.,Paris,0.9,16,21,\r\n"
               "2,Who built it?,Gustave Eiffel's company built it.,Gustave Eiffel's company,0.8,0,24,\r\n")
ROWS = [(0, "1", "Where is the tower?", "The tower is in Paris.", "Paris", 0.9, 16, 21, None),
        (1, "2", "Who built it?", "Gustave Eiffel's company built it.", "Gustave Eiffel's company", 0.8, 0, 24, None)]


class Service:
    """A served upload service with the two clients of ``KEYS``, its bucket and database."""

    def __init__(self, url: str, bucket: str, dsn: str, gcs_url: str):
        self.url, self.bucket, self.dsn, self.gcs_url = url, bucket, dsn, gcs_url

    def client(self, name: str | None) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, headers=key_header(name) if name else {})

    def objects(self) -> list[str]:
        return bucket_names(self.gcs_url, self.bucket)

    def answer(self, accepted: dict) -> str:
        """Records ``accepted`` as answered, as the pipeline would; returns its answers CSV's URI."""
        from upload_service.services.gcs import make_client
        name = accepted["object"].split("/", 3)[3].replace("incoming/", "answers/", 1)
        name = f"{name[:-len('.csv')]}.{accepted['generation']}.answers.csv"
        make_client(self.gcs_url).bucket(self.bucket).blob(name).upload_from_string(ANSWERS_CSV)
        pipeline = PipelineRecords(self.dsn, accepted, self.bucket)
        pipeline.received(2)
        pipeline.commit(ROWS, 2)
        uri = f"gs://{self.bucket}/{name}"
        pipeline.done(2, 0, uri)
        return uri


@pytest.fixture(scope="module")
def service(fake_gcs_url, tmp_path_factory):
    bucket = f"qa-clients-{os.urandom(4).hex()}"
    create_bucket(fake_gcs_url, bucket)
    dsn = fresh_database("beam_qa_upload_clients")
    env = {**os.environ, "QA_BUCKET": bucket, "QA_GCS_URL": fake_gcs_url, "QA_PG_DSN": dsn,
           "QA_APPLY_MIGRATIONS": "true", "QA_API_KEYS": API_KEYS}
    with serve(env, tmp_path_factory.mktemp("clients") / "upload.log") as url:
        yield Service(url, bucket, dsn, fake_gcs_url)


def post(client: httpx.Client, name: str, data: bytes, headers: dict | None = None) -> httpx.Response:
    return client.post("/uploads", files={"file": (name, data, "text/csv")}, headers=headers or {})


def test_each_client_sees_only_its_own_uploads(service):
    with service.client("alice") as alice, service.client("bob") as bob, service.client(None) as nobody:
        mine = post(alice, "alice.csv", GOOD)
        assert mine.status_code == 201, mine.text
        refused = post(alice, "alice-bad.csv", b"question,ctx\nq,c\n")
        assert refused.status_code == 422
        theirs = post(bob, "bob.csv", GOOD)
        assert theirs.status_code == 201, theirs.text
        mine, theirs = mine.json(), theirs.json()
        service.answer(mine)
        service.answer(theirs)

        listed = [u["upload_id"] for u in alice.get("/uploads").json()["uploads"]]
        assert listed == [refused.json()["details"]["upload_id"], mine["upload_id"]]
        assert [u["upload_id"] for u in bob.get("/uploads").json()["uploads"]] == [theirs["upload_id"]]

        for client, own, other in ((alice, mine, theirs), (bob, theirs, mine)):
            status = client.get(f"/uploads/{own['upload_id']}")
            assert status.status_code == 200 and status.json()["status"] == "done"
            answers = client.get(f"/uploads/{own['upload_id']}/answers")
            assert answers.status_code == 200 and [a["answer"] for a in answers.json()["answers"]] == [
                "Paris", "Gustave Eiffel's company"]
            as_csv = client.get(f"/uploads/{own['upload_id']}/answers", params={"format": "csv"})
            assert as_csv.status_code == 200 and as_csv.text == ANSWERS_CSV
            # Another client's upload is answered exactly as one that does not exist.
            unknown = "0" * 32
            for suffix, params in (("", {}), ("/answers", {}), ("/answers", {"format": "csv"})):
                seen = client.get(f"/uploads/{other['upload_id']}{suffix}", params=params)
                absent = client.get(f"/uploads/{unknown}{suffix}", params=params)
                assert seen.status_code == absent.status_code == 404
                assert seen.json() | {"message": ""} == absent.json() | {"message": ""}
                assert other["upload_id"] not in seen.text.replace(f"id {other['upload_id']}", "")

        # No key, or a wrong one: 401 everywhere, and nothing stored.
        before = service.objects()
        wrong = {"Authorization": "Bearer " + KEYS["alice"][:-1] + "x"}
        for headers in ({}, wrong, {"Authorization": "Basic " + KEYS["alice"]}):
            for method, path in (("GET", "/uploads"), ("GET", f"/uploads/{mine['upload_id']}"),
                                 ("GET", f"/uploads/{mine['upload_id']}/answers"),
                                 ("GET", f"/uploads/{mine['upload_id']}/answers?format=csv")):
                response = nobody.request(method, path, headers=headers)
                assert response.status_code == 401, (headers, path)
                assert response.json()["error"] == "unauthorized" and response.headers["www-authenticate"] == "Bearer"
            assert post(nobody, "x.csv", GOOD, headers).status_code == 401
        assert service.objects() == before
        # The key may come as X-API-Key too (when Authorization carries Cloud Run's invoker token).
        via_header = nobody.get("/uploads", headers={"X-API-Key": KEYS["bob"], "Authorization": "Bearer google-id"})
        assert [u["upload_id"] for u in via_header.json()["uploads"]] == [theirs["upload_id"]]


def test_a_retried_post_with_the_same_idempotency_key_makes_one_upload(service):
    with service.client("alice") as alice, service.client("bob") as bob:
        key = {"Idempotency-Key": f"retry-{os.urandom(4).hex()}"}
        first = post(alice, "retried.csv", GOOD, key)
        again = post(alice, "retried.csv", GOOD, key)
        assert first.status_code == again.status_code == 201, again.text
        assert first.json() == again.json()
        assert "idempotent-replayed" not in first.headers and again.headers["idempotent-replayed"] == "true"
        ours = [n for n in service.objects() if f"/{first.json()['upload_id']}/" in n]
        assert ours == [f"incoming/{first.json()['upload_id']}/retried.csv"]
        assert [u["upload_id"] for u in alice.get("/uploads").json()["uploads"]].count(first.json()["upload_id"]) == 1

        # The same key from another client is another client's upload.
        bobs = post(bob, "retried.csv", GOOD, key)
        assert bobs.status_code == 201 and bobs.json()["upload_id"] != first.json()["upload_id"]
        # The same key with another file is refused, and stores nothing.
        before = service.objects()
        reused = post(alice, "retried.csv", GOOD + b"3,Why?,Because.\r\n", key)
        assert reused.status_code == 422 and reused.json()["error"] == "idempotency_key_reused"
        assert reused.json()["details"]["upload_id"] == first.json()["upload_id"]
        assert service.objects() == before


def test_concurrent_retries_store_one_object(service):
    key = {"Idempotency-Key": f"race-{os.urandom(4).hex()}"}

    def send(_):
        with service.client("alice") as alice:
            return post(alice, "race.csv", GOOD, key)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(send, range(6)))
    assert {r.status_code for r in responses} <= {201, 409}, [r.text for r in responses]
    ids = {r.json()["upload_id"] if r.status_code == 201 else r.json()["details"]["upload_id"] for r in responses}
    assert len(ids) == 1
    (upload_id,) = ids
    for busy in (r for r in responses if r.status_code == 409):
        assert busy.json()["error"] == "in_progress" and busy.headers["retry-after"]
    assert [n for n in service.objects() if f"/{upload_id}/" in n] == [f"incoming/{upload_id}/race.csv"]
    with service.client("alice") as alice:
        final = post(alice, "race.csv", GOOD, key)
    assert final.status_code == 201 and final.json()["upload_id"] == upload_id


def test_a_non_latin1_name_downloads_with_its_name_in_filename_star(service):
    name = "質問_リスト.csv"
    with service.client("alice") as alice:
        accepted = post(alice, name, GOOD)
        assert accepted.status_code == 201, accepted.text
        assert accepted.json()["filename"] == name
        uri = service.answer(accepted.json())
        download = alice.get(f"/uploads/{accepted.json()['upload_id']}/answers", params={"format": "csv"})
    assert download.status_code == 200 and download.text == ANSWERS_CSV
    disposition = download.headers["content-disposition"]
    expected = uri.rsplit("/", 1)[1]
    assert expected.startswith("質問_リスト.") and expected.endswith(".answers.csv")
    star = disposition.split("filename*=", 1)[1]
    assert star.startswith("UTF-8''") and urllib.parse.unquote(star[len("UTF-8''"):]) == expected
    assert disposition.startswith('attachment; filename="') and disposition.isascii()


def test_readiness_shows_nothing_internal_without_a_key(service, fake_gcs_url, tmp_path):
    with service.client(None) as nobody, service.client("alice") as alice:
        assert nobody.get("/readyz").json() == {"status": "ready"}
        assert alice.get("/readyz").json() == {"status": "ready", "checks": {
            "gcs": {"ok": True, "detail": ""}, "postgres": {"ok": True, "detail": ""}}}
    from tests.upload.conftest import free_port
    dsn = f"host=127.0.0.1 port={free_port()} user=secret_db_user dbname=secret_db connect_timeout=1"
    env = {**os.environ, "QA_BUCKET": service.bucket, "QA_GCS_URL": fake_gcs_url, "QA_PG_DSN": dsn,
           "QA_API_KEYS": API_KEYS, "QA_BACKEND_TIMEOUT_SECS": "1"}
    with serve(env, tmp_path / "upload.log") as url:
        anonymous = httpx.get(f"{url}/readyz", timeout=30)
        keyed = httpx.get(f"{url}/readyz", headers=key_header("bob"), timeout=30)
    assert anonymous.status_code == 503 and anonymous.json() == {"status": "unavailable"}
    assert keyed.status_code == 503 and keyed.json()["checks"]["postgres"] == {"ok": False, "detail":
                                                                               "database_unavailable"}
    for response in (anonymous, keyed):
        assert not any(secret in response.text for secret in ("secret_db", "127.0.0.1", dsn.split()[1]))
    port = dsn.split()[1].split("=")[1]
    assert port in (tmp_path / "upload.log").read_text()  # the operator's log has the whole story


def test_the_security_headers_are_on_the_page_and_the_api(service):
    with service.client("alice") as alice:
        accepted = post(alice, "headers.csv", GOOD).json()
        service.answer(accepted)
        responses = {
            "page": alice.get("/"), "script": alice.get("/static/app.js"),
            "list": alice.get("/uploads"), "status": alice.get(f"/uploads/{accepted['upload_id']}"),
            "csv": alice.get(f"/uploads/{accepted['upload_id']}/answers", params={"format": "csv"}),
            "unauthorized": httpx.get(f"{service.url}/uploads"), "not_found": alice.get("/nothing"),
            "openapi": alice.get("/openapi.json"), "readyz": alice.get("/readyz"),
        }
    for what, response in responses.items():
        csp = response.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp, what
        assert response.headers.get("x-content-type-options") == "nosniff", what
        assert response.headers.get("x-frame-options") == "DENY", what
    page_csp = responses["page"].headers["content-security-policy"]
    assert "script-src 'self'" in page_csp and "unsafe-inline" not in page_csp and "default-src 'none'" in page_csp
    assert responses["list"].headers["content-security-policy"].startswith("default-src 'none'")
    for what in ("list", "status", "csv", "unauthorized"):
        assert responses[what].headers["cache-control"] == "no-store", what
    # The page holds no inline script or style, so its policy does not break it.
    assert "<script>" not in responses["page"].text and "style=" not in responses["page"].text
    # No /docs: Swagger UI would run a CDN's script in the origin that holds the page's key.
    assert httpx.get(f"{service.url}/docs").status_code == 404
