"""Turning GCS notifications and matched files into ``FileEvent`` records."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import time
from typing import Any

from beam_qa.records import FileEvent

__all__ = ["ANSWERS_SUFFIX", "MAX_OBJECT_NAME_BYTES", "FileEvent", "answers_location", "derived_location",
           "gcs_file_event", "local_file_event", "name_too_long", "parse_notification", "pattern_base_dir",
           "quarantine_location", "split_gcs_uri"]

_LOGGER = logging.getLogger(__name__)

FINALIZE = "OBJECT_FINALIZE"


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """Splits ``gs://bucket/name`` into ``(bucket, name)``.

    Raises:
        ValueError: if ``uri`` is not a gs:// URI.
    """
    if not uri.startswith("gs://"):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, name = uri[len("gs://"):].partition("/")
    return bucket, name


def _rfc3339_to_epoch(value: object) -> float:
    if not value or not isinstance(value, str):  # a forged payload can put anything here
        return time.time()
    from datetime import datetime
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError):
        return time.time()


# A GCS generation or size: an int64 in ASCII digits. str.isdigit() also accepts "²", which int()
# refuses: a forged attribute must be ignored, never raise in the step.
_INT64 = re.compile(r"[0-9]{1,18}")


def _int64(value: object) -> int | None:
    return int(value) if isinstance(value, str) and _INT64.fullmatch(value) else None


# The attributes Cloud Storage sets on every notification (payloadFormat JSON_API_V1): the
# event's bucket, object and generation are read from them, never guessed from the payload.
REQUIRED_ATTRIBUTES = ("eventType", "bucketId", "objectId", "objectGeneration", "payloadFormat")
PAYLOAD_FORMAT = "JSON_API_V1"


def parse_notification(
    data: bytes, attributes: dict[str, str], incoming_prefix: str, message_id: str = "", *, bucket: str,
) -> tuple[FileEvent | None, str]:
    """Parses one GCS Pub/Sub notification (``payloadFormat=JSON_API_V1``) for ``bucket``.

    A notification is a claim by whoever could publish to the topic, so only one that names our
    bucket, our prefix and a ``.csv`` object becomes work; anything else is ignored with a reason,
    and nothing is read, written or deleted for it.

    Args:
        data: the message payload (the object's JSON resource); when present it must agree with
            the attributes.
        attributes: the message attributes (``eventType``, ``bucketId``, ``objectId``, ...).
        incoming_prefix: only objects under this prefix are accepted.
        message_id: the Pub/Sub message id; it becomes the event's ``trigger`` (claim token).
        bucket: the only bucket whose objects are accepted (``--input_bucket``).

    Returns:
        ``(event, "")`` for a file to process, or ``(None, reason)`` naming why the
        notification is ignored: ``malformed`` (an expected attribute missing or wrong, or a
        payload that contradicts them), ``not_finalize``, ``other_bucket``, ``other_prefix``,
        ``folder`` or ``not_csv``.
    """
    if any(not attributes.get(key) for key in REQUIRED_ATTRIBUTES):
        return None, "malformed"
    if attributes["payloadFormat"] != PAYLOAD_FORMAT:
        return None, "malformed"
    if attributes["eventType"] != FINALIZE:
        return None, "not_finalize"
    name, generation = attributes["objectId"], attributes["objectGeneration"]
    if _int64(generation) is None:
        return None, "malformed"
    resource = _payload(data)
    if resource is None or any(
            str(resource[key]) != expected for key, expected in (
                ("bucket", attributes["bucketId"]), ("name", name), ("generation", generation)) if key in resource):
        return None, "malformed"
    if attributes["bucketId"] != bucket:
        return None, "other_bucket"
    if not name.startswith(incoming_prefix):
        return None, "other_prefix"
    if name.endswith("/"):
        return None, "folder"
    if not name.lower().endswith(".csv"):
        return None, "not_csv"
    size = _int64(resource.get("size"))
    return FileEvent(
        uri=f"gs://{bucket}/{name}",
        generation=int(generation),
        size=-1 if size is None else size,
        root=f"gs://{bucket}/",
        relative_name=name[len(incoming_prefix):],
        event_time=_rfc3339_to_epoch(resource.get("timeCreated") or attributes.get("eventTime")),
        trigger=f"pubsub:{message_id}" if message_id else "",
    ), ""


def _payload(data: bytes | None) -> dict[str, Any] | None:
    """The notification's object resource: ``{}`` when there is none, None when it is not a JSON object."""
    if not data:
        return {}
    try:
        resource = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return resource if isinstance(resource, dict) else None


def local_file_event(path: str, base_dir: str, trigger: str = "") -> FileEvent:
    """Builds the event for a local file found by the bounded input pattern."""
    path = os.path.abspath(path)
    stat = os.stat(path)
    return FileEvent(
        uri=path,
        generation=stat.st_mtime_ns,
        size=stat.st_size,
        root=os.path.abspath(base_dir),
        relative_name=os.path.relpath(path, base_dir),
        event_time=stat.st_mtime,
        trigger=trigger,
    )


def gcs_file_event(bucket: str, name: str, generation: int, size: int, updated: float,
                   incoming_prefix: str, trigger: str = "") -> FileEvent:
    """Builds the event for an object found by listing a bucket."""
    relative = name[len(incoming_prefix):] if name.startswith(incoming_prefix) else name
    return FileEvent(
        uri=f"gs://{bucket}/{name}", generation=generation, size=size,
        root=f"gs://{bucket}/", relative_name=relative, event_time=updated, trigger=trigger)


ANSWERS_SUFFIX = ".answers.csv"


def answers_location(event: FileEvent, prefix: str) -> str:
    """The answers CSV of one file version: ``<prefix><name without .csv>.<generation>.answers.csv``.

    The generation is part of the name so that two versions of one name, answered at the same
    time, never overwrite each other's answers (README "Output").
    """
    return derived_location(event, prefix, f".{event.generation}{ANSWERS_SUFFIX}")


def quarantine_location(event: FileEvent, prefix: str) -> str:
    """Where a failed file version is kept: ``<prefix><name without .csv>.<generation>.csv``.

    A name without ``.csv`` (a non-CSV object the sweeper found) keeps its own extension:
    ``notes.txt`` is kept as ``notes.<generation>.txt``, so the copy is not mistaken for a CSV.

    A gs:// name that would pass Cloud Storage's limit (``MAX_OBJECT_NAME_BYTES``) is shortened
    instead, so that a ``name_too_long`` file can still be kept: ``<prefix><the name cut to
    fit>~<16 hex digits of the SHA-256 of the whole name>.<generation>.csv``. The digest keeps two
    long names that share their beginning apart; the generation keeps two versions apart.
    """
    stem, tail = _kept_name(event)
    target = derived_location(event._replace(relative_name=stem + tail), prefix)
    if not target.startswith("gs://") or _name_bytes(target) <= MAX_OBJECT_NAME_BYTES:
        return target
    base = derived_location(event._replace(relative_name=""), prefix)
    tail = f"~{hashlib.sha256(event.relative_name.encode('utf-8')).hexdigest()[:16]}{tail}"
    room = max(MAX_OBJECT_NAME_BYTES - _name_bytes(base) - len(tail.encode("utf-8")), 0)
    # Cut on a byte budget, dropping a character the cut would split.
    return base + stem.encode("utf-8")[:room].decode("utf-8", "ignore") + tail


def _kept_name(event: FileEvent) -> tuple[str, str]:
    """The kept copy's relative name, unshortened, as ``(stem, tail)``: the tail holds the generation."""
    relative = event.relative_name
    if relative.lower().endswith(".csv"):
        return relative[:-4], f".{event.generation}.csv"
    stem, extension = posixpath.splitext(relative)
    if len(extension) > 16:  # not an extension a user would recognise: keep the name whole
        stem, extension = relative, ""
    return stem, f".{event.generation}{extension}"


# Cloud Storage's longest object name, in bytes of UTF-8 (a longer name is refused with 400).
MAX_OBJECT_NAME_BYTES = 1024


def _name_bytes(uri: str) -> int:
    return len(split_gcs_uri(uri)[1].encode("utf-8"))


def name_too_long(event: FileEvent, answers_prefix: str, error_prefix: str) -> str:
    """Why ``event``'s answers or error object could never be written, or "" when both fit.

    The answers and error names add ``.<generation>.answers.csv`` and ``.<generation>.csv`` to the
    source's name (and swap the prefix): a source name near Cloud Storage's 1,024-byte limit would
    fail its answers write on every attempt. Local paths have no such limit here.

    Returns:
        The ``name_too_long`` message, naming how long the name may be.
    """
    over = 0
    longest = ("", 0)
    for what, target in (("answers", answers_location(event, answers_prefix)),
                         ("error", derived_location(event._replace(relative_name="".join(_kept_name(event))),
                                                    error_prefix))):
        if target.startswith("gs://") and _name_bytes(target) - MAX_OBJECT_NAME_BYTES > over:
            over = _name_bytes(target) - MAX_OBJECT_NAME_BYTES
            longest = (what, _name_bytes(target))
    if not over:
        return ""
    source = _name_bytes(event.uri) if event.is_gcs else len(event.relative_name.encode("utf-8"))
    return (f"the object name is {source:,} bytes, so its {longest[0]} file's name would be {longest[1]:,} bytes, "
            f"over Cloud Storage's limit of {MAX_OBJECT_NAME_BYTES:,} bytes; upload it under a name of at most "
            f"{source - over:,} bytes")


def derived_location(event: FileEvent, prefix: str, suffix: str = "") -> str:
    """Where an output for ``event`` goes under ``prefix`` (see ``--answers_prefix``).

    Args:
        event: the source file.
        prefix: a prefix relative to the event's root, or an absolute gs:// or local location.
        suffix: replaces the trailing ``.csv`` of the name when given.

    Returns:
        A gs:// URI or an absolute local path.
    """
    relative = event.relative_name
    if suffix:
        stem = relative[:-4] if relative.lower().endswith(".csv") else relative
        relative = stem + suffix
    if prefix.startswith("gs://") or os.path.isabs(prefix):
        base = prefix
    elif event.is_gcs:
        base = event.root + prefix
    else:
        base = os.path.join(event.root, prefix)
    if base.startswith("gs://"):
        return base.rstrip("/") + "/" + relative.replace(os.sep, "/")
    return os.path.normpath(os.path.join(base, relative))


def pattern_base_dir(pattern: str) -> str:
    """The non-glob directory part of a file pattern (relative names start below it)."""
    head = pattern
    for i, char in enumerate(pattern):
        if char in "*?[":
            head = pattern[:i]
            break
    return head if head.endswith(("/", os.sep)) else posixpath.dirname(head) + "/"
