"""Beam metrics, all under the ``beam_qa`` namespace, each defined once here (docs/metrics.md).

Every stage updates the module-level objects below (``metrics.FILES_DONE.inc()``), so a name
cannot drift between the code, the docs, the dashboard and the tests: ``REGISTRY`` lists them
all with their kind.

This module also has the local status line: ``status_reporting()`` logs, every
``--status_interval_secs``, the figures a Dataflow dashboard shows (files done and failed,
rows answered, rows/s, upload-to-answer latency) and, for bounded runs, the progress (files
done of matched, rows answered of read, the time left), with a progress bar on a terminal.

The status line counts in the process that runs the pipeline instead of reading
``PipelineResult.metrics()``: Beam 2.77's streaming DirectRunner drops the metric updates
of every bundle after a DoFn's first one, and a bounded run has no live metrics. The local
runners execute the DoFns in this process (``--direct_running_mode=multi_threading``), so each
``inc()``/``update()`` also goes to the tallies a running ``status_reporting()`` has opened.
Nothing is tallied when none is open (on Dataflow workers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator

from apache_beam.metrics import Metrics

from beam_qa.errors import FileErrorKind, RowErrorKind

_LOGGER = logging.getLogger(__name__)

NAMESPACE = "beam_qa"

_TALLY_LOCK = threading.Lock()
_OPEN_TALLIES: list[LocalTally] = []

# name -> "counter" | "distribution": every metric this package emits.
REGISTRY: dict[str, str] = {}


class _Counter:
    """A Beam counter that also adds to the open local tallies."""

    def __init__(self, name: str):
        self.name = name
        self._metric = Metrics.counter(NAMESPACE, name)

    def inc(self, n: int = 1) -> None:
        self._metric.inc(n)
        if _OPEN_TALLIES:
            with _TALLY_LOCK:
                for tally in _OPEN_TALLIES:
                    tally.counts[self.name] = tally.counts.get(self.name, 0) + n


class _Distribution:
    """A Beam distribution that also records into the open local tallies."""

    def __init__(self, name: str):
        self.name = name
        self._metric = Metrics.distribution(NAMESPACE, name)

    def update(self, value: int) -> None:
        self._metric.update(value)
        if _OPEN_TALLIES:
            with _TALLY_LOCK:
                for tally in _OPEN_TALLIES:
                    count, total, high = tally.distributions.get(self.name, (0, 0, value))
                    tally.distributions[self.name] = (count + 1, total + value, max(high, value))


def _counter(name: str) -> _Counter:
    REGISTRY[name] = "counter"
    return _Counter(name)


def _distribution(name: str) -> _Distribution:
    REGISTRY[name] = "distribution"
    return _Distribution(name)


# --- sources ---
FILES_MATCHED = _counter("files_matched")
EVENTS_IGNORED = _counter("events_ignored")
IGNORE_REASONS = ("not_finalize", "other_prefix", "not_csv", "malformed", "folder", "finished", "in_flight",
                  "gone", "other_bucket")
_EVENTS_IGNORED_BY = {reason: _counter(f"events_ignored_{reason}") for reason in IGNORE_REASONS}
SWEEPS = _counter("sweeps")
FILES_SWEPT = _counter("files_swept")
SWEEP_FAILURES = _counter("sweep_failures")
FILES_ABANDONED = _counter("files_abandoned")
LEFTOVERS_DELETED = _counter("leftovers_deleted")
# --- claiming and reading ---
FILES_CLAIMED = _counter("files_claimed")
FILES_RETRIED = _counter("files_retried")
FILES_RECEIVED = _counter("files_received")
ROWS_READ = _counter("rows_read")
READ_FAILURES = _counter("read_failures")
_FILE_ERRORS_BY = {kind: _counter(f"file_errors_{kind.value}") for kind in FileErrorKind}
# --- answering ---
CHUNKS_STARTED = _counter("chunks_started")
CHUNKS_SUPERSEDED = _counter("chunks_superseded")
ATTEMPTS_ENDED = _counter("attempts_ended")
INFERENCE_RETRIES = _counter("inference_retries")
MODEL_LOADS = _counter("model_loads")
MODEL_SWAPS = _counter("model_swaps")
MODELS_REFUSED = _counter("models_refused")
ROWS_ANSWERED = _counter("rows_answered")
ROW_ERRORS = _counter("row_errors")
_ROW_ERRORS_BY = {kind: _counter(f"row_errors_{kind.value}") for kind in RowErrorKind}
# --- sinks ---
ROWS_COMMITTED = _counter("rows_committed")
ROWS_STALE = _counter("rows_stale")
FILES_COMPLETED = _counter("files_completed")
FILES_DONE = _counter("files_done")
FILES_FAILED = _counter("files_failed")
UPLOAD_TO_ANSWER_MS = _distribution("upload_to_answer_ms")
ROWS_PER_FILE = _distribution("rows_per_file")
SINK_FAILURES_CSV = _counter("sink_failures_csv")
SINK_FAILURES_POSTGRES = _counter("sink_failures_postgres")
DELETE_FAILURES = _counter("delete_failures")
SOURCES_DELETED = _counter("sources_deleted")
QUARANTINE_FAILURES = _counter("quarantine_failures")

# RunInference's own metrics, under the same namespace (the handler's get_metrics_namespace).
RUNINFERENCE_METRICS = {
    "num_inferences": "counter",
    "inference_request_batch_size": "distribution",
    "inference_request_batch_byte_size": "distribution",
    "inference_batch_latency_micro_secs": "distribution",
    "load_model_latency_milli_secs": "distribution",
    "model_byte_size": "distribution",
}


def events_ignored(reason: str) -> _Counter:
    return _EVENTS_IGNORED_BY[reason]


def file_errors(kind: FileErrorKind | str) -> _Counter:
    return _FILE_ERRORS_BY[FileErrorKind(kind)]


def row_errors(kind: RowErrorKind | str) -> _Counter:
    return _ROW_ERRORS_BY[RowErrorKind(kind)]


def counter(name: str) -> _Counter:
    """A registered counter by name (tests and tools; stages use the module-level objects)."""
    if REGISTRY.get(name) != "counter":
        raise KeyError(f"no beam_qa counter named {name!r}")
    return _Counter(name)


def distribution(name: str) -> _Distribution:
    """A registered distribution by name (tests and tools)."""
    if REGISTRY.get(name) != "distribution":
        raise KeyError(f"no beam_qa distribution named {name!r}")
    return _Distribution(name)


# --- the local status line ----------------------------------------------------------------


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
    files_matched: int = 0
    rows_read: int = 0
    rows_committed: int = 0


class LocalTally:
    """What this process counted since the tally was opened (see the module docstring)."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.distributions: dict[str, tuple[int, int, int]] = {}

    def snapshot(self) -> StatusSnapshot:
        with _TALLY_LOCK:
            count, total, high = self.distributions.get(UPLOAD_TO_ANSWER_MS.name, (0, 0, 0))
            get = self.counts.get
            return StatusSnapshot(
                files_done=get(FILES_DONE.name, 0), files_failed=get(FILES_FAILED.name, 0),
                rows_answered=get(ROWS_ANSWERED.name, 0), row_errors=get(ROW_ERRORS.name, 0),
                latency_count=count, latency_sum_ms=total, latency_max_ms=high,
                files_matched=get(FILES_MATCHED.name, 0), rows_read=get(ROWS_READ.name, 0),
                rows_committed=get(ROWS_COMMITTED.name, 0))


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


def _duration(secs: float) -> str:
    secs = int(round(secs))
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m" if secs >= 3600 else f"{secs // 60}m{secs % 60:02d}s"


def format_status(now: StatusSnapshot, before: StatusSnapshot, elapsed_secs: float, final: bool = False,
                  bounded: bool = False) -> str:
    """One log line with the dashboard figures; rows/s is over the ``elapsed_secs`` since ``before``.

    Bounded runs add their progress: files done of matched, rows committed of read, the time left.
    """
    rate = (now.rows_answered - before.rows_answered) / elapsed_secs if elapsed_secs > 0 else 0.0
    if now.latency_count:
        latency = (f"upload-to-answer mean {now.latency_sum_ms / now.latency_count / 1000:.1f}s "
                   f"max {now.latency_max_ms / 1000:.1f}s")
    else:
        latency = "upload-to-answer n/a"
    files = f"files done {now.files_done}"
    if bounded:
        files += f" of {now.files_matched}"
    line = (f"beam_qa status{' (final)' if final else ''}: {files}, failed {now.files_failed}; "
            f"rows answered {now.rows_answered} ({rate:.1f} rows/s), row errors {now.row_errors}; {latency}")
    if bounded:
        left = max(now.rows_read - now.rows_committed, 0)
        commit_rate = (now.rows_committed - before.rows_committed) / elapsed_secs if elapsed_secs > 0 else 0.0
        eta = _duration(left / commit_rate) if commit_rate > 0 and left else ("0m00s" if not left else "n/a")
        line += f"; rows committed {now.rows_committed} of {now.rows_read} read, time left {eta}"
    return line


class StatusReporter:
    """Logs ``format_status`` every ``interval_secs`` from a background thread.

    Args:
        read_snapshot: returns the current figures.
        interval_secs: seconds between lines.
        clock: monotonic clock (injectable for tests).
        bounded: also report progress towards the end of a bounded run.
        progress_bar: draw a tqdm bar of rows committed (for a terminal).
    """

    def __init__(self, read_snapshot: Callable[[], StatusSnapshot], interval_secs: float,
                 clock: Callable[[], float] = time.monotonic, bounded: bool = False, progress_bar: bool = False):
        self._read = read_snapshot
        self._interval = interval_secs
        self._clock = clock
        self._bounded = bounded
        self._started = (StatusSnapshot(), clock())
        self._last = self._started
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None
        if progress_bar:
            from tqdm import tqdm
            self._bar = tqdm(total=0, unit="row", desc="beam_qa rows committed", dynamic_ncols=True,
                             leave=True, file=sys.stderr)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="beam_qa-status", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops the thread and logs a last line: totals, and rows/s over the whole run."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._update_bar()
        if self._bar is not None:
            self._bar.close()
        self.report(final=True)

    def report(self, final: bool = False) -> None:
        """Logs one line; rows/s is since the previous line (since the start for the final one)."""
        snapshot = self._read()
        now = self._clock()
        before, then = self._started if final else self._last
        _LOGGER.info("%s", format_status(snapshot, before, now - then, final=final, bounded=self._bounded))
        self._last = (snapshot, now)

    def _update_bar(self) -> None:
        if self._bar is None:
            return
        snapshot = self._read()
        self._bar.total = max(snapshot.rows_read, snapshot.rows_committed)
        self._bar.n = snapshot.rows_committed
        self._bar.set_postfix_str(f"files {snapshot.files_done + snapshot.files_failed}/{snapshot.files_matched}",
                                  refresh=False)
        self._bar.refresh()

    def _loop(self) -> None:
        next_line = self._clock() + self._interval
        tick = min(self._interval, 1.0) if self._bar is not None else self._interval
        while not self._stop.wait(tick):
            self._update_bar()
            if self._clock() >= next_line:
                self.report()
                next_line = self._clock() + self._interval


@contextlib.contextmanager
def status_reporting(interval_secs: float, bounded: bool = False,
                     progress_bar: bool | None = None) -> Iterator[StatusReporter | None]:
    """Logs the status line while the block runs the pipeline, and a final one after it.

    Wrap both ``pipeline.run()`` and ``wait_until_finish()``: a bounded local run does all its
    work inside ``run()``.

    Args:
        interval_secs: seconds between lines; 0 turns the status line (and the bar) off.
        bounded: report progress towards the end of a bounded run.
        progress_bar: draw a progress bar; default: when stderr is a terminal, for bounded runs.
    """
    if not interval_secs:
        yield None
        return
    if progress_bar is None:
        progress_bar = bounded and sys.stderr.isatty()
    with local_tally() as tally:
        reporter = StatusReporter(tally.snapshot, interval_secs, bounded=bounded, progress_bar=progress_bar)
        reporter.start()
        try:
            yield reporter
        finally:
            reporter.stop()
