"""The docs stay true: links resolve, quoted log lines are emitted, the configuration page is current.

And the README stays a short page for users.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
if (REPO / "CHANGELOG.md").exists():
    PAGES.append(REPO / "CHANGELOG.md")

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M):
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        found.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return found


def relative_links(page: Path) -> list[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links
    return [target for target in _LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_relative_link_resolves_to_a_file_and_heading(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no such heading in {resolved.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_the_link_checker_sees_broken_links(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Next step: `make run`\n", encoding="utf-8")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#next-step-make-run) [gone](missing.md) [anchor](a.md#nope) "
                    "[web](https://example.com) `[code](x.md)`\n", encoding="utf-8")
    assert relative_links(page) == ["a.md#next-step-make-run", "missing.md", "a.md#nope"]
    assert "next-step-make-run" in anchors(tmp_path / "a.md")
    assert "nope" not in anchors(tmp_path / "a.md")


def test_the_readme_is_a_short_page_for_users():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    # No diary: dates of runs and issue numbers belong in commit messages, not the README.
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b", text), "a date in the README"
    assert not re.findall(r"\bissues? \d+\b|#\d{1,4}\b", text, re.I), "an issue number in the README"


# --- log lines ---------------------------------------------------------------------------------

_LEVELS = ("debug", "info", "warning", "error", "exception", "critical")
# A row of a log table in the docs: | `logger` | `message` | ...; the message's placeholders are
# words in capitals (URI, N, KIND, URI#GENERATION) and the ellipsis, which stands for the rest.
_LOG_ROW = re.compile(r"^\| `((?:beam_qa|upload_service)(?:\.\w+)+)` \| `([^`]+)` \|", re.M)
# (A capital word may carry a one-letter unit: "Ns" is N seconds.)
_PLACEHOLDER = re.compile(r"…|\b[A-Z][A-Z0-9_]*(?:#[A-Z]+)?(?![A-Za-z0-9_]{2})")


def emitted_formats() -> dict[str, list[str]]:
    """``module -> format strings`` of every ``_LOGGER.<level>(...)`` call in the two packages."""
    found: dict[str, list[str]] = {}
    for package in ("beam_qa", "upload_service"):
        for path in sorted((REPO / package).rglob("*.py")):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            tree = ast.parse(path.read_text(encoding="utf-8"))
            constants = {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                         and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                         for target in node.targets if isinstance(target, ast.Name)}
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in _LEVELS and isinstance(node.func.value, ast.Name)
                        and node.func.value.id == "_LOGGER" and node.args):
                    continue
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.setdefault(module, []).append(first.value)
                elif isinstance(first, ast.Name) and first.id in constants:
                    found.setdefault(module, []).append(constants[first.id])
    return found


def quoted_log_lines() -> list[tuple[str, str, str]]:
    """``(page, logger, message)`` for every row of a log table in README.md and docs/."""
    return [(page.name, logger, message) for page in PAGES
            for logger, message in _LOG_ROW.findall(page.read_text(encoding="utf-8"))]


def matches(message: str, code_format: str) -> bool:
    """Whether a quoted message is what ``code_format`` prints, placeholders standing for its values."""
    parts, at = [], 0
    for placeholder in _PLACEHOLDER.finditer(message):
        parts.append(re.escape(message[at:placeholder.start()]))
        parts.append(".*" if placeholder.group() == "…" else ".+?")
        at = placeholder.end()
    parts.append(re.escape(message[at:]))
    return re.fullmatch("".join(parts), code_format, re.S) is not None


def test_every_log_line_the_docs_quote_is_emitted_by_the_code():
    quoted = quoted_log_lines()
    assert len(quoted) >= 10, "the docs' log tables were not found"
    formats = emitted_formats()
    missing = [f"{page}: {logger}: {message}" for page, logger, message in quoted
               if not any(matches(message, fmt) for fmt in formats.get(logger, []))]
    assert not missing, "quoted in the docs but emitted by no logging call:\n" + "\n".join(missing)


def test_the_log_line_check_tells_a_reworded_line():
    assert matches("received URI#GENERATION (attempt N) with N rows in N chunks",
                   "received %s (attempt %d) with %d rows in %d chunks")
    assert matches("beam_qa model loaded: MODEL (…)", "beam_qa model loaded: %s (precision %s requested)")
    assert not matches("received URI with N rows", "received %s (attempt %d) with %d rows in %d chunks")
    assert not matches("inference failed for a batch of N rows: …", "the model failed on one row: %s: %s")
    assert matches("retrying in Ns", "retrying in %.1fs") and not matches("Not now", "%s now")


# --- the configuration page --------------------------------------------------------------------


def test_the_configuration_page_is_generated_from_the_code_and_current():
    result = subprocess.run([sys.executable, "-m", "devtools.configuration_doc", "--check"], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr + " (run make docs)"


def test_the_configuration_page_lists_every_flag_and_variable():
    import argparse

    from beam_qa.options import QaOptions
    from upload_service.core.config import Settings
    parser = argparse.ArgumentParser(add_help=False)
    QaOptions._add_argparse_args(parser)  # pylint: disable=protected-access
    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    flags = [a.option_strings[0] for a in parser._actions if a.option_strings]  # pylint: disable=protected-access
    assert len(flags) >= 30
    for flag in flags:
        assert f"| `{flag}` |" in page, flag
    for name in Settings.model_fields:
        assert f"| `QA_{name.upper()}` |" in page, name
