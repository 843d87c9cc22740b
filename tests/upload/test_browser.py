"""The web page in Debian's headless chromium (Playwright with the system browser; nothing downloaded)."""

from __future__ import annotations

import os

import pytest

from beam_qa.dev.squad import squad_rows
from tests.conftest import csv_bytes
from tests.upload.conftest import chromium_path, log_tail

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def page(tmp_path):
    executable = chromium_path()
    if executable is None:
        reason = "Debian's chromium is not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI must run the browser test")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        # A persistent context is how Playwright takes a --user-data-dir: a fresh one per test.
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield context.new_page()
        finally:
            context.close()


def test_the_page_uploads_a_file_and_fills_the_answers_table(upload_stack, page, tmp_path):
    rows = squad_rows(5)
    path = tmp_path / "browser questions.csv"
    path.write_bytes(csv_bytes(["id", "question", "context"], [[r["id"], r["question"], r["context"]] for r in rows]))
    console = []
    page.on("console", lambda message: console.append(message.text))

    page.goto(upload_stack.config.upload_url + "/")
    assert page.title() == "beam-qa: upload questions"
    page.set_input_files("#file", str(path))
    page.click("#upload-button")
    try:
        page.wait_for_selector("#answers tbody tr:nth-child(5)", timeout=60_000)
    except Exception:  # pylint: disable=broad-except
        pytest.fail(f"the answers table did not fill in; page message: {page.text_content('#message')!r}, "
                    f"status: {page.text_content('#status')!r}, console: {console}\n"
                    f"upload log:\n{log_tail(upload_stack, 'upload')}")

    assert page.text_content("#status") == "done"
    assert page.text_content("#rows") == "5" and page.text_content("#answered") == "5"
    assert "browser_questions.csv" in page.text_content("#object")
    table = page.eval_on_selector_all(
        "#answers tbody tr", "rows => rows.map(r => Array.from(r.cells, c => c.textContent))")
    assert [(r[0], r[1], r[2]) for r in table] == [(str(i + 1), row["id"], row["question"])
                                                   for i, row in enumerate(rows)]
    assert all(r[3] and r[4] and not r[5] for r in table), table
    for r, row in zip(table, rows):
        assert r[3] in row["context"]

    with page.expect_download() as download_info:
        page.click("#download")
    downloaded = download_info.value.path().read_text(encoding="utf-8")
    assert downloaded.splitlines()[0] == "id,question,context,answer,score,answer_start,answer_end,error"
    assert len(downloaded.splitlines()) == 6


def test_the_page_shows_a_rejection_with_its_hint(upload_stack, page, tmp_path):
    path = tmp_path / "missing.csv"
    path.write_bytes(b"question,text\nq,c\n")
    page.goto(upload_stack.config.upload_url + "/")
    page.set_input_files("#file", str(path))
    page.click("#upload-button")
    page.wait_for_selector("#message:not([hidden])")
    message = page.text_content("#message")
    assert "missing column(s) context" in message and "Add the column(s) context" in message
    assert page.is_hidden("#answers-box")
