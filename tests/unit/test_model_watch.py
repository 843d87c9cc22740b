"""The model watcher: a manifest marks a model published; a refused model never replaces the running one.

The storage listing and the loader are stand-ins here (the loader refuses what a real manifest
check would refuse: tests/integration/test_hostile_input.py checks real ones against
fake-gcs-server, tests/e2e/test_model_update.py the whole stream).
"""

from __future__ import annotations

import pytest

from beam_qa.errors import UsageError
from beam_qa.qa.model_manifest import MANIFEST, ModelRefusedError
from beam_qa.qa.model_watch import ModelWatcher, NoPublishedModelError, check_pattern
from beam_qa.storage import ObjectInfo

PATTERN = f"gs://models-bucket/models/*/{MANIFEST}"


class Listing:
    def __init__(self):
        self.infos: list[ObjectInfo] = []

    def publish(self, name: str, at: float) -> str:
        directory = f"gs://models-bucket/models/{name}"
        self.infos = [i for i in self.infos if not i.uri.startswith(directory + "/")]
        self.infos.append(ObjectInfo(f"{directory}/{MANIFEST}", 1, 10, at))
        self.infos.append(ObjectInfo(f"{directory}/config.json", 1, 10, at - 0.5))  # not a marker
        return directory

    def list(self, pattern: str) -> list[ObjectInfo]:
        assert pattern == PATTERN
        return list(self.infos)


@pytest.fixture
def watched():
    listing, loads, evicted = Listing(), [], []

    def load(directory: str):
        loads.append(directory)
        if "tampered" in directory:
            raise ModelRefusedError(f"refused the model {directory!r}: model.safetensors does not match")
        return f"model at {directory}"
    return listing, loads, evicted, ModelWatcher(PATTERN, 3600, load, evicted.append, listing)


def test_a_refused_model_leaves_the_running_one_in_place_and_is_not_tried_again(watched):
    listing, loads, evicted, watcher = watched
    good = listing.publish("2026-01-a", 1.0)
    watcher.start()
    try:
        assert watcher.current() == f"model at {good}"
        tampered = listing.publish("2026-02-tampered", 2.0)
        assert watcher.check_now() is False
        assert watcher.current() == f"model at {good}" and watcher.directory == good and evicted == []
        assert watcher.check_now() is False and loads.count(tampered) == 1  # not fetched again every interval
        listing.publish("2026-02-tampered", 3.0)  # published again: looked at again
        assert watcher.check_now() is False and loads.count(tampered) == 2
        newer = listing.publish("2026-03-b", 4.0)
        assert watcher.check_now() is True
        assert watcher.current() == f"model at {newer}" and evicted == [good]
    finally:
        watcher.stop()


def test_at_start_a_refused_newest_model_gives_way_to_an_older_good_one(watched):
    listing, _, _, watcher = watched
    good = listing.publish("2026-01-a", 1.0)
    listing.publish("2026-02-tampered", 2.0)
    watcher.start()
    try:
        assert watcher.directory == good
    finally:
        watcher.stop()


def test_at_start_no_good_model_is_a_clear_error(watched):
    listing, _, _, watcher = watched
    listing.publish("2026-02-tampered", 2.0)
    with pytest.raises(NoPublishedModelError, match="matches its beam_qa_manifest.json"):
        watcher.start()


@pytest.mark.parametrize("pattern", ["gs://b/models/*/config.json", "gs://b/models/*"])
def test_the_pattern_must_name_manifests(pattern):
    with pytest.raises(UsageError, match=f"must end with /{MANIFEST}"):
        check_pattern(pattern)
    check_pattern(PATTERN)
