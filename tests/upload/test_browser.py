"""The web page in Debian's headless chromium (Playwright with the system browser; nothing downloaded)."""

from __future__ import annotations

import time

import pytest

from devtools.squad import squad_rows
from tests.ci import missing
from tests.conftest import csv_bytes
from tests.upload.conftest import API_KEYS, KEYS, chromium_path, log_tail, served

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

FINAL = ("done", "failed", "rejected")


@pytest.fixture
def page(tmp_path):
    executable = chromium_path()
    if executable is None:
        missing("Debian's chromium is not installed (apt-get install chromium chromium-driver)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        # A persistent context is how Playwright takes a --user-data-dir: a fresh one per test.
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=executable, headless=True, args=CHROMIUM_ARGS,
            accept_downloads=True)
        try:
            yield context.new_page()
        finally:
            context.close()


class Requests:
    """The requests a page sends, as Playwright sees them."""

    def __init__(self, page):
        self.sent: list[tuple[str, str]] = []
        page.on("request", lambda request: self.sent.append((request.method, request.url)))

    def count(self, method: str, part: str = "/uploads") -> int:
        return len([url for verb, url in self.sent if verb == method and part in url])


def squad_file(path, count: int) -> list[dict]:
    rows = squad_rows(count)
    path.write_bytes(csv_bytes(["id", "question", "context"], [[r["id"], r["question"], r["context"]] for r in rows]))
    return rows


def row(page, filename: str) -> str:
    return f'tr.upload-row[data-filename="{filename}"]'


def row_state(page, filename: str) -> dict:
    """What a person sees in one upload row."""
    return page.eval_on_selector(row(page, filename), """tr => ({
        status: tr.dataset.status,
        label: tr.querySelector('.status').textContent,
        detail: (tr.querySelector('.detail') || {}).textContent || '',
        count: (tr.querySelector('.count') || {}).textContent || '',
        progress: tr.querySelector('progress') ? [tr.querySelector('progress').value, tr.querySelector('progress').max]
                                               : null,
        actions: Array.from(tr.querySelectorAll('.actions button'), b => b.textContent)})""")


def wait_for_rows(page, names: list[str], statuses: tuple[str, ...], stack=None, timeout_ms: int = 90_000) -> None:
    try:
        page.wait_for_function(
            """([names, statuses]) => names.every(n => {
                 const tr = document.querySelector(`tr.upload-row[data-filename="${n}"]`);
                 return tr && statuses.includes(tr.dataset.status); })""",
            arg=[names, list(statuses)], timeout=timeout_ms)
    except Exception:  # pylint: disable=broad-except
        rows = page.eval_on_selector_all("tr.upload-row", "rows => rows.map(r => r.textContent)")
        tails = f"\npipeline log:\n{log_tail(stack, 'pipeline')}\nupload log:\n{log_tail(stack, 'upload')}" \
            f"\nkeyed upload log:\n{log_tail(stack, 'upload-keyed')}" if stack \
            else ""
        pytest.fail(f"rows {names} did not reach {statuses}; rows: {rows}; message: "
                    f"{page.text_content('#message')!r}{tails}")


def enter_key(page, name: str) -> None:
    """Types a client's key into the page, as a person would (the page keeps it for the session)."""
    if page.get_attribute("#token-box", "open") is None:
        page.click("#token-box summary")
    page.fill("#token", KEYS[name])
    page.press("#token", "Tab")


def test_three_files_at_once_one_bad_reach_their_final_status_with_progress_and_survive_a_reload(
        upload_stack, keyed_upload, page, tmp_path):
    first = squad_file(tmp_path / "first.csv", 30)
    squad_file(tmp_path / "second.csv", 5)
    (tmp_path / "bad.csv").write_bytes(b"id,question,text\n1,q,c\n")
    requests, console = Requests(page), []
    page.on("console", lambda message: console.append(message.text))

    page.goto(keyed_upload + "/")
    assert page.title() == "beam-qa: upload questions"
    assert page.get_attribute("#files", "multiple") is not None
    # Without a key the history is refused, and the page asks for the key.
    page.wait_for_function("() => document.querySelector('#uploads-status').textContent.includes('API key')")
    assert page.get_attribute("#token-box", "open") is not None
    enter_key(page, "alice")
    page.set_input_files("#files", [str(tmp_path / n) for n in ("first.csv", "second.csv", "bad.csv")])
    page.click("#upload-button")
    names = ["first.csv", "second.csv", "bad.csv"]
    wait_for_rows(page, names, FINAL, upload_stack)
    assert requests.count("POST") == 3, requests.sent

    # Each row's final status, with its progress.
    first_row, second_row, bad_row = (row_state(page, n) for n in names)
    assert (first_row["status"], first_row["count"], first_row["progress"]) == ("done", "30 / 30 rows", [30, 30])
    assert (second_row["status"], second_row["count"], second_row["progress"]) == ("done", "5 / 5 rows", [5, 5])
    assert first_row["actions"] == ["Answers", "Download CSV"]
    assert bad_row["status"] == "rejected" and bad_row["progress"] is None
    assert "missing column(s) context" in bad_row["detail"] and "Add the column(s) context" in bad_row["detail"]

    # Once everything is final, the page stops polling.
    before = requests.count("GET")
    time.sleep(3)
    assert requests.count("GET") == before, "the page kept polling after every upload was final"

    # The history survives a reload, newest first (the three went up concurrently: order among them
    # is the server's), with the same statuses and progress.
    page.reload()
    wait_for_rows(page, names, FINAL, upload_stack, timeout_ms=15_000)
    listed = page.eval_on_selector_all("tr.upload-row", "rows => rows.map(r => r.dataset.filename)")
    assert set(listed[:3]) == set(names)
    assert row_state(page, "first.csv")["count"] == "30 / 30 rows"
    assert row_state(page, "second.csv")["status"] == "done"
    reloaded_bad = row_state(page, "bad.csv")
    assert reloaded_bad["status"] == "rejected" and "missing column(s) context" in reloaded_bad["detail"]

    # The answers, page by page, with the keyboard; each row's context on demand.
    page.focus(f'{row(page, "first.csv")} button.show-answers')
    page.keyboard.press("Enter")
    page.wait_for_selector("#answers tbody tr:nth-child(25)")
    assert page.text_content("#answers-range") == "Rows 1–25 of 30"
    assert page.evaluate("document.activeElement.id") == "answers-title"
    table = page.eval_on_selector_all(
        "#answers tbody tr", "rows => rows.map(r => Array.from(r.cells, c => c.textContent))")
    assert [(r[0], r[1], r[2]) for r in table] == [(str(i + 1), first[i]["id"], first[i]["question"])
                                                   for i in range(25)]
    assert all(r[3] and r[4] and not r[5] for r in table), table
    summary = "#answers tbody tr:nth-child(1) summary"
    assert not page.is_visible("#answers tbody tr:nth-child(1) .context")
    page.focus(summary)
    page.keyboard.press("Enter")
    assert page.is_visible("#answers tbody tr:nth-child(1) .context")
    assert page.text_content("#answers tbody tr:nth-child(1) .context") == first[0]["context"]
    assert page.text_content("#answers tbody tr:nth-child(1) mark") == table[0][3]
    page.click("#answers-next")
    page.wait_for_function("() => document.querySelector('#answers-range').textContent === 'Rows 26–30 of 30'")
    assert page.eval_on_selector_all("#answers tbody tr", "rows => rows.map(r => r.cells[1].textContent)") == [
        r["id"] for r in first[25:]]
    assert page.is_disabled("#answers-next") and not page.is_disabled("#answers-prev")

    with page.expect_download() as download_info:
        page.click("#download")
    downloaded = download_info.value.path().read_text(encoding="utf-8")
    # The answers CSV quotes every cell (docs/bad-input.md, formula injection).
    assert downloaded.splitlines()[0] == ",".join(
        f'"{name}"' for name in ("id", "question", "context", "answer", "score", "answer_start", "answer_end", "error",
                                 "model"))
    assert len(downloaded.splitlines()) == 31
    # Another client's key shows another client's (empty) history. The page's security
    # headers (CSP) left it working: no console errors, no refused script or style.
    enter_key(page, "bob")
    page.wait_for_function("() => !document.querySelector('#uploads-empty').hidden")
    assert page.eval_on_selector_all("tr.upload-row", "rows => rows.length") == 0
    assert not [m for m in console if "error" in m.lower() or "refused" in m.lower()], console


@pytest.fixture(scope="module")
def lonely_service(fake_gcs_url, tmp_path_factory):
    """The upload service with no pipeline behind it: uploads stay `uploaded`. Stalled after 2 s;
    files over 2,000 bytes refused."""
    log = tmp_path_factory.mktemp("lonely") / "upload.log"
    with served(fake_gcs_url, log, database="beam_qa_upload_lonely", QA_STALL_AFTER_SECS="2",
                QA_MAX_UPLOAD_BYTES="2000", QA_API_KEYS=API_KEYS) as url:
        yield url


def test_a_file_the_pipeline_never_picks_up_gets_a_clear_message_and_polling_stops(lonely_service, page,
                                                                                     tmp_path):
    path = tmp_path / "waiting.csv"
    path.write_bytes(b"question,context\nWho?,Ann did.\n")
    page.goto(lonely_service + "/")
    enter_key(page, "alice")
    page.set_input_files("#files", str(path))
    page.click("#upload-button")
    page.wait_for_function("""() => { const tr = document.querySelector('tr.upload-row[data-filename="waiting.csv"]');
                                      return tr && tr.querySelector('.status.stalled'); }""", timeout=30_000)
    requests = Requests(page)
    state = row_state(page, "waiting.csv")
    assert state["status"] == "uploaded" and state["label"] == "waiting for the pipeline"
    assert "has not picked this file up" in state["detail"] and "make run" in state["detail"]
    assert state["actions"] == ["Check again"]

    time.sleep(1)  # a poll already under way when the row turned stalled may still land
    before = requests.count("GET")
    time.sleep(4)
    assert requests.count("GET") == before, "the page kept polling a stalled upload"
    page.click(f'{row(page, "waiting.csv")} button.check-again')
    page.wait_for_function("""() => document.querySelector('tr.upload-row[data-filename="waiting.csv"] .detail')
                                      .textContent.includes('checked again at')""")
    assert requests.count("GET") == before + 1


def test_dropped_files_upload_and_a_file_over_the_limit_is_refused_before_it_is_sent(lonely_service, page):
    requests = Requests(page)
    page.goto(lonely_service + "/")
    enter_key(page, "bob")
    assert page.text_content("#limit") == "2.0 KiB"
    page.evaluate("""() => {
        const data = new DataTransfer();
        data.items.add(new File(['question,context\\nWhere?,Here.\\n'], 'dropped.csv', {type: 'text/csv'}));
        data.items.add(new File(['question,context\\n' + 'q,c\\n'.repeat(600)], 'huge.csv', {type: 'text/csv'}));
        document.getElementById('drop-zone').dispatchEvent(
            new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
    }""")
    wait_for_rows(page, ["dropped.csv"], ("uploaded",), timeout_ms=30_000)
    wait_for_rows(page, ["huge.csv"], ("rejected",), timeout_ms=30_000)
    assert "over the limit of 2.0 KiB" in row_state(page, "huge.csv")["detail"]
    assert requests.count("POST") == 1, "the file over the limit must not be sent"
