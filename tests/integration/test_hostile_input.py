"""Hostile and careless input against the real fake-gcs-server and PostgreSQL (docs/security.md).

- An object stored gzip-encoded that inflates past ``--max_file_bytes`` is refused after reading
  at most that much (a 1.5 GB gzip bomb), with a reason.
- A model folder whose manifest names ``../`` or absolute paths writes nothing outside its folder;
  a model whose files do not match its manifest is refused and counted; a matching one loads.
- A file version whose attempts all ended without an outcome gives up after ``--max_attempts``
  with how the last one ended, is quarantined, and the other files are answered.
- The sweeper deletes the source of a finished version whose own delete failed.
- A quarantine copy that fails gives the lease back, with how the attempt ended.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import time
import tracemalloc
from pathlib import Path

import pytest

from beam_qa import metrics, runtime
from beam_qa.launch import run
from beam_qa.qa import model_manifest
from beam_qa.qa.model_store import ModelRefusedError, load_model
from beam_qa.reading import _ClaimFn, _ReadCsvFn  # pylint: disable=protected-access
from beam_qa.records import Claim, FileEvent
from beam_qa.settings import InputSettings, PostgresSettings, StorageSettings, SweepSettings
from beam_qa.sources import _SweepFn  # pylint: disable=protected-access
from beam_qa.storage import ContentEncodingError, ContentTooLarge, Storage, UnsafeName, safe_join
from beam_qa.store.attempts import LEASE_EXPIRED
from tests.bad_input_cases import gzip_bomb
from tests.conftest import fresh_database, query, squad_csv
from tests.fake_gcs import in_memory_gcs

pytestmark = pytest.mark.integration

BUCKET = "qa-hostile"
LIMIT = 50 * 1024 * 1024  # the default --max_file_bytes


@pytest.fixture(scope="module")
def gcs():
    """fake-gcs-server (in memory) on a free port, this process's clients pointed at it."""
    with in_memory_gcs(BUCKET) as storage:
        yield storage


def put(storage: Storage, name: str, data: bytes, encoding: str | None = None) -> int:
    blob = storage.client.bucket(BUCKET).blob(name)
    blob.content_encoding = encoding
    blob.upload_from_string(data, content_type="text/csv")
    return storage.client.bucket(BUCKET).get_blob(name).generation


# --- bounded work per file -------------------------------------------------------------------------

def test_a_gzip_bomb_is_read_up_to_the_limit_only(gcs):
    bomb = gzip_bomb(1536)  # 1.5 GiB inflated, about 1.5 MB stored
    generation = put(gcs, "incoming/bomb.csv", bomb, encoding="gzip")
    tracemalloc.start()
    try:
        with pytest.raises(ContentTooLarge) as info:
            gcs.read_bytes(f"gs://{BUCKET}/incoming/bomb.csv", generation, max_bytes=LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.encoding == "gzip" and info.value.limit == LIMIT
    assert peak < 2 * LIMIT, f"reading held {peak / 2**20:.0f} MiB"


def test_gzip_encoded_objects_are_inflated_under_the_limit_and_a_false_encoding_is_refused(gcs):
    plain = squad_csv(0, 3)
    generation = put(gcs, "incoming/small.csv", gzip.compress(plain), encoding="gzip")
    assert gcs.read_bytes(f"gs://{BUCKET}/incoming/small.csv", generation, max_bytes=len(plain)) == plain
    with pytest.raises(ContentTooLarge):
        gcs.read_bytes(f"gs://{BUCKET}/incoming/small.csv", generation, max_bytes=len(plain) - 1)
    two_members = gzip.compress(plain[:100]) + gzip.compress(plain[100:])
    generation = put(gcs, "incoming/members.csv", two_members, encoding="gzip")
    assert gcs.read_bytes(f"gs://{BUCKET}/incoming/members.csv", generation, max_bytes=LIMIT) == plain
    generation = put(gcs, "incoming/liar.csv", plain, encoding="gzip")
    with pytest.raises(ContentEncodingError):
        gcs.read_bytes(f"gs://{BUCKET}/incoming/liar.csv", generation, max_bytes=LIMIT)


def test_the_read_step_fails_a_bomb_with_its_reason(gcs):
    bomb = gzip_bomb(64)
    generation = put(gcs, "incoming/bomb64.csv", bomb, encoding="gzip")
    settings = PostgresSettings(fresh_database("beam_qa_hostile_read"), retry_secs=10)
    event = FileEvent(f"gs://{BUCKET}/incoming/bomb64.csv", generation, len(bomb), f"gs://{BUCKET}/", "bomb64.csv",
                      time.time(), "pubsub:1")
    fn = _ReadCsvFn(InputSettings(max_file_bytes=8 * 1024 * 1024), settings, StorageSettings(anonymous=True))
    fn.setup()
    try:
        (failure,) = [out.value for out in fn.process(Claim(event, runtime.postgres(settings).claim(event)))]
    finally:
        runtime.close()
    assert failure.kind == "too_large"
    assert failure.reason == ("file is over the limit of 8388608 bytes once inflated (it is stored with "
                              "Content-Encoding: gzip); split it into smaller files")


@pytest.mark.timeout(180)  # a guard, not a measurement: the quadratic check took minutes on this header alone
def test_100000_column_headers_end_done_or_failed_through_the_pipeline(tmp_path, tiny_model):
    """With --max_columns raised past them, so that every name is checked (the default refuses them at once)."""
    folder = tmp_path / "in"
    folder.mkdir()
    names = [f"column_{i}" for i in range(99_998)]
    (folder / "wide.csv").write_text(",".join(["question", "context", *names]) + "\nWhere?,In Paris.\n")
    (folder / "no_context.csv").write_text(",".join(["question", "notes", *names]) + "\nWhere?,In Paris.\n")
    dsn = fresh_database("beam_qa_hostile_wide")
    run([f"--input_pattern={folder / '*.csv'}", f"--model={tiny_model}", f"--pg_dsn={dsn}", "--max_columns=200000"])
    outcome = dict(query(dsn, "SELECT source_uri, status FROM qa_files"))
    assert outcome == {str(folder / "wide.csv"): "done", str(folder / "no_context.csv"): "failed"}
    (error,), = query(dsn, "SELECT error FROM qa_files WHERE status = 'failed'")
    assert error.startswith("missing column(s) context in header ['question', 'notes',") and len(error) < 2_000


# --- a model only its publisher can change ------------------------------------------------------------

def publish(storage: Storage, prefix: str, local: Path, manifest: bytes | None = None,
            extra: dict[str, bytes] | None = None) -> str:
    """Copies a model directory under ``prefix``, then its manifest (given, or built) last."""
    bucket = storage.client.bucket(BUCKET)
    for path in sorted(p for p in local.rglob("*") if p.is_file() and p.name != model_manifest.MANIFEST):
        bucket.blob(f"{prefix}/{path.relative_to(local).as_posix()}").upload_from_filename(str(path))
    for name, data in (extra or {}).items():
        bucket.blob(f"{prefix}/{name}").upload_from_string(data)
    data = manifest if manifest is not None else json.dumps(model_manifest.build(local)).encode()
    bucket.blob(f"{prefix}/{model_manifest.MANIFEST}").upload_from_string(data)
    return f"gs://{BUCKET}/{prefix}"


@pytest.fixture
def model_cache(tmp_path, monkeypatch) -> Path:
    """Local model copies go under this test's own temporary directory."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(root))
    return root


def every_file(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


HOSTILE_NAMES = ["../../escape.txt", "..", "a/../../../escape.txt", "/tmp/absolute.txt", "//abs.txt",
                 "ok/./x.txt", "back\\slash.txt", "empty//segment.txt", ""]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_safe_join_refuses_every_name_that_could_leave_the_folder(tmp_path, name):
    with pytest.raises(UnsafeName):
        safe_join(str(tmp_path), name)
    assert safe_join(str(tmp_path), "onnx/model.onnx") == str(tmp_path / "onnx" / "model.onnx")


def test_a_model_folder_holding_dotdot_or_absolute_names_writes_nothing_outside_it(gcs, tiny_model, model_cache):
    local = Path(tiny_model)
    files = model_manifest.build(local)["files"]
    planted = {"../../escape.txt": b"planted", f"/{model_cache}/absolute.txt": b"planted"}
    for index, name in enumerate(planted):
        hostile = dict(files, **{name: {"size": 7, "sha256": hashlib.sha256(b"planted").hexdigest()}})
        model = publish(gcs, f"models/evil-{index}", local, json.dumps({"files": hostile}).encode(),
                        extra={name: b"planted"})
        with pytest.raises(ModelRefusedError, match="outside the model's folder"):
            load_model(model, "cpu", "fp32", "torch")
    # The same objects sit in a folder whose manifest does not name them: only its files are copied.
    model = publish(gcs, "models/planted", local, extra={"../../escape.txt": b"x", "/abs.txt": b"x"})
    loaded = load_model(model, "cpu", "fp32", "torch")
    copies = [p for p in model_cache.joinpath("beam_qa_models").iterdir()]
    assert len(copies) == 1, copies  # no staging folder of a refused model is left
    assert every_file(copies[0]) == set(files) | {".complete"}
    assert every_file(model_cache) == {f"beam_qa_models/{copies[0].name}/{f}" for f in [*files, ".complete"]}
    assert loaded.model_id.startswith(model + "@")


def test_a_model_that_does_not_match_its_manifest_is_refused_and_counted(gcs, tiny_model, model_cache, caplog):
    local = Path(tiny_model)
    model = publish(gcs, "models/tampered", local)
    # Someone who can write the folder replaces the weights after publication.
    gcs.client.bucket(BUCKET).blob("models/tampered/model.safetensors").upload_from_string(b"not the weights")
    with metrics.local_tally() as tally, pytest.raises(ModelRefusedError, match="model.safetensors"):
        load_model(model, "cpu", "fp32", "torch")
    assert tally.counts.get("models_refused") == 1
    assert any("refused the model" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    assert not any(model_cache.joinpath("beam_qa_models").iterdir())
    # No manifest at all: not a published model.
    gcs.client.bucket(BUCKET).blob("models/unpublished/config.json").upload_from_filename(str(local / "config.json"))
    with pytest.raises(Exception, match="no beam_qa_manifest.json"):
        load_model(f"gs://{BUCKET}/models/unpublished", "cpu", "fp32", "torch")


# --- a poison file gives up ---------------------------------------------------------------------------

def expire(dsn: str, uri: str) -> None:
    import psycopg
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE qa_files SET lease_until = now() - interval '1 second' WHERE source_uri = %s", (uri,))


def test_attempts_that_die_without_a_word_count_and_the_next_claim_gives_up(tmp_path):
    settings = PostgresSettings(fresh_database("beam_qa_hostile_attempts"), retry_secs=10, max_attempts=3)
    event = FileEvent(f"gs://{BUCKET}/incoming/poison.csv", 5, 10, f"gs://{BUCKET}/", "poison.csv", 0.0, "")
    fn = _ClaimFn(settings)
    fn.setup()
    try:
        store = runtime.postgres(settings)
        for attempt in (1, 2, 3):  # each worker is killed: its lease simply expires
            (claim,) = fn.process(event._replace(trigger=f"sweep:{attempt}"))
            assert (claim.attempt, claim.gave_up) == (attempt, "")
            expire(settings.dsn, event.uri)
        (claim,) = fn.process(event._replace(trigger="sweep:4"))
        assert claim.attempt == 4 and claim.gave_up == (
            f"gave up after 3 attempts; the last one ended with {LEASE_EXPIRED}; the file is kept under the error "
            "prefix: check it, then upload a fixed copy")
        # A give-up whose quarantine failed is retried and keeps the last real attempt's ending.
        store.release(event, 4, None)
        (again,) = fn.process(event._replace(trigger="sweep:5"))
        assert (again.attempt, again.gave_up) == (4, claim.gave_up)
    finally:
        runtime.close()


def test_the_last_attempts_ending_is_the_reason(tmp_path):
    settings = PostgresSettings(fresh_database("beam_qa_hostile_ending"), retry_secs=10, max_attempts=2)
    event = FileEvent(f"gs://{BUCKET}/incoming/flaky.csv", 5, 10, f"gs://{BUCKET}/", "flaky.csv", 0.0, "")
    try:
        store = runtime.postgres(settings)
        assert store.claim(event._replace(trigger="a")) == 1
        store.release(event, 1, "an ending that must not stay")
        assert store.claim(event._replace(trigger="b")) == 2  # a new attempt forgets the old ending
        store.release(event, 2, "a storage error while reading it (ConnectionError)")
        assert store.claim(event._replace(trigger="c")) == 3
        assert store.attempt_ending(event) == "a storage error while reading it (ConnectionError)"
    finally:
        runtime.close()


def test_a_bounded_run_gives_up_on_a_used_up_file_quarantines_it_and_answers_the_rest(tmp_path, tiny_model):
    folder = tmp_path / "in"
    folder.mkdir()
    poison, good = folder / "poison.csv", folder / "good.csv"
    poison.write_bytes(squad_csv(0, 2))
    good.write_bytes(squad_csv(2, 2))
    generation = poison.stat().st_mtime_ns
    dsn = fresh_database("beam_qa_hostile_gave_up")
    # Three earlier attempts at poison.csv died with their workers (their leases expired).
    store = runtime.postgres(PostgresSettings(dsn))
    try:
        event = FileEvent(str(poison), generation, 1, str(folder), "poison.csv", 0.0, "")
        for attempt in (1, 2, 3):
            assert store.claim(event._replace(trigger=f"earlier:{attempt}")) == attempt
            expire(dsn, str(poison))
    finally:
        runtime.close()
    with metrics.local_tally() as tally:
        run([f"--input_pattern={folder / '*.csv'}", f"--model={tiny_model}", f"--pg_dsn={dsn}"])
    (status, kind, error, output), = query(dsn, "SELECT status, error_kind, error, output_uri FROM qa_files "
                                               "WHERE source_uri = %s", (str(poison),))
    assert (status, kind) == ("failed", "gave_up") and error.startswith("gave up after 3 attempts; the last one")
    assert Path(output).read_bytes() == squad_csv(0, 2) and not poison.exists()
    assert query(dsn, "SELECT status FROM qa_files WHERE source_uri = %s", (str(good),)) == [("done",)]
    assert tally.counts.get("file_errors_gave_up") == 1


# --- nothing left behind ------------------------------------------------------------------------------

def test_the_sweep_deletes_the_source_of_a_finished_version_whose_delete_failed(gcs):
    settings = PostgresSettings(fresh_database("beam_qa_hostile_sweep"), retry_secs=10)
    names = {"done": "swept/done.csv", "quarantined": "swept/failed.csv", "running": "swept/running.csv"}
    generations = {key: put(gcs, name, squad_csv(0, 1)) for key, name in names.items()}
    uri = {key: f"gs://{BUCKET}/{name}" for key, name in names.items()}
    runtime.postgres(settings)  # creates the tables
    import psycopg
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        for key, status, output in (("done", "done", "gs://x/answers.csv"), ("quarantined", "failed", "gs://x/e.csv"),
                                    ("running", "received", None)):
            conn.execute("INSERT INTO qa_files (source_uri, source_generation, status, output_uri, lease_until) "
                         "VALUES (%s, %s, %s, %s, now() + interval '1 hour')",
                         (uri[key], generations[key], status, output))
    sweep = SweepSettings(bucket=BUCKET, interval_secs=60, grace_secs=0, incoming_prefix="swept/")
    try:
        kept = _SweepFn(dataclasses.replace(sweep, delete_finished=False), settings, StorageSettings())
        kept.setup()
        assert list(kept.process("tick-0")) == []  # --keep_source: nothing deleted
        assert {blob.name for blob in gcs.client.list_blobs(BUCKET, prefix="swept/")} == set(names.values())
        fn = _SweepFn(sweep, settings, StorageSettings())
        fn.setup()
        with metrics.local_tally() as tally:
            assert list(fn.process("tick-1")) == []  # nothing to start: one held, two finished
    finally:
        runtime.close()
    assert {blob.name for blob in gcs.client.list_blobs(BUCKET, prefix="swept/")} == {names["running"]}
    assert tally.counts.get("leftovers_deleted") == 2


def test_a_failed_quarantine_copy_gives_the_lease_back_and_a_later_run_copies_it(tmp_path, tiny_model):
    folder = tmp_path / "in"
    folder.mkdir()
    bad = folder / "bad.csv"
    bad.write_bytes(b"question,ctx\nq,c\n")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the error prefix's folder should be")
    dsn = fresh_database("beam_qa_hostile_quarantine")
    args = [f"--input_pattern={folder / '*.csv'}", f"--model={tiny_model}", f"--pg_dsn={dsn}"]
    run(args + [f"--error_prefix={blocker}/errors/"])
    assert bad.exists()
    assert query(dsn, "SELECT status, lease_until <= now(), attempt_error FROM qa_files") == [
        ("received", True, "a failed copy under the error prefix")]
    run(args)  # the error prefix works again: the next attempt fails the file and copies it
    (status, attempt, output), = query(dsn, "SELECT status, attempt, output_uri FROM qa_files")
    assert (status, attempt) == ("failed", 2) and Path(output).read_bytes() == b"question,ctx\nq,c\n"
    assert not bad.exists()
