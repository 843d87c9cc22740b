"""Names that cannot finish, and the sweeper's bounded listing, against fake-gcs-server and PostgreSQL.

- An object whose answers name would pass GCS's 1,024-byte limit is failed ``name_too_long`` by
  its first attempt, kept under a shortened unique name under the error prefix, and its source
  removed; the other files are answered. (fake-gcs-server does not enforce the limit, so without
  the check the file would be "answered" here; real GCS refuses the answers write every time.)
- The sweeper pages through the listing and sends PostgreSQL one bounded statement per page,
  and still finds every file, abandons every vanished one and deletes every leftover.
- A non-CSV object under the incoming prefix is failed ``not_csv`` and moved under the error
  prefix, byte for byte, with its reason: never deleted unkept, never left there unseen.
"""

from __future__ import annotations

import pytest

from beam_qa import runtime
from beam_qa.cleanup import _CopyAsideFn, _DeleteFailedSourceFn  # pylint: disable=protected-access
from beam_qa.events import MAX_OBJECT_NAME_BYTES
from beam_qa.launch import run
from beam_qa.reading import _ClaimFn, _ReadCsvFn  # pylint: disable=protected-access
from beam_qa.settings import InputSettings, OutputSettings, PostgresSettings, StorageSettings, SweepSettings
from beam_qa.sinks.transforms import _MarkFailedFn  # pylint: disable=protected-access
from beam_qa.sources import _SweepFn  # pylint: disable=protected-access
from beam_qa.storage import Storage
from beam_qa.store.postgres import PostgresStore
from tests.conftest import fresh_database, query, squad_csv
from tests.fake_gcs import in_memory_gcs

pytestmark = pytest.mark.integration

BUCKET = "qa-names"


@pytest.fixture(scope="module")
def gcs():
    """fake-gcs-server (in memory) on a free port, this process's clients pointed at it."""
    with in_memory_gcs(BUCKET) as storage:
        yield storage


def put(storage: Storage, name: str, data: bytes) -> int:
    blob = storage.client.bucket(BUCKET).blob(name)
    blob.upload_from_string(data, content_type="text/csv")
    return storage.client.bucket(BUCKET).get_blob(name).generation


def names(storage: Storage, prefix: str) -> set[str]:
    return {blob.name for blob in storage.client.list_blobs(BUCKET, prefix=prefix)}


# --- names that cannot finish -----------------------------------------------------------------------

def test_a_name_whose_answers_cannot_be_written_fails_at_once_and_is_kept_under_a_short_name(gcs, tiny_model):
    # 1,004 bytes (493 two-byte characters): a valid object name, whose answers name passes 1,024 bytes.
    long_name = "long/" + "é" * 493 + ".csv"
    source = f"incoming/{long_name}"
    assert len(source.encode()) <= MAX_OBJECT_NAME_BYTES
    data = squad_csv(0, 2)
    long_generation = put(gcs, source, data)
    good_generation = put(gcs, "incoming/long/good.csv", squad_csv(10, 2))
    dsn = fresh_database("beam_qa_names_too_long")
    run([f"--input_pattern=gs://{BUCKET}/incoming/long/*.csv", f"--model={tiny_model}", f"--pg_dsn={dsn}"])
    (status, kind, attempt, error, output), = query(
        dsn, "SELECT status, error_kind, attempt, error, output_uri FROM qa_files WHERE source_uri = %s "
        "AND source_generation = %s", (f"gs://{BUCKET}/{source}", long_generation))
    assert (status, kind, attempt) == ("failed", "name_too_long", 1)
    answers_bytes = len(f"answers/long/{'é' * 493}.{long_generation}.answers.csv".encode())
    assert answers_bytes > MAX_OBJECT_NAME_BYTES
    assert error.startswith(f"the object name is {len(source.encode()):,} bytes, so its answers file's name would "
                            f"be {answers_bytes:,} bytes, over Cloud Storage's limit of 1,024 bytes")
    assert query(dsn, "SELECT count(*) FROM qa_answers WHERE source_uri = %s", (f"gs://{BUCKET}/{source}",)) == [(0,)]
    # Kept byte for byte under a name that fits; the source is gone from the incoming prefix.
    kept = output[len(f"gs://{BUCKET}/"):]
    assert kept.startswith("errors/long/éé") and kept.endswith(f".{long_generation}.csv")
    assert len(kept.encode()) <= MAX_OBJECT_NAME_BYTES
    assert gcs.read_bytes(output) == data
    assert names(gcs, "incoming/long/") == set()
    assert not any(name.startswith("answers/long/é") for name in names(gcs, "answers/"))
    # The other file is answered as usual.
    assert query(dsn, "SELECT status FROM qa_files WHERE source_uri = %s AND source_generation = %s",
                 (f"gs://{BUCKET}/incoming/long/good.csv", good_generation)) == [("done",)]


# --- the sweeper: bounded pages, and non-CSV objects ----------------------------------------------------

class _Counted:
    """Wraps a method of a class, recording each call's size."""

    def __init__(self, monkeypatch, cls, name: str, size):
        self.sizes: list[int] = []
        original = getattr(cls, name)

        def wrapper(this, *args, **kwargs):
            self.sizes.append(size(*args, **kwargs))
            return original(this, *args, **kwargs)
        monkeypatch.setattr(cls, name, wrapper)


def test_the_sweep_pages_through_the_listing_with_one_bounded_statement_per_page(gcs, monkeypatch):
    settings = PostgresSettings(fresh_database("beam_qa_sweep_pages"), retry_secs=10)
    page_size = 3
    unclaimed = [f"paged/new{i}.csv" for i in range(5)]
    stalled, done, undeleted = "paged/stalled.csv", "paged/done.csv", "paged/undeleted.csv"
    generations = {name: put(gcs, name, squad_csv(0, 1)) for name in [*unclaimed, stalled, done, undeleted]}
    uri = {name: f"gs://{BUCKET}/{name}" for name in generations}
    runtime.postgres(settings)  # creates the tables
    import psycopg
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        rows = [(uri[stalled], generations[stalled], "received", None, "-1 hour"),
                (uri[done], generations[done], "done", "gs://x/a.csv", "-1 hour"),
                (uri[undeleted], generations[undeleted], "done", "gs://x/b.csv", "-1 hour")]
        # Versions whose source is gone and whose last attempt ended: more than a page of them.
        rows += [(f"gs://{BUCKET}/paged/vanished{i}.csv", 1, "received", None, "-1 hour") for i in range(4)]
        for row in rows:
            conn.execute("INSERT INTO qa_files (source_uri, source_generation, status, output_uri, lease_until) "
                         "VALUES (%s, %s, %s, %s, now() + %s::interval)", row)
    gcs.delete_generation(uri[undeleted], generations[undeleted])  # its own delete had succeeded after all
    generations.pop(undeleted)
    claimable = _Counted(monkeypatch, PostgresStore, "not_claimable", lambda uris, retry_secs: len(uris))
    stale = _Counted(monkeypatch, PostgresStore, "stale_versions", lambda *args, **kwargs: 1)
    abandoned = _Counted(monkeypatch, PostgresStore, "abandon", lambda gone, *args: len(gone))
    listed_pages: list[int] = []
    list_pages = Storage.list_pages

    def counting_pages(self, pattern, size):
        for page in list_pages(self, pattern, size):
            listed_pages.append(len(page))
            yield page
    monkeypatch.setattr(Storage, "list_pages", counting_pages)
    sweep = SweepSettings(bucket=BUCKET, interval_secs=60, grace_secs=0, incoming_prefix="paged/",
                          page_size=page_size)
    try:
        fn = _SweepFn(sweep, settings, StorageSettings())
        fn.setup()
        first = {event.uri for event in fn.process("tick-1")}
        second = {event.uri for event in fn.process("tick-2")}
    finally:
        runtime.close()
    # 7 objects listed (5 new, stalled, done): 3 pages of at most 3, one statement each; then 6
    # (done's source, left behind by a failed delete, was deleted by the first sweep).
    assert listed_pages == [3, 3, 1, 3, 3]
    assert claimable.sizes == [3, 3, 1, 3, 3]
    assert first == second == {uri[name] for name in [*unclaimed, stalled]}
    # Stale versions are read a page at a time (stalled first: its lease is the oldest; its source
    # is listed, so it is retried, not abandoned): the vanished ones are abandoned over two sweeps.
    assert len(stale.sizes) == 2 and abandoned.sizes == [2, 2]
    assert query(settings.dsn, "SELECT count(*) FROM qa_files WHERE error_kind = 'source_gone'") == [(4,)]
    # The finished one still listed (its delete had failed) is deleted; nothing else is.
    assert names(gcs, "paged/") == {name for name in [*unclaimed, stalled]}


def test_a_non_csv_object_under_the_incoming_prefix_is_moved_under_the_error_prefix_with_its_reason(gcs):
    settings = PostgresSettings(fresh_database("beam_qa_sweep_not_csv"), retry_secs=10)
    content = b"%PDF-1.7 not a csv"
    generation = put(gcs, "strays/report.pdf", content)
    outputs = OutputSettings(answers_prefix="answers/", error_prefix="errors/")
    storage = StorageSettings()
    try:
        sweep = _SweepFn(SweepSettings(bucket=BUCKET, interval_secs=60, grace_secs=0, incoming_prefix="strays/"),
                         settings, storage)
        claim, read, copy, record, delete = (_ClaimFn(settings, outputs), _ReadCsvFn(InputSettings(), settings, storage),
                                             _CopyAsideFn(outputs, storage, settings), _MarkFailedFn(settings),
                                             _DeleteFailedSourceFn(storage))
        for fn in (sweep, claim, read, copy, record, delete):
            fn.setup()
        (event,) = sweep.process("tick-1")
        (claimed,) = claim.process(event)
        (failure,) = [out.value for out in read.process(claimed)]
        (kept,) = copy.process(failure)
        list(record.process(kept))
        list(delete.process(kept))
        assert list(sweep.process("tick-2")) == []  # finished: never started again
    finally:
        runtime.close()
    uri = f"gs://{BUCKET}/strays/report.pdf"
    (status, kind, error, output), = query(settings.dsn, "SELECT status, error_kind, error, output_uri FROM qa_files "
                                           "WHERE source_uri = %s AND source_generation = %s", (uri, generation))
    assert (status, kind) == ("failed", "not_csv") and "only objects whose name ends in .csv" in error
    assert output == f"gs://{BUCKET}/errors/report.{generation}.pdf"
    assert gcs.read_bytes(output) == content
    assert names(gcs, "strays/") == set()
