"""The command line: --help lists every QaOptions flag; usage errors are one line and exit status 2."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from beam_qa import cli
from beam_qa.options import QaOptions

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "beam-qa"


def qa_option_groups() -> dict[str, list[argparse.Action]]:
    """QaOptions' own flags by help group, read from the options class itself."""
    parser = argparse.ArgumentParser(add_help=False)
    QaOptions._add_argparse_args(parser)  # pylint: disable=protected-access
    groups = {}
    for group in parser._action_groups:  # pylint: disable=protected-access
        actions = [a for a in group._group_actions if a.option_strings]  # pylint: disable=protected-access
        if actions:
            groups[group.title] = actions
    return groups


def run_cli(*args: str, command: list[str] | None = None, env: dict[str, str] | None = None,
            cwd: Path = REPO) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("QA_PG_DSN", "QA_MODEL")}
    environment.update(env or {})
    return subprocess.run([*(command or [sys.executable, "-m", "beam_qa"]), *args], capture_output=True,
                          text=True, env=environment, cwd=cwd, timeout=120, check=False)


def help_sections(text: str) -> dict[str, str]:
    """``--help`` output split into its sections, by title (``input:``, ``model:``, ...)."""
    sections, title = {}, ""
    for line in text.splitlines():
        match = re.fullmatch(r"(\S.*):", line)
        if match:
            title = match.group(1)
            sections[title] = ""
        elif title:
            sections[title] += line + "\n"
    return sections


def flag_blocks(section: str) -> dict[str, str]:
    """One section's text per flag: from ``  --flag`` up to the next flag."""
    blocks, current = {}, None
    for line in section.splitlines():
        match = re.match(r"  (--\w+)", line)
        if match:
            current = match.group(1)
            blocks[current] = ""
        if current:
            blocks[current] += " " + line.strip()
    return blocks


@pytest.mark.parametrize("command", [[sys.executable, "-m", "beam_qa"], [str(SCRIPT)]],
                         ids=["python -m beam_qa", "beam-qa"])
def test_help_lists_every_flag_of_the_options_in_its_group_with_its_default(command):
    assert Path(command[0]).exists(), f"{command[0]} is missing: run `make install` (setup.py entry_points)"
    result = run_cli("--help", command=command)
    assert result.returncode == 0, result.stderr
    sections = help_sections(result.stdout)
    groups = qa_option_groups()
    assert {"input", "model", "outputs", "PostgreSQL", "tuning"} <= set(groups)
    for title, actions in groups.items():
        assert title in sections, f"group {title!r} missing from --help:\n{result.stdout}"
        blocks = flag_blocks(sections[title])
        for action in actions:
            flag = action.option_strings[0]
            assert flag in blocks, f"{flag} is not listed under {title!r}"
            block = " ".join(blocks[flag].split())
            assert " ".join(action.help.split())[:40] in block, (flag, block)
            if action.default is not None:
                assert "Default:" in block or f"(default: {action.default})" in block, (flag, block)
    # Our sections list our flags and nothing else, and there are as many as QaOptions defines.
    own = {action.option_strings[0] for actions in groups.values() for action in actions}
    assert {flag for title in groups for flag in flag_blocks(sections[title])} == own
    assert len(own) >= 25, sorted(own)
    # The pointer to Beam's own options.
    assert "--help_beam" in result.stdout and "--runner" in result.stdout
    assert "beam.apache.org" in result.stdout


def test_help_beam_lists_beams_own_options_but_not_ours():
    result = run_cli("--help_beam")
    assert result.returncode == 0, result.stderr
    for flag in ("--runner", "--project", "--region", "--temp_location", "--sdk_container_image"):
        assert flag in result.stdout, flag
    assert "--input_pattern" not in result.stdout


@pytest.fixture
def inputs(tmp_path) -> dict[str, str]:
    """A folder with one CSV and one non-CSV file, and a model directory with only a config."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "q.csv").write_text("question,context\nWho?,Ann did.\n", encoding="utf-8")
    (tmp_path / "in" / "notes.txt").write_text("x", encoding="utf-8")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}", encoding="utf-8")
    return {"csvs": str(tmp_path / "in" / "*.csv"), "txts": str(tmp_path / "in" / "*.txt"),
            "nothing": str(tmp_path / "in" / "none" / "*.csv"), "model": str(tmp_path / "model"),
            "no_model": str(tmp_path / "no-such-model")}


USAGE_ERRORS = [
    # (case, arguments built from the inputs fixture, text the one error line must hold)
    ("missing --pg_dsn", lambda i: [f"--input_pattern={i['csvs']}", f"--model={i['model']}"],
     "--pg_dsn is required"),
    ("unknown model path", lambda i: [f"--input_pattern={i['csvs']}", f"--model={i['no_model']}", "--pg_dsn=x"],
     "Pass --model"),
    ("pattern matches nothing", lambda i: [f"--input_pattern={i['nothing']}", f"--model={i['model']}",
                                           "--pg_dsn=x"], "matches no CSV file"),
    ("pattern matches no CSV", lambda i: [f"--input_pattern={i['txts']}", f"--model={i['model']}",
                                          "--pg_dsn=x"], "none ending in .csv"),
    ("no input", lambda i: ["--pg_dsn=x"], "exactly one of --input_subscription"),
    ("streaming without its bucket", lambda i: ["--input_subscription=projects/local-project/subscriptions/qa-up",
                                                "--sweep_interval_secs=0", f"--model={i['model']}", "--pg_dsn=x"],
     "--input_bucket is required with --input_subscription"),
    ("misspelt flag", lambda i: ["--input_patern=x"], "did you mean --input_pattern?"),
    ("bad value", lambda i: [f"--input_pattern={i['csvs']}", "--max_rows=0"], "expected a positive integer"),
    ("bad choice", lambda i: ["--device=gpu"], "invalid choice"),
    ("bad Beam value", lambda i: ["--num_workers=many"], "--num_workers"),
    ("stray word", lambda i: ["data.csv"], "--flag=value"),
    ("password in the job options", lambda i: ["--input_pattern=gs://b/incoming/*.csv", "--runner=DataflowRunner",
                                               "--pg_dsn=host=db dbname=d user=u password=hunter2"],
     "--pg_password_secret=projects/PROJECT/secrets/NAME/versions/VERSION"),
]


@pytest.mark.parametrize("case,build,text", USAGE_ERRORS, ids=[c[0] for c in USAGE_ERRORS])
def test_a_usage_error_is_one_line_and_exit_status_2(inputs, case, build, text):
    result = run_cli(*build(inputs))
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    error_lines = [line for line in output.splitlines() if "error:" in line]
    assert len(error_lines) == 1, output
    assert error_lines[0].startswith("error: ") and text in error_lines[0], output
    assert "Traceback" not in output


def test_on_the_flex_template_launcher_an_unknown_flag_is_a_warning_as_in_beam(inputs):
    result = run_cli("--launcher_only_flag=1", f"--input_pattern={inputs['nothing']}", f"--model={inputs['model']}",
                     "--pg_dsn=x", env={"FLEX_TEMPLATE_PYTHON_PY_FILE": "/template/main.py"})
    assert result.returncode == 2 and "ignoring unknown option(s) --launcher_only_flag=1" in result.stderr
    # The checks after it still run: here, the pattern that matches nothing.
    assert result.stderr.strip().splitlines()[-1].startswith("error: --input_pattern")


def test_the_console_script_reports_usage_errors_the_same_way(inputs):
    result = run_cli(f"--input_pattern={inputs['nothing']}", f"--model={inputs['model']}", "--pg_dsn=x",
                     command=[str(SCRIPT)])
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_log_level_debug_adds_the_traceback_to_a_usage_error(inputs):
    result = run_cli(f"--input_pattern={inputs['csvs']}", f"--model={inputs['no_model']}", "--pg_dsn=x",
                     "--log_level=debug")
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "ModelNotFoundError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: Cannot load")


def test_requested_log_level_is_read_before_parsing():
    assert cli.requested_log_level(["--log_level", "debug"]) == "DEBUG"
    assert cli.requested_log_level(["--log_level=WARNING", "--x"]) == "WARNING"
    assert cli.requested_log_level(["--log_level=loud"]) == "INFO"
    assert cli.requested_log_level([]) == "INFO"


def _boom(_):
    raise ValueError("a bug inside a DoFn")


def test_a_value_error_from_the_running_pipeline_counts_as_a_bug_not_a_usage_error(inputs, monkeypatch):
    """Only a UsageError is reported as one line: a ValueError while the pipeline runs keeps its traceback."""
    import apache_beam as beam
    from beam_qa.errors import UsageError
    from beam_qa.launch import parse_options

    def run(config):
        with beam.Pipeline(runner="DirectRunner") as pipeline:
            _ = pipeline | beam.Create([1]) | beam.Map(_boom)
    monkeypatch.setattr(cli.launch, "run", run)
    with pytest.raises(ValueError, match="a bug inside a DoFn") as running:
        cli.main([f"--input_pattern={inputs['csvs']}", f"--model={inputs['model']}", "--pg_dsn=x"])
    assert not isinstance(running.value, UsageError)
    with pytest.raises(UsageError):
        parse_options(["--pg_dsn=x"])
    assert cli.main(["--pg_dsn=x"]) == cli.EXIT_USAGE
