"""The local status line: counts made in this process, logged every N seconds and at the end."""

import logging
import re
import threading
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_stream

from beam_qa import metrics
from beam_qa.metrics import StatusReporter, StatusSnapshot, format_status, local_tally, status_reporting


def test_format_status_gives_rate_and_latency():
    before = StatusSnapshot(rows_answered=100)
    now = StatusSnapshot(files_done=3, files_failed=1, rows_answered=400, row_errors=2,
                         latency_count=3, latency_sum_ms=4500, latency_max_ms=2100)
    assert format_status(now, before, 10.0) == (
        "beam_qa status: files done 3, failed 1; rows answered 400 (30.0 rows/s), row errors 2; "
        "upload-to-answer mean 1.5s max 2.1s")
    assert format_status(StatusSnapshot(), StatusSnapshot(), 0.0, final=True) == (
        "beam_qa status (final): files done 0, failed 0; rows answered 0 (0.0 rows/s), row errors 0; "
        "upload-to-answer n/a")


def test_tally_counts_only_while_open_and_only_its_own_updates():
    metrics.counter("rows_answered").inc(5)  # before: not counted
    with local_tally() as tally:
        metrics.counter("rows_answered").inc(2)
        metrics.counter("rows_answered").inc()
        metrics.counter("files_done").inc()
        metrics.distribution("upload_to_answer_ms").update(300)
        metrics.distribution("upload_to_answer_ms").update(900)
        snapshot = tally.snapshot()
    metrics.counter("rows_answered").inc(7)  # after: not counted
    assert snapshot == StatusSnapshot(files_done=1, rows_answered=3, latency_count=2,
                                      latency_sum_ms=1200, latency_max_ms=900)
    assert tally.snapshot() == snapshot


def test_reporter_logs_each_interval_with_the_rate_since_the_previous_line(caplog):
    figures = {"rows": 0}
    clock = {"now": 100.0}
    reporter = StatusReporter(lambda: StatusSnapshot(rows_answered=figures["rows"]), 3600.0,
                              clock=lambda: clock["now"])
    caplog.set_level(logging.INFO, logger="beam_qa.metrics")
    figures["rows"], clock["now"] = 50, 110.0
    reporter.report()
    figures["rows"], clock["now"] = 250, 120.0
    reporter.report()
    reporter.stop()  # never started: only the final line
    lines = [r.getMessage() for r in caplog.records]
    assert "rows answered 50 (5.0 rows/s)" in lines[0]
    assert "rows answered 250 (20.0 rows/s)" in lines[1]
    assert lines[2].startswith("beam_qa status (final):") and "rows answered 250 (12.5 rows/s)" in lines[2]


def test_status_reporting_logs_periodically_from_a_thread(caplog):
    caplog.set_level(logging.INFO, logger="beam_qa.metrics")
    with status_reporting(0.05):
        for _ in range(6):
            metrics.counter("rows_answered").inc(10)
            time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.name == "beam_qa.metrics"]
    assert len(lines) >= 3
    assert "rows answered 60" in lines[-1] and "(final)" in lines[-1]
    assert not any(t.name == "beam_qa-status" for t in threading.enumerate())


def test_status_reporting_zero_interval_logs_nothing(caplog):
    caplog.set_level(logging.INFO, logger="beam_qa.metrics")
    with status_reporting(0) as reporter:
        metrics.counter("rows_answered").inc()
    assert reporter is None and not caplog.records


class _CountRows(beam.DoFn):
    def process(self, element):
        metrics.counter("rows_answered").inc()
        yield element


def test_streaming_direct_runner_figures_are_complete(caplog):
    """Several bundles of one step on the streaming DirectRunner: every update is counted."""
    caplog.set_level(logging.INFO, logger="beam_qa.metrics")
    options = PipelineOptions(runner="DirectRunner")
    options.view_as(StandardOptions).streaming = True
    stream = test_stream.TestStream()
    for start in range(0, 20, 5):
        stream = stream.add_elements(list(range(start, start + 5)))
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | stream.advance_watermark_to_infinity() | beam.ParDo(_CountRows())
    with status_reporting(30.0):
        pipeline.run().wait_until_finish()
    (final,) = [r.getMessage() for r in caplog.records if "(final)" in r.getMessage()]
    assert re.search(r"rows answered 20 \(", final), final
