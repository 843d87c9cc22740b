"""AssemblePerFile under streaming: rows arrive in any order, in several bundles, repeated."""

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from beam_qa.assembly import AssemblePerFile
from beam_qa.events import FileEvent
from beam_qa.records import FileManifest, QaRow, RowAnswer


def manifest(name: str, rows: int) -> FileManifest:
    event = FileEvent(uri=f"gs://b/incoming/{name}", generation=7, size=-1, root="gs://b/",
                      relative_name=name, event_time=0.0)
    return FileManifest(event=event, header=("question", "context"), row_count=rows)


def answer(m: FileManifest, index: int) -> RowAnswer:
    row = QaRow(manifest=m, row_index=index, values=(f"q{index}", "c"), question=f"q{index}",
                context="c", row_id=None)
    return RowAnswer(row=row, answer=f"a{index}", score=0.5, start=0, end=1)


def summary(files):
    return files.manifest.event.relative_name, tuple(a.row.row_index for a in files.answers)


def test_rows_from_several_bundles_are_emitted_once_complete_and_in_order():
    a, b = manifest("a.csv", 3), manifest("b.csv", 2)
    stream = (TestStream()
              .add_elements([answer(a, 2), answer(b, 1)])
              .advance_processing_time(5)
              .add_elements([answer(a, 0), answer(a, 2)])  # a repeated row is folded
              .advance_processing_time(5)
              .add_elements([answer(b, 0), answer(a, 1)])
              .advance_watermark_to_infinity())
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with TestPipeline(options=options) as p:
        out = p | stream | AssemblePerFile() | beam.Map(summary)
        assert_that(out, equal_to([("a.csv", (0, 1, 2)), ("b.csv", (0, 1))]))


def test_an_incomplete_file_is_not_emitted():
    a = manifest("a.csv", 3)
    with TestPipeline() as p:
        out = p | beam.Create([answer(a, 0), answer(a, 1)]) | AssemblePerFile() | beam.Map(summary)
        assert_that(out, equal_to([]))
