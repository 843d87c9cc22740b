"""GET /uploads (the history, paged) and the progress of GET /uploads/{id}, over HTTP against a real
fake-gcs-server and PostgreSQL; the pipeline's rows are written with the pipeline's own SQL."""

from __future__ import annotations

import datetime

import pytest

from tests.conftest import csv_bytes, fresh_database, query
from tests.upload.conftest import PipelineRecords

pytestmark = pytest.mark.integration

GOOD = csv_bytes(["id", "question", "context"],
                 [["1", "Where is the tower?", "The tower is in Paris."],
                  ["2", "Who built it?", "Gustave Eiffel's company built it."],
                  ["3", "When?", "It opened in 1889."]])


def post(client, name: str, data: bytes):
    return client.post("/uploads", files={"file": (name, data, "text/csv")})


@pytest.fixture
def history_client(make_client):
    """A client whose database holds only this test's uploads (the history spans the database)."""
    return make_client(pg_dsn=fresh_database("beam_qa_upload_history"))


def all_pages(client, limit: int) -> tuple[list[dict], list[int]]:
    """Every history item, following next_cursor; also each page's size."""
    items, sizes, cursor = [], [], None
    while True:
        params = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        response = client.get("/uploads", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["limit"] == limit
        items += body["uploads"]
        sizes.append(len(body["uploads"]))
        cursor = body["next_cursor"]
        if cursor is None:
            return items, sizes


def test_the_history_lists_stored_and_rejected_uploads_newest_first_in_pages(history_client):
    client = history_client
    names = [f"q{i}.csv" for i in range(5)]
    created = []
    for i, name in enumerate(names):
        if i == 2:
            rejected = post(client, name, b"question,ctx\nq,c\n")
            assert rejected.status_code == 422
            created.append(("rejected", rejected.json()["details"]["upload_id"], name))
        else:
            accepted = post(client, name, GOOD)
            assert accepted.status_code == 201, accepted.text
            created.append(("uploaded", accepted.json()["upload_id"], name))
    not_csv = post(client, "../notes.txt", b"x")
    assert not_csv.status_code == 415
    created.append(("rejected", not_csv.json()["details"]["upload_id"], "notes.txt"))

    items, sizes = all_pages(client, limit=2)
    assert sizes == [2, 2, 2]
    expected = list(reversed(created))
    assert [(i["status"], i["upload_id"], i["filename"]) for i in items] == expected
    stamps = [datetime.datetime.fromisoformat(i["uploaded_at"]) for i in items]
    assert stamps == sorted(stamps, reverse=True)
    # One page holding everything gives the same list and no cursor.
    whole = client.get("/uploads", params={"limit": 100}).json()
    assert whole["uploads"] == items and whole["next_cursor"] is None

    by_name = {i["filename"]: i for i in items}
    assert by_name["q0.csv"]["row_count"] == 3 and by_name["q0.csv"]["size"] == len(GOOD)
    assert by_name["q0.csv"]["object"].endswith(f"/{by_name['q0.csv']['upload_id']}/q0.csv")
    assert by_name["q2.csv"]["error"].startswith("missing column(s) context")
    assert by_name["q2.csv"]["object"] is None and by_name["q2.csv"]["row_count"] is None
    assert by_name["notes.txt"]["error"] == "file name '../notes.txt' does not end in .csv"
    # Each item is what GET /uploads/{id} says about that upload.
    for item in items:
        assert client.get(f"/uploads/{item['upload_id']}").json() == item
    rejected_id = by_name["q2.csv"]["upload_id"]
    refused = client.get(f"/uploads/{rejected_id}/answers")
    assert refused.status_code == 409 and refused.json()["error"] == "upload_failed"


def test_progress_while_received_counts_the_rows_the_pipeline_has_committed(history_client):
    client = history_client
    accepted = post(client, "progress.csv", GOOD).json()
    upload_id = accepted["upload_id"]
    dsn = client.settings.pg_dsn

    def seen() -> tuple:
        one = client.get(f"/uploads/{upload_id}").json()
        listed = client.get("/uploads").json()["uploads"][0]
        assert listed == one
        return one["status"], one["processed_count"], one["row_count"], one["answered_count"], one["error_count"]

    assert seen() == ("uploaded", 0, 3, 0, 0)
    pipeline = PipelineRecords(dsn, accepted, client.settings.bucket)
    pipeline.received(3)
    assert seen() == ("received", 0, 3, 0, 0)
    # The pipeline commits answers chunk by chunk while the file is received.
    rows = [(0, "1", "Where is the tower?", "The tower is in Paris.", "Paris", 0.9, 16, 21, None),
            (1, "2", "Who built it?", "Gustave Eiffel's company built it.", None, None, None, None,
             "no answer span found"),
            (2, "3", "When?", "It opened in 1889.", "1889", 0.8, 13, 17, None)]
    assert not pipeline.commit(rows[:2], 3).completed
    assert seen() == ("received", 2, 3, 1, 1)
    assert pipeline.commit(rows[2:], 3).completed
    pipeline.done(3, 1, f"gs://{client.settings.bucket}/answers/x.answers.csv")
    assert seen() == ("done", 3, 3, 2, 1)
    done = client.get(f"/uploads/{upload_id}").json()
    assert done["answers_url"] == f"http://testserver/uploads/{upload_id}/answers"
    assert done["received_at"] and done["completed_at"]


def test_an_upload_the_pipeline_does_not_pick_up_is_reported_stalled(make_client):
    client = make_client(pg_dsn=fresh_database("beam_qa_upload_stall"), stall_after_secs=0.05)
    upload_id = post(client, "waiting.csv", GOOD).json()["upload_id"]
    query(client.settings.pg_dsn, "SELECT pg_sleep(0.1)")
    status = client.get(f"/uploads/{upload_id}").json()
    assert status["status"] == "uploaded" and status["stalled"] is True
    assert "has not picked this file up" in status["note"] and "pipeline" in status["note"]
    assert client.get("/uploads").json()["uploads"][0]["stalled"] is True
    # Once the pipeline records it, it is no longer stalled.
    PipelineRecords(client.settings.pg_dsn, status | {"size": 0}, client.settings.bucket).received(3)
    again = client.get(f"/uploads/{upload_id}").json()
    assert (again["status"], again["stalled"], again["note"]) == ("received", False, None)

    fresh = make_client()  # default QA_STALL_AFTER_SECS=60
    young = post(fresh, "young.csv", GOOD).json()["upload_id"]
    assert fresh.get(f"/uploads/{young}").json()["stalled"] is False


@pytest.mark.parametrize("params", [{"cursor": "not-a-cursor"}, {"cursor": "MjAyNnxub3Q"}, {"limit": 0},
                                    {"limit": 101}, {"cursor": "x" * 201}])
def test_bad_paging_parameters_are_a_documented_422(make_client, params):
    response = make_client().get("/uploads", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["error"] in ("invalid_cursor", "invalid_request")
    assert response.json()["hint"]


def test_the_page_knows_the_upload_limit(make_client):
    page = make_client(max_upload_bytes=12345).get("/")
    assert 'data-max-upload-bytes="12345"' in page.text
    assert 'multiple' in page.text and 'id="drop-zone"' in page.text


def test_the_schema_page_shows_the_uploads_table_as_the_migration_creates_it():
    from pathlib import Path
    from beam_qa.store.schema import migrations
    (uploads,) = [m for m in migrations() if m.name == "uploads"]
    ddl = uploads.sql[uploads.sql.index("CREATE TABLE"):]
    page = (Path(__file__).resolve().parents[2] / "docs" / "schema.md").read_text(encoding="utf-8")
    assert ddl.strip() in page


def test_an_upload_is_dated_before_its_object_exists_so_never_after_the_pipeline_received_it(history_client):
    from upload_service.services.gcs import make_client as gcs_client
    client = history_client
    accepted = post(client, "dated.csv", GOOD).json()
    status = client.get(f"/uploads/{accepted['upload_id']}").json()
    blob = gcs_client(client.settings.gcs_url).bucket(client.settings.bucket).get_blob(
        accepted["object"].split("/", 3)[3])
    assert datetime.datetime.fromisoformat(status["uploaded_at"]) <= blob.time_created
