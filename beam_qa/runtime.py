"""What one worker process owns: its clients, models, model watchers and model-call slots.

A Dataflow worker process runs many bundles at once and creates a DoFn instance, with its own
``setup()``, for each; the DirectRunner even re-creates DoFns per bundle. Anything expensive or
limited therefore belongs to the process: one PostgreSQL pool (opening it checks the schema, so
DDL runs at most once per process) and its lease keeper, one GCS client, one copy of each model,
one watcher per model pattern, one semaphore bounding concurrent model calls. ``WorkerRuntime``
holds them all and ``close()`` gives every one back (local runs call it when the pipeline ends).

DoFns reach them through ``WorkerDoFn.setup()`` and never close them. Tests swap the client
factories with ``override()``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam

from beam_qa.settings import PostgresSettings, StorageSettings
from beam_qa.storage import Storage
from beam_qa.store.leases import LeaseKeeper
from beam_qa.store.postgres import PostgresStore

_LOGGER = logging.getLogger(__name__)


def _open_postgres(settings: PostgresSettings) -> PostgresStore:
    connect_kwargs = {}
    if settings.password_secret:
        # Read on the worker, never while the graph is built (beam_qa/secret_manager.py).
        from beam_qa import secret_manager
        connect_kwargs["password"] = secret_manager.access_secret_version(settings.password_secret)
    store = PostgresStore(settings, connect_kwargs)
    try:
        store.open()
    except BaseException:
        store.close()
        raise
    return store


def _open_storage(settings: StorageSettings) -> Storage:
    return Storage(anonymous=settings.anonymous or None)


class WorkerRuntime:
    """The process-wide resources of one worker process; ``close()`` releases them all.

    Args:
        postgres_factory: opens a store for a ``PostgresSettings`` (tests pass fakes).
        storage_factory: makes a storage client for a ``StorageSettings``.
    """

    def __init__(self, postgres_factory: Callable[[PostgresSettings], PostgresStore] = _open_postgres,
                 storage_factory: Callable[[StorageSettings], Storage] = _open_storage):
        self.postgres_factory = postgres_factory
        self.storage_factory = storage_factory
        # Re-entrant: opening a store may need storage (a secret), a watcher loads models.
        self._lock = threading.RLock()
        self._stores: dict[PostgresSettings, PostgresStore] = {}
        self._keepers: dict[PostgresSettings, LeaseKeeper] = {}
        self._storages: dict[StorageSettings, Storage] = {}
        self._watchers: dict[tuple, Any] = {}
        self._slots: tuple[int, threading.BoundedSemaphore] | None = None
        # Loaded models by (model, device, precision, runtime); its own lock, since a load takes
        # minutes and must not block the clients (beam_qa/qa/model_store.py).
        self.models: dict[tuple[str, str, str, str], Any] = {}
        self.models_lock = threading.Lock()
        self.model_loads = 0

    def postgres(self, settings: PostgresSettings) -> PostgresStore:
        """This process's store for ``settings``, opened (and the schema checked) on first use."""
        with self._lock:
            store = self._stores.get(settings)
            if store is None:
                store = self._stores[settings] = self.postgres_factory(settings)
                _LOGGER.info("beam_qa PostgreSQL pool opened (at most %d connections in this process)",
                             settings.pool_size)
            return store

    def leases(self, settings: PostgresSettings) -> LeaseKeeper:
        """This process's lease keeper for the database in ``settings``."""
        with self._lock:
            keeper = self._keepers.get(settings)
            if keeper is None:
                keeper = self._keepers[settings] = LeaseKeeper(self.postgres(settings))
            return keeper

    def storage(self, settings: StorageSettings) -> Storage:
        """This process's GCS / local file client for ``settings``."""
        with self._lock:
            found = self._storages.get(settings)
            if found is None:
                found = self._storages[settings] = self.storage_factory(settings)
            return found

    def watcher(self, key: tuple, start: Callable[[], Any]) -> Any:
        """This process's started model watcher for ``key``; ``start`` makes and starts it once."""
        with self._lock:
            found = self._watchers.get(key)
            if found is None:
                found = self._watchers[key] = start()
            return found

    def forward_slots(self, size: int) -> threading.BoundedSemaphore:
        """The semaphore that bounds the model calls running at once in this process.

        A worker process runs one model call per concurrent bundle; with N intra-op threads each,
        more calls at once than the process's CPUs allow would oversubscribe them.
        """
        size = max(1, size)
        with self._lock:
            if self._slots is None or self._slots[0] != size:
                self._slots = (size, threading.BoundedSemaphore(size))
            return self._slots[1]

    def close(self) -> None:
        """Stops the watchers and lease keepers, closes every client, drops the models."""
        with self._lock:
            watchers, keepers = list(self._watchers.values()), list(self._keepers.values())
            stores, storages = list(self._stores.values()), list(self._storages.values())
            self._watchers.clear()
            self._keepers.clear()
            self._stores.clear()
            self._storages.clear()
            self._slots = None
        with self.models_lock:
            self.models.clear()
        for item in [*watchers, *keepers]:
            item.stop()
        for client in [*stores, *storages]:
            client.close()


_RUNTIME = WorkerRuntime()


def current() -> WorkerRuntime:
    """This process's runtime."""
    return _RUNTIME


def postgres(settings: PostgresSettings) -> PostgresStore:
    """This process's store for ``settings`` (``WorkerRuntime.postgres``)."""
    return _RUNTIME.postgres(settings)


def leases(settings: PostgresSettings) -> LeaseKeeper:
    """This process's lease keeper (``WorkerRuntime.leases``)."""
    return _RUNTIME.leases(settings)


def storage(settings: StorageSettings) -> Storage:
    """This process's storage client (``WorkerRuntime.storage``)."""
    return _RUNTIME.storage(settings)


def close() -> None:
    """Releases everything this process holds (``WorkerRuntime.close``)."""
    _RUNTIME.close()


@contextlib.contextmanager
def override(*, postgres_factory: Callable[[PostgresSettings], PostgresStore] | None = None,
             storage_factory: Callable[[StorageSettings], Storage] | None = None) -> Iterator[None]:
    """Replaces the client factories (tests), closing what was opened meanwhile on exit."""
    saved = (_RUNTIME.postgres_factory, _RUNTIME.storage_factory)
    _RUNTIME.close()
    _RUNTIME.postgres_factory = postgres_factory or _RUNTIME.postgres_factory
    _RUNTIME.storage_factory = storage_factory or _RUNTIME.storage_factory
    try:
        yield
    finally:
        _RUNTIME.close()
        _RUNTIME.postgres_factory, _RUNTIME.storage_factory = saved


class WorkerDoFn(beam.DoFn):
    """A DoFn that uses this process's PostgreSQL store and/or storage client.

    Args:
        pg: the database settings, when the DoFn writes or reads PostgreSQL.
        files: the storage settings, when it reads or writes files.
    """

    def __init__(self, *, pg: PostgresSettings | None = None, files: StorageSettings | None = None):
        super().__init__()
        self._pg_settings = pg
        self._files_settings = files
        self.pg: PostgresStore | None = None
        self.files: Storage | None = None

    def setup(self):
        if self._pg_settings is not None:
            self.pg = postgres(self._pg_settings)
        if self._files_settings is not None:
            self.files = storage(self._files_settings)
