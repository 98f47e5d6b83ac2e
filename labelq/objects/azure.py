"""Azure Blob Storage (``az://container/key``) through the official client, ``azure-storage-blob``.

The account: ``LABELQ_AZURE_ACCOUNT_URL`` (with ``azure-identity``'s DefaultAzureCredential when it is
installed, or a SAS token in the URL), else ``AZURE_STORAGE_CONNECTION_STRING`` as the Azure SDK and
tools read it — its ``BlobEndpoint=`` points labelq at Azurite or a proxy. Errors map to labelq's kinds;
429 and 5xx are retried with backoff. labelq's tags are blob index tags (at most 10, as on S3; they do not
change the blob's ETag, so a tagged object is not relabelled). Copy is a server-side copy; move is copy
then delete.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from ..config import Settings
from ..errors import AccessDenied, NotFound, StorageError, TooLarge, UsageError, WorkerFault
from .base import BucketStore, ObjectRef, Transient, bucket_uri, split_bucket
from .listing import list_keys

logger = logging.getLogger(__name__)

COPY_WAIT_S = 60.0  # how long a server-side copy may take before it is a storage_error


def split_az(uri: str) -> tuple[str, str]:
    """``az://container/key`` → (container, key)."""
    return split_bucket(uri, "az")


def az_uri(container: str, key: str) -> str:
    return bucket_uri("az", container, key)


class AzureStore(BucketStore):
    scheme: ClassVar[str] = "az"
    schemes: ClassVar[tuple[str, ...]] = ("az",)

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.max_bytes = settings.max_bytes
        self.attempts = settings.s3_max_attempts
        self.timeout = int(settings.s3_read_timeout)
        self._account_url = settings.azure_account_url
        self._client = client
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, **_: Any) -> AzureStore:
        return cls(settings)

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = _make_client(self._account_url)
            return self._client

    def _blob(self, uri: str) -> Any:
        container, key = split_az(uri)
        return self.client.get_blob_client(container, key)

    # ------------------------------------------------------------------ reads

    def fetch(self, ref: ObjectRef) -> bytes:
        if ref.size is not None and ref.size > self.max_bytes:
            raise TooLarge(f"object is {ref.size} bytes, over the limit of {self.max_bytes} (LABELQ_MAX_BYTES)")

        def get() -> bytes:
            from azure.core.exceptions import HttpResponseError

            try:
                data: bytes = self._blob(ref.uri).download_blob(offset=0, length=self.max_bytes + 1,
                                                                timeout=self.timeout).readall()
            except HttpResponseError as exc:
                if getattr(exc, "status_code", None) == 416:
                    return b""  # a range read of an empty blob: zero bytes (the engine says not_an_image)
                raise
            return data

        data = self._call(ref.uri, get)
        if len(data) > self.max_bytes:
            raise TooLarge(f"object is over the limit of {self.max_bytes} bytes (LABELQ_MAX_BYTES)")
        return data

    def head(self, uri: str) -> ObjectRef:
        props = self._call(uri, lambda: self._blob(uri).get_blob_properties(timeout=self.timeout))
        return ObjectRef(uri, props.size, (props.etag or "").strip('"') or None)

    def list(self, prefix_uri: str, suffixes: tuple[str, ...], *, after: str | None = None,
             workers: int = 1) -> Iterator[tuple[ObjectRef, str]]:
        container, prefix = split_az(prefix_uri if "/" in prefix_uri[5:] else prefix_uri + "/")
        return list_keys(AzurePager(self), container, prefix, suffixes, after=after, workers=workers)

    # ------------------------------------------------------------------ actions

    def tags(self, uri: str) -> dict[str, str]:
        tags = self._call(uri, lambda: self._blob(uri).get_blob_tags(timeout=self.timeout))
        return dict(tags or {})

    def put_tags(self, uri: str, tags: Mapping[str, str]) -> None:
        self._call(uri, lambda: self._blob(uri).set_blob_tags(dict(tags), timeout=self.timeout))

    def copy(self, uri: str, dest_uri: str) -> None:
        def copy() -> None:
            source, dest = self._blob(uri), self._blob(dest_uri)
            dest.start_copy_from_url(source.url, timeout=self.timeout)
            deadline = time.monotonic() + COPY_WAIT_S
            while True:
                status = dest.get_blob_properties(timeout=self.timeout).copy.status
                if status == "success":
                    tags = source.get_blob_tags(timeout=self.timeout)
                    if tags:  # a copy does not carry index tags along (S3's and GCS's copies do): carry them
                        dest.set_blob_tags(tags, timeout=self.timeout)
                    return
                if status in ("failed", "aborted"):
                    raise StorageError(f"{uri}: copy to {dest_uri} {status}")
                if time.monotonic() > deadline:
                    raise StorageError(f"{uri}: copy to {dest_uri} still {status} after {COPY_WAIT_S:g}s")
                time.sleep(0.2)

        self._call(uri, copy)

    def _delete(self, uri: str) -> None:
        self._call(uri, lambda: self._blob(uri).delete_blob(timeout=self.timeout))

    def _error(self, exc: BaseException, uri: str) -> Exception:
        return azure_error(exc, uri)


def azure_error(exc: BaseException, uri: str) -> Exception:
    """An azure-core error as labelq's kind."""
    from azure.core import exceptions as ax

    status = getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None) or ""
    text = f"{uri}: {code or type(exc).__name__}"
    if isinstance(exc, ax.ResourceNotFoundError) or status == 404:
        return NotFound(f"{uri}: {code or 'NotFound'}")
    if isinstance(exc, ax.ClientAuthenticationError) or code in ("AuthenticationFailed", "InvalidAuthenticationInfo"):
        return WorkerFault(f"{uri}: {code or 'AuthenticationFailed'}: this worker's Azure credentials are refused")
    if status == 403:
        return AccessDenied(f"{uri}: {code or 'Forbidden'}")
    if isinstance(exc, ax.ServiceRequestError | ax.ServiceResponseError) or (
            isinstance(status, int) and (status >= 500 or status == 429)):
        return Transient(f"{text}: {' '.join(str(exc).split())[:200]}")
    return StorageError(f"{text}: {' '.join(str(exc).split())[:200]}")


class AzurePager:
    """Azure list pages in ListObjectsV2's shape. Azure has no start-after key: a resumed listing starts at
    the prefix and the keys up to the cursor are dropped by :mod:`labelq.objects.listing`."""

    def __init__(self, store: AzureStore) -> None:
        self.store = store

    def pages(self, bucket: str, prefix: str, after: str | None, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
        container = self.store.client.get_container_client(bucket)
        if delimiter:
            pager = container.walk_blobs(name_starts_with=prefix or None, delimiter=delimiter,
                                         timeout=self.store.timeout).by_page()
        else:
            pager = container.list_blobs(name_starts_with=prefix or None, timeout=self.store.timeout).by_page()
        for page in pager:
            contents: list[dict[str, Any]] = []
            prefixes: list[dict[str, str]] = []
            for item in page:
                if _is_prefix(item):
                    prefixes.append({"Prefix": item.name})
                else:
                    contents.append({"Key": item.name, "Size": item.size, "ETag": item.etag})
            yield {"Contents": contents, "CommonPrefixes": prefixes, "IsTruncated": bool(pager.continuation_token)}

    def uri(self, bucket: str, key: str) -> str:
        return az_uri(bucket, key)

    def listing_error(self, exc: BaseException, bucket: str, prefix: str) -> BaseException:
        if isinstance(exc, UsageError) or not isinstance(exc, Exception):
            return exc
        return UsageError(f"cannot list az://{bucket}/{prefix}: {azure_error(exc, f'az://{bucket}/{prefix}')}")


def _is_prefix(item: Any) -> bool:
    from azure.storage.blob import BlobPrefix

    return isinstance(item, BlobPrefix)


def _make_client(account_url: str | None) -> Any:
    try:
        from azure.storage.blob import BlobServiceClient
    except ImportError:
        raise WorkerFault("az:// objects need azure-storage-blob: pip install 'labelq[azure]'") from None
    if account_url:
        credential: Any = None
        try:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        except ImportError:
            credential = None  # a SAS token in the URL, or public containers
        return BlobServiceClient(account_url, credential=credential)
    conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if conn:
        try:
            return BlobServiceClient.from_connection_string(conn)
        except ValueError as exc:
            raise WorkerFault(f"AZURE_STORAGE_CONNECTION_STRING is not a valid connection string: {exc}") from None
    raise WorkerFault("az:// objects need an account: set LABELQ_AZURE_ACCOUNT_URL "
                      "(https://ACCOUNT.blob.core.windows.net) or AZURE_STORAGE_CONNECTION_STRING")
