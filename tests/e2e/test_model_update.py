"""A new model without stopping the stream, on the real local stack.

Model A is published under ``gs://BUCKET/models/`` before the pipeline starts; files are answered
by A. Model B (other weights) is then published beside it, its manifest last, while the
pipeline runs: once the workers have switched, later files are answered by B and their rows say
so. Nothing is lost or doubled, every row names a complete model, and each version is loaded once
in the pipeline's process. A model C whose weights were changed after its manifest was written
is then refused: files go on being answered by B.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from beam_qa.qa import model_manifest
from devtools.stack import Stack, StackConfig
from tests.conftest import fresh_database, query, squad_csv
from tests.e2e.support import free_port, stack_environment, upload, wait_for_status

pytestmark = pytest.mark.e2e

WATCH_SECS = 1


def publish_model(bucket, prefix: str, local: Path, replace: dict[str, bytes] | None = None) -> str:
    """Copies a model directory to ``gs://BUCKET/PREFIX/``, its manifest last (what marks it published).

    ``replace``: files overwritten after the manifest was made (a tampered model).
    """
    manifest = json.dumps(model_manifest.build(local)).encode()
    files = sorted(p for p in local.rglob("*") if p.is_file() and not p.name.startswith("."))
    for path in files:
        name = path.relative_to(local).as_posix()
        bucket.blob(f"{prefix}/{name}").upload_from_string((replace or {}).get(name) or path.read_bytes())
    bucket.blob(f"{prefix}/{model_manifest.MANIFEST}").upload_from_string(manifest)
    return f"gs://{bucket.name}/{prefix}"


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model):
    from devtools.tiny_model import build_model
    second = build_model(tmp_path_factory.mktemp("model-b") / "tiny", "tiny", seed=1)
    first = tmp_path_factory.mktemp("model-a") / "tiny"
    shutil.copytree(tiny_model, first)
    return first, second


@pytest.fixture(scope="module")
def stack(tmp_path_factory, models):
    from beam_qa.storage import make_gcs_client
    config = StackConfig(
        project="local-project", pubsub_host=f"127.0.0.1:{free_port()}", gcs_url=f"http://127.0.0.1:{free_port()}",
        bucket="qa-models", topic="qa-models-uploads", subscription="qa-models-pipeline",
        pg_dsn=fresh_database("beam_qa_model_update"), model="unused", run_dir=tmp_path_factory.mktemp("run-models"),
        pipeline_args=[f"--model_watch_pattern=gs://qa-models/models/*/{model_manifest.MANIFEST}",
                       f"--model_watch_interval_secs={WATCH_SECS}"])
    running = Stack(config)
    # The pipeline copies a gs:// model under its temp directory, keyed by the model's name
    # alone, and reuses a copy it finds there: a temp directory of its own keeps another run's
    # "models/2026-11-02-b" (same weights, but another tokenizer) from answering here.
    (config.run_dir / "tmp").mkdir()
    with stack_environment(config), pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(config.run_dir / "tmp"))
        try:
            running.start_pubsub()
            running.start_gcs()
            running.ensure_resources()
            running.ensure_database()
            bucket = make_gcs_client(anonymous=True).bucket(config.bucket)
            running.model_a = publish_model(bucket, "models/2026-11-01-a", models[0])
            running.start_pipeline("unused")
            running.bucket = bucket
            yield running
        finally:
            running.stop()


def weights_digest(model_dir: Path) -> str:
    """The 12 hex digits a local model's rows are named by: the SHA-256 of its weight file."""
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()[:12]


def spans(model_dir: Path, precision: str, rows: list[tuple]) -> list[tuple[int, int]]:
    """``(start, end)`` of the answer the model at ``model_dir`` gives each ``(question, context, ...)`` row."""
    from beam_qa.qa.handler import QuestionAnsweringModelHandler
    handler = QuestionAnsweringModelHandler(str(model_dir), device="cpu", precision=precision)
    results = handler.run_inference([(row[0], row[1]) for row in rows], handler.load_model())
    return [(r.inference.span.start, r.inference.span.end) for r in results]


def _answer_and_check(stack, names: list[str], start: int) -> dict[str, set[str]]:
    """Uploads files, waits until each is done once, returns each file's set of row models."""
    blobs = [upload(stack.bucket, f"incoming/models/{name}.csv", squad_csv(start + i * 8, 8))
             for i, name in enumerate(names)]
    found = {}
    for blob in blobs:
        uri = f"gs://{stack.bucket.name}/{blob.name}"
        wait_for_status(stack, uri, blob.generation, "done", timeout=60)
        assert query(stack.config.pg_dsn, "SELECT count(*), count(DISTINCT row_index), count(answer), max(attempt) "
                     "FROM qa_answers JOIN qa_files USING (source_uri, source_generation) WHERE source_uri = %s",
                     (uri,)) == [(8, 8, 8, 1)]
        found[blob.name] = {model for (model,) in query(
            stack.config.pg_dsn, "SELECT DISTINCT model FROM qa_answers WHERE source_uri = %s", (uri,))}
    return found


def test_files_after_a_new_model_is_published_are_answered_by_it(stack, models):
    log = stack.config.run_dir / "pipeline.log"
    before = _answer_and_check(stack, ["a1", "a2", "a3"], 0)
    models_a = set().union(*before.values())
    assert len(models_a) == 1 and next(iter(models_a)).startswith(stack.model_a), models_a

    model_b = publish_model(stack.bucket, "models/2026-11-02-b", models[1])
    deadline = time.monotonic() + 60
    while f"switched to model {model_b}" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"the pipeline never switched to {model_b}:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)

    after = _answer_and_check(stack, ["b1", "b2", "b3"], 100)
    models_b = set().union(*after.values())
    # The rows name B by its weights: the revision is the SHA-256 of B's own weight file.
    (model_id_b,) = models_b
    assert model_id_b.startswith(f"{model_b}@{weights_digest(models[1])} "), model_id_b
    assert model_id_b.split("@")[1].split()[0] != weights_digest(models[0])
    # And B's weights answered them: the stored spans are the ones B gives here, not A's.
    stored = query(stack.config.pg_dsn, "SELECT question, context, answer_start, answer_end FROM qa_answers "
                   "WHERE source_uri LIKE %s ORDER BY source_uri, row_index", ("%/incoming/models/b_.csv",))
    assert len(stored) == 24
    precision = model_id_b.split()[1]
    same_as = {name: sum(got == want for got, want in zip([r[2:] for r in stored], spans(local, precision, stored)))
               for name, local in (("A", models[0]), ("B", models[1]))}
    # Random weights: spans are the argmax of nearly flat logits, so another batch's padding can
    # flip a near-tie; A and B agree on almost none.
    assert same_as["B"] >= 0.9 * len(stored) and same_as["A"] <= 0.5 * len(stored), same_as
    # Every file was answered by one complete model: A's before the switch, B's after it.
    assert all(len(rows) == 1 for rows in {**before, **after}.values())
    # Each version loaded once in the pipeline's process (the warm-up's load of A is that one).
    text = log.read_text(errors="replace")
    assert len(re.findall(rf"beam_qa model loaded: {re.escape(stack.model_a)}@", text)) == 1
    assert len(re.findall(rf"beam_qa model loaded: {re.escape(model_b)}@", text)) == 1
    assert query(stack.config.pg_dsn, "SELECT count(*), count(*) FILTER (WHERE status = 'done') FROM qa_files") == [
        (6, 6)]


def test_a_model_that_fails_its_manifest_is_refused_while_answers_go_on_with_the_current_one(stack, models):
    log = stack.config.run_dir / "pipeline.log"
    current = set().union(*_answer_and_check(stack, ["c0"], 200).values())
    assert len(current) == 1
    tampered = publish_model(stack.bucket, "models/2026-11-03-c", models[0],
                             replace={"model.safetensors": (models[1] / "model.safetensors").read_bytes()})
    deadline = time.monotonic() + 60
    while f"refused the model {tampered}" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{tampered} was not refused:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    after = _answer_and_check(stack, ["c1", "c2"], 300)
    assert set().union(*after.values()) == current  # the model in place answers
    text = log.read_text(errors="replace")
    assert "model.safetensors does not match its manifest" in text
    assert f"beam_qa model loaded: {tampered}@" not in text and f"switched to model {tampered}" not in text
    time.sleep(3 * WATCH_SECS)
    assert log.read_text(errors="replace").count(f"refused the model {tampered}") == 1  # not fetched again
