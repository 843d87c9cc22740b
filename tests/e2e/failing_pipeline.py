"""``python -m tests.e2e.failing_pipeline [beam_qa options]``: the real pipeline, but every model batch
holding a row marked with ``tests.handlers.FAIL_MARKER`` fails as a whole.

It stands for a resource error that outlives the handler's own retries (``TransientInferenceError``
escaping RunInference); the e2e test starts it in place of ``python -m beam_qa``. The local
streaming runner runs the graph in this process, so the handler swap below is what it runs.
"""

import sys

import beam_qa.pipeline as pipeline
from beam_qa.cli import main
from beam_qa.qa.handler import TransientInferenceError
from tests import handlers


def _out_of_memory_for_good() -> TransientInferenceError:
    return TransientInferenceError("resource error persisted through 3 retries of one row: OutOfMemoryError: "
                                   "out of memory (injected by the test)")


def _install() -> None:
    original = pipeline.make_handler

    def make_handler(config):
        handler = original(config)
        handler.__class__ = handlers.FailingBatchHandler
        return handler
    pipeline.make_handler = make_handler
    handlers.FAIL_WITH[0] = _out_of_memory_for_good


if __name__ == "__main__":
    _install()
    sys.exit(main())
