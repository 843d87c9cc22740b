"""The beam-qa command line: ``python -m beam_qa``, the ``beam-qa`` script and the Flex Template's main.py.

``--help`` lists every beam-qa flag (``QaOptions``) by group, with its default, and points at
Beam's own options. A usage error (a bad or missing option, a model that cannot be found, an
input pattern that matches nothing) prints one ``error: ...`` line that says what to change and
exits with status 2; a traceback is left to bugs, or shown with ``--log_level=DEBUG``.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from beam_qa import launch
from beam_qa.config import JobConfig
from beam_qa.errors import UsageError
from beam_qa.options import LOG_LEVELS, QaOptions
from beam_qa.storage import Storage

_LOGGER = logging.getLogger(__name__)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# The pipeline's log line (README "Logs"); Beam's own loggers use it too when run locally.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

BEAM_OPTIONS_URL = "https://beam.apache.org/documentation/programming-guide/#configuring-pipeline-options"

DESCRIPTION = """\
Answer question,context CSV files with an extractive question-answering model, on Apache Beam.

  streaming:  beam-qa --input_subscription=projects/P/subscriptions/S --input_bucket=BUCKET --pg_dsn=DSN
  bounded:    beam-qa --input_pattern='data/*.csv' --model=DIR --pg_dsn=DSN [--keep_source]
"""

USAGE = "%(prog)s (--input_subscription=S --input_bucket=B | --input_pattern=GLOB) [--pg_dsn=DSN] [options]"

EPILOG = f"""\
Beam's own options (--runner, --project, --region, --temp_location, --num_workers,
--sdk_container_image, ...) are passed on to Beam unchanged:
  {{prog}} --help_beam   lists them all
  {BEAM_OPTIONS_URL}
docs/configuration.md has the beam-qa flags in a table.
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Adds each flag's default to its help, unless the help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.default in (None, argparse.SUPPRESS)
                or "Default:" in text):
            return text
        return text + " (default: %(default)s)"


def _raise_usage_error(message: str):
    """argparse's ``error()``: one line instead of the usage block and ``exit(2)``."""
    raise UsageError(message)


class _BeamHelpAction(argparse.Action):
    """``--help_beam``: prints Beam's own options (every PipelineOptions subclass but QaOptions)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        beam = beam_parser(include_qa=False, prog=parser.prog)
        beam.print_help()
        parser.exit()


def build_parser(prog: str = "beam-qa") -> argparse.ArgumentParser:
    """The parser behind ``--help``: QaOptions' flags in their groups, plus ``--help_beam``."""
    parser = argparse.ArgumentParser(prog=prog, usage=USAGE, description=DESCRIPTION, epilog=EPILOG.format(prog=prog),
                                     formatter_class=_HelpFormatter, allow_abbrev=False)
    parser.add_argument("--help_beam", action=_BeamHelpAction,
                        help="show Beam's and Dataflow's own options and exit")
    QaOptions._add_argparse_args(parser)  # pylint: disable=protected-access
    parser.error = _raise_usage_error
    return parser


def beam_parser(*, include_qa: bool = True, prog: str = "beam-qa") -> argparse.ArgumentParser:
    """A parser of every option Beam knows, the way ``PipelineOptions.get_all_options`` builds it.

    Beam's options classes need Beam's parser (``add_value_provider_argument``); Beam is pinned
    in setup.py, so relying on its private parser class is safe for this version.
    """
    parser = _BeamArgumentParser(prog=prog, usage="%(prog)s [beam-qa options] [Beam options]", allow_abbrev=False,
                                 add_help=False, formatter_class=_HelpFormatter)
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        if include_qa or not issubclass(cls, QaOptions):
            cls._add_argparse_args(parser)  # pylint: disable=protected-access
    parser.error = _raise_usage_error
    return parser


def on_flex_template_launcher() -> bool:
    """The Flex Template launcher image runs main.py with FLEX_TEMPLATE_PYTHON_PY_FILE set (Dockerfile.worker)."""
    return bool(os.environ.get("FLEX_TEMPLATE_PYTHON_PY_FILE"))


def check_known_flags(argv: Sequence[str], prog: str, *, strict: bool = True) -> None:
    """Parses ``argv`` as beam-qa and Beam flags; a typo is an error, not a silently dropped flag.

    Args:
        argv: the arguments.
        prog: the command's name, for messages.
        strict: whether an unknown flag is an error. The Flex Template launcher passes flags of its
            own, which this Beam version may not know: there it is a warning, as in Beam.

    Raises:
        UsageError: for a bad value, an unknown flag (with the nearest known one) or a stray word.
    """
    _, rest = build_parser(prog).parse_known_args(list(argv))
    parser = beam_parser(prog=prog)
    _, unknown = parser.parse_known_args(rest)
    if not unknown:
        return
    first = unknown[0]
    if not first.startswith("-"):
        raise UsageError(f"unexpected argument {first!r}: every setting is a --flag=value; "
                         f"see `{prog} --help`")
    name = first.split("=", 1)[0]
    known = [opt for action in parser._actions for opt in action.option_strings]  # pylint: disable=protected-access
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]}?" if close else f"see `{prog} --help` and `{prog} --help_beam`"
    if not strict:
        _LOGGER.warning("ignoring unknown option(s) %s (%s)", " ".join(unknown), hint)
        return
    raise UsageError(f"unknown option {name}: {hint}")


def check_input_pattern(pattern: str, anonymous: bool) -> None:
    """Fails when a bounded run's ``--input_pattern`` matches no CSV file (it would do nothing).

    The same listing and ``.csv`` rule as the pipeline's MatchInputFiles (``beam_qa/sources.py``).

    Raises:
        UsageError: when nothing matches, or the bucket cannot be listed.
    """
    from google.api_core import exceptions as gcs_errors
    from google.auth import exceptions as auth_errors
    storage = Storage(anonymous=anonymous or None)
    try:
        found = storage.list(pattern)
    except (gcs_errors.GoogleAPIError, auth_errors.GoogleAuthError) as exc:
        raise UsageError(f"cannot list --input_pattern {pattern!r}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}; check the bucket name and your "
                         "credentials (gcloud auth application-default login)") from exc
    finally:
        storage.close()
    csvs = [info for info in found if info.uri.lower().endswith(".csv")]
    if csvs:
        return
    relative = not pattern.startswith("gs://") and not os.path.isabs(pattern)
    where = f" (relative to {Path.cwd()})" if relative else ""
    other = f"; it matches {len(found)} file(s), none ending in .csv" if found else ""
    raise UsageError(f"--input_pattern {pattern!r} matches no CSV file{where}{other}: check the path; "
                     "'*' stays within one folder and '**' crosses folders, and quote the pattern so the "
                     "shell does not expand it")


def preflight(argv: Sequence[str], prog: str = "beam-qa") -> JobConfig:
    """Every check that needs no pipeline: flags, their combination, the model and the input.

    Returns:
        The job's configuration (``beam_qa.launch.configure``), which ``run`` then uses as it is.

    Raises:
        UsageError: for a bad flag or combination, a model that cannot be found, or an input
            pattern that matches nothing.
    """
    check_known_flags(argv, prog, strict=not on_flex_template_launcher())
    config = launch.configure(argv)
    if config.source.pattern:
        check_input_pattern(config.source.pattern, config.storage.anonymous)
    return config


def requested_log_level(argv: Sequence[str]) -> str:
    """``--log_level`` from ``argv`` before anything is parsed, so early errors honour DEBUG."""
    level = "INFO"
    for i, arg in enumerate(argv):
        if arg == "--log_level" and i + 1 < len(argv):
            level = argv[i + 1]
        elif arg.startswith("--log_level="):
            level = arg.split("=", 1)[1]
    level = level.upper()
    return level if level in LOG_LEVELS else "INFO"


def _usage_error(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(exc)
    # One line: a message may hold a newline (a quoted value, a library's text).
    print("error: " + " ".join(str(exc).split()), file=sys.stderr, flush=True)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Runs beam-qa with ``argv`` (default: the process's arguments).

    Returns:
        0 on success, 2 for a usage error, 130 when interrupted. A bug, or any failure while the
        pipeline runs, raises (traceback, status 1).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or Path(sys.argv[0]).name
    if prog in ("__main__.py", "main.py", "-c", ""):
        prog = "python -m beam_qa"
    level = requested_log_level(argv)
    logging.basicConfig(level=level, format=LOG_FORMAT)
    debug = level == "DEBUG"
    try:
        config = preflight(argv, prog)
    except UsageError as exc:  # ModelNotFoundError is one; any other exception is a bug
        return _usage_error(exc, debug)
    try:
        launch.run(config)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def console_main() -> None:
    """The ``beam-qa`` console script (setup.py ``entry_points``)."""
    sys.exit(main(prog="beam-qa"))
