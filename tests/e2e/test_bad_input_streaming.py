"""The streaming pipeline survives the whole bad-input catalogue, uploaded back to back.

Its own stack (free ports, bucket, subscription, database ``beam_qa_badinput``), so it
never touches another test's or a ``make up`` stack. ``--max_rows`` is lowered so that the
100,000-row file is a cheap file error.
"""

from __future__ import annotations

import time

import pytest

from tests.bad_input_cases import CASES, MAX_ROWS, SQL_PAYLOADS, check_outcome, gzip_bomb, sql_metacharacter_case
from tests.conftest import csv_bytes, query, squad_csv
from tests.e2e.support import running_stack
from tests.long_rows import text_of_tokens

pytestmark = pytest.mark.e2e

# Generous: the catalogue holds a 1 MB context and a 6.5 MB file, on a shared 2-core machine.
DEADLINE_SECS = 120.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model):
    with running_stack(tmp_path_factory, tiny_model, "badinput", pipeline_args=(f"--max_rows={MAX_ROWS}",)) as running:
        yield running


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def bucket(stack):
    from beam_qa.storage import make_gcs_client
    return make_gcs_client(anonymous=True).bucket(stack.config.bucket)


def _wait_final(stack, uri: str, generation: int) -> str:
    deadline = time.monotonic() + DEADLINE_SECS
    while time.monotonic() < deadline:
        rows = query(stack.config.pg_dsn, "SELECT status FROM qa_files WHERE source_uri = %s "
                     "AND source_generation = %s", (uri, generation))
        if rows and rows[0][0] in ("done", "failed"):
            return rows[0][0]
        time.sleep(0.2)
    log = (stack.config.run_dir / "pipeline.log").read_text(errors="replace")[-3000:]
    pytest.fail(f"{uri}#{generation} did not finish within {DEADLINE_SECS}s; pipeline log tail:\n{log}")


def _reader(bucket):
    def read(uri: str) -> bytes:
        prefix = f"gs://{bucket.name}/"
        assert uri.startswith(prefix), uri
        return bucket.blob(uri[len(prefix):]).download_as_bytes()
    return read


def test_the_stream_survives_every_bad_input_back_to_back_then_answers_a_good_file(stack, bucket):
    uploaded = []
    for case in CASES:  # as fast as the client can, without waiting for any of them
        blob = bucket.blob(f"incoming/bad/{case.file_name}")
        blob.upload_from_string(case.build(), content_type="text/csv")
        uploaded.append((case, blob))
    good = bucket.blob("incoming/bad/zz_good_after.csv")
    good.upload_from_string(squad_csv(0, 5), content_type="text/csv")

    good_uri = f"gs://{bucket.name}/{good.name}"
    assert _wait_final(stack, good_uri, good.generation) == "done"
    for case, blob in uploaded:
        uri = f"gs://{bucket.name}/{blob.name}"
        assert _wait_final(stack, uri, blob.generation) == ("failed" if case.kind else "done"), case.name
        check_outcome(case, stack.config.pg_dsn, uri, blob.generation, _reader(bucket))
    assert query(stack.config.pg_dsn, "SELECT count(*), count(answer) FROM qa_answers WHERE source_uri = %s",
                 (good_uri,)) == [(5, 5)]
    assert stack.procs["pipeline"].poll() is None, "the pipeline must keep running"

    deadline = time.monotonic() + 30
    while list(bucket.list_blobs(prefix="incoming/bad/")):
        assert time.monotonic() < deadline, "sources left under incoming/"
        time.sleep(0.2)


def test_sql_metacharacters_in_the_object_name_and_every_cell_are_stored_verbatim(stack, bucket):
    case = sql_metacharacter_case()
    blob = bucket.blob(f"incoming/sql/{case.file_name}")
    blob.upload_from_string(case.build(), content_type="text/csv")
    uri = f"gs://{bucket.name}/{blob.name}"
    assert _wait_final(stack, uri, blob.generation) == "done"
    check_outcome(case, stack.config.pg_dsn, uri, blob.generation, _reader(bucket))
    assert query(stack.config.pg_dsn, "SELECT to_regclass('qa_answers')::text, to_regclass('qa_files')::text") == [
        ("qa_answers", "qa_files")]
    assert query(stack.config.pg_dsn, "SELECT count(*) FROM qa_answers WHERE source_uri = %s",
                 (uri,)) == [(len(SQL_PAYLOADS),)]


def _peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def test_a_gzip_bomb_fails_in_bounded_memory_and_the_next_file_is_answered(stack, bucket):
    """1.5 GiB once inflated, 1.5 MB stored: the pipeline reads 50 MiB (--max_file_bytes) of it, no more."""
    pid = stack.procs["pipeline"].pid
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")  # resets VmHWM to the current resident size: what follows is this file's
    before = _peak_rss_mib(pid)
    bomb = bucket.blob("incoming/bomb/inflates.csv")
    bomb.content_encoding = "gzip"
    bomb.upload_from_string(gzip_bomb(1536), content_type="text/csv")
    uri = f"gs://{bucket.name}/{bomb.name}"
    assert _wait_final(stack, uri, bomb.generation) == "failed"
    grown = _peak_rss_mib(pid) - before
    (kind, error), = query(stack.config.pg_dsn, "SELECT error_kind, error FROM qa_files WHERE source_uri = %s",
                           (uri,))
    assert kind == "too_large" and "once inflated (it is stored with Content-Encoding: gzip)" in error, error
    print(f"gzip bomb: the pipeline's peak memory grew by {grown:.0f} MiB")
    assert grown < 600, f"the pipeline's peak memory grew by {grown:.0f} MiB"
    good = bucket.blob("incoming/bomb/after.csv")
    good.upload_from_string(squad_csv(10, 3), content_type="text/csv")
    assert _wait_final(stack, f"gs://{bucket.name}/{good.name}", good.generation) == "done"
    assert stack.procs["pipeline"].poll() is None


def _row_outcomes(stack, uri: str) -> list[tuple[int, str | None, bool]]:
    """``(row_index, error_kind, answered)`` of each row of a file."""
    return query(stack.config.pg_dsn, "SELECT row_index, error_kind, answer IS NOT NULL FROM qa_answers "
                 "WHERE source_uri = %s ORDER BY row_index", (uri,))


def test_a_question_that_would_panic_the_tokenizer_is_a_row_error_and_the_next_file_is_answered(
        stack, bucket, tokenizer):
    """272 tokens leave a 384-token window less context than --doc_stride: over a context of several
    windows the tokenizers library panics (a BaseException), which used to fail every bundle of the file."""
    context = text_of_tokens(tokenizer, 1000)
    blob = bucket.blob("incoming/panic/long_question.csv")
    blob.upload_from_string(csv_bytes(["question", "context"], [[text_of_tokens(tokenizer, 272), context],
                                                                ["Where is the tower?", context]]),
                            content_type="text/csv")
    uri = f"gs://{bucket.name}/{blob.name}"
    assert _wait_final(stack, uri, blob.generation) == "done"
    assert _row_outcomes(stack, uri) == [(0, "question_too_long", False), (1, None, True)]
    (error,), = query(stack.config.pg_dsn, "SELECT error FROM qa_answers WHERE source_uri = %s AND row_index = 0",
                      (uri,))
    assert error.startswith("question too long for max_seq_len 384: 272 tokens;"), error
    good = bucket.blob("incoming/panic/after.csv")
    good.upload_from_string(squad_csv(20, 3), content_type="text/csv")
    assert _wait_final(stack, f"gs://{bucket.name}/{good.name}", good.generation) == "done"
    assert stack.procs["pipeline"].poll() is None


def test_questions_that_advance_each_window_by_one_token_end_in_bounded_memory(stack, bucket, tokenizer):
    """Two 252-token questions over a 6,000-token context: each window would add one new token,
    about 5,900 windows a row (before the fix, this file grew the pipeline's peak memory by 2.3 GB)."""
    pid = stack.procs["pipeline"].pid
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")  # resets VmHWM to the current resident size: what follows is this file's
    before = _peak_rss_mib(pid)
    context = text_of_tokens(tokenizer, 6000)
    question = text_of_tokens(tokenizer, 252)
    blob = bucket.blob("incoming/stride/one_token_a_window.csv")
    blob.upload_from_string(csv_bytes(["question", "context"], [[question, context], [question, context],
                                                                ["Where is the tower?", context]]),
                            content_type="text/csv")
    uri = f"gs://{bucket.name}/{blob.name}"
    assert _wait_final(stack, uri, blob.generation) == "done"
    grown = _peak_rss_mib(pid) - before
    print(f"one token a window: the pipeline's peak memory grew by {grown:.0f} MiB")
    assert grown < 600, f"the pipeline's peak memory grew by {grown:.0f} MiB"
    assert _row_outcomes(stack, uri) == [(0, "question_too_long", False), (1, "question_too_long", False),
                                         (2, None, True)]
    assert stack.procs["pipeline"].poll() is None


def test_the_pipeline_log_carries_no_cell_content(stack, bucket):
    """Runs after the others (module order): their cells must not appear in the INFO log."""
    log = (stack.config.run_dir / "pipeline.log").read_text(errors="replace")
    assert "beam_qa pipeline ready" in log and "done gs://" in log  # INFO lines are there
    # Cell text only: file names are logged on purpose (and one of them holds "DROP TABLE").
    for needle in ("Eiffel", "HYPERLINK", "埃菲尔铁塔", "Robert')", "unicode quotes", "Where is the tower"):
        assert needle not in log, needle
