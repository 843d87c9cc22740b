"""Where file events come from: GCS notifications (streaming) or a file pattern (bounded)."""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.coders import BooleanCoder
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
    """Passes the first event per file version, drops repeats within ``ttl_secs``."""

    SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)

    def __init__(self, ttl_secs: float):
        self._ttl_secs = ttl_secs

    def process(self, element, seen=beam.DoFn.StateParam(SEEN), expiry=beam.DoFn.TimerParam(EXPIRY)):
        _, event = element
        if seen.read():
            metrics.counter("events_ignored").inc()
            metrics.counter("events_ignored_duplicate").inc()
            return
        seen.write(True)
        expiry.set(Timestamp.now() + Duration(seconds=self._ttl_secs))
        yield event

    @on_timer(EXPIRY)
    def expire(self, seen=beam.DoFn.StateParam(SEEN)):
        seen.clear()


class DeduplicateFileEvents(beam.PTransform):
    """Drops repeated notifications for a file version already in flight."""

    def __init__(self, ttl_secs: float = 600.0):
        super().__init__()
        self._ttl_secs = ttl_secs

    def expand(self, events):
        return (events
                | "KeyByVersion" >> beam.Map(_key_by_version)
                | "FirstPerVersion" >> beam.ParDo(_FirstPerKeyFn(self._ttl_secs)))


def _key_by_version(event: FileEvent) -> tuple[str, FileEvent]:
    return event.key, event


class ReadGcsNotifications(beam.PTransform):
    """Pub/Sub OBJECT_FINALIZE notifications -> FileEvents for ``.csv`` objects under the prefix."""

    def __init__(self, subscription: str, incoming_prefix: str):
        super().__init__()
        self._subscription = subscription
        self._incoming_prefix = incoming_prefix

    def expand(self, pbegin):
        return (pbegin
                | "ReadPubSub" >> beam.io.ReadFromPubSub(subscription=self._subscription, with_attributes=True)
                | "ParseNotification" >> beam.ParDo(_ParseNotificationFn(self._incoming_prefix))
                | "Deduplicate" >> DeduplicateFileEvents())


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
