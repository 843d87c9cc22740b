"""A new model without stopping the stream: workers pick up the newest published model directory.

Publishing a model means copying its directory (weights, tokenizer, ``config.json``) under a
watched prefix, then its manifest (``beam_qa_manifest.json``, ``beam_qa/qa/model_manifest.py``)
last, for example ``gs://MODELS_BUCKET/models/2026-11-22/``. With ``--model_watch_pattern
gs://MODELS_BUCKET/models/*/beam_qa_manifest.json``, each worker process keeps one
``ModelWatcher`` that lists the pattern every ``--model_watch_interval_secs`` and, when a newer
manifest appears, loads that directory completely in the background, checked against its
manifest, and only then swaps it in: a batch already running finishes with the model it started
with, the next one gets the new model, no row is ever answered by a half-loaded model, and the
old model is dropped from the process-wide cache (no second copy kept once its last batch is
done). A model that does not match its manifest is refused (a log line, ``models_refused``) and
not tried again until it is published again; the running model stays in place. Every answer
records the model that produced it (``qa_answers.model``, the answers CSV's ``model`` column).

Why not RunInference's own model-update side input (``WatchFilePattern`` or
``model_metadata_pcoll``)? The Python DirectRunner never delivers a triggered global-window side
input to a streaming main input (tried with Beam 2.77: the main input waited for ever), so it
could not work on the local stack; this watcher behaves the same on every runner. The handler
still implements ``update_model_path`` (RunInference's hook), and the watcher goes through the
same process-wide model cache.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

from beam_qa.errors import UsageError
from beam_qa.qa.model_manifest import MANIFEST, ModelRefusedError

_LOGGER = logging.getLogger(__name__)

MARKER = MANIFEST


class NoPublishedModelError(UsageError):
    """The watch pattern matches no published model (a manifest), or none that passes its check."""


@dataclasses.dataclass(frozen=True)
class PublishedModel:
    """A model directory under the watched prefix, and when its manifest was written."""

    directory: str
    published: float


def published_models(pattern: str, storage) -> list[PublishedModel]:
    """The directories of the manifests matching ``pattern``, newest first (ties: the larger name)."""
    found = [PublishedModel(info.uri.rsplit("/", 1)[0], info.updated) for info in storage.list(pattern)
             if info.uri.rsplit("/", 1)[-1] == MARKER]
    return sorted(found, key=lambda m: (m.published, m.directory), reverse=True)


def newest_published(pattern: str, storage) -> PublishedModel | None:
    """The directory of the newest manifest matching ``pattern``, or None."""
    found = published_models(pattern, storage)
    return found[0] if found else None


def check_pattern(pattern: str) -> None:
    """Raises UsageError unless ``pattern`` names manifests (what marks a complete, published model)."""
    if not pattern.endswith("/" + MARKER):
        raise UsageError(f"--model_watch_pattern {pattern!r} must end with /{MARKER} (for example "
                         f"gs://my-models/models/*/{MARKER}): a model counts as published once its manifest "
                         "is written, last (python -m beam_qa.qa.model_manifest; docs/deploy.md).")


class ModelWatcher:
    """Holds the newest published model of one pattern in this process, and swaps in newer ones.

    Args:
        pattern: glob of manifests (``*`` within a segment, ``**`` across).
        interval_secs: how often to look for a newer one.
        load: loads a model directory completely (the process-wide ``model_store.load_model``).
        evict: drops a model directory from the process-wide cache.
        storage: lists the pattern (``beam_qa.storage.Storage``).
    """

    def __init__(self, pattern: str, interval_secs: float, load: Callable, evict: Callable[[str], None], storage):
        self._pattern = pattern
        self._interval = interval_secs
        self._load = load
        self._evict = evict
        self._storage = storage
        self._lock = threading.Lock()
        self._current = None
        self._directory: str | None = None
        # Refused publications, not tried again until their manifest is written again.
        self._refused: set[PublishedModel] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Swaps happen in this watcher's thread, outside any bundle, where Beam drops a metric
        # update: the handler reports them with its next batch (take_swaps), once per process.
        self._unreported_swaps = 0

    def start(self) -> None:
        """Loads the newest published model that passes its check now, then watches for newer ones."""
        found = published_models(self._pattern, self._storage)
        if not found:
            raise NoPublishedModelError(f"no model is published under {self._pattern}: copy a model directory "
                                        f"there, its {MARKER} last")
        if not any(self._swap_to(published) for published in found):
            raise NoPublishedModelError(f"no model published under {self._pattern} matches its {MARKER}: "
                                        "publish one again (docs/deploy.md)")
        self._thread = threading.Thread(target=self._loop, name="beam_qa-model-watch", daemon=True)
        self._thread.start()

    def current(self):
        """The model every new batch should use."""
        with self._lock:
            return self._current

    def take_swaps(self) -> int:
        """The swaps not reported yet, now counted as reported (``metrics.MODEL_SWAPS``)."""
        with self._lock:
            swaps, self._unreported_swaps = self._unreported_swaps, 0
            return swaps

    @property
    def directory(self) -> str | None:
        with self._lock:
            return self._directory

    def check_now(self) -> bool:
        """Looks once for a newer model and swaps it in; True when it did."""
        newest = newest_published(self._pattern, self._storage)
        if newest is None or newest.directory == self.directory or newest in self._refused:
            return False
        return self._swap_to(newest)

    def _swap_to(self, published: PublishedModel) -> bool:
        """Loads ``published`` completely, then makes it current; False when it is refused."""
        directory = published.directory
        try:
            loaded = self._load(directory)  # completely, before anyone can see it
        except ModelRefusedError:
            # Counted and logged where it was checked (model_store); it is not tried again until
            # it is published again, and the running model stays.
            self._refused.add(published)
            _LOGGER.error("beam_qa did not switch to %s: it was refused; the model in place stays (%s)", directory,
                          self.directory or "none yet: an older one is tried")
            return False
        with self._lock:
            previous, self._directory, self._current = self._directory, directory, loaded
            if previous is not None:
                self._unreported_swaps += 1
        if previous is not None:
            self._evict(previous)
            _LOGGER.info("beam_qa switched to model %s (was %s)", directory, previous)
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check_now()
            except Exception:  # pylint: disable=broad-except
                # A listing or a load that fails keeps the current model; the next look tries again.
                _LOGGER.warning("looking for a newer model under %s failed; keeping %s", self._pattern,
                                self.directory, exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def watcher(pattern: str, interval_secs: float, device: str, precision: str, runtime_name: str,
            storage) -> ModelWatcher:
    """This process's started watcher for ``pattern`` on ``device`` at ``precision`` with ``runtime_name``.

    The process's runtime (``beam_qa.runtime``) holds it and stops it on ``close()``.
    """
    from beam_qa import runtime
    from beam_qa.qa import model_store

    def start() -> ModelWatcher:
        found = ModelWatcher(pattern, interval_secs,
                             load=lambda directory: model_store.load_model(directory, device, precision, runtime_name),
                             evict=model_store.evict, storage=storage)
        found.start()
        return found
    return runtime.current().watcher((pattern, interval_secs, device, precision, runtime_name), start)
