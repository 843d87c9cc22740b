"""Worker-process clients: one PostgreSQL pool (and lease keeper) and one GCS client per process.

A Dataflow worker process runs many bundles at once and creates a DoFn instance, with its own
``setup()``, for each; the DirectRunner even re-creates DoFns per bundle. Anything expensive or
limited therefore belongs to the process, like the model in ``qa/model_store.py``: the DoFns
below look their clients up here in ``setup()`` and never close them. A pool opens with the
schema check, so DDL runs at most once per process (and only when a migration is missing).

``WorkerDoFn`` is the one base class for DoFns that need these clients. Tests swap the
factories with ``override()`` to use fakes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

import apache_beam as beam

from beam_qa.settings import PostgresSettings, StorageSettings
from beam_qa.sinks.postgres import LeaseKeeper, PostgresStore
from beam_qa.storage import Storage

_LOGGER = logging.getLogger(__name__)

_LOCK = threading.Lock()
_STORES: dict[PostgresSettings, PostgresStore] = {}
_KEEPERS: dict[PostgresSettings, LeaseKeeper] = {}
_STORAGES: dict[StorageSettings, Storage] = {}


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


_postgres_factory: Callable[[PostgresSettings], PostgresStore] = _open_postgres
_storage_factory: Callable[[StorageSettings], Storage] = _open_storage


def postgres(settings: PostgresSettings) -> PostgresStore:
    """This process's store for ``settings``, opened (and the schema checked) on first use."""
    with _LOCK:
        store = _STORES.get(settings)
        if store is None:
            store = _STORES[settings] = _postgres_factory(settings)
            _LOGGER.info("beam_qa PostgreSQL pool opened (at most %d connections in this process)",
                         settings.pool_size)
        return store


def leases(settings: PostgresSettings) -> LeaseKeeper:
    """This process's lease keeper for the database in ``settings``."""
    store = postgres(settings)
    with _LOCK:
        keeper = _KEEPERS.get(settings)
        if keeper is None:
            keeper = _KEEPERS[settings] = LeaseKeeper(store)
        return keeper


def storage(settings: StorageSettings) -> Storage:
    """This process's GCS / local file client for ``settings``."""
    with _LOCK:
        found = _STORAGES.get(settings)
        if found is None:
            found = _STORAGES[settings] = _storage_factory(settings)
        return found


def close_all() -> None:
    """Closes every client of this process (local runs call it when the pipeline has finished)."""
    with _LOCK:
        keepers, stores, storages = list(_KEEPERS.values()), list(_STORES.values()), list(_STORAGES.values())
        _KEEPERS.clear()
        _STORES.clear()
        _STORAGES.clear()
    for keeper in keepers:
        keeper.stop()
    for store in stores:
        store.close()
    for client in storages:
        client.close()


@contextlib.contextmanager
def override(*, postgres_factory: Callable[[PostgresSettings], PostgresStore] | None = None,
             storage_factory: Callable[[StorageSettings], Storage] | None = None) -> Iterator[None]:
    """Replaces the client factories (tests), closing what was opened meanwhile on exit."""
    global _postgres_factory, _storage_factory
    saved = (_postgres_factory, _storage_factory)
    close_all()
    _postgres_factory = postgres_factory or _postgres_factory
    _storage_factory = storage_factory or _storage_factory
    try:
        yield
    finally:
        close_all()
        _postgres_factory, _storage_factory = saved


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
