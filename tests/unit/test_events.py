"""GCS notifications -> FileEvents, and where outputs go."""

import json

import pytest

from beam_qa.events import derived_location, local_file_event, parse_notification, pattern_base_dir

ATTRS = {"eventType": "OBJECT_FINALIZE", "bucketId": "qa-local", "objectId": "incoming/sub/a.csv",
         "objectGeneration": "1795313659049626", "payloadFormat": "JSON_API_V1"}
DATA = json.dumps({"bucket": "qa-local", "name": "incoming/sub/a.csv", "generation": "1795313659049626",
                   "size": "42", "timeCreated": "2026-11-22T02:14:19.049588Z"}).encode()


def test_finalize_under_prefix_is_an_event():
    event, reason = parse_notification(DATA, ATTRS, "incoming/")
    assert reason == ""
    assert event.uri == "gs://qa-local/incoming/sub/a.csv"
    assert event.generation == 1795313659049626
    assert event.size == 42
    assert event.relative_name == "sub/a.csv"
    assert event.key == "gs://qa-local/incoming/sub/a.csv#1795313659049626"
    assert event.event_time == pytest.approx(1795313659.049588)


@pytest.mark.parametrize("change, reason", [
    ({"eventType": "OBJECT_DELETE"}, "not_finalize"),
    ({"eventType": "OBJECT_METADATA_UPDATE"}, "not_finalize"),
    ({"objectId": "answers/a.answers.csv"}, "other_prefix"),
    ({"objectId": "errors/a.csv"}, "other_prefix"),
    ({"objectId": "incoming/notes.txt"}, "not_csv"),
    ({"objectId": "incoming/folder/"}, "folder"),
    ({"objectGeneration": "abc"}, "malformed"),
])
def test_ignored_notifications_name_their_reason(change, reason):
    event, got = parse_notification(b"", {**ATTRS, **change}, "incoming/")
    assert event is None and got == reason


def test_uppercase_csv_suffix_counts():
    event, _ = parse_notification(b"", {**ATTRS, "objectId": "incoming/A.CSV"}, "incoming/")
    assert event is not None


def test_outputs_derive_from_the_source_name():
    event, _ = parse_notification(DATA, ATTRS, "incoming/")
    assert derived_location(event, "answers/", ".answers.csv") == "gs://qa-local/answers/sub/a.answers.csv"
    assert derived_location(event, "errors/") == "gs://qa-local/errors/sub/a.csv"
    assert derived_location(event, "gs://other/out/", ".answers.csv") == "gs://other/out/sub/a.answers.csv"


def test_local_outputs_resolve_against_the_input_directory(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("question,context\n")
    event = local_file_event(str(path), pattern_base_dir(str(tmp_path / "*.csv")))
    assert derived_location(event, "answers/", ".answers.csv") == str(tmp_path / "answers" / "a.answers.csv")
    assert derived_location(event, str(tmp_path / "out"), ".answers.csv") == str(tmp_path / "out" / "a.answers.csv")


def test_the_claim_token_is_the_message_id_or_the_same_stand_in_for_every_delivery():
    from apache_beam.io.gcp.pubsub import PubsubMessage

    from beam_qa.sources import _ParseNotificationFn  # pylint: disable=protected-access
    fn = _ParseNotificationFn("incoming/")
    (with_id,) = fn.process(PubsubMessage(DATA, ATTRS, message_id="1234"))
    assert with_id.trigger == "pubsub:1234"
    first, second = (next(iter(fn.process(PubsubMessage(DATA, ATTRS)))) for _ in range(2))
    assert first.trigger == second.trigger and first.trigger.startswith("pubsub:sha256-")
    (other,) = fn.process(PubsubMessage(DATA, {**ATTRS, "objectGeneration": "1795313659049627"}))
    assert other.trigger != first.trigger
