"""Google Cloud Storage (``gs://bucket/key``) through the official client, ``google-cloud-storage``.

Credentials: the client's usual chain (Application Default Credentials: ``GOOGLE_APPLICATION_CREDENTIALS``,
gcloud's, the metadata server). ``STORAGE_EMULATOR_HOST`` points it at an emulator or a proxy, as the
SDK itself honours it (anonymous credentials there). Errors map to labelq's kinds; 429 and 5xx are
retried with backoff. The etag of a record is the object's generation, which changes only when its
bytes are rewritten (GCS's own etag also changes when metadata does, and moderation writes metadata).
GCS has no object tags: labelq's tags are custom metadata (``labelq-label`` …), merged by the same
rule as S3 tags. Copy is a server-side rewrite; move is copy then delete.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from ..config import Settings
from ..errors import AccessDenied, NotFound, StorageError, TooLarge, UsageError, WorkerFault
from .base import BucketStore, ObjectRef, Transient, bucket_uri, split_bucket
from .listing import list_keys

logger = logging.getLogger(__name__)


def split_gs(uri: str) -> tuple[str, str]:
    """``gs://bucket/key`` → (bucket, key)."""
    return split_bucket(uri, "gs")


def gs_uri(bucket: str, key: str) -> str:
    return bucket_uri("gs", bucket, key)


class GcsStore(BucketStore):
    scheme: ClassVar[str] = "gs"
    schemes: ClassVar[tuple[str, ...]] = ("gs",)

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.max_bytes = settings.max_bytes
        self.attempts = settings.s3_max_attempts
        self.timeout = (settings.s3_connect_timeout, settings.s3_read_timeout)
        self._client = client
        self._project = settings.gcs_project
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, **_: Any) -> GcsStore:
        return cls(settings)

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = _make_client(self._project)
            return self._client

    # ------------------------------------------------------------------ reads

    def fetch(self, ref: ObjectRef) -> bytes:
        bucket, key = split_gs(ref.uri)
        if ref.size is not None and ref.size > self.max_bytes:
            raise TooLarge(f"object is {ref.size} bytes, over the limit of {self.max_bytes} (LABELQ_MAX_BYTES)")

        def get() -> bytes:
            from google.api_core.exceptions import RequestRangeNotSatisfiable

            blob = self.client.bucket(bucket).blob(key)
            try:
                data: bytes = blob.download_as_bytes(start=0, end=self.max_bytes, timeout=self.timeout, retry=None,
                                                     checksum=None)
            except RequestRangeNotSatisfiable:
                return b""  # a range read of an empty object: zero bytes (the engine says not_an_image)
            return data

        data = self._call(ref.uri, get)
        if len(data) > self.max_bytes:
            raise TooLarge(f"object is over the limit of {self.max_bytes} bytes (LABELQ_MAX_BYTES)")
        return data

    def head(self, uri: str) -> ObjectRef:
        bucket, key = split_gs(uri)
        blob = self._call(uri, lambda: self.client.bucket(bucket).get_blob(key, timeout=self.timeout, retry=None))
        if blob is None:
            raise NotFound(f"{uri}: NotFound")
        return ObjectRef(uri, blob.size, _etag(blob))

    def list(self, prefix_uri: str, suffixes: tuple[str, ...], *, after: str | None = None,
             workers: int = 1) -> Iterator[tuple[ObjectRef, str]]:
        bucket, prefix = split_gs(prefix_uri if "/" in prefix_uri[5:] else prefix_uri + "/")
        return list_keys(GcsPager(self), bucket, prefix, suffixes, after=after, workers=workers)

    # ------------------------------------------------------------------ actions

    def tags(self, uri: str) -> dict[str, str]:
        bucket, key = split_gs(uri)
        blob = self._call(uri, lambda: self.client.bucket(bucket).get_blob(key, timeout=self.timeout, retry=None))
        if blob is None:
            raise NotFound(f"{uri}: NotFound")
        return {k: v for k, v in (blob.metadata or {}).items() if v is not None}  # (emulators keep removed keys as null)

    def put_tags(self, uri: str, tags: Mapping[str, str]) -> None:
        bucket, key = split_gs(uri)

        def put() -> None:
            blob = self.client.bucket(bucket).get_blob(key, timeout=self.timeout, retry=None)
            if blob is None:
                raise NotFound(f"{uri}: NotFound")
            # metadata PATCH merges keys; a key set to None is removed: drop labelq's tags that went away
            blob.metadata = {**{k: None for k in (blob.metadata or {}) if k not in tags}, **dict(tags)}
            blob.patch(timeout=self.timeout, retry=None)

        self._call(uri, put)

    def copy(self, uri: str, dest_uri: str) -> None:
        bucket, key = split_gs(uri)
        dbucket, dkey = split_gs(dest_uri)

        def copy() -> None:
            src = self.client.bucket(bucket)
            src.copy_blob(src.blob(key), self.client.bucket(dbucket), dkey, timeout=self.timeout, retry=None)

        self._call(uri, copy)

    def _delete(self, uri: str) -> None:
        bucket, key = split_gs(uri)
        self._call(uri, lambda: self.client.bucket(bucket).delete_blob(key, timeout=self.timeout, retry=None))

    def _error(self, exc: BaseException, uri: str) -> Exception:
        return gcs_error(exc, uri)


def _etag(blob: Any) -> str | None:
    generation = getattr(blob, "generation", None)
    return str(generation) if generation else (blob.etag or None)


def gcs_error(exc: BaseException, uri: str) -> Exception:
    """A google-cloud-storage / google-auth / requests error as labelq's kind."""
    from google.api_core import exceptions as gx

    status = getattr(exc, "code", None)
    text = f"{uri}: {type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
    if isinstance(exc, gx.NotFound) or status == 404:
        return NotFound(f"{uri}: NotFound")
    if isinstance(exc, gx.Unauthorized) or status == 401:
        return WorkerFault(f"{uri}: this worker's Google Cloud credentials are refused")
    if isinstance(exc, gx.Forbidden) or status == 403:
        return AccessDenied(f"{uri}: Forbidden")
    from google.auth.exceptions import DefaultCredentialsError, RefreshError

    if isinstance(exc, DefaultCredentialsError | RefreshError):
        return WorkerFault(f"{uri}: this worker has no Google Cloud credentials ({exc})")
    if isinstance(exc, gx.TooManyRequests | gx.ServerError) or (isinstance(status, int) and (status >= 500 or status == 429)):
        return Transient(text[:300])
    import requests

    if isinstance(exc, requests.RequestException | ConnectionError | TimeoutError):
        return Transient(text[:300])
    return StorageError(text[:300])


class GcsPager:
    """GCS list pages in ListObjectsV2's shape, for :mod:`labelq.objects.listing`."""

    def __init__(self, store: GcsStore) -> None:
        self.store = store

    def pages(self, bucket: str, prefix: str, after: str | None, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
        blobs = self.store.client.list_blobs(bucket, prefix=prefix or None, delimiter=delimiter, start_offset=after,
                                             timeout=self.store.timeout)
        for page in blobs.pages:
            contents = [{"Key": b.name, "Size": b.size, "ETag": _etag(b)} for b in page]
            prefixes = [{"Prefix": p} for p in sorted(page.prefixes)]
            yield {"Contents": contents, "CommonPrefixes": prefixes, "IsTruncated": blobs.next_page_token is not None}

    def uri(self, bucket: str, key: str) -> str:
        return gs_uri(bucket, key)

    def listing_error(self, exc: BaseException, bucket: str, prefix: str) -> BaseException:
        if isinstance(exc, UsageError) or not isinstance(exc, Exception):
            return exc
        kind = gcs_error(exc, f"gs://{bucket}/{prefix}")
        return UsageError(f"cannot list gs://{bucket}/{prefix}: {kind}")


def _make_client(project: str | None) -> Any:
    try:
        from google.cloud import storage
    except ImportError:
        raise WorkerFault("gs:// objects need google-cloud-storage: pip install 'labelq[gcs]'") from None
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "labelq", credentials=AnonymousCredentials())
    try:
        return storage.Client(project=project)
    except Exception as exc:  # noqa: BLE001 - no credentials / no project in the chain
        raise WorkerFault(f"cannot open Google Cloud Storage: {type(exc).__name__}: {exc}") from None
