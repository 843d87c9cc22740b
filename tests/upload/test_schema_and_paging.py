"""The service runs no DDL of its own: an older schema is a clear 503 until the pipeline migrates it.
And a page of answers is bounded by bytes as well as by rows."""

from __future__ import annotations

import psycopg
import pytest

from beam_qa.store.schema import SCHEMA_VERSION_TABLE, ensure_schema, migrations
from tests.conftest import csv_bytes, fresh_database, query
from tests.upload.conftest import PipelineRecords, bucket_names

pytestmark = pytest.mark.integration

GOOD = csv_bytes(["question", "context"], [["Where?", "In Paris."]])


def migrate_up_to(dsn: str, version: int) -> None:
    """Applies migrations 1..version the way ensure_schema does, leaving the later ones out."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {SCHEMA_VERSION_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                     "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        for migration in migrations():
            if migration.version <= version:
                conn.execute(migration.sql)
                conn.execute(f"INSERT INTO {SCHEMA_VERSION_TABLE} (version, name) VALUES (%s, %s)",
                             (migration.version, migration.name))


def test_an_older_schema_is_a_503_until_the_pipeline_migrates_it(make_client):
    from upload_service.services.db import needed_schema_version
    needed = needed_schema_version()
    assert migrations()[needed - 1].name == "upload_owners"
    dsn = fresh_database("beam_qa_upload_old_schema")
    migrate_up_to(dsn, needed - 1)
    client = make_client(pg_dsn=dsn, apply_migrations=False)

    refused = client.post("/uploads", files={"file": ("q.csv", GOOD, "text/csv")})
    assert refused.status_code == 503, refused.text
    body = refused.json()
    assert body["error"] == "schema_outdated" and body["details"] == {"schema_version": needed - 1, "needed": needed}
    assert f"version {needed - 1}" in body["message"] and "upload_owners" in body["message"]
    assert "pipeline" in body["hint"] and "QA_APPLY_MIGRATIONS" in body["hint"]
    assert bucket_names(client.settings.gcs_url, client.settings.bucket) == []  # checked before anything is stored
    assert client.get("/uploads").json()["error"] == "schema_outdated"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["postgres"] == {"ok": False,
                                                                               "detail": "schema_outdated"}
    # The service touched nothing: still the old version, and no DDL ran.
    assert query(dsn, f"SELECT max(version) FROM {SCHEMA_VERSION_TABLE}") == [(needed - 1,)]

    # The pipeline migrates (as its workers do when they connect); the same service now works.
    with psycopg.connect(dsn) as conn:
        ensure_schema(conn)
    assert client.get("/readyz").status_code == 200
    accepted = client.post("/uploads", files={"file": ("q.csv", GOOD, "text/csv")})
    assert accepted.status_code == 201, accepted.text


def test_apply_migrations_lets_a_local_service_start_on_an_empty_database(make_client):
    dsn = fresh_database("beam_qa_upload_local_schema")
    client = make_client(pg_dsn=dsn, apply_migrations=True)
    assert client.post("/uploads", files={"file": ("q.csv", GOOD, "text/csv")}).status_code == 201
    assert query(dsn, f"SELECT max(version) FROM {SCHEMA_VERSION_TABLE}") == [(migrations()[-1].version,)]


def test_a_page_of_answers_stops_at_its_byte_limit_and_next_offset_walks_them_all(make_client):
    client = make_client(pg_dsn=fresh_database("beam_qa_upload_paging"), max_page_bytes=2048)
    count, context = 9, "The answer is here. " * 30  # 600 bytes a row
    data = csv_bytes(["id", "question", "context"], [[str(i), f"Question {i}?", context] for i in range(count)])
    accepted = client.post("/uploads", files={"file": ("big.csv", data, "text/csv")}).json()
    pipeline = PipelineRecords(client.settings.pg_dsn, accepted, client.settings.bucket)
    pipeline.received(count)
    pipeline.commit([(i, str(i), f"Question {i}?", context, "here", 0.5, 14, 18, None) for i in range(count)], count)
    pipeline.done(count, 0, f"gs://{client.settings.bucket}/answers/big.answers.csv")

    pages, offset = [], 0
    while offset is not None:
        page = client.get(f"/uploads/{accepted['upload_id']}/answers", params={"offset": offset, "limit": 100})
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["total"] == count and body["limit"] == 100 and body["offset"] == offset
        pages.append([a["row_index"] for a in body["answers"]])
        offset = body["next_offset"]
    # 2,048 bytes hold 3 rows of ~600 and the row that crosses the limit: 4, 4, 1.
    assert pages == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    small = client.get(f"/uploads/{accepted['upload_id']}/answers", params={"limit": 2}).json()
    assert [a["row_index"] for a in small["answers"]] == [0, 1] and small["next_offset"] == 2
    too_many = client.get(f"/uploads/{accepted['upload_id']}/answers", params={"limit": 1001})
    assert too_many.status_code == 422
