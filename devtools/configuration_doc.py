"""Writes docs/configuration.md from the code: the pipeline's flags and the upload service's settings.

``python -m devtools.configuration_doc`` prints the page; ``--write`` replaces docs/configuration.md;
``--check`` exits 1 when the file differs from what the code says (``make docs`` / the tests). The
flags come from ``QaOptions`` (their help groups, defaults and help texts, as ``--help`` shows
them); the upload service's variables from ``Settings``'s fields and the ``Attributes:`` section of
its docstring.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "configuration.md"

INTRO = """\
# Configuration

Every setting of beam-qa in one place: the pipeline's flags (`python -m beam_qa`, the `beam-qa`
script and the Flex Template's parameters) and the upload service's environment variables. This
page is generated from the code (`QaOptions` in `beam_qa/options.py`, `Settings` in
`upload_service/core/config.py`) by `make docs`; a test fails when it is stale. The local stack's
variables (`make run`) are in [development.md](development.md#the-local-stack).
"""

PIPELINE_INTRO = """\
## Pipeline flags

Beam's and Dataflow's own options (`--runner`, `--project`, `--region`, `--temp_location`, ...)
are passed alongside these, unchanged (`beam-qa --help_beam` lists them). The options are checked
before anything runs: a bad value or combination is one `error:` line that says what to change,
with exit status 2. Exactly one of `--input_subscription` (streaming) and `--input_pattern`
(bounded) is required, and `--pg_dsn` (or `QA_PG_DSN`).
"""

UPLOAD_INTRO = """\
## Upload service variables

Read once, on first use, from the environment (pydantic-settings); each is `QA_` and the field's
name in capitals. [upload-service.md](upload-service.md) describes the API and how callers
authenticate.
"""


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(action: argparse.Action) -> str:
    if action.default is None or action.default is argparse.SUPPRESS:
        return "–"
    if isinstance(action.default, bool):
        return "on" if action.default else "off"
    return f"`{action.default}`"


def pipeline_flags() -> str:
    """One table per help group of ``QaOptions``, in ``--help``'s order."""
    from beam_qa.options import QaOptions
    parser = argparse.ArgumentParser(add_help=False)
    QaOptions._add_argparse_args(parser)  # pylint: disable=protected-access
    out = [PIPELINE_INTRO]
    for group in parser._action_groups:  # pylint: disable=protected-access
        actions = [a for a in group._group_actions if a.option_strings]  # pylint: disable=protected-access
        if not actions:
            continue
        out.append(f"### {group.title}\n")
        if group.description:
            out.append(group.description + "\n")
        out.append("| flag | default | meaning |\n|---|---|---|")
        for action in actions:
            out.append(f"| `{action.option_strings[0]}` | {_default(action)} | {_cell(action.help or '')} |")
        out.append("")
    return "\n".join(out)


def docstring_attributes(cls: type) -> dict[str, str]:
    """``name -> description`` from the ``Attributes:`` section of ``cls``'s Google-style docstring."""
    doc = inspect.getdoc(cls) or ""
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    found: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        match = re.match(r"^    (\w+): (.*)$", line)
        if match:
            name = match.group(1)
            found[name] = match.group(2)
        elif name and line.startswith("        "):
            found[name] += " " + line.strip()
        elif line.strip():
            break
    return found


def upload_settings() -> str:
    """One table row per field of the upload service's ``Settings``."""
    from upload_service.core.config import Settings
    described = docstring_attributes(Settings)
    missing = sorted(set(Settings.model_fields) - set(described))
    if missing:
        raise SystemExit(f"Settings fields without a description in its docstring: {missing}")
    out = [UPLOAD_INTRO, "| variable | default | meaning |\n|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = "computed"
        elif field.default is None:
            default = "–"
        else:
            default = f"`{field.default}`"
        out.append(f"| `QA_{name.upper()}` | {default} | {_cell(described[name])} |")
    return "\n".join(out) + "\n"


def render() -> str:
    return "\n".join([INTRO, pipeline_flags(), upload_settings()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace docs/configuration.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/configuration.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not PAGE.exists() or PAGE.read_text(encoding="utf-8") != text:
            print(f"error: {PAGE.relative_to(REPO)} is stale: run make docs", file=sys.stderr)
            return 1
        return 0
    if args.write:
        PAGE.write_text(text, encoding="utf-8")
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
