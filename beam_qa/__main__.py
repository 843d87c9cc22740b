"""Entry point: ``python -m beam_qa [pipeline options]``."""

import logging

from beam_qa.pipeline import run


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run()


if __name__ == "__main__":
    main()
