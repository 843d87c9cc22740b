"""The upload API over HTTP against a real fake-gcs-server and PostgreSQL."""

from __future__ import annotations

import datetime
import re

import pytest

from tests.conftest import csv_bytes, query, read_csv_text
from tests.upload.conftest import API_KEYS, bucket_names

pytestmark = pytest.mark.integration

GOOD = csv_bytes(["id", "question", "context"],
                 [["1", "Where is the tower?", "The tower is in Paris."],
                  ["2", "Who built it?", "Gustave Eiffel's company built it."]])


def post(client, name: str, data: bytes, headers: dict | None = None):
    return client.post("/uploads", files={"file": (name, data, "text/csv")}, headers=headers or {})


def test_accepted_upload_lands_in_the_bucket_with_its_name_and_content(make_client):
    client = make_client()
    response = post(client, "questions.csv", GOOD)
    assert response.status_code == 201, response.text
    body = response.json()
    upload_id = body["upload_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", upload_id)
    name = f"incoming/{upload_id}/questions.csv"
    assert body["object"] == f"gs://{client.settings.bucket}/{name}"
    assert body["filename"] == "questions.csv" and body["row_count"] == 2 and body["size"] == len(GOOD)
    assert body["status"] == "uploaded"
    assert body["status_url"] == f"http://testserver/uploads/{upload_id}"
    assert bucket_names(client.settings.gcs_url, client.settings.bucket) == [name]

    from upload_service.services.gcs import make_client as gcs_client
    blob = gcs_client(client.settings.gcs_url).bucket(client.settings.bucket).get_blob(name)
    assert blob.download_as_bytes() == GOOD
    assert blob.generation == body["generation"]

    status = client.get(f"/uploads/{upload_id}")
    assert status.status_code == 200, status.text
    uploaded_at = status.json().pop("uploaded_at")
    assert datetime.datetime.fromisoformat(uploaded_at) > datetime.datetime.now(datetime.timezone.utc) - \
        datetime.timedelta(minutes=5)
    assert status.json() | {"uploaded_at": None} == {
        "upload_id": upload_id, "status": "uploaded", "object": body["object"], "generation": body["generation"],
        "filename": "questions.csv", "size": len(GOOD), "row_count": 2, "processed_count": 0, "answered_count": 0,
        "error_count": 0, "error": None, "stalled": False, "note": None, "answers_csv": None, "answers_url": None,
        "uploaded_at": None, "received_at": None, "completed_at": None}
    not_ready = client.get(f"/uploads/{upload_id}/answers")
    assert not_ready.status_code == 409 and not_ready.json()["error"] == "not_ready"


def test_a_large_file_goes_up_whole(make_client):
    """Over 8 MiB the GCS client switches to a resumable upload; the object is still exact."""
    client = make_client()
    data = csv_bytes(["question", "context"], [[f"Question {i}?", "context " * 12] for i in range(90_000)])
    assert len(data) > 8 * 2**20
    response = post(client, "large.csv", data)
    assert response.status_code == 201, response.text
    assert response.json()["row_count"] == 90_000
    from upload_service.services.gcs import make_client as gcs_client
    blob = gcs_client(client.settings.gcs_url).bucket(client.settings.bucket).blob(
        response.json()["object"].split("/", 3)[3])
    assert blob.download_as_bytes() == data


def test_a_file_with_row_errors_is_accepted_like_the_pipeline_does(make_client):
    client = make_client()
    data = csv_bytes([" Question ", "CONTEXT"], [["", "ctx"], ["q", "c", "extra"]])
    response = post(client, "rows.CSV", data)
    assert response.status_code == 201, response.text
    assert response.json()["row_count"] == 2


REJECTIONS = [
    # (case, file name, bytes, settings overrides, status, error kind, text the message or hint must hold)
    ("not_csv", "questions.txt", GOOD, {}, 415, "not_csv", ".csv"),
    ("no_name", "", GOOD, {}, 422, "invalid_request", "file"),
    ("too_large", "big.csv", GOOD + b"x" * 2000, {"max_upload_bytes": 1000}, 413, "too_large", "1000 bytes"),
    ("not_utf8", "latin.csv", "question,context\nqu\u00e9,c\u00e9\n".encode("latin-1"), {}, 422, "not_utf8",
     "UTF-8"),
    ("binary", "nul.csv", b"question,context\nq\x00,c\n", {}, 422, "binary", "binary"),
    ("empty", "empty.csv", b"\n \n", {}, 422, "empty", "header"),
    ("duplicate", "dup.csv", b"question,Question,context\na,b,c\n", {}, 422, "duplicate_columns", "question"),
    ("missing", "missing.csv", b"question,ctx\nq,c\n", {}, 422, "missing_columns", "context"),
    ("too_many_rows", "rows.csv", csv_bytes(["question", "context"], [["q", "c"]] * 4), {"max_rows": 3}, 422,
     "too_many_rows", "3 data rows"),
    ("malformed", "quote.csv", b'question,context\n"unclosed,x\n', {}, 422, "malformed_csv", "line 2"),
    ("no_rows", "header.csv", b"id,question,context\n", {}, 422, "no_rows", "no data rows"),
]


@pytest.mark.parametrize("case,name,data,overrides,status,kind,text", REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_each_rejection_is_a_documented_4xx_and_writes_nothing(make_client, case, name, data, overrides, status,
                                                               kind, text):
    client = make_client(**overrides)
    response = post(client, name, data)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == kind
    assert body["hint"], "every rejection says how to fix it"
    assert text in body["message"] + " " + body["hint"]
    assert bucket_names(client.settings.gcs_url, client.settings.bucket) == []
    documented = client.get("/openapi.json").json()["paths"]["/uploads"]["post"]["responses"]
    assert documented[str(status)]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"}


def test_rejection_details_name_the_missing_column_and_the_limits(make_client):
    missing = post(make_client(), "m.csv", b"Question,text\nq,c\n").json()
    upload_id = missing["details"].pop("upload_id")
    assert re.fullmatch(r"[0-9a-f]{32}", upload_id), "a rejection names its entry in the history"
    assert missing["details"] == {"missing": ["context"], "required": ["question", "context"]}
    assert "context" in missing["hint"]
    rows = post(make_client(max_rows=1), "r.csv", csv_bytes(["question", "context"], [["q", "c"]] * 2)).json()
    assert rows["details"] | {"upload_id": None} == {"limit_rows": 1, "upload_id": None}
    size = post(make_client(max_upload_bytes=10), "s.csv", GOOD).json()
    assert size["details"] | {"upload_id": None} == {"limit_bytes": 10, "upload_id": None}


def test_an_oversized_body_is_cut_off_before_it_is_read_whole(make_client):
    client = make_client(max_upload_bytes=1000)
    huge = b"question,context\n" + b"q,c\n" * 100_000  # 400 KB: far over the limit plus multipart overhead
    response = post(client, "huge.csv", huge)
    assert response.status_code == 413, response.text
    assert response.json()["details"] == {"limit_bytes": 1000}
    assert bucket_names(client.settings.gcs_url, client.settings.bucket) == []

    # Without Content-Length (chunked), the cap applies while the body streams in.
    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"huge.csv\"\r\n\r\n"
        for _ in range(100):
            yield b"q,c\n" * 1000
        yield b"\r\n--b--\r\n"
    response = client.post("/uploads", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413, response.text
    assert bucket_names(client.settings.gcs_url, client.settings.bucket) == []


@pytest.mark.parametrize("name,expected", [
    ("../../etc/passwd.csv", "passwd.csv"),
    ("..\\..\\windows\\x.csv", "x.csv"),
    ("a/b/../../../c.csv", "c.csv"),
    ("..csv", "upload.csv"),
    ("...csv", "upload.csv"),
    ("\uff0e\uff0e\uff0fescape.csv", "escape.csv"),  # full-width "../" normalises to a real one
    ("we ird;name$(rm).csv", "we_ird_name_rm.csv"),
    ("tab\there.csv", "tab_09here.csv"),  # httpx sends the tab percent-encoded; "%" is replaced
    ("r\u00e9sum\u00e9 2024.CSV", "r\u00e9sum\u00e9_2024.csv"),
])
def test_path_traversal_names_are_neutralised(make_client, name, expected):
    client = make_client()
    response = post(client, name, GOOD)
    assert response.status_code == 201, response.text
    upload_id = response.json()["upload_id"]
    assert response.json()["filename"] == expected
    assert bucket_names(client.settings.gcs_url, client.settings.bucket) == [f"incoming/{upload_id}/{expected}"]


def test_sanitised_names_never_leave_their_folder():
    from upload_service.core.naming import object_name
    for name in ["../x.csv", "/abs/x.csv", "x/../../y.csv", ".hidden.csv", "a\x00b\r\n.csv", "\u202e.csv",
                 "x" * 500 + ".csv", "C:\\temp\\x.csv", "..", "/", "\u2024\u2024/x.csv"]:
        result = object_name("incoming/", "0" * 32, name)
        folder, _, leaf = result.rpartition("/")
        assert folder == "incoming/" + "0" * 32, (name, result)
        assert leaf.endswith(".csv") and ".." not in leaf and not leaf.startswith(".") and leaf.isprintable()
        assert len(leaf) <= 120


def test_the_api_token_is_one_client_named_default(make_client):
    client = make_client(as_client=None, api_keys=None, api_token="s3cret-token")
    missing = post(client, "q.csv", GOOD)
    assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = post(client, "q.csv", GOOD, {"Authorization": "Bearer s3cret-tokeN"})
    assert wrong.status_code == 401
    basic = post(client, "q.csv", GOOD, {"Authorization": "Basic czNjcmV0LXRva2Vu"})
    assert basic.status_code == 401
    assert bucket_names(client.settings.gcs_url, client.settings.bucket) == []
    assert client.get("/uploads/" + "0" * 32).status_code == 401
    assert client.get("/uploads/" + "0" * 32 + "/answers").status_code == 401

    good = post(client, "q.csv", GOOD, {"Authorization": "Bearer s3cret-token"})
    assert good.status_code == 201, good.text
    upload_id = good.json()["upload_id"]
    auth = {"Authorization": "Bearer s3cret-token"}
    assert client.get(f"/uploads/{upload_id}", headers=auth).json()["status"] == "uploaded"
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/").status_code == 200
    from tests.conftest import query
    assert query(client.settings.pg_dsn, "SELECT owner FROM qa_uploads WHERE upload_id = %s", (upload_id,)) == [
        ("default",)]

    # Beside QA_API_KEYS, the token is the client `default`, with its own uploads.
    both = make_client(api_token="s3cret-token")
    alices = post(both, "a.csv", GOOD).json()["upload_id"]
    tokens = post(both, "t.csv", GOOD, auth).json()["upload_id"]
    listed = [u["upload_id"] for u in both.get("/uploads", headers=auth).json()["uploads"]]
    assert listed[:2] == [tokens, upload_id] and alices not in listed  # the module's database is shared
    assert both.get(f"/uploads/{alices}", headers=auth).status_code == 404


def test_keys_are_stored_as_hashes_and_a_bad_setting_is_refused():
    from upload_service.core.config import Settings
    from tests.upload.conftest import KEYS
    settings = Settings(api_keys=API_KEYS)
    assert settings.key_ring.client_for(KEYS["bob"]) == "bob"
    assert settings.key_ring.client_for(KEYS["bob"] + "x") is None
    assert all(key not in repr(settings) and key not in API_KEYS for key in KEYS.values())
    for bad, text in (("alice", "pair 1"), ("alice=abc", "pair 1"), (f"a={'0' * 64},a={'1' * 64}", "twice"),
                      (f"al ice={'0' * 64}", "pair 1"), (f"x@y={'0' * 64}", "pair 1"), (",", "no name")):
        with pytest.raises(ValueError, match=text):
            Settings(api_keys=bad)
    with pytest.raises(ValueError, match="QA_AUTH=none"):
        Settings(api_keys=API_KEYS, auth="none")
    with pytest.raises(ValueError, match="default"):
        Settings(api_keys=f"default={'0' * 64}", api_token="t")


def test_without_keys_only_this_machine_is_served_unless_auth_is_none(make_client):
    # The TestClient's peer is "testclient", not a loopback address: what a bare
    # `uvicorn --host 0.0.0.0` without keys would see from the network.
    closed = make_client(as_client=None, api_keys=None)
    refused = closed.get("/uploads")
    assert refused.status_code == 401 and "own machine" in refused.json()["message"]
    assert "QA_API_KEYS" in refused.json()["hint"]
    assert post(closed, "q.csv", GOOD).status_code == 401
    assert bucket_names(closed.settings.gcs_url, closed.settings.bucket) == []
    assert closed.get("/readyz").json() == {"status": "ready"}

    open_ = make_client(as_client=None, auth="none")
    response = post(open_, "q.csv", GOOD)
    assert response.status_code == 201
    assert open_.get(response.json()["status_url"].replace("http://testserver", "")).status_code == 200


def test_unknown_and_malformed_ids(make_client):
    client = make_client()
    unknown = client.get("/uploads/" + "a" * 32)
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    assert client.get("/uploads/" + "a" * 32 + "/answers").status_code == 404
    bad = client.get("/uploads/..%2F..%2Fetc")
    assert bad.status_code in (404, 422) and "error" in bad.json()
    assert client.get("/uploads/XYZ").status_code == 422


def test_status_and_answers_follow_what_the_pipeline_records(make_client, upload_db):
    """Writes qa_files/qa_answers with the pipeline's own store and reads them back through the API."""
    from beam_qa import runtime
    from beam_qa.records import AnsweredFile, ChunkRow, FileEvent, FileFailure, RowOutcome
    from beam_qa.settings import PostgresSettings
    from upload_service.services.gcs import make_client as gcs_client

    client = make_client()
    accepted = post(client, "paris.csv", GOOD).json()
    upload_id, uri, generation = accepted["upload_id"], accepted["object"], accepted["generation"]
    bucket_root = f"gs://{client.settings.bucket}/"
    event = FileEvent(uri, generation, accepted["size"], bucket_root, uri[len(bucket_root):], 0.0, "test")
    store = runtime.postgres(PostgresSettings(upload_db, retry_secs=10))
    try:
        attempt = store.claim(event)
        assert store.record_manifest(event, attempt, ["id", "question", "context"], 2, 1)
        status = client.get(f"/uploads/{upload_id}").json()
        assert (status["status"], status["row_count"], status["answered_count"]) == ("received", 2, 0)

        answers_uri = f"gs://{client.settings.bucket}/answers/{upload_id}/paris.answers.csv"
        answers_csv = "id,question,context,answer,score,answer_start,answer_end,error\r\n" \
                      "1,Where is the tower?,The tower is in Paris.,Paris,0.9,16,21,\r\n" \
                      "2,Who built it?,Gustave Eiffel's company built it.,,,,,no answer span found\r\n"
        gcs_client(client.settings.gcs_url).bucket(client.settings.bucket).blob(
            f"answers/{upload_id}/paris.answers.csv").upload_from_string(answers_csv)
        rows = [RowOutcome(event, attempt, 0, 0, 2, ChunkRow(0, "Where is the tower?", "The tower is in Paris.", "1",
                                                             "", ("1",)),
                           answer="Paris", score=0.9, start=16, end=21, model="t"),
                RowOutcome(event, attempt, 0, 0, 2, ChunkRow(1, "Who built it?", "Gustave Eiffel's company built it.",
                                                             "2", "", ("2",)),
                           error="no answer span found", model="t")]
        assert store.commit_rows(rows).completed
        assert store.mark_done(AnsweredFile(event, attempt, 2, 1, answers_uri, "tiny")) is not None
    finally:
        runtime.close()
    status = client.get(f"/uploads/{upload_id}").json()
    assert status["status"] == "done" and status["row_count"] == 2
    assert (status["answered_count"], status["error_count"]) == (1, 1)
    assert status["answers_csv"] == answers_uri
    assert status["answers_url"] == f"http://testserver/uploads/{upload_id}/answers"

    page = client.get(f"/uploads/{upload_id}/answers").json()
    assert page["total"] == 2 and [a["answer"] for a in page["answers"]] == ["Paris", None]
    assert page["answers"][1]["error"] == "no answer span found"
    second = client.get(f"/uploads/{upload_id}/answers", params={"offset": 1, "limit": 1}).json()
    assert [a["row_index"] for a in second["answers"]] == [1]
    as_csv = client.get(f"/uploads/{upload_id}/answers", params={"format": "csv"})
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.headers["content-disposition"] == ('attachment; filename="paris.answers.csv"; '
                                                     "filename*=UTF-8''paris.answers.csv")
    assert as_csv.text == answers_csv
    assert [r["answer"] for r in read_csv_text(as_csv.text)] == ["Paris", ""]

    # A failed file (another upload) reports the pipeline's reason.
    failed = post(client, "bad.csv", GOOD).json()
    failed_event = FileEvent(failed["object"], failed["generation"], failed["size"], bucket_root,
                             failed["object"][len(bucket_root):], 0.0, "test")
    store = runtime.postgres(PostgresSettings(upload_db, retry_secs=10))
    try:
        failed_attempt = store.claim(failed_event)
        assert store.mark_failed(FileFailure(failed_event, failed_attempt, "missing_columns",
                                             "missing column(s) context"))
    finally:
        runtime.close()
    body = client.get(f"/uploads/{failed['upload_id']}").json()
    assert (body["status"], body["error"]) == ("failed", "missing column(s) context")
    refused = client.get(f"/uploads/{failed['upload_id']}/answers")
    assert refused.status_code == 409 and refused.json()["error"] == "upload_failed"
    assert query(upload_db, "SELECT count(*) FROM qa_files") == [(2,)]


def test_readiness_reports_each_backend(make_client, fake_gcs_url):
    from tests.upload.conftest import free_port
    ok = make_client().get("/readyz")
    assert ok.status_code == 200 and ok.json() == {"status": "ready", "checks": {
        "gcs": {"ok": True, "detail": ""}, "postgres": {"ok": True, "detail": ""}}}

    no_pg = make_client(pg_dsn=f"host=127.0.0.1 port={free_port()} user=postgres dbname=x",
                        backend_timeout_secs=1.0).get("/readyz")
    assert no_pg.status_code == 503
    assert no_pg.json()["checks"]["gcs"]["ok"] and not no_pg.json()["checks"]["postgres"]["ok"]

    no_gcs = make_client(backend_timeout_secs=1.0)
    no_gcs.app.dependency_overrides.clear()
    from upload_service.core.config import Settings, get_settings
    broken = Settings(bucket="qa-missing", gcs_url=f"http://127.0.0.1:{free_port()}", pg_dsn=no_gcs.settings.pg_dsn,
                      backend_timeout_secs=1.0, api_keys=API_KEYS)
    no_gcs.app.dependency_overrides[get_settings] = lambda: broken
    response = no_gcs.get("/readyz")
    assert response.status_code == 503 and not response.json()["checks"]["gcs"]["ok"]
    assert no_gcs.get("/healthz").json() == {"status": "ok", "service": "beam-qa-upload"}


def test_the_page_and_its_assets_are_served(make_client):
    client = make_client()
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<input type="file"' in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


def test_openapi_documents_every_endpoint_and_the_error_shape(make_client):
    spec = make_client().get("/openapi.json").json()
    assert set(spec["paths"]) == {"/uploads", "/uploads/{upload_id}", "/uploads/{upload_id}/answers", "/healthz",
                                  "/readyz", "/"}
    assert set(spec["components"]["schemas"]["ErrorResponse"]["properties"]) == {"error", "message", "hint",
                                                                                "details"}
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            codes = set(operation["responses"])
            if path.startswith("/uploads"):
                assert {"401", "422", "503"} <= codes, (path, method, codes)
                for code in codes - {"200", "201"}:
                    schema = operation["responses"][code]["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (path, code)
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert spec["paths"]["/uploads"]["post"]["requestBody"]["content"]["multipart/form-data"]
