"""Attempts, leases and the per-file assembly, driven directly with interleavings Dataflow can produce.

The DoFns are called the way a runner calls them (``setup``, ``start_bundle``, ``process``,
``finish_bundle``), against the real PostgreSQL, in orders the local runners never show:
two overlapping attempts at one file, redelivered and split chunks, a bundle retried after its
commit, a file that never finishes, and a drain.
"""

from __future__ import annotations

import time

import pytest
from apache_beam.utils.timestamp import Timestamp

from beam_qa import runtime
from beam_qa.reading import _ClaimFn, chunk_rows  # pylint: disable=protected-access
from beam_qa.records import Chunk, ChunkRow, Claim, CompletedFile, FileEvent, RowOutcome
from beam_qa.settings import PostgresSettings, StorageSettings, SweepSettings
from beam_qa.store import answers as pg_answers
from beam_qa.store.leases import LeaseKeeper
from beam_qa.store.sweep import ABANDONED_REASON
from beam_qa.sinks.transforms import _CommitRowsFn  # pylint: disable=protected-access
from beam_qa.sources import _SweepFn, _SweepScheduleFn  # pylint: disable=protected-access
from beam_qa.storage import ObjectInfo
from tests.conftest import fresh_database, query

pytestmark = pytest.mark.integration

BUCKET = "qa-attempts"


@pytest.fixture
def settings():
    return PostgresSettings(fresh_database("beam_qa_attempts"), retry_secs=10, lease_secs=60)


@pytest.fixture
def store(settings):
    yield runtime.postgres(settings)
    runtime.close()


def event(name: str = "a.csv", generation: int = 7, trigger: str = "pubsub:1") -> FileEvent:
    return FileEvent(uri=f"gs://{BUCKET}/incoming/{name}", generation=generation, size=100,
                     root=f"gs://{BUCKET}/", relative_name=name, event_time=time.time(), trigger=trigger)


def rows(count: int) -> list[ChunkRow]:
    return [ChunkRow(row_index=i, question=f"q{i}?", context=f"context {i}", row_id=str(i), error="",
                     others=(str(i),)) for i in range(count)]


def start(store, ev: FileEvent, row_count: int, chunk_size: int) -> list[Chunk]:
    """Claims ``ev`` and records its manifest: the chunks of the new attempt."""
    attempt = store.claim(ev)
    assert attempt is not None
    chunks = chunk_rows(Claim(ev, attempt), rows(row_count), chunk_size)
    assert store.record_manifest(ev, attempt, ["id", "question", "context"], row_count, len(chunks))
    return chunks


def outcomes(chunk: Chunk, answer: str = "a") -> list[RowOutcome]:
    return [RowOutcome(event=chunk.event, attempt=chunk.attempt, chunk=chunk.index, chunk_first_row=chunk.first_row,
                       chunk_rows=len(chunk.rows), row=row, answer=f"{answer}{row.row_index}", score=0.5, start=0,
                       end=1, model="m") for row in chunk.rows]


def expire_lease(dsn: str, ev: FileEvent) -> None:
    import psycopg
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE qa_files SET lease_until = now() - interval '1 second' "
                     "WHERE source_uri = %s AND source_generation = %s", (ev.uri, ev.generation))


class Bundles:
    """Runs one ``_CommitRowsFn`` instance over bundles, as a worker thread would."""

    def __init__(self, settings: PostgresSettings):
        self.fn = _CommitRowsFn(settings)
        self.fn.setup()
        self.emitted: list[CompletedFile] = []

    def run(self, *elements: RowOutcome) -> list[CompletedFile]:
        self.fn.start_bundle()
        out = [item for element in elements for item in (self.fn.process(element) or [])]
        out += [windowed.value for windowed in (self.fn.finish_bundle() or [])]
        self.emitted += out
        return out


# --- claims and leases --------------------------------------------------------------------------

def test_a_live_lease_blocks_a_new_attempt_and_an_expired_one_allows_it(store, settings):
    ev = event()
    assert store.claim(ev) == 1
    assert store.claim(event(trigger="sweep:2")) is None  # in flight: the lease is live
    expire_lease(settings.dsn, ev)
    assert store.claim(event(trigger="sweep:3")) == 2  # the attempt ended without a final record
    assert query(settings.dsn, "SELECT status, attempt, claim_token FROM qa_files") == [("received", 2, "sweep:3")]


def test_a_retried_bundle_finds_its_own_claim_and_others_do_not(store):
    assert store.claim(event(trigger="pubsub:42")) == 1
    assert store.claim(event(trigger="pubsub:42")) == 1  # the same trigger again: the bundle was retried
    assert store.claim(event(trigger="pubsub:43")) is None  # a duplicate notification


def test_finished_versions_are_never_claimed_again(store, settings):
    ev = event()
    chunks = start(store, ev, 2, 2)
    (completed,) = Bundles(settings).run(*outcomes(chunks[0]))
    from beam_qa.records import AnsweredFile
    assert store.mark_done(AnsweredFile(ev, completed.attempt, 2, 0, "gs://x/answers.csv", "m")) is not None
    expire_lease(settings.dsn, ev)
    assert store.claim(event(trigger="sweep:9")) is None
    assert store.claim(event("other.csv")) == 1  # other names and generations are their own versions
    assert store.claim(event(generation=8)) == 1


def test_the_claim_dofn_skips_events_it_cannot_start(settings):
    fn = _ClaimFn(settings)
    fn.setup()
    try:
        assert [c.attempt for c in fn.process(event(trigger="pubsub:1"))] == [1]
        assert list(fn.process(event(trigger="pubsub:2"))) == []  # leased by the first
        assert (event().uri, event().generation, 1) in runtime.leases(settings).held()
    finally:
        runtime.close()


def test_the_lease_keeper_renews_live_leases_and_lets_released_ones_lapse(store, settings):
    first, second = event("one.csv"), event("two.csv")
    keeper = LeaseKeeper(store)
    for ev in (first, second):
        keeper.hold(ev, store.claim(ev))
    before = dict(query(settings.dsn, "SELECT source_uri, lease_until FROM qa_files"))
    store.release(second, 1)  # e.g. its answers CSV could not be written
    time.sleep(0.05)
    keeper.renew_now()
    after = dict(query(settings.dsn, "SELECT source_uri, lease_until FROM qa_files"))
    assert after[first.uri] > before[first.uri]
    assert keeper.held() == {(first.uri, first.generation, 1)}
    assert store.claim(event("two.csv", trigger="sweep:5")) == 2  # claimable again
    keeper.stop()


# --- the assembly: one completion per file version ------------------------------------------------

def test_two_overlapping_attempts_complete_the_file_once_with_the_current_attempts_rows(store, settings):
    ev = event()
    old = start(store, ev, 6, 2)            # attempt 1: chunks 0, 1, 2
    worker_a, worker_b = Bundles(settings), Bundles(settings)
    worker_a.run(*outcomes(old[0], "old"))
    expire_lease(settings.dsn, ev)          # its worker stalled: the sweeper starts attempt 2
    new = start(store, event(trigger="sweep:1"), 6, 2)
    assert [c.attempt for c in new] == [2, 2, 2]
    # The two attempts interleave on two workers; attempt 1 even finishes all its chunks.
    worker_b.run(*outcomes(new[0], "new"))
    worker_a.run(*outcomes(old[1], "old"), *outcomes(old[2], "old"))
    worker_b.run(*outcomes(new[2], "new"))
    assert worker_a.emitted == [] and worker_b.emitted == []
    worker_b.run(*outcomes(new[1], "new"))
    assert [(c.event.key, c.attempt, c.row_count) for c in worker_b.emitted] == [(ev.key, 2, 6)]
    assert worker_a.emitted == []
    # Rows of chunks 1 and 2 are attempt 2's; chunk 0 was rewritten by attempt 2 as well.
    assert query(settings.dsn, "SELECT string_agg(answer, ',' ORDER BY row_index) FROM qa_answers") == [
        ("new0,new1,new2,new3,new4,new5",)]
    # A straggler of attempt 1 arriving now changes nothing and hands nothing on.
    assert worker_a.run(*outcomes(old[1], "old")) == []
    assert query(settings.dsn, "SELECT count(*) FROM qa_answers WHERE answer LIKE %s", ("old%",)) == [(0,)]


def test_redelivered_and_split_chunks_are_counted_once(store, settings):
    ev = event()
    (chunk,) = start(store, ev, 4, 4)
    parts = outcomes(chunk)
    worker = Bundles(settings)
    assert worker.run(parts[0], parts[1]) == []       # half a chunk (stateful batching split it)
    assert worker.run(parts[1]) == []                 # a redelivered row
    (completed,) = worker.run(parts[2], parts[3], parts[0])
    assert (completed.attempt, completed.row_count) == (1, 4)
    assert query(settings.dsn, "SELECT count(*), count(DISTINCT row_index) FROM qa_answers") == [(4, 4)]
    assert query(settings.dsn, "SELECT chunks_done, chunk_count FROM qa_files") == [(1, 1)]


def test_a_bundle_retried_after_its_commit_still_hands_the_file_on(store, settings):
    """Dataflow discards a failed bundle's outputs but not its commit; the retry must emit again."""
    (chunk,) = start(store, event(), 3, 3)
    first = Bundles(settings).run(*outcomes(chunk))   # committed; imagine the bundle then failed
    retry = Bundles(settings).run(*outcomes(chunk))
    assert len(first) == 1 and retry == first


def test_each_commit_reads_only_its_own_chunks(store, settings, monkeypatch):
    """No O(N^2) re-reads: the rows a commit reads back do not grow with the file."""
    (ev, chunks) = (event(), None)
    chunks = start(store, ev, 400, 2)                 # 200 chunks
    fetched: list[int] = []
    original = pg_answers.AnswerQueries._commit_file      # pylint: disable=protected-access

    def counting(self, conn, batch):
        class Counting:
            def __init__(self, inner):
                self._inner = inner

            def execute(self, *args, **kwargs):
                cursor = self._inner.execute(*args, **kwargs)
                if cursor.description is not None:  # a query: count what it sends back
                    rows = cursor.fetchall()
                    fetched.append(len(rows))
                    return _Replay(rows)
                return cursor

            def cursor(self):
                return self._inner.cursor()
        return original(self, Counting(conn), batch)
    monkeypatch.setattr(pg_answers.AnswerQueries, "_commit_file", counting)
    worker = Bundles(settings)
    for chunk in chunks:
        worker.run(*outcomes(chunk))
    assert len(worker.emitted) == 1
    # Per commit: the file's row (1), its own chunk's bitmap (0 or 1) and the updated count (1).
    assert max(fetched) <= 1 and sum(fetched) <= 3 * len(chunks)


class _Replay:
    def __init__(self, rows):
        self._rows = rows

    def fetchone(self):
        return self._rows[0] if self._rows else None

    def fetchall(self):
        return self._rows


# --- a file that never finishes -----------------------------------------------------------------

class Listing:
    """A storage client whose bucket listing the test sets (or makes fail, with ``failure``)."""

    def __init__(self, infos: list[ObjectInfo]):
        self.infos = infos
        self.failure: Exception | None = None

    def list(self, pattern: str) -> list[ObjectInfo]:
        if self.failure:
            raise self.failure
        return list(self.infos)

    def list_pages(self, pattern: str, page_size: int):
        listed = self.list(pattern)
        for start in range(0, len(listed), page_size):
            yield listed[start:start + page_size]

    def close(self) -> None:
        pass


def test_the_sweep_retries_a_stalled_file_and_abandons_one_whose_source_is_gone(settings):
    stalled, vanished = event("stalled.csv"), event("vanished.csv")
    listing = Listing([ObjectInfo(stalled.uri, stalled.generation, 100, time.time() - 3600)])
    with runtime.override(storage_factory=lambda _settings: listing):
        store = runtime.postgres(settings)
        for ev in (stalled, vanished):
            chunks = start(store, ev, 4, 2)
            Bundles(settings).run(*outcomes(chunks[0]))   # half done, then its worker died
        sweep = _SweepFn(SweepSettings(bucket=BUCKET, interval_secs=60, grace_secs=0, incoming_prefix="incoming/"), settings,
                         StorageSettings())
        sweep.setup()
        assert list(sweep.process("tick-1")) == []        # both leases are live: nothing to do
        for ev in (stalled, vanished):
            expire_lease(settings.dsn, ev)
        swept = list(sweep.process("tick-2"))             # the GC timer fired
    assert [(e.uri, e.trigger) for e in swept] == [(stalled.uri, "sweep:tick-2")]
    assert query(settings.dsn, "SELECT source_uri, status, error FROM qa_files ORDER BY 1") == [
        (stalled.uri, "received", None), (vanished.uri, "failed", ABANDONED_REASON)]
    # No chunk records are left behind for the abandoned file.
    assert query(settings.dsn, "SELECT DISTINCT source_uri FROM qa_chunks") == [(stalled.uri,)]


# --- the sweep's schedule: a drain-safe event-time loop -------------------------------------------

class _Timer:
    def __init__(self):
        self.at = None

    def set(self, timestamp):
        self.at = timestamp


class _State:
    def __init__(self, value=None):
        self.value = value

    def read(self):
        return self.value

    def write(self, value):
        self.value = value

    def clear(self):
        self.value = None


def test_the_schedule_ticks_every_interval_and_stops_when_a_drain_passes_the_clock():
    now = [1_000_000.0]
    fn = _SweepScheduleFn(60.0, clock=lambda: now[0])
    timer, armed = _Timer(), _State()
    assert fn.process(("sweep", 0), timestamp=Timestamp.of(5), armed=armed, tick=timer) is None
    assert timer.at == Timestamp.of(5) and armed.read() is True   # the start-up tick
    assert fn.process(("sweep", 0), timestamp=Timestamp.of(6), armed=armed, tick=timer) is None
    assert timer.at == Timestamp.of(5)                            # armed once only

    ticks = list(fn.on_tick(fired=timer.at, armed=armed, tick=timer))   # on time
    assert ticks == ["1000000.000"] and timer.at == Timestamp.of(now[0] + 60)
    now[0] += 61
    assert list(fn.on_tick(fired=timer.at, armed=armed, tick=timer)) == ["1000061.000"]
    due = timer.at
    now[0] += 10                                                   # a drain: the watermark jumps to
    assert list(fn.on_tick(fired=due, armed=armed, tick=timer)) == []   # infinity, the timer fires early
    assert timer.at == due and armed.read() is None               # not re-armed


_TICKS: list[str] = []


def _record_tick(tick: str) -> None:
    _TICKS.append(tick)


def test_a_streaming_run_with_the_schedule_finishes_when_its_input_ends():
    """With the watermark at infinity (what a drain does), the loop ends and so does the pipeline.

    A loop that re-armed itself for ever would keep this run from finishing (the test's timeout).
    The ticks are recorded in this process: ``assert_that`` would count them as late data.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream

    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    stream = (TestStream().add_elements([beam.window.TimestampedValue(("sweep", 0), time.time())])
              .advance_watermark_to_infinity())
    _TICKS.clear()
    with beam.Pipeline(options=options) as p:
        _ = (p | stream
             | beam.ParDo(_SweepScheduleFn(3600.0)).with_input_types(beam.typehints.KV[str, int])
             | beam.Map(_record_tick))
    assert len(_TICKS) == 1, _TICKS  # the start-up sweep, then the drain stopped the loop


# --- an ended attempt stays ended -----------------------------------------------------------------

def test_an_ended_attempt_is_never_renewed_by_a_late_chunk_commit_or_the_lease_keeper(store, settings):
    from beam_qa import metrics
    from beam_qa.answering import _StartChunkFn  # pylint: disable=protected-access
    ev = event()
    chunks = start(store, ev, 4, 2)
    keeper = LeaseKeeper(store)
    keeper.hold(ev, 1)
    worker = Bundles(settings)
    worker.run(*outcomes(chunks[0]))                # chunk 0 committed before the failure
    assert store.release(ev, 1, "an error that failed its rows as a batch (RuntimeError: boom)")
    assert not store.release(ev, 1, "a second failure")  # already ended: the first ending stays
    # Late work of the ended attempt: a retried bundle's chunk, another worker's commit, the keeper.
    assert not store.heartbeat(ev, 1)
    start_fn = _StartChunkFn(settings)
    start_fn.setup()
    with metrics.local_tally() as tally:
        assert list(start_fn.process(chunks[1])) == []
    assert tally.counts.get("chunks_superseded") == 1
    assert worker.run(*outcomes(chunks[1])) == []   # its rows are stale: the file never completes
    keeper.renew_now()
    assert keeper.held() == set()
    assert not store.record_manifest(ev, 1, ["id", "question", "context"], 4, 2)
    assert query(settings.dsn, "SELECT status, attempt, lease_until <= now(), chunks_done, attempt_error "
                               "FROM qa_files") == [
        ("received", 1, True, 1, "an error that failed its rows as a batch (RuntimeError: boom)")]
    # It is claimable at once: the next attempt starts, and it is renewed as usual.
    retry = start(store, event(trigger="sweep:2"), 4, 2)
    assert [c.attempt for c in retry] == [2, 2]
    assert store.heartbeat(ev, 2)
    keeper.stop()


@pytest.mark.parametrize("late", ["renew", "heartbeat"])
def test_a_renewal_whose_transaction_began_before_the_release_does_not_revive_it(store, settings, late):
    """``now()`` is the transaction's start: a renewal that began first must still see the release."""
    import psycopg
    from beam_qa.store.attempts import HEARTBEAT, RENEW_LEASES
    ev = event()
    start(store, ev, 2, 2)
    with psycopg.connect(settings.dsn) as slow:
        slow.execute("SELECT now()")                # its transaction (and its now()) begins here
        time.sleep(0.05)
        assert store.release(ev, 1)                 # committed by another connection meanwhile
        if late == "renew":
            renewed = slow.execute(RENEW_LEASES, (60, [ev.uri], [ev.generation], [1])).fetchall()
        else:
            renewed = slow.execute(HEARTBEAT, (60, ev.uri, ev.generation, 1)).rowcount
        slow.commit()
    assert not renewed
    assert query(settings.dsn, "SELECT lease_until < now() FROM qa_files") == [(True,)]
    assert store.claim(event(trigger="sweep:2")) == 2


def test_rows_postgresql_refuses_end_their_files_attempt_and_the_bundles_other_files_complete(store, settings):
    from beam_qa import metrics
    good, bad = event("good.csv"), event("bad.csv")
    (good_chunk,) = start(store, good, 2, 2)
    (bad_chunk,) = start(store, bad, 2, 2)
    refused = [row._replace(start=2 ** 31) for row in outcomes(bad_chunk)]  # over int: a DataError, every time
    with metrics.local_tally() as tally:
        emitted = Bundles(settings).run(*refused, *outcomes(good_chunk))  # the bundle does not fail
    assert [(c.event.key, c.attempt) for c in emitted] == [(good.key, 1)]
    (status, ended, ending), = query(settings.dsn, "SELECT status, lease_until <= now(), attempt_error FROM qa_files "
                                                   "WHERE source_uri = %s", (bad.uri,))
    assert (status, ended) == ("received", True)
    assert ending.startswith("an error while storing its rows (NumericValueOutOfRange: integer out of range"), ending
    assert tally.counts.get("attempts_ended") == 1
    assert store.claim(event("bad.csv", trigger="sweep:2")) == 2
