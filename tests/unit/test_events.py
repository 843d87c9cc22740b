"""GCS notifications -> FileEvents, and where outputs go."""

import json

import pytest

from beam_qa.events import (MAX_OBJECT_NAME_BYTES, FileEvent, answers_location, derived_location, local_file_event,
                            name_too_long, parse_notification, pattern_base_dir, quarantine_location)

ATTRS = {"eventType": "OBJECT_FINALIZE", "bucketId": "qa-local", "objectId": "incoming/sub/a.csv",
         "objectGeneration": "1795313659049626", "payloadFormat": "JSON_API_V1"}
DATA = json.dumps({"bucket": "qa-local", "name": "incoming/sub/a.csv", "generation": "1795313659049626",
                   "size": "42", "timeCreated": "2026-11-22T02:14:19.049588Z"}).encode()


def test_finalize_under_prefix_is_an_event():
    event, reason = parse_notification(DATA, ATTRS, "incoming/", bucket="qa-local")
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
    ({"bucketId": "someone-elses-bucket"}, "other_bucket"),
    ({"bucketId": "qa-local-2"}, "other_bucket"),
    ({"bucketId": ""}, "malformed"),
    ({"objectGeneration": ""}, "malformed"),
    ({"eventType": ""}, "malformed"),
    ({"payloadFormat": "NONE"}, "malformed"),
    ({"payloadFormat": ""}, "malformed"),
])
def test_ignored_notifications_name_their_reason(change, reason):
    event, got = parse_notification(b"", {**ATTRS, **change}, "incoming/", bucket="qa-local")
    assert event is None and got == reason


def test_uppercase_csv_suffix_counts():
    event, _ = parse_notification(b"", {**ATTRS, "objectId": "incoming/A.CSV"}, "incoming/", bucket="qa-local")
    assert event is not None


def test_outputs_derive_from_the_source_name():
    event, _ = parse_notification(DATA, ATTRS, "incoming/", bucket="qa-local")
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
    fn = _ParseNotificationFn("qa-local", "incoming/")
    (with_id,) = fn.process(PubsubMessage(DATA, ATTRS, message_id="1234"))
    assert with_id.trigger == "pubsub:1234"
    first, second = (next(iter(fn.process(PubsubMessage(DATA, ATTRS)))) for _ in range(2))
    assert first.trigger == second.trigger and first.trigger.startswith("pubsub:sha256-")
    (other,) = fn.process(PubsubMessage(b"", {**ATTRS, "objectGeneration": "1795313659049627"}))
    assert other.trigger != first.trigger


@pytest.mark.parametrize("missing", ["eventType", "bucketId", "objectId", "objectGeneration", "payloadFormat"])
def test_a_notification_without_an_expected_attribute_is_malformed_whatever_its_payload_says(missing):
    """The payload cannot stand in for an attribute: whoever can publish can write any payload."""
    attributes = {key: value for key, value in ATTRS.items() if key != missing}
    assert parse_notification(DATA, attributes, "incoming/", bucket="qa-local") == (None, "malformed")


@pytest.mark.parametrize("payload", [
    {"bucket": "someone-elses-bucket"}, {"name": "incoming/other.csv"}, {"generation": "1"}])
def test_a_payload_that_contradicts_the_attributes_is_malformed(payload):
    data = json.dumps({**json.loads(DATA), **payload}).encode()
    assert parse_notification(data, ATTRS, "incoming/", bucket="qa-local") == (None, "malformed")
    assert parse_notification(b"not json", ATTRS, "incoming/", bucket="qa-local") == (None, "malformed")
    assert parse_notification(b"[1]", ATTRS, "incoming/", bucket="qa-local") == (None, "malformed")


def test_a_notification_for_another_bucket_is_ignored_even_when_it_names_our_prefix():
    attributes = {**ATTRS, "bucketId": "victim"}
    data = json.dumps({**json.loads(DATA), "bucket": "victim"}).encode()
    assert parse_notification(data, attributes, "incoming/", bucket="qa-local") == (None, "other_bucket")


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_ignored_notifications_is_logged_once_per_interval(monkeypatch, caplog):
    from apache_beam.io.gcp.pubsub import PubsubMessage

    from beam_qa import sources
    clock = _Clock()
    monkeypatch.setattr(sources, "_IGNORED", sources.IgnoredNotifications(interval_secs=60.0, clock=clock))
    fn = sources._ParseNotificationFn("qa-local", "incoming/")  # pylint: disable=protected-access
    foreign = PubsubMessage(json.dumps({**json.loads(DATA), "bucket": "victim"}).encode(),
                            {**ATTRS, "bucketId": "victim"}, message_id="1")
    caplog.set_level("INFO", logger="beam_qa.sources")
    for _ in range(10_000):
        assert list(fn.process(foreign)) == []
    first = [r for r in caplog.records if r.name == "beam_qa.sources"]
    assert len(first) == 1 and first[0].levelname == "WARNING"
    assert "other_bucket 1" in first[0].getMessage() and "victim" in first[0].getMessage()
    clock.now += 59
    assert list(fn.process(foreign)) == []
    assert len([r for r in caplog.records if r.name == "beam_qa.sources"]) == 1
    clock.now += 1
    assert list(fn.process(foreign)) == []
    lines = [r.getMessage() for r in caplog.records if r.name == "beam_qa.sources"]
    assert len(lines) == 2 and "ignored 10001 notification(s)" in lines[1] and "other_bucket 10001" in lines[1]
    # A reason not seen before is logged at once; our own outputs' notifications are not a warning.
    (own,) = fn.process(PubsubMessage(DATA, ATTRS, message_id="2"))
    assert own.uri == "gs://qa-local/incoming/sub/a.csv"
    assert list(fn.process(PubsubMessage(b"", {**ATTRS, "objectId": "answers/a.answers.csv"}))) == []
    records = [r for r in caplog.records if r.name == "beam_qa.sources"]
    assert len(records) == 3 and records[2].levelname == "INFO" and "other_prefix 1" in records[2].getMessage()


# --- names that cannot finish -------------------------------------------------------------------

GENERATION = 1795313659049626


def _event(relative: str, bucket: str = "qa-local") -> FileEvent:
    return FileEvent(uri=f"gs://{bucket}/incoming/{relative}", generation=GENERATION, size=1,
                     root=f"gs://{bucket}/", relative_name=relative, event_time=0.0)


def _relative_with_answers_name_of(size: int) -> str:
    """A relative name of multi-byte characters whose answers object name is exactly ``size`` bytes."""
    fixed = len(f"answers/.{GENERATION}.answers.csv".encode())
    body = size - fixed
    # 2-, 3- and 4-byte characters, then ASCII to land on the byte count exactly.
    unit = "é€😀"  # 2 + 3 + 4 bytes
    stem = unit * (body // 9)
    stem += "x" * (body - len(stem.encode()))
    return stem + ".csv"


@pytest.mark.parametrize("size, too_long", [(MAX_OBJECT_NAME_BYTES, False), (MAX_OBJECT_NAME_BYTES + 1, True)])
def test_an_answers_name_over_1024_bytes_of_utf8_is_name_too_long(size, too_long):
    relative = _relative_with_answers_name_of(size)
    event = _event(relative)
    answers = answers_location(event, "answers/")
    assert len(answers[len("gs://qa-local/"):].encode("utf-8")) == size
    assert len(relative) < 700  # characters: only the bytes pass the limit
    reason = name_too_long(event, "answers/", "errors/")
    assert bool(reason) == too_long
    if too_long:
        source_bytes = len(f"incoming/{relative}".encode())
        assert reason == (f"the object name is {source_bytes:,} bytes, so its answers file's name would be "
                          f"{size:,} bytes, over Cloud Storage's limit of 1,024 bytes; upload it under a name of "
                          f"at most {source_bytes - 1:,} bytes")


def test_the_error_name_counts_too_and_local_paths_have_no_such_limit():
    event = _event(_relative_with_answers_name_of(MAX_OBJECT_NAME_BYTES))
    assert name_too_long(event, "answers/", "errors/") == ""
    # An error prefix 40 bytes longer than the answers prefix makes the error name the longer one.
    assert "its error file's name" in name_too_long(event, "answers/", "e" * 40 + "/")
    local = event._replace(uri="/data/in/x.csv", root="/data/in")
    assert name_too_long(local, "answers/", "errors/") == ""


def test_a_name_too_long_is_kept_under_a_shortened_unique_name():
    long_a = _event("é" * 600 + "a.csv")
    long_b = _event("é" * 600 + "b.csv")
    kept_a, kept_b = (quarantine_location(ev, "errors/") for ev in (long_a, long_b))
    for kept in (kept_a, kept_b):
        name = kept[len("gs://qa-local/"):]
        assert len(name.encode("utf-8")) <= MAX_OBJECT_NAME_BYTES
        assert name.startswith("errors/éé") and name.endswith(f".{GENERATION}.csv")
        name.encode("utf-8").decode("utf-8")  # no character cut in half
    assert kept_a != kept_b
    assert quarantine_location(long_a._replace(generation=GENERATION + 1), "errors/") != kept_a
    # Names that fit keep the documented form.
    short = _event("sub/a.csv")
    assert quarantine_location(short, "errors/") == f"gs://qa-local/errors/sub/a.{GENERATION}.csv"


def test_a_non_csv_object_is_kept_with_its_own_extension():
    assert quarantine_location(_event("notes.txt"), "errors/") == f"gs://qa-local/errors/notes.{GENERATION}.txt"
    assert quarantine_location(_event("README"), "errors/") == f"gs://qa-local/errors/README.{GENERATION}"


@pytest.mark.parametrize("change", [{"objectGeneration": "\u00b2"}, {"objectGeneration": "1" * 5000},
                                    {"objectGeneration": "-1"}, {"objectGeneration": " 1"}])
def test_a_forged_generation_is_malformed_never_an_exception(change):
    assert parse_notification(b"", {**ATTRS, **change}, "incoming/", bucket="qa-local") == (None, "malformed")


@pytest.mark.parametrize("payload", [{"size": "\u00b2"}, {"size": 5}, {"size": "9" * 5000}, {"timeCreated": 5},
                                     {"timeCreated": "not a time"}, {"timeCreated": "9999-12-31T23:59:59Z"}])
def test_odd_payload_fields_are_tolerated_never_an_exception(payload):
    event, reason = parse_notification(json.dumps({**json.loads(DATA), **payload}).encode(), ATTRS, "incoming/",
                                       bucket="qa-local")
    assert reason == "" and event.generation == 1795313659049626
