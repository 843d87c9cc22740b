"""Where file events come from: GCS notifications and the sweeper (streaming), or a file pattern (bounded).

Nothing here decides whether an event starts work: a repeated notification, a swept file and
a retried bundle all reach ``ClaimFiles``, which starts an attempt only when the version has no
live lease and no final record. So there is no per-version state here, and no timer holding
the watermark back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid

import apache_beam as beam
from apache_beam.coders import BooleanCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Duration, Timestamp

from beam_qa import metrics
from beam_qa.runtime import WorkerDoFn
from beam_qa.events import FileEvent, gcs_file_event, local_file_event, parse_notification, pattern_base_dir
from beam_qa.settings import PostgresSettings, SourceSettings, StorageSettings, SweepSettings

_LOGGER = logging.getLogger(__name__)

# How far ahead of the wall clock a timer may fire before we call it a drain (clock skew).
_DRAIN_TOLERANCE_SECS = 5.0


def _content_id(data: bytes | None, attributes: dict[str, str]) -> str:
    """A stand-in for a missing Pub/Sub message id: the same for every delivery of one message.

    The claim token must be the same when a bundle is retried (``ClaimFiles``), and a runner that
    does not pass the message id still passes the same content.
    """
    digest = hashlib.sha256(data or b"")
    digest.update(json.dumps(attributes, sort_keys=True).encode())
    return "sha256-" + digest.hexdigest()[:32]


_IGNORED_LINE = "ignored %d notification(s) since the last such line (%s); the latest: %s, %s"


class IgnoredNotifications:
    """Logs ignored notifications without letting a flood of them flood the log.

    The first notification ignored for a reason is logged at once (with what it named); after
    that, one summary line per ``interval_secs`` says how many were ignored for each reason
    since the last line. The metrics count every one. Shared by all the DoFn instances of a
    process (a worker runs many), so the bound holds per process, not per instance.

    Args:
        interval_secs: the least time between two summary lines.
        clock: monotonic clock (tests pass their own).
    """

    # Reasons a user or an attacker causes, not the pipeline's own traffic (its answers and
    # deletes come back as other_prefix and not_finalize): a warning, not an info line.
    SUSPICIOUS = frozenset({"other_bucket", "malformed"})

    def __init__(self, interval_secs: float = 60.0, clock=time.monotonic):
        self._interval_secs = interval_secs
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self._pending: dict[str, int] = {}
        self._last_line = -float("inf")

    def ignored(self, reason: str, attributes: dict[str, str]) -> None:
        """Counts one ignored notification, and logs if its reason is new or the interval is over."""
        with self._lock:
            first = reason not in self._seen
            self._seen.add(reason)
            self._pending[reason] = self._pending.get(reason, 0) + 1
            now = self._clock()
            if not first and now - self._last_line < self._interval_secs:
                return
            pending, self._pending, self._last_line = self._pending, {}, now
        # The attributes quote what the message claims: bounded, for a forged message's sake.
        named = {str(key)[:100]: str(value)[:200] for key, value in list(attributes.items())[:8]}
        args = (sum(pending.values()), ", ".join(f"{key} {count}" for key, count in sorted(pending.items())),
                reason, named)
        if self.SUSPICIOUS.intersection(pending):
            _LOGGER.warning(_IGNORED_LINE, *args)
        else:
            _LOGGER.info(_IGNORED_LINE, *args)


_IGNORED = IgnoredNotifications()


class _ParseNotificationFn(beam.DoFn):
    """Pub/Sub messages -> FileEvents of ``bucket``'s incoming ``.csv`` objects; the rest is counted and dropped."""

    def __init__(self, bucket: str, incoming_prefix: str):
        self._bucket = bucket
        self._incoming_prefix = incoming_prefix

    def process(self, message):
        attributes = dict(message.attributes or {})
        event, reason = parse_notification(message.data, attributes, self._incoming_prefix,
                                           message_id=getattr(message, "message_id", None) or _content_id(
                                               message.data, attributes), bucket=self._bucket)
        if event is None:
            # Acked like any message the step consumed: nothing is read, written or deleted for it.
            metrics.EVENTS_IGNORED.inc()
            metrics.events_ignored(reason).inc()
            _IGNORED.ignored(reason, attributes)
            return
        yield event


class _SweepScheduleFn(beam.DoFn):
    """A looping event-time timer: a tick at start-up, then one every ``interval_secs``.

    Event time, not processing time, for two reasons. A timer holds the step's output
    watermark at its hold timestamp: for a processing-time timer that is the input element's
    timestamp (forever, for a timer that re-arms itself), for an event-time timer it is the
    firing time, which lies ahead. And a Dataflow drain advances the watermark to infinity:
    every event-time timer then fires at once, so a tick that fires well ahead of the wall
    clock means the job is draining (or a bounded input ended), and the loop stops instead of
    keeping the drain from finishing (apache/beam#33595; the Python SDK has no
    ``OnWindowExpiration`` to clear the timer with).

    Its input is the start-up element flattened with the notification stream filtered to
    nothing: the stream brings only its watermark (which advances with the wall clock while
    the subscription is idle), not its elements, so no notification goes through this
    single key.
    """

    ARMED = ReadModifyWriteStateSpec("armed", BooleanCoder())
    TICK = TimerSpec("tick", TimeDomain.WATERMARK)

    def __init__(self, interval_secs: float, clock=time.time):
        self._interval_secs = interval_secs
        self._clock = clock

    def process(self, element, timestamp=beam.DoFn.TimestampParam, armed=beam.DoFn.StateParam(ARMED),
                tick=beam.DoFn.TimerParam(TICK)):
        if armed.read():
            return
        armed.write(True)
        tick.set(timestamp)  # the start-up sweep: what arrived while the job was down

    @on_timer(TICK)
    def on_tick(self, fired=beam.DoFn.TimestampParam, armed=beam.DoFn.StateParam(ARMED),
                tick=beam.DoFn.TimerParam(TICK)):
        now = self._clock()
        if fired.micros / 1e6 > now + _DRAIN_TOLERANCE_SECS:
            _LOGGER.info("sweeper stopped: the watermark passed the wall clock (the job is draining)")
            armed.clear()
            return
        following = Timestamp.of(now) + Duration(seconds=self._interval_secs)
        if following < MAX_TIMESTAMP:
            tick.set(following)
        yield f"{now:.3f}"


class _SweepFn(WorkerDoFn):
    """One sweep: incoming versions older than the grace that nothing holds or finished.

    Objects whose name does not end in ``.csv`` are emitted too: the claim fails them as
    ``not_csv`` and they are moved under the error prefix with that reason, instead of lying
    unseen under the incoming prefix for ever (and being listed by every sweep). The listing is
    read one page (``SweepSettings.page_size``) at a time, with one PostgreSQL statement per page.

    It also fails the unfinished versions whose source object is gone and whose lease has
    expired (deleted by a user mid-way, or replaced by a newer upload): their rows and chunk
    records would otherwise wait for ever; and it deletes the sources of finished versions whose
    own delete failed (``done``, or ``failed`` with their copy under the error prefix), so that
    nothing is left behind under the incoming prefix.
    """

    def __init__(self, sweep: SweepSettings, pg: PostgresSettings, files: StorageSettings):
        super().__init__(pg=pg, files=files)
        self._sweep = sweep
        self._incoming_prefix = sweep.incoming_prefix

    def process(self, tick: str):
        metrics.SWEEPS.inc()
        uri_prefix = f"gs://{self._sweep.bucket}/{self._incoming_prefix}"
        pattern = f"{uri_prefix}**"
        cutoff = time.time() - self._sweep.grace_secs
        page_size = self._sweep.page_size
        # A short retry budget: a sweep that cannot reach PostgreSQL is skipped; the next one
        # comes an interval later.
        retry_secs = min(15.0, self._sweep.interval_secs)
        pages = listed = older = started = not_csv = 0
        try:
            # Read before listing: a stale version whose source the listing then finds still exists.
            stale = set(self.pg.stale_versions(uri_prefix, self._sweep.grace_secs, page_size, retry_secs))
            # One page of the listing at a time, and one statement per page: memory and statement
            # size stay bounded by the page, whatever the prefix holds.
            for page in self.files.list_pages(pattern, page_size):
                pages += 1
                listed += len(page)
                stale.difference_update((info.uri, info.generation) for info in page)
                candidates = [info for info in page if info.updated <= cutoff]
                older += len(candidates)
                busy = self.pg.not_claimable([info.uri for info in candidates], retry_secs) if candidates else {}
                if self._sweep.delete_finished:
                    for info in candidates:
                        if busy.get((info.uri, info.generation)):
                            self._delete_leftover(info)
                for info in candidates:
                    if (info.uri, info.generation) in busy:
                        continue
                    metrics.FILES_SWEPT.inc()
                    started += 1
                    if not info.uri.lower().endswith(".csv"):
                        # Not left there unseen for ever: the claim fails it as not_csv, and it is
                        # moved under the error prefix with that reason (never deleted unkept).
                        not_csv += 1
                    _, name = info.uri[len("gs://"):].split("/", 1)
                    yield gcs_file_event(self._sweep.bucket, name, info.generation, info.size, info.updated,
                                         self._incoming_prefix, trigger=f"sweep:{tick}")
            gone = self.pg.abandon(sorted(stale), self._sweep.grace_secs, retry_secs) if stale else []
        except Exception:  # pylint: disable=broad-except
            # An exception escaping here would stop the stream; the next sweep tries again.
            metrics.SWEEP_FAILURES.inc()
            _LOGGER.exception("sweeping %s failed; trying again at the next sweep", pattern)
            return
        for uri, generation in gone:
            metrics.FILES_ABANDONED.inc()
            _LOGGER.warning("gave up on %s#%d: its source is gone and its last attempt ended", uri, generation)
        _LOGGER.info("swept %s: %d to start (%d not CSV, to be moved under the error prefix) of %d files older "
                     "than %.0fs (%d finished or in flight), %d listed in %d pages", pattern, started, not_csv,
                     older, self._sweep.grace_secs, older - started, listed, pages)

    def _delete_leftover(self, info) -> None:
        key = f"{info.uri}#{info.generation}"
        try:
            deleted = self.files.delete_generation(info.uri, info.generation)
        except Exception:  # pylint: disable=broad-except
            metrics.SWEEP_FAILURES.inc()
            _LOGGER.warning("could not delete %s, finished but left behind; the next sweep tries again", key,
                            exc_info=True)
            return
        if deleted:
            metrics.LEFTOVERS_DELETED.inc()
            _LOGGER.info("deleted %s: it is finished, and its own delete had failed", key)


def _nothing(_) -> bool:
    return False


def _schedule_key(_) -> tuple[str, int]:
    return "sweep", 0


class SweepIncoming(beam.PTransform):
    """Every ``interval_secs`` (and once at start), the incoming files that nothing holds or finished.

    Applied to the notification stream (only its watermark is used; see ``_SweepScheduleFn``).
    This recovers lost notifications, attempts that ended without a final record (a sink gave
    up, or a worker died and its lease expired), and files that arrived while the job was down
    (the DirectRunner acks Pub/Sub on pull, so a crash loses the messages it had pulled).
    """

    def __init__(self, sweep: SweepSettings, pg: PostgresSettings, files: StorageSettings):
        super().__init__()
        self._interval_secs = sweep.interval_secs
        self._fn = _SweepFn(sweep, pg, files)

    def expand(self, notifications):
        start_up = notifications.pipeline | "StartUp" >> beam.Create([None])
        watermark_only = notifications | "WatermarkOnly" >> beam.Filter(_nothing)
        return ((start_up, watermark_only)
                | "StartUpAndStream" >> beam.Flatten()
                | "OneSchedule" >> beam.Map(_schedule_key).with_output_types(beam.typehints.KV[str, int])
                | "EveryInterval" >> beam.ParDo(_SweepScheduleFn(self._interval_secs))
                | "ListUnclaimed" >> beam.ParDo(self._fn))


class ReadGcsNotifications(beam.PTransform):
    """Pub/Sub OBJECT_FINALIZE notifications (and swept files) -> FileEvents of the bucket's incoming objects.

    Args:
        source: the subscription receiving the bucket's notifications, the bucket and the
            incoming prefix: only objects of that bucket under that prefix are processed; a
            notification naming another bucket is counted (``events_ignored_other_bucket``) and
            dropped, whoever published it.
        sweep: a SweepIncoming whose events are merged in, or None.
    """

    def __init__(self, source: SourceSettings, sweep: SweepIncoming | None = None):
        super().__init__()
        if not source.bucket:
            # Without it every notification would be trusted or (here) ignored: refuse the graph.
            raise ValueError("ReadGcsNotifications needs SourceSettings.bucket (--input_bucket)")
        self._subscription = source.subscription
        self._bucket = source.bucket
        self._incoming_prefix = source.incoming_prefix
        self._sweep = sweep

    def expand(self, pbegin):
        notified = (pbegin
                    | "ReadPubSub" >> beam.io.ReadFromPubSub(subscription=self._subscription,
                                                            with_attributes=True)
                    | "ParseNotification" >> beam.ParDo(_ParseNotificationFn(self._bucket, self._incoming_prefix)))
        if self._sweep is None:
            return notified
        swept = notified | "SweepIncoming" >> self._sweep
        return (notified, swept) | "MergeSources" >> beam.Flatten()


class _ListFilesFn(WorkerDoFn):
    def __init__(self, incoming_prefix: str, files: StorageSettings, run_id: str):
        super().__init__(files=files)
        self._incoming_prefix = incoming_prefix
        self._run_id = run_id

    def process(self, pattern: str):
        found = 0
        trigger = f"match:{self._run_id}"
        for info in self.files.list(pattern):
            if not info.uri.lower().endswith(".csv"):
                metrics.EVENTS_IGNORED.inc()
                metrics.events_ignored("not_csv").inc()
                continue
            found += 1
            metrics.FILES_MATCHED.inc()
            if info.uri.startswith("gs://"):
                bucket, _, name = info.uri[5:].partition("/")
                yield gcs_file_event(bucket, name, info.generation, info.size, info.updated,
                                     self._incoming_prefix, trigger=trigger)
            else:
                yield local_file_event(info.uri, pattern_base_dir(pattern), trigger=trigger)
        _LOGGER.info("bounded input %s matched %d CSV files", pattern, found)


class MatchInputFiles(beam.PTransform):
    """A local or gs:// glob -> FileEvents (bounded mode).

    Args:
        source: the glob, and the incoming prefix stripped from object names to derive output names.
        files: how to reach the files.
        run_id: names this run in its claims (a retried bundle finds its own); random by default.
    """

    def __init__(self, source: SourceSettings, files: StorageSettings, run_id: str | None = None):
        super().__init__()
        self._pattern = source.pattern
        self._fn = _ListFilesFn(source.incoming_prefix, files, run_id or uuid.uuid4().hex)

    def expand(self, pbegin):
        return (pbegin
                | "Pattern" >> beam.Create([self._pattern])
                | "ListFiles" >> beam.ParDo(self._fn)
                # Spread the files over workers instead of keeping them in one bundle.
                | "Reshuffle" >> beam.Reshuffle())


__all__ = ["FileEvent", "MatchInputFiles", "ReadGcsNotifications", "SweepIncoming"]
