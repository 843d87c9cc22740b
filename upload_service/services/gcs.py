"""The bucket, as the upload service uses it: create-only writes, lookups, streamed reads."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

from beam_qa.events import split_gcs_uri
from beam_qa.storage import LazyGcsClient
from upload_service.core.errors import ApiError

_LOGGER = logging.getLogger(__name__)

READ_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    name: str
    generation: int
    size: int


# google-cloud-storage otherwise reads each bucket's metadata in a background thread, for trace
# attributes (storage.buckets.get), which the service's account is not granted (docs/deploy.md).
_NO_BUCKET_METADATA = "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA"


def make_client(gcs_url: str | None):
    """A google-cloud-storage client: anonymous against an emulator URL, default credentials otherwise."""
    from google.cloud import storage
    os.environ.setdefault(_NO_BUCKET_METADATA, "true")
    if gcs_url:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        return storage.Client(project="<none>", credentials=AnonymousCredentials(),
                              client_options=ClientOptions(api_endpoint=gcs_url))
    return storage.Client()


def _unavailable(what: str, exc: Exception) -> ApiError:
    _LOGGER.warning("GCS failed while %s: %s", what, exc)
    return ApiError(503, "storage_unavailable", f"cloud storage failed while {what}: {type(exc).__name__}",
                    hint="Try again in a moment; GET /readyz shows whether storage is reachable.")


class UploadStore(LazyGcsClient):
    """Operations on one bucket. The client is created on first use, never at import.

    Args:
        bucket: the bucket uploads go to.
        gcs_url: an emulator URL, or None for real GCS.
        timeout: seconds for one request.
        client: an existing google-cloud-storage client (tests).
    """

    def __init__(self, bucket: str, gcs_url: str | None, timeout: float, client=None):
        super().__init__(client)
        self.bucket_name = bucket
        self._gcs_url = gcs_url
        self._timeout = timeout

    def _make_client(self):
        return make_client(self._gcs_url)

    def uri(self, name: str) -> str:
        return f"gs://{self.bucket_name}/{name}"

    def name_of(self, uri: str) -> str:
        """The object name in a ``gs://`` URI of this bucket."""
        bucket, name = split_gcs_uri(uri)
        if bucket != self.bucket_name:
            raise ValueError(f"{uri} is not in bucket {self.bucket_name}")
        return name

    def create(self, name: str, data: bytes) -> int:
        """Writes a new object; never replaces one (``ifGenerationMatch=0``).

        Returns:
            The new object's generation.

        Raises:
            ApiError: 409 if the name exists; 503 if GCS fails.
        """
        from google.api_core import exceptions
        blob = self.client.bucket(self.bucket_name).blob(name)
        try:
            blob.upload_from_string(data, content_type="text/csv; charset=utf-8", if_generation_match=0,
                                    timeout=self._timeout)
        except exceptions.PreconditionFailed as exc:
            raise ApiError(409, "conflict", f"object {name} already exists", hint="Upload again.") from exc
        except Exception as exc:  # pylint: disable=broad-except
            raise _unavailable("storing the upload", exc) from exc
        return int(blob.generation)

    def first_under(self, prefix: str) -> StoredObject | None:
        """The first object whose name starts with ``prefix``, or None."""
        try:
            for blob in self.client.list_blobs(self.bucket_name, prefix=prefix, max_results=1,
                                               timeout=self._timeout):
                return StoredObject(blob.name, int(blob.generation), int(blob.size or 0))
        except Exception as exc:  # pylint: disable=broad-except
            raise _unavailable("looking up the upload", exc) from exc
        return None

    def open_chunks(self, uri: str) -> Iterator[bytes]:
        """The content of ``uri`` in chunks; the first chunk is read before this returns.

        Raises:
            ApiError: 404 if the object is gone; 503 if GCS fails.
        """
        from google.api_core import exceptions
        bucket, name = split_gcs_uri(uri)
        try:
            reader = self.client.bucket(bucket).blob(name).open("rb", chunk_size=READ_CHUNK_BYTES,
                                                                 timeout=self._timeout)
            first = reader.read(READ_CHUNK_BYTES)
        except exceptions.NotFound as exc:
            raise ApiError(404, "answers_missing", f"the answers CSV {uri} no longer exists",
                           hint="The JSON answers (without ?format=csv) come from PostgreSQL and are "
                                "still available.") from exc
        except Exception as exc:  # pylint: disable=broad-except
            raise _unavailable("reading the answers CSV", exc) from exc

        def chunks() -> Iterator[bytes]:
            try:
                chunk = first
                while chunk:
                    yield chunk
                    chunk = reader.read(READ_CHUNK_BYTES)
            finally:
                reader.close()
        return chunks()

    def ping(self, readable_prefix: str) -> None:
        """Raises unless GCS answers a read under ``readable_prefix``.

        Looks up an object that need not exist: a 404 is an answer. The service's account may
        read only the answers prefix (docs/deploy.md), so this needs no bucket-wide right.
        """
        self.client.bucket(self.bucket_name).blob(f"{readable_prefix}.readiness-probe").exists(
            timeout=min(self._timeout, 5.0), retry=None)
