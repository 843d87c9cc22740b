"""Turning GCS notifications and matched files into ``FileEvent`` records."""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
from typing import Any

from beam_qa.records import FileEvent

__all__ = ["ANSWERS_SUFFIX", "FileEvent", "answers_location", "derived_location", "gcs_file_event", "local_file_event", "parse_notification",
           "pattern_base_dir", "quarantine_location", "split_gcs_uri"]

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


def _rfc3339_to_epoch(value: str | None) -> float:
    if not value:
        return time.time()
    from datetime import datetime
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


def parse_notification(
    data: bytes, attributes: dict[str, str], incoming_prefix: str, message_id: str = "",
) -> tuple[FileEvent | None, str]:
    """Parses one GCS Pub/Sub notification (``payloadFormat=JSON_API_V1``).

    Args:
        data: the message payload (the object's JSON resource).
        attributes: the message attributes (``eventType``, ``bucketId``, ``objectId``, ...).
        incoming_prefix: only objects under this prefix are accepted.
        message_id: the Pub/Sub message id; it becomes the event's ``trigger`` (claim token).

    Returns:
        ``(event, "")`` for a file to process, or ``(None, reason)`` naming why the
        notification is ignored: ``not_finalize``, ``other_prefix``, ``not_csv``,
        ``malformed`` or ``folder``.
    """
    if attributes.get("eventType") != FINALIZE:
        return None, "not_finalize"
    bucket = attributes.get("bucketId")
    name = attributes.get("objectId")
    generation = attributes.get("objectGeneration")
    resource: dict[str, Any] = {}
    try:
        resource = json.loads(data.decode("utf-8")) if data else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        resource = {}
    bucket = bucket or resource.get("bucket")
    name = name or resource.get("name")
    generation = generation or resource.get("generation")
    if not bucket or not name or not generation or not str(generation).isdigit():
        return None, "malformed"
    if not name.startswith(incoming_prefix):
        return None, "other_prefix"
    if name.endswith("/"):
        return None, "folder"
    if not name.lower().endswith(".csv"):
        return None, "not_csv"
    size = resource.get("size")
    return FileEvent(
        uri=f"gs://{bucket}/{name}",
        generation=int(generation),
        size=int(size) if str(size).isdigit() else -1,
        root=f"gs://{bucket}/",
        relative_name=name[len(incoming_prefix):],
        event_time=_rfc3339_to_epoch(resource.get("timeCreated") or attributes.get("eventTime")),
        trigger=f"pubsub:{message_id}" if message_id else "",
    ), ""


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
    """Where a failed file version is kept: ``<prefix><name without .csv>.<generation>.csv``."""
    return derived_location(event, prefix, f".{event.generation}.csv")


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
