"""Entry point: ``python -m beam_qa [options]`` (``--help`` lists them); see ``beam_qa/cli.py``."""

import sys

from beam_qa.cli import main

if __name__ == "__main__":
    sys.exit(main())
