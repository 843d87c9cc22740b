"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE in Dockerfile.worker).

The launcher runs this file as a script; it only hands over to the installed package's command
line (``beam_qa/cli.py``), so that the launcher and the workers run the same code, and a bad
parameter ends the launch with one ``error: ...`` line and exit status 2.
"""

import sys

from beam_qa.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="beam-qa"))
