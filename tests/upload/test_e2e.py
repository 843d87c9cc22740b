"""Upload through the service with the pipeline running; status reaches done; answers come back."""

from __future__ import annotations

import time

import httpx
import pytest

from devtools.squad import squad_rows
from tests.conftest import csv_bytes, query, read_csv_text
from tests.upload.conftest import log_tail

pytestmark = pytest.mark.e2e

DEADLINE_SECS = 30.0


def wait_for(client: httpx.Client, upload_id: str, wanted: str, stack) -> dict:
    seen = []
    deadline = time.monotonic() + DEADLINE_SECS
    while time.monotonic() < deadline:
        body = client.get(f"/uploads/{upload_id}").raise_for_status().json()
        if not seen or seen[-1] != body["status"]:
            seen.append(body["status"])
        if body["status"] == wanted:
            return body | {"seen": seen}
        time.sleep(0.2)
    pytest.fail(f"upload {upload_id} did not reach {wanted} within {DEADLINE_SECS}s (saw {seen});\n"
                f"pipeline log:\n{log_tail(stack, 'pipeline')}\nupload log:\n{log_tail(stack, 'upload')}")


def test_upload_is_answered_and_the_answers_come_back(upload_stack):
    rows = squad_rows(12)
    data = csv_bytes(["id", "question", "context", "note"],
                     [[r["id"], r["question"], r["context"], f"n{i}"] for i, r in enumerate(rows)])
    with httpx.Client(base_url=upload_stack.config.upload_url, timeout=30) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        accepted = client.post("/uploads", files={"file": ("../team a/squad.csv", data, "text/csv")})
        assert accepted.status_code == 201, accepted.text
        body = accepted.json()
        upload_id = body["upload_id"]
        assert body["object"] == f"gs://qa-upload-e2e/incoming/{upload_id}/squad.csv"
        assert body["status_url"] == f"{upload_stack.config.upload_url}/uploads/{upload_id}"

        done = wait_for(client, upload_id, "done", upload_stack)
        assert done["seen"][-1] == "done" and set(done["seen"]) <= {"uploaded", "received", "done"}
        assert (done["row_count"], done["answered_count"], done["error_count"]) == (12, 12, 0)
        assert done["generation"] == body["generation"] and done["object"] == body["object"]
        assert done["answers_csv"] == f"gs://qa-upload-e2e/answers/{upload_id}/squad.{body['generation']}.answers.csv"
        assert query(upload_stack.config.pg_dsn, "SELECT status, row_count FROM qa_files WHERE source_uri = %s "
                     "AND source_generation = %s", (body["object"], body["generation"])) == [("done", 12)]

        page = client.get(done["answers_url"]).raise_for_status().json()
        assert page["total"] == 12
        assert [(a["row_index"], a["id"], a["question"], a["context"]) for a in page["answers"]] == [
            (i, r["id"], r["question"], r["context"]) for i, r in enumerate(rows)]
        for a in page["answers"]:
            assert a["error"] is None and a["answer"]
            assert a["context"][a["answer_start"]:a["answer_end"]] == a["answer"]
            assert 0.0 <= a["score"] <= 1.0

        as_csv = client.get(f"/uploads/{upload_id}/answers", params={"format": "csv"})
        assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
        csv_rows = read_csv_text(as_csv.text)
        assert [(r["id"], r["question"], r["context"], r["note"]) for r in csv_rows] == [
            (r["id"], r["question"], r["context"], f"n{i}") for i, r in enumerate(rows)]
        assert [r["answer"] for r in csv_rows] == [a["answer"] for a in page["answers"]]
        assert [int(r["answer_start"]) for r in csv_rows] == [a["answer_start"] for a in page["answers"]]


def test_a_file_the_pipeline_fails_reports_failed_with_the_reason(upload_stack):
    """The service rejects what the pipeline would; a file written past the service still shows up."""
    with httpx.Client(base_url=upload_stack.config.upload_url, timeout=30) as client:
        rejected = client.post("/uploads", files={"file": ("bad.csv", b"question,ctx\nq,c\n", "text/csv")})
        assert rejected.status_code == 422 and rejected.json()["error"] == "missing_columns"

        # The same rule in the pipeline: a bad file placed directly in the bucket under an upload id.
        from upload_service.services.gcs import make_client
        upload_id = "f" * 32
        blob = make_client(upload_stack.config.gcs_url).bucket("qa-upload-e2e").blob(f"incoming/{upload_id}/bad.csv")
        blob.upload_from_string(b"question,ctx\nq,c\n")
        failed = wait_for(client, upload_id, "failed", upload_stack)
        assert "missing column(s) context" in failed["error"]
        refused = client.get(f"/uploads/{upload_id}/answers")
        assert refused.status_code == 409 and refused.json()["error"] == "upload_failed"


def test_with_keys_each_client_sees_only_its_own_answered_upload_and_any_name_downloads(upload_stack, keyed_upload):
    """The keyed service on the same stack: a non-Latin-1 name is answered by the pipeline and its
    answers CSV downloads with the name in ``filename*``; the other client sees none of it."""
    import urllib.parse
    from tests.upload.conftest import key_header
    data = csv_bytes(["id", "question", "context"], [[r["id"], r["question"], r["context"]] for r in squad_rows(3)])
    with httpx.Client(base_url=keyed_upload, timeout=30, headers=key_header("alice")) as alice, \
            httpx.Client(base_url=keyed_upload, timeout=30, headers=key_header("bob")) as bob:
        retry = {"Idempotency-Key": f"e2e-{time.time_ns()}"}
        accepted = alice.post("/uploads", files={"file": ("質問_リスト.csv", data, "text/csv")}, headers=retry)
        assert accepted.status_code == 201, accepted.text
        again = alice.post("/uploads", files={"file": ("質問_リスト.csv", data, "text/csv")}, headers=retry)
        assert again.json() == accepted.json() and again.headers["idempotent-replayed"] == "true"
        upload_id = accepted.json()["upload_id"]
        done = wait_for(alice, upload_id, "done", upload_stack)
        assert done["seen"][-1] == "done" and done["answered_count"] == 3
        assert query(upload_stack.config.pg_dsn, "SELECT count(*) FROM qa_files WHERE source_uri LIKE %s",
                     (f"%/{upload_id}/%",)) == [(1,)], "one file version answered, not two"

        download = alice.get(f"/uploads/{upload_id}/answers", params={"format": "csv"})
        assert download.status_code == 200 and len(read_csv_text(download.text)) == 3
        star = download.headers["content-disposition"].split("filename*=UTF-8''", 1)[1]
        assert urllib.parse.unquote(star) == done["answers_csv"].rsplit("/", 1)[1]
        assert urllib.parse.unquote(star).startswith("質問_リスト.")

        assert upload_id not in [u["upload_id"] for u in bob.get("/uploads").json()["uploads"]]
        for path in (f"/uploads/{upload_id}", f"/uploads/{upload_id}/answers",
                     f"/uploads/{upload_id}/answers?format=csv"):
            assert bob.get(path).status_code == 404
            assert httpx.get(keyed_upload + path, timeout=30).status_code == 401
