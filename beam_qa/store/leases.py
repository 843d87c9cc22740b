"""The lease keeper: renews the leases of the attempts this worker process holds."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from beam_qa.records import FileEvent

if TYPE_CHECKING:
    from beam_qa.store.postgres import PostgresStore

_LOGGER = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the leases of the attempts this worker process claimed, while the process lives.

    A background thread every ``lease_secs / 3``: a live process keeps its attempts even when
    their chunks wait behind a backlog, and a process that dies stops renewing, so the
    sweeper can start another attempt once the lease has expired. An attempt is dropped from
    the set once it is finished, superseded or released (its renewal then updates no row).
    """

    def __init__(self, store: PostgresStore):
        self._store = store
        self._held: set[tuple[str, int, int]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, event: FileEvent, attempt: int) -> None:
        with self._lock:
            self._held.add((event.uri, event.generation, attempt))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="beam_qa-leases", daemon=True)
                self._thread.start()

    def held(self) -> set[tuple[str, int, int]]:
        with self._lock:
            return set(self._held)

    def renew_now(self) -> None:
        held = self.held()
        if not held:
            return
        renewed = self._store.renew(held)
        with self._lock:
            # Keep what was added meanwhile; drop what the database no longer lets us hold.
            self._held -= held - renewed

    def _loop(self) -> None:
        interval = max(self._store.settings.lease_secs / 3, 0.5)
        while not self._stop.wait(interval):
            try:
                self.renew_now()
            except Exception as exc:  # pylint: disable=broad-except
                # An outage: the leases may lapse, which only lets another attempt start later.
                _LOGGER.warning("could not renew %d leases (%s); trying again in %.0fs", len(self.held()),
                                type(exc).__name__, interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
