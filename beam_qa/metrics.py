"""Beam metrics, all under the ``beam_qa`` namespace (the table is in docs/metrics.md).

Besides the ``counter()``/``distribution()`` helpers used by every stage, this module has the
local status line: ``status_reporting()`` logs, every ``--status_interval_secs``, the figures a
Dataflow dashboard shows (files done and failed, rows answered, rows/s, upload-to-answer
latency).

The status line counts in the process that runs the pipeline instead of reading
``PipelineResult.metrics()``: Beam 2.77's streaming DirectRunner drops the metric updates
of every bundle after a DoFn's first one (the DoFn keeps writing to its first bundle's
metrics container), so its live figures stop moving. The local runners execute the DoFns in
this process, so each ``inc()``/``update()`` also goes to the tallies that a running
``status_reporting()`` has opened. Nothing is tallied when none is open (on Dataflow workers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator

from apache_beam.metrics import Metrics

_LOGGER = logging.getLogger(__name__)

NAMESPACE = "beam_qa"

FILES_DONE = "files_done"
FILES_FAILED = "files_failed"
ROWS_ANSWERED = "rows_answered"
ROW_ERRORS = "row_errors"
UPLOAD_TO_ANSWER_MS = "upload_to_answer_ms"

_TALLY_LOCK = threading.Lock()
_OPEN_TALLIES: list[LocalTally] = []


class _Counter:
    """A Beam counter that also adds to the open local tallies."""

    def __init__(self, name: str):
        self._name = name
        self._metric = Metrics.counter(NAMESPACE, name)

    def inc(self, n: int = 1) -> None:
        self._metric.inc(n)
        if _OPEN_TALLIES:
            with _TALLY_LOCK:
                for tally in _OPEN_TALLIES:
                    tally.counts[self._name] = tally.counts.get(self._name, 0) + n


class _Distribution:
    """A Beam distribution that also records into the open local tallies."""

    def __init__(self, name: str):
        self._name = name
        self._metric = Metrics.distribution(NAMESPACE, name)

    def update(self, value: int) -> None:
        self._metric.update(value)
        if _OPEN_TALLIES:
            with _TALLY_LOCK:
                for tally in _OPEN_TALLIES:
                    count, total, high = tally.distributions.get(self._name, (0, 0, value))
                    tally.distributions[self._name] = (count + 1, total + value, max(high, value))


def counter(name: str) -> _Counter:
    return _Counter(name)


def distribution(name: str) -> _Distribution:
    return _Distribution(name)


@dataclasses.dataclass(frozen=True)
class StatusSnapshot:
    """The headline figures at one moment."""

    files_done: int = 0
    files_failed: int = 0
    rows_answered: int = 0
    row_errors: int = 0
    latency_count: int = 0
    latency_sum_ms: int = 0
    latency_max_ms: int = 0


class LocalTally:
    """What this process counted since the tally was opened (see the module docstring)."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.distributions: dict[str, tuple[int, int, int]] = {}

    def snapshot(self) -> StatusSnapshot:
        with _TALLY_LOCK:
            count, total, high = self.distributions.get(UPLOAD_TO_ANSWER_MS, (0, 0, 0))
            return StatusSnapshot(
                files_done=self.counts.get(FILES_DONE, 0), files_failed=self.counts.get(FILES_FAILED, 0),
                rows_answered=self.counts.get(ROWS_ANSWERED, 0), row_errors=self.counts.get(ROW_ERRORS, 0),
                latency_count=count, latency_sum_ms=total, latency_max_ms=high)


@contextlib.contextmanager
def local_tally() -> Iterator[LocalTally]:
    """Counts every beam_qa metric update made in this process while the block runs."""
    tally = LocalTally()
    with _TALLY_LOCK:
        _OPEN_TALLIES.append(tally)
    try:
        yield tally
    finally:
        with _TALLY_LOCK:
            _OPEN_TALLIES.remove(tally)


def format_status(now: StatusSnapshot, before: StatusSnapshot, elapsed_secs: float, final: bool = False) -> str:
    """One log line with the dashboard figures; rows/s is over the ``elapsed_secs`` since ``before``."""
    rate = (now.rows_answered - before.rows_answered) / elapsed_secs if elapsed_secs > 0 else 0.0
    if now.latency_count:
        latency = (f"upload-to-answer mean {now.latency_sum_ms / now.latency_count / 1000:.1f}s "
                   f"max {now.latency_max_ms / 1000:.1f}s")
    else:
        latency = "upload-to-answer n/a"
    return (f"beam_qa status{' (final)' if final else ''}: files done {now.files_done}, "
            f"failed {now.files_failed}; rows answered {now.rows_answered} ({rate:.1f} rows/s), "
            f"row errors {now.row_errors}; {latency}")


class StatusReporter:
    """Logs ``format_status`` every ``interval_secs`` from a background thread.

    Args:
        read_snapshot: returns the current figures.
        interval_secs: seconds between lines.
        clock: monotonic clock (injectable for tests).
    """

    def __init__(self, read_snapshot: Callable[[], StatusSnapshot], interval_secs: float,
                 clock: Callable[[], float] = time.monotonic):
        self._read = read_snapshot
        self._interval = interval_secs
        self._clock = clock
        self._started = (StatusSnapshot(), clock())
        self._last = self._started
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="beam_qa-status", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops the thread and logs a last line: totals, and rows/s over the whole run."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.report(final=True)

    def report(self, final: bool = False) -> None:
        """Logs one line; rows/s is since the previous line (since the start for the final one)."""
        snapshot = self._read()
        now = self._clock()
        before, then = self._started if final else self._last
        _LOGGER.info("%s", format_status(snapshot, before, now - then, final=final))
        self._last = (snapshot, now)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.report()


@contextlib.contextmanager
def status_reporting(interval_secs: float) -> Iterator[StatusReporter | None]:
    """Logs the status line while the block runs the pipeline, and a final one after it.

    Wrap both ``pipeline.run()`` and ``wait_until_finish()``: a bounded local run does all its
    work inside ``run()``.

    Args:
        interval_secs: seconds between lines; 0 turns the status line off.
    """
    if not interval_secs:
        yield None
        return
    with local_tally() as tally:
        reporter = StatusReporter(tally.snapshot, interval_secs)
        reporter.start()
        try:
            yield reporter
        finally:
            reporter.stop()
