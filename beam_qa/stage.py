"""``OneStepStage``: a composite stage that is one ParDo of one DoFn, under a pinned step name.

Most stages are exactly that; their names (the composite's, given where the graph applies it, and
the inner ``STEP``) are what Dataflow's ``--update`` matches between a running job and its
replacement, so they never change by accident.
"""

from __future__ import annotations

import apache_beam as beam


class OneStepStage(beam.PTransform):
    """Applies ``fn`` as the single ParDo named ``STEP``.

    Args:
        fn: the stage's DoFn (built from the settings objects it needs).
    """

    STEP = ""

    def __init__(self, fn: beam.DoFn):
        super().__init__()
        self._fn = fn

    def expand(self, pcoll):
        return pcoll | self.STEP >> beam.ParDo(self._fn)
