"""A QA handler that records each batch's latency in this process (benchmarks only).

Beam's own ``inference_batch_latency_micro_secs`` is a distribution without percentiles.
The DirectRunner pickles the handler into the graph; this class lives in an importable
module, so the copy it runs still appends to this module's ``BATCH_LATENCIES``.
"""

from __future__ import annotations

import time

from beam_qa.qa.handler import QuestionAnsweringModelHandler

BATCH_LATENCIES: list[float] = []
BATCH_SIZES: list[int] = []


class TimedHandler(QuestionAnsweringModelHandler):
    """Records the latency and size of every ``run_inference`` call."""

    def run_inference(self, batch, model, inference_args=None):
        started = time.perf_counter()
        results = super().run_inference(batch, model, inference_args)
        BATCH_LATENCIES.append(time.perf_counter() - started)
        BATCH_SIZES.append(len(batch))
        return results
