"""Storing an accepted file and recording it in its client's history: once, even when retried.

Without an ``Idempotency-Key`` each POST is a new upload: the object is created, then recorded.
With one, the key is claimed in ``qa_uploads`` first (one row per client and key), and only the
claim's object name is ever written, with ``ifGenerationMatch=0``: however many retries of the
same request race, the bucket gets one object and every response names the same upload.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import posixpath

from upload_service.core.auth import Client
from upload_service.core.errors import ApiError
from upload_service.core.naming import new_upload_id, object_name
from upload_service.services.db import Database, KeyedUpload
from upload_service.services.gcs import UploadStore

_LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Stored:
    """An upload whose object is in the bucket.

    Attributes:
        replayed: an earlier request with the same Idempotency-Key stored it; this one wrote nothing.
    """

    upload_id: str
    uri: str
    generation: int
    filename: str
    size: int
    rows: int
    replayed: bool = False


def request_sha256(filename: str, data: bytes) -> str:
    """What a retry must repeat: the client's file name and the file's bytes."""
    return hashlib.sha256(filename.encode("utf-8") + b"\0" + data).hexdigest()


def store_upload(store: UploadStore, db: Database, incoming_prefix: str, owner: Client, filename: str, data: bytes,
                 rows: int, idempotency_key: str | None) -> Stored:
    """Stores a validated file under ``<incoming prefix><upload id>/`` and records it.

    Args:
        filename: the client's file name (sanitised into the object name).
        idempotency_key: the client's ``Idempotency-Key``, or None.

    Raises:
        ApiError: 422 ``idempotency_key_reused`` when the key came with another file; 409
            ``in_progress`` while an earlier request with the key has stored its object but not yet
            recorded it; 503 when GCS or PostgreSQL fails.
    """
    upload_id = new_upload_id()
    name = object_name(incoming_prefix, upload_id, filename)
    # Dated before the object exists, so never after the pipeline received it.
    uploaded_at = datetime.datetime.now(datetime.timezone.utc)
    if idempotency_key is not None:
        proposal = KeyedUpload(upload_id, request_sha256(filename, data), posixpath.basename(name), store.uri(name),
                               None, len(data), rows)
        return _store_keyed(store, db, owner, idempotency_key, proposal, data, uploaded_at)
    generation = store.create(name, data)
    try:
        db.record_upload(upload_id, owner, posixpath.basename(name), store.uri(name), generation, len(data), rows,
                         uploaded_at)
    except ApiError as exc:
        # The object is stored and the pipeline answers it; only the history misses it.
        _LOGGER.error("upload %s stored as %s#%d but not recorded in qa_uploads: %s", upload_id, store.uri(name),
                      generation, exc.body.message, extra={"upload_id": upload_id})
    return Stored(upload_id, store.uri(name), generation, posixpath.basename(name), len(data), rows)


def _store_keyed(store: UploadStore, db: Database, owner: Client, key: str, proposal: KeyedUpload, data: bytes,
                 uploaded_at: datetime.datetime) -> Stored:
    claim = db.claim_key(owner, key, proposal, uploaded_at)
    if claim.request_sha256 != proposal.request_sha256:
        raise ApiError(422, "idempotency_key_reused",
                       "this Idempotency-Key was already used for another file (or another file name)",
                       hint="Send a new Idempotency-Key with each new upload; repeat a key only to retry the very "
                            "same request.", details={"upload_id": claim.upload_id})
    ours = claim.upload_id == proposal.upload_id
    if claim.generation is not None:
        return _stored(claim, claim.generation, replayed=True)
    if not ours:
        # An earlier request claimed the key and did not record its object (yet, or it died).
        # If the pipeline already has the object, writing it again would answer it twice.
        recorded = db.find_file(claim.source_uri)
        if recorded is not None:
            db.complete(claim.upload_id, recorded.source_generation)
            return _stored(claim, recorded.source_generation, replayed=True)
    try:
        generation = store.create(store.name_of(claim.source_uri), data)
    except ApiError as exc:
        if exc.body.error == "conflict":
            # The earlier request stored it: its record follows in a moment (or, if it died,
            # once the pipeline records the file, which the next retry finds above).
            raise ApiError(409, "in_progress", "an upload with this Idempotency-Key is still being stored",
                           hint="Retry the same request (same Idempotency-Key) in a few seconds.",
                           details={"upload_id": claim.upload_id}, headers={"Retry-After": "2"}) from exc
        if ours:
            _release(db, claim.upload_id)
        raise
    try:
        db.complete(claim.upload_id, generation)
    except ApiError as exc:
        _LOGGER.error("upload %s stored as %s#%d but its generation was not recorded: %s", claim.upload_id,
                      claim.source_uri, generation, exc.body.message, extra={"upload_id": claim.upload_id})
    return _stored(claim, generation, replayed=False)


def _stored(claim: KeyedUpload, generation: int, *, replayed: bool) -> Stored:
    return Stored(claim.upload_id, claim.source_uri, generation, claim.filename, claim.size, claim.rows, replayed)


def _release(db: Database, upload_id: str) -> None:
    try:
        db.release(upload_id)
    except ApiError as exc:  # the claim stays; a retry stores the object under it
        _LOGGER.warning("claim of upload %s not released: %s", upload_id, exc.body.message)
