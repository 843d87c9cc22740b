"""Reading, writing, moving and deleting files on GCS or local disk by URI.

One small class so that the DoFns, the upload service and the tests share the same
semantics for generations. Clients are built lazily (in ``DoFn.setup``), never at import.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from beam_qa.bounded_io import CappedSink, ContentEncodingError, ContentTooLarge, HashingWriter, UnsafeName, safe_join
from beam_qa.events import split_gcs_uri

__all__ = ["ContentEncodingError", "ContentTooLarge", "ObjectInfo", "SourceGone", "Storage", "UnsafeName", "safe_join"]

_LOGGER = logging.getLogger(__name__)


_NO_LIMIT = 1 << 62


class SourceGone(FileNotFoundError):
    """The requested file version no longer exists (processed, replaced or deleted)."""


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    generation: int
    size: int
    updated: float


def make_gcs_client(anonymous: bool | None = None):
    """A google-cloud-storage client; anonymous against an emulator.

    Without credentials the default client spends ~25 s retrying the metadata server,
    so emulator runs (STORAGE_EMULATOR_HOST set) use an anonymous client.
    """
    from google.cloud import storage
    if anonymous is None:
        anonymous = bool(os.environ.get("STORAGE_EMULATOR_HOST"))
    if anonymous:
        return storage.Client.create_anonymous_client()
    return storage.Client()


class LazyGcsClient:
    """Holds a google-cloud-storage client created on first use (never at import or pickling).

    One client serves every thread of the process: the library documents that, because it uses
    ``requests``, "it is safe to share instances across threads" (google-cloud-storage docs, index).
    """

    def __init__(self, client=None):
        self._client = client
        self._lock = threading.Lock()

    def _make_client(self):
        raise NotImplementedError

    @property
    def client(self):
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # pylint: disable=broad-except
                pass  # closing is best effort; the process may be shutting down
            self._client = None


class Storage(LazyGcsClient):
    """File operations keyed by URI (``gs://bucket/name`` or a local path)."""

    def __init__(self, client=None, anonymous: bool | None = None):
        super().__init__(client)
        self._anonymous = anonymous

    def _make_client(self):
        return make_gcs_client(self._anonymous)

    def _blob(self, uri: str, generation: int | None = None):
        bucket, name = split_gcs_uri(uri)
        return self.client.bucket(bucket).blob(name, generation=generation)

    def read_bytes(self, uri: str, generation: int | None = None, max_bytes: int | None = None) -> bytes:
        """The content of exactly this version of the file, never more than ``max_bytes`` of it.

        An object stored with ``Content-Encoding: gzip`` (what ``gcloud storage cp -Z`` writes) is
        downloaded as stored and inflated here under the limit: the client's own download would
        inflate it whole first, and a few MB can inflate to gigabytes.

        Raises:
            SourceGone: when that version no longer exists.
            ContentTooLarge: when the content (inflated) is longer than ``max_bytes``.
            ContentEncodingError: when a gzip-encoded object is not valid gzip data.
        """
        from google.api_core import exceptions
        limit = _NO_LIMIT if max_bytes is None else max_bytes
        if not uri.startswith("gs://"):
            if generation is not None and self._local_generation(uri) != generation:
                raise SourceGone(uri)
            try:
                with open(uri, "rb") as handle:
                    data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
            except FileNotFoundError as exc:
                raise SourceGone(uri) from exc
            if len(data) > limit:
                raise ContentTooLarge(uri, limit, "")
            return data
        out = io.BytesIO()
        try:
            self._download(uri, generation, out, limit)
        except exceptions.NotFound as exc:
            raise SourceGone(uri) from exc
        return out.getvalue()

    def download_to_path(self, uri: str, path: str, max_bytes: int) -> str:
        """Writes the (inflated) content of ``uri`` to ``path``; returns its SHA-256 (hex).

        Raises:
            SourceGone: when the object does not exist.
            ContentTooLarge: when the content is longer than ``max_bytes`` (nothing is left at ``path``).
        """
        from google.api_core import exceptions
        digest = hashlib.sha256()
        try:
            with open(path, "wb") as handle:
                sink = HashingWriter(handle, digest)
                if uri.startswith("gs://"):
                    self._download(uri, None, sink, max_bytes)
                else:
                    with open(uri, "rb") as source:
                        while block := source.read(1 << 20):
                            sink.write(block)
                            if sink.written > max_bytes:
                                raise ContentTooLarge(uri, max_bytes, "")
        except exceptions.NotFound as exc:
            os.remove(path)
            raise SourceGone(uri) from exc
        except BaseException:
            os.remove(path)
            raise
        return digest.hexdigest()

    def _download(self, uri: str, generation: int | None, out, limit: int) -> None:
        """Streams an object into ``out`` (``write(bytes)``), inflating gzip, stopping past ``limit``."""
        bucket, name = split_gcs_uri(uri)
        blob = self.client.bucket(bucket).get_blob(name, generation=generation)
        if blob is None:
            raise SourceGone(uri)
        encoding = (blob.content_encoding or "").strip().lower()
        if int(blob.size or 0) > limit:  # stored bytes: inflating only adds to them
            raise ContentTooLarge(uri, limit, encoding)
        sink = CappedSink(uri, limit, encoding, out)
        # raw_download: the bytes as stored (no transcoding); CappedSink inflates gzip itself.
        blob.download_to_file(sink, raw_download=True)
        sink.close()

    @staticmethod
    def _local_generation(path: str) -> int | None:
        try:
            return os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return None

    def stat(self, uri: str) -> ObjectInfo | None:
        """The live version of a file, or None."""
        if not uri.startswith("gs://"):
            try:
                st = os.stat(uri)
            except FileNotFoundError:
                return None
            return ObjectInfo(uri, st.st_mtime_ns, st.st_size, st.st_mtime)
        bucket, name = split_gcs_uri(uri)
        blob = self.client.bucket(bucket).get_blob(name)
        if blob is None:
            return None
        return ObjectInfo(uri, int(blob.generation), int(blob.size or 0), blob.updated.timestamp())

    def exists(self, uri: str) -> bool:
        return self.stat(uri) is not None

    def write_text(self, uri: str, text: str, content_type: str = "text/csv; charset=utf-8",
                   client_retries: bool = True) -> None:
        """Writes a whole file atomically (a GCS upload or a local rename).

        Args:
            client_retries: False sends a single request: google-cloud-storage 3.x otherwise
                retries a failing upload for up to 120 s inside this call, for callers that
                run their own, shorter retry loop.
        """
        if uri.startswith("gs://"):
            extra = {} if client_retries else {"retry": None}
            self._blob(uri).upload_from_string(text.encode("utf-8"), content_type=content_type, **extra)
            return
        directory = os.path.dirname(uri)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, uri)

    def delete_generation(self, uri: str, generation: int) -> bool:
        """Deletes the file only if its live version is ``generation``.

        The live generation is checked first and the delete is also sent with
        ``ifGenerationMatch``: real GCS enforces the precondition, and fake-gcs-server
        (which ignores it) is still protected by the check.

        Returns:
            True if this call deleted it; False if it was already gone or replaced.
        """
        from google.api_core import exceptions
        info = self.stat(uri)
        if info is None or info.generation != generation:
            return False
        if not uri.startswith("gs://"):
            os.remove(uri)
            return True
        try:
            self._blob(uri).delete(if_generation_match=generation)
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            return False
        return True

    def copy_generation(self, uri: str, generation: int, target: str, retry_secs: float = 10.0) -> None:
        """Copies exactly ``generation`` of ``uri`` to ``target`` (the same copy again only rewrites it).

        Args:
            retry_secs: how long the client retries a transient GCS error (429, 5xx, a dropped
                connection) before the copy fails; other errors fail at once.

        Raises:
            SourceGone: when that version no longer exists.
        """
        from google.api_core import exceptions
        from google.cloud.storage.retry import DEFAULT_RETRY
        if not uri.startswith("gs://") or not target.startswith("gs://"):
            self._copy_streaming(uri, generation, target)
            return
        src_bucket, src_name = split_gcs_uri(uri)
        dst_bucket, dst_name = split_gcs_uri(target)
        source = self.client.bucket(src_bucket)
        try:
            source.copy_blob(source.blob(src_name), self.client.bucket(dst_bucket), dst_name,
                             source_generation=generation, retry=DEFAULT_RETRY.with_timeout(retry_secs))
        except exceptions.NotFound as exc:
            raise SourceGone(uri) from exc

    def _copy_streaming(self, uri: str, generation: int, target: str) -> None:
        """A copy to or from local disk, streamed: a copy is never parsed, whatever its size."""
        from google.api_core import exceptions
        try:
            if uri.startswith("gs://"):
                source = self._blob(uri, generation).open("rb", raw_download=True)
            elif self._local_generation(uri) != generation:
                raise SourceGone(uri)
            else:
                source = open(uri, "rb")  # pylint: disable=consider-using-with
        except (FileNotFoundError, exceptions.NotFound) as exc:
            raise SourceGone(uri) from exc
        with source:
            if target.startswith("gs://"):
                self._blob(target).upload_from_file(source)
                return
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as handle:
                shutil.copyfileobj(source, handle)

    def list(self, pattern: str) -> list[ObjectInfo]:
        """Files matching a glob (``*`` within a path segment, ``**`` across)."""
        if not pattern.startswith("gs://"):
            import glob
            return [info for path in sorted(glob.glob(pattern, recursive=True))
                    if os.path.isfile(path) and (info := self.stat(os.path.abspath(path)))]
        bucket, name_glob = split_gcs_uri(pattern)
        literal = name_glob.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
        matcher = _glob_matcher(name_glob)
        return [ObjectInfo(f"gs://{bucket}/{blob.name}", int(blob.generation), int(blob.size or 0),
                           blob.updated.timestamp())
                for blob in self.client.list_blobs(bucket, prefix=literal)
                if matcher(blob.name) and not blob.name.endswith("/")]

    def list_pages(self, pattern: str, page_size: int) -> Iterator[list[ObjectInfo]]:
        """``list(pattern)`` one page at a time: at most ``page_size`` files per page.

        A GCS listing is fetched page by page as it is consumed (``maxResults``), so a prefix
        holding a million objects never sits in memory whole.
        """
        if not pattern.startswith("gs://"):
            import glob
            page: list[ObjectInfo] = []
            for path in sorted(glob.iglob(pattern, recursive=True)):
                if os.path.isfile(path) and (info := self.stat(os.path.abspath(path))):
                    page.append(info)
                    if len(page) == page_size:
                        yield page
                        page = []
            if page:
                yield page
            return
        bucket, name_glob = split_gcs_uri(pattern)
        literal = name_glob.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
        matcher = _glob_matcher(name_glob)
        for blobs in self.client.list_blobs(bucket, prefix=literal, page_size=page_size).pages:
            page = [ObjectInfo(f"gs://{bucket}/{blob.name}", int(blob.generation), int(blob.size or 0),
                               blob.updated.timestamp())
                    for blob in blobs if matcher(blob.name) and not blob.name.endswith("/")]
            if page:
                yield page


def _glob_matcher(name_glob: str):
    """``*`` matches within one path segment, ``**`` across segments."""
    import re
    parts = []
    i = 0
    while i < len(name_glob):
        if name_glob.startswith("**", i):
            parts.append(".*")
            i += 2
        elif name_glob[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif name_glob[i] == "?":
            parts.append("[^/]")
            i += 1
        else:
            parts.append(re.escape(name_glob[i]))
            i += 1
    compiled = re.compile("".join(parts) + r"\Z")
    return lambda name: compiled.match(name) is not None
