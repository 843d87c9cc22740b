"""Where file events come from: GCS notifications (streaming) or a file pattern (bounded)."""

from __future__ import annotations

import logging
import time

import apache_beam as beam
from apache_beam.coders import BooleanCoder, FloatCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from beam_qa import metrics
from beam_qa.events import FileEvent, gcs_file_event, local_file_event, parse_notification, pattern_base_dir
from beam_qa.storage import Storage

_LOGGER = logging.getLogger(__name__)


class _ParseNotificationFn(beam.DoFn):
    def __init__(self, incoming_prefix: str):
        self._incoming_prefix = incoming_prefix

    def process(self, message):
        event, reason = parse_notification(message.data, dict(message.attributes or {}), self._incoming_prefix)
        if event is None:
            metrics.counter("events_ignored").inc()
            metrics.counter(f"events_ignored_{reason}").inc()
            _LOGGER.debug("ignoring notification (%s): %s", reason, dict(message.attributes or {}))
            return
        yield event


class _FirstPerKeyFn(beam.DoFn):
    """Passes one event per file version at a time; lets a sweeper retry through later.

    The state holds when the version last passed. A repeated notification is dropped while
    that state lives (``ttl_secs``): the version is in flight or finished, and every side
    effect is idempotent anyway. A swept event (the sweeper found the version still under
    the incoming prefix without a ``done`` or ``failed`` record) passes once
    ``retry_after_secs`` have gone by since the last pass: that attempt ended without a
    final record (a sink gave up, or the file was lost in a crash), so it is retried. A
    swept event within ``retry_after_secs`` is dropped, because that attempt may still be
    running. Expiring the state bounds it; after that any event passes, and a version that
    is already answered and deleted is skipped by ReadCsvRows (``events_ignored_gone``).
    """

    LAST_PASSED = ReadModifyWriteStateSpec("last_passed", FloatCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)

    def __init__(self, ttl_secs: float, retry_after_secs: float):
        self._ttl_secs = ttl_secs
        self._retry_after_secs = retry_after_secs

    def process(self, element, last_passed=beam.DoFn.StateParam(LAST_PASSED),
                expiry=beam.DoFn.TimerParam(EXPIRY)):
        _, (event, swept) = element
        now = time.time()
        previous = last_passed.read()
        if previous is not None:
            if not swept or now - previous < self._retry_after_secs:
                metrics.counter("events_ignored").inc()
                metrics.counter("events_ignored_duplicate").inc()
                return
            metrics.counter("files_retried").inc()
            _LOGGER.info("retrying %s: its attempt %.0fs ago left no done or failed record",
                         event.key, now - previous)
        last_passed.write(now)
        expiry.set(Timestamp.of(now) + Duration(seconds=self._ttl_secs))
        yield event

    @on_timer(EXPIRY)
    def expire(self, last_passed=beam.DoFn.StateParam(LAST_PASSED)):
        last_passed.clear()


class DeduplicateFileEvents(beam.PTransform):
    """``(FileEvent, swept)`` pairs -> FileEvents, one attempt per file version at a time.

    Args:
        ttl_secs: how long a version is remembered; at least ``retry_after_secs``.
        retry_after_secs: how long after an attempt a swept event may start another one.
    """

    def __init__(self, ttl_secs: float = 600.0, retry_after_secs: float = 300.0):
        super().__init__()
        self._retry_after_secs = retry_after_secs
        self._ttl_secs = max(ttl_secs, retry_after_secs)

    def expand(self, tagged_events):
        return (tagged_events
                | "KeyByVersion" >> beam.Map(_key_by_version)
                | "FirstPerVersion" >> beam.ParDo(_FirstPerKeyFn(self._ttl_secs, self._retry_after_secs)))


def _key_by_version(tagged: tuple[FileEvent, bool]) -> tuple[str, tuple[FileEvent, bool]]:
    return tagged[0].key, tagged


def _tag(event: FileEvent, swept: bool) -> tuple[FileEvent, bool]:
    return event, swept


class _SweepFn(beam.DoFn):
    """One sweep: unfinished ``.csv`` versions under the incoming prefix, older than the grace."""

    def __init__(self, bucket: str, incoming_prefix: str, grace_secs: float, pg_dsn: str, model: str,
                 anonymous: bool, password_secret: str | None):
        self._bucket = bucket
        self._incoming_prefix = incoming_prefix
        self._grace_secs = grace_secs
        self._pg_dsn = pg_dsn
        self._model = model
        self._anonymous = anonymous
        self._password_secret = password_secret
        self._storage: Storage | None = None
        self._writer = None

    def setup(self):
        self._storage = Storage(anonymous=self._anonymous or None)

    def teardown(self):
        if self._storage:
            self._storage.close()
        if self._writer:
            self._writer.close()

    def _finished(self, uris: list[str]) -> set[tuple[str, int]]:
        from beam_qa.sinks.postgres import PostgresWriter
        if self._writer is None:
            # A short retry budget: a sweep that cannot reach PostgreSQL is simply skipped,
            # the next one comes an interval later.
            writer = PostgresWriter(self._pg_dsn, model=self._model, retry_secs=15.0, max_size=1,
                                    password_secret=self._password_secret)
            try:
                writer.open()  # creates the schema if missing
            except BaseException:
                writer.close()
                raise
            self._writer = writer
        return self._writer.finished_versions(uris)

    def process(self, _tick):
        metrics.counter("sweeps").inc()
        pattern = f"gs://{self._bucket}/{self._incoming_prefix}**"
        cutoff = time.time() - self._grace_secs
        try:
            candidates = [info for info in self._storage.list(pattern)
                          if info.uri.lower().endswith(".csv") and info.updated <= cutoff]
            finished = self._finished([info.uri for info in candidates]) if candidates else set()
        except Exception:  # pylint: disable=broad-except
            # An exception escaping here would stop the stream; the next sweep tries again.
            metrics.counter("sweep_failures").inc()
            _LOGGER.exception("sweeping %s failed; trying again at the next sweep", pattern)
            return
        unfinished = [info for info in candidates if (info.uri, info.generation) not in finished]
        _LOGGER.info("swept %s: %d unfinished of %d CSV files older than %.0fs", pattern,
                     len(unfinished), len(candidates), self._grace_secs)
        for info in unfinished:
            metrics.counter("files_swept").inc()
            _, name = info.uri[len("gs://"):].split("/", 1)
            yield gcs_file_event(self._bucket, name, info.generation, info.size, info.updated,
                                 self._incoming_prefix)


class _SweepScheduleFn(beam.DoFn):
    """A looping processing-time timer: a tick at start-up, then one every ``interval_secs``.

    Beam's PeriodicImpulse would be the obvious source, but the Python DirectRunner cannot
    run it in a streaming pipeline beside ReadFromPubSub (its splittable-DoFn expansion is
    left unreplaced). A timer loop runs on every runner. Its input is the start-up element
    plus the notification stream: the stream is what keeps the timer alive, because on a
    bounded input alone the watermark reaches the end of the global window and the runner
    drops the timer.
    """

    ARMED = ReadModifyWriteStateSpec("armed", BooleanCoder())
    TICK = TimerSpec("tick", TimeDomain.REAL_TIME)

    def __init__(self, interval_secs: float):
        self._interval_secs = interval_secs

    def process(self, element, armed=beam.DoFn.StateParam(ARMED), tick=beam.DoFn.TimerParam(TICK)):
        if armed.read():
            return
        armed.write(True)
        tick.set(Timestamp.now())  # the start-up sweep: what arrived while the job was down

    @on_timer(TICK)
    def on_tick(self, tick=beam.DoFn.TimerParam(TICK)):
        tick.set(Timestamp.now() + Duration(seconds=self._interval_secs))
        yield None


def _schedule_key(_) -> tuple[str, None]:
    return "sweep", None


class SweepIncoming(beam.PTransform):
    """Every ``interval_secs`` (and once at start), the incoming files that are not finished.

    Applied to the notification stream (which only keeps the schedule alive; see
    ``_SweepScheduleFn``). Lists ``gs://BUCKET/INCOMING_PREFIX`` and emits a FileEvent for each
    ``.csv`` version older than ``grace_secs`` without a ``done`` or ``failed`` qa_files record.
    This recovers lost notifications, attempts that ended without a final record, and files that
    arrived while the pipeline was down (the DirectRunner acks Pub/Sub on pull, so a crash loses
    the messages it had pulled).
    """

    def __init__(self, bucket: str, incoming_prefix: str, interval_secs: float, grace_secs: float,
                 pg_dsn: str, model: str, anonymous: bool = False, password_secret: str | None = None):
        super().__init__()
        self._interval_secs = interval_secs
        self._fn = _SweepFn(bucket, incoming_prefix, grace_secs, pg_dsn, model, anonymous, password_secret)

    def expand(self, notifications):
        start_up = notifications.pipeline | "StartUp" >> beam.Create([None])
        return ((start_up, notifications)
                | "StartUpAndStream" >> beam.Flatten()
                | "OneSchedule" >> beam.Map(_schedule_key)
                | "EveryInterval" >> beam.ParDo(_SweepScheduleFn(self._interval_secs))
                | "ListUnfinished" >> beam.ParDo(self._fn))


class ReadGcsNotifications(beam.PTransform):
    """Pub/Sub OBJECT_FINALIZE notifications -> FileEvents for ``.csv`` objects under the prefix.

    Args:
        subscription: the subscription receiving the bucket's notifications.
        incoming_prefix: only objects under this prefix are processed.
        sweep: a SweepIncoming whose events are merged in before the dedup, or None.
        retry_after_secs: see DeduplicateFileEvents (the sweeper's grace period).
    """

    def __init__(self, subscription: str, incoming_prefix: str, sweep: SweepIncoming | None = None,
                 retry_after_secs: float = 300.0):
        super().__init__()
        self._subscription = subscription
        self._incoming_prefix = incoming_prefix
        self._sweep = sweep
        self._retry_after_secs = retry_after_secs

    def expand(self, pbegin):
        notified = (pbegin
                    | "ReadPubSub" >> beam.io.ReadFromPubSub(subscription=self._subscription,
                                                            with_attributes=True)
                    | "ParseNotification" >> beam.ParDo(_ParseNotificationFn(self._incoming_prefix))
                    | "FromNotification" >> beam.Map(_tag, False))
        sources = [notified]
        if self._sweep is not None:
            sources.append(notified | "SweepIncoming" >> self._sweep | "FromSweep" >> beam.Map(_tag, True))
        return (tuple(sources)
                | "MergeSources" >> beam.Flatten()
                | "Deduplicate" >> DeduplicateFileEvents(retry_after_secs=self._retry_after_secs))


class _ListFilesFn(beam.DoFn):
    def __init__(self, incoming_prefix: str, anonymous: bool):
        self._incoming_prefix = incoming_prefix
        self._anonymous = anonymous
        self._storage: Storage | None = None

    def setup(self):
        self._storage = Storage(anonymous=self._anonymous or None)

    def teardown(self):
        if self._storage:
            self._storage.close()

    def process(self, pattern: str):
        found = 0
        for info in self._storage.list(pattern):
            if not info.uri.lower().endswith(".csv"):
                metrics.counter("events_ignored").inc()
                metrics.counter("events_ignored_not_csv").inc()
                continue
            found += 1
            if info.uri.startswith("gs://"):
                bucket, _, name = info.uri[5:].partition("/")
                yield gcs_file_event(bucket, name, info.generation, info.size, info.updated,
                                     self._incoming_prefix)
            else:
                yield local_file_event(info.uri, pattern_base_dir(pattern))
        _LOGGER.info("bounded input %s matched %d CSV files", pattern, found)


class MatchInputFiles(beam.PTransform):
    """A local or gs:// glob -> FileEvents (bounded mode)."""

    def __init__(self, pattern: str, incoming_prefix: str, anonymous: bool = False):
        super().__init__()
        self._pattern = pattern
        self._incoming_prefix = incoming_prefix
        self._anonymous = anonymous

    def expand(self, pbegin):
        return (pbegin
                | "Pattern" >> beam.Create([self._pattern])
                | "ListFiles" >> beam.ParDo(_ListFilesFn(self._incoming_prefix, self._anonymous))
                # Spread the files over workers instead of keeping them in one bundle.
                | "Reshuffle" >> beam.Reshuffle())
