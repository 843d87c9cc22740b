"""DeduplicateFileEvents: one attempt per file version, and a sweeper retry only after the grace."""

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to

from beam_qa.events import FileEvent
from beam_qa.sources import DeduplicateFileEvents


def event(name: str, generation: int = 7) -> FileEvent:
    return FileEvent(uri=f"gs://b/incoming/{name}", generation=generation, size=10, root="gs://b/",
                     relative_name=name, event_time=0.0)


def make_stream(tagged: list[tuple[FileEvent, bool]]) -> tuple[TestStream, PipelineOptions]:
    """A TestStream of ``(event, swept)`` pairs, one per bundle, and streaming options."""
    stream = TestStream()
    for item in tagged:
        stream = stream.add_elements([item])
    # Far enough for the state's expiry timer to fire, so the pipeline can finish.
    stream = stream.advance_processing_time(10 ** 9).advance_watermark_to_infinity()
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return stream, options


@pytest.mark.parametrize("retry_after_secs, expected", [
    # Repeated notifications never pass again; a swept repeat within the grace is in flight.
    (3600.0, ["a.csv#7", "b.csv#7", "b.csv#8"]),
    # Once the grace has passed, a swept repeat (no done record) starts a new attempt;
    # a repeated notification still does not.
    (0.0, ["a.csv#7", "a.csv#7", "b.csv#7", "b.csv#8"]),
])
def test_notifications_pass_once_and_swept_repeats_only_after_the_grace(retry_after_secs, expected):
    a, b, b2 = event("a.csv"), event("b.csv"), event("b.csv", generation=8)
    stream, options = make_stream(
        [(a, False), (a, False), (a, True), (a, False), (b, True), (b, False), (b2, False)])
    with TestPipeline(options=options) as p:
        passed = (p | stream | DeduplicateFileEvents(retry_after_secs=retry_after_secs)
                  | beam.Map(lambda e: e.key.rsplit("/", 1)[1]))
        assert_that(passed, equal_to(expected))
