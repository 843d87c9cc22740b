"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE in Dockerfile.worker).

The launcher runs this file as a script; it only hands over to the installed package, so that
the launcher and the workers run the same code.
"""

from beam_qa.__main__ import main

if __name__ == "__main__":
    main()
