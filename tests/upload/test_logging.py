"""The served upload service's log: one line per request and per upload; QA_LOG_FORMAT=json gives
one Cloud Logging JSON object per line. The service runs as deployed (python -m upload_service),
over a real socket, against fake-gcs-server and PostgreSQL."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.conftest import csv_bytes
from tests.upload.conftest import served

pytestmark = pytest.mark.integration

GOOD = csv_bytes(["question", "context"], [["Where?", "In Paris."], ["Who?", "Ann."]])
BAD = b"question,ctx\nq,c\n"


def exercise(url: str) -> dict:
    """A good upload, a rejected one, the history in two pages, a status and an unknown path."""
    with httpx.Client(base_url=url, timeout=30) as client:
        good = client.post("/uploads", files={"file": ("good.csv", GOOD, "text/csv")})
        assert good.status_code == 201, good.text
        bad = client.post("/uploads", files={"file": ("bad.csv", BAD, "text/csv")})
        assert bad.status_code == 422
        first = client.get("/uploads", params={"limit": 1}).json()
        second = client.get("/uploads", params={"limit": 1, "cursor": first["next_cursor"]}).json()
        assert [u["filename"] for u in first["uploads"] + second["uploads"]] == ["bad.csv", "good.csv"]
        assert second["next_cursor"] is None
        assert client.get(f"/uploads/{good.json()['upload_id']}").json()["status"] == "uploaded"
        assert client.get("/nothing-here").status_code == 404
    return {"good": good.json(), "bad": bad.json()}


def test_json_logs_are_one_cloud_logging_object_per_line(fake_gcs_url, tmp_path):
    log_path = tmp_path / "upload.log"
    with served(fake_gcs_url, log_path, QA_LOG_FORMAT="json") as url:
        uploads = exercise(url)
        time.sleep(0.5)  # the request line is written once the response is sent
    lines = [line for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for line in lines:
        record = json.loads(line)  # every line, uvicorn's own start-up lines included
        assert isinstance(record, dict), line
        assert record["severity"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
        assert isinstance(record["message"], str) and record["message"], line
        assert record["time"].endswith("+00:00") and "logging.googleapis.com/sourceLocation" in record, line
        records.append(record)
    assert any("Uvicorn running on" in r["message"] for r in records)

    requests = [r for r in records if "httpRequest" in r]
    seen = [(r["httpRequest"]["requestMethod"], r["httpRequest"]["requestUrl"].split("?")[0],
             r["httpRequest"]["status"]) for r in requests if r["httpRequest"]["requestUrl"] != "/healthz"]
    good_id = uploads["good"]["upload_id"]
    assert seen == [("POST", "/uploads", 201), ("POST", "/uploads", 422), ("GET", "/uploads", 200),
                    ("GET", "/uploads", 200), ("GET", f"/uploads/{good_id}", 200), ("GET", "/nothing-here", 404)]
    for record in requests:
        assert record["httpRequest"]["latency"].endswith("s") and record["logger"] == "upload_service.requests"
    assert [r["severity"] for r in requests if r["httpRequest"]["status"] == 404] == ["INFO"]

    per_upload = {r["upload_id"]: r for r in records if r.get("status") in ("uploaded", "rejected")}
    assert set(per_upload) == {good_id, uploads["bad"]["details"]["upload_id"]}
    good = per_upload[good_id]
    assert (good["status"], good["size_bytes"], good["rows"], good["file"]) == ("uploaded", len(GOOD), 2,
                                                                                   "good.csv")
    assert good["object"] == uploads["good"]["object"] and good_id in good["message"]
    bad = per_upload[uploads["bad"]["details"]["upload_id"]]
    assert (bad["status"], bad["error"], bad["size_bytes"], bad["rows"]) == ("rejected", "missing_columns",
                                                                             len(BAD), None)


def test_text_logs_are_one_line_per_request_and_upload(fake_gcs_url, tmp_path):
    log_path = tmp_path / "upload.log"
    with served(fake_gcs_url, log_path) as url:
        uploads = exercise(url)
        time.sleep(0.5)
    text = log_path.read_text(encoding="utf-8")
    good_id = uploads["good"]["upload_id"]
    assert text.count(" INFO upload_service.requests: POST /uploads ") == 2
    assert f"INFO upload_service.requests: GET /uploads/{good_id} 200 " in text
    assert f"upload {good_id} uploaded: good.csv, {len(GOOD)} bytes, 2 rows -> " in text
    assert "missing_columns" in text and f"rejected: bad.csv, {len(BAD)} bytes" in text
    assert not any(line.startswith("{") for line in text.splitlines())
