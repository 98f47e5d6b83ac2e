"""S3 and S3-compatible stores (MinIO, moto): boto3 (the reference) or obstore for GETs; ``s3://bucket/key``.

Credentials come from boto3's usual chain; ``LABELQ_S3_ENDPOINT_URL`` points at another S3. Transient
failures (5xx, throttling, dropped connections) are retried with backoff; 403/404 are not. Listing is
:mod:`labelq.objects.listing` (prefix fan-out, ``LABELQ_LIST_WORKERS`` streams) over ListObjectsV2 pages.
Moderation actions: tags are S3 object tags (merged by :func:`labelq.objects.base.merge_tags`), copy is
CopyObject, move is CopyObject then DeleteObject.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from ..config import Settings
from ..errors import AccessDenied, NotFound, StorageError, TooLarge, UsageError, WorkerFault
from .base import BucketStore, ObjectRef, Transient, bucket_uri, split_bucket, with_backoff
from .listing import list_keys

logger = logging.getLogger(__name__)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key)."""
    return split_bucket(uri, "s3")


def s3_uri(bucket: str, key: str) -> str:
    return bucket_uri("s3", bucket, key)


_RETRYABLE_S3 = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling", "500", "502", "503", "504"}


class S3Store(BucketStore):
    """S3 through boto3: the usual credential chain, botocore's standard retries on top of ours."""

    scheme: ClassVar[str] = "s3"
    schemes: ClassVar[tuple[str, ...]] = ("s3",)

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.max_bytes = settings.max_bytes
        self.attempts = settings.s3_max_attempts
        self.client = client if client is not None else make_s3_client(settings)
        self._gets = ObstoreGets(settings) if settings.s3_client == "obstore" else None

    @classmethod
    def from_settings(cls, settings: Settings, *, s3_client: Any = None, **_: Any) -> S3Store:
        return cls(settings, s3_client)

    def fetch(self, ref: ObjectRef) -> bytes:
        bucket, key = split_s3(ref.uri)
        if ref.size is not None and ref.size > self.max_bytes:
            raise TooLarge(f"object is {ref.size} bytes, over the limit of {self.max_bytes} (LABELQ_MAX_BYTES)")
        if self._gets is not None and ObstoreGets.can_name(key):
            gets = self._gets
            return with_backoff(lambda: gets.get(bucket, key, self.max_bytes), self.attempts, what=ref.uri)
        return with_backoff(lambda: self._get(bucket, key), self.attempts, what=ref.uri)

    def _get(self, bucket: str, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            resp = self.client.get_object(Bucket=bucket, Key=key)
            length = resp.get("ContentLength")
            if length is not None and length > self.max_bytes:
                resp["Body"].close()
                raise TooLarge(f"object is {length} bytes, over the limit of {self.max_bytes} (LABELQ_MAX_BYTES)")
            data: bytes = resp["Body"].read(self.max_bytes + 1)
            if len(data) > self.max_bytes:
                raise TooLarge(f"object is over the limit of {self.max_bytes} bytes (LABELQ_MAX_BYTES)")
            return data
        except ClientError as exc:
            raise s3_error(exc, f"s3://{bucket}/{key}") from None
        except NoCredentialsError:
            raise WorkerFault(f"s3://{bucket}/{key}: this worker has no S3 credentials") from None
        except BotoCoreError as exc:
            raise Transient(f"s3://{bucket}/{key}: {exc}") from None

    # ------------------------------------------------------------------ the seam

    def head(self, uri: str) -> ObjectRef:
        bucket, key = split_s3(uri)

        def call() -> ObjectRef:
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                resp = self.client.head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                raise s3_error(exc, uri) from None
            except BotoCoreError as exc:
                raise Transient(f"{uri}: {exc}") from None
            return ObjectRef(uri, resp.get("ContentLength"), (resp.get("ETag") or "").strip('"') or None)

        return with_backoff(call, self.attempts, what=uri)

    def list(self, prefix_uri: str, suffixes: tuple[str, ...], *, after: str | None = None,
             workers: int = 1) -> Iterator[tuple[ObjectRef, str]]:
        """Objects under the prefix in key order after the key ``after`` (cursor: the key); ``workers`` > 1
        lists sub-prefixes concurrently, in the same order."""
        bucket, prefix = split_s3(prefix_uri if "/" in prefix_uri[5:] else prefix_uri + "/")
        return list_keys(S3Pager(self.client), bucket, prefix, suffixes, after=after, workers=workers)

    def tags(self, uri: str) -> dict[str, str]:
        bucket, key = split_s3(uri)
        current = self._call(uri, lambda: self.client.get_object_tagging(Bucket=bucket, Key=key))
        return {t["Key"]: t["Value"] for t in current.get("TagSet", [])}

    def put_tags(self, uri: str, tags: Mapping[str, str]) -> None:
        bucket, key = split_s3(uri)
        tag_set = {"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]}
        self._call(uri, lambda: self.client.put_object_tagging(Bucket=bucket, Key=key, Tagging=tag_set))

    def copy(self, uri: str, dest_uri: str) -> None:
        bucket, key = split_s3(uri)
        dbucket, dkey = split_s3(dest_uri)
        self._call(uri, lambda: self.client.copy_object(Bucket=dbucket, Key=dkey,
                                                        CopySource={"Bucket": bucket, "Key": key}))

    def _delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        self._call(uri, lambda: self.client.delete_object(Bucket=bucket, Key=key))

    def _error(self, exc: BaseException, uri: str) -> Exception:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        if isinstance(exc, ClientError):
            return s3_error(exc, uri)
        if isinstance(exc, NoCredentialsError):
            return WorkerFault(f"{uri}: this worker has no S3 credentials")
        if isinstance(exc, BotoCoreError):
            return Transient(f"{uri}: {exc}")
        return StorageError(f"{uri}: {type(exc).__name__}: {exc}")


class S3Pager:
    """ListObjectsV2 pages for :mod:`labelq.objects.listing`."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def pages(self, bucket: str, prefix: str, after: str | None, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if after is not None:
            params["StartAfter"] = after
        if delimiter is not None:
            params["Delimiter"] = delimiter
        yield from self.client.get_paginator("list_objects_v2").paginate(**params)

    def uri(self, bucket: str, key: str) -> str:
        return s3_uri(bucket, key)

    def listing_error(self, exc: BaseException, bucket: str, prefix: str) -> BaseException:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            return UsageError(f"cannot list s3://{bucket}/{prefix}: {s3_error(exc, f's3://{bucket}/{prefix}')}")
        if isinstance(exc, BotoCoreError):
            return UsageError(f"cannot reach S3 to list s3://{bucket}/{prefix}: {exc}")
        return exc


class ObstoreGets:
    """Object GETs through obstore (Rust ``object_store``), for ``LABELQ_S3_CLIENT=obstore``.

    About 3x less client CPU per GET than boto3 (docs/benchmarks.md, "Object clients"). The
    credentials are boto3's: its whole chain (environment, profiles, SSO, instance and container
    roles) through ``obstore.auth.boto3.Boto3CredentialProvider``, refreshed as boto3 refreshes
    them; endpoint, region and timeouts are the same settings as boto3's. Errors map to the same
    kinds; transient ones are retried by :func:`with_backoff` like boto3's.
    """

    def __init__(self, settings: Settings) -> None:
        try:
            import obstore  # noqa: F401
        except ImportError:
            raise WorkerFault("LABELQ_S3_CLIENT=obstore but obstore is not installed: pip install 'labelq[obstore]'") \
                from None
        self.settings = settings
        self._stores: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._credentials: Any = None

    def _store(self, bucket: str) -> Any:
        with self._lock:
            store = self._stores.get(bucket)
            if store is None:
                store = self._stores[bucket] = self._make(bucket)
            return store

    def _make(self, bucket: str) -> Any:
        from datetime import timedelta

        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
        from obstore.store import S3Store as ObStore

        s = self.settings
        session = boto3.session.Session()
        if self._credentials is None:
            try:
                self._credentials = Boto3CredentialProvider(session)
            except ValueError:  # boto3's chain found nothing
                raise WorkerFault(f"s3://{bucket}: this worker has no S3 credentials") from None
        config: dict[str, Any] = {"region": s.s3_region or session.region_name or "us-east-1"}
        if s.s3_endpoint_url:
            config["endpoint"] = s.s3_endpoint_url
            config["virtual_hosted_style_request"] = False  # path style, as boto3 does for custom endpoints
        client = {"allow_http": bool(s.s3_endpoint_url and s.s3_endpoint_url.startswith("http://")),
                  "connect_timeout": timedelta(seconds=s.s3_connect_timeout),
                  "timeout": timedelta(seconds=s.s3_read_timeout + s.s3_connect_timeout)}
        retry = {"max_retries": 1, "retry_timeout": timedelta(seconds=s.s3_read_timeout)}
        return ObStore(bucket, config=config, client_options=client, retry_config=retry,  # type: ignore[arg-type]
                       credential_provider=self._credentials)

    @staticmethod
    def can_name(key: str) -> bool:
        """object_store paths have no empty, ``.`` or ``..`` segments; such keys (legal in S3) go through boto3."""
        return all(part not in ("", ".", "..") for part in key.split("/"))

    def get(self, bucket: str, key: str, max_bytes: int) -> bytes:
        import obstore

        uri = f"s3://{bucket}/{key}"
        try:
            result = obstore.get(self._store(bucket), key)
            size = result.meta["size"]
            data = None if size > max_bytes else bytes(result.bytes())
        except WorkerFault:
            raise
        except Exception as exc:  # noqa: BLE001 - obstore's errors carry the S3 code and HTTP status in the text
            raise _ob_error(uri, exc) from None
        if data is None:
            raise TooLarge(f"object is {size} bytes, over the limit of {max_bytes} (LABELQ_MAX_BYTES)")
        return data


_OB_CODE = re.compile(r"<Code>(\w+)</Code>")
_OB_STATUS = re.compile(r"status code: (\d{3})")


def _ob_error(uri: str, exc: BaseException) -> Exception:
    """An obstore error as labelq's kind, from the S3 error code and HTTP status its message carries."""
    from obstore import exceptions as ox

    text = str(exc)
    code = (m.group(1) if (m := _OB_CODE.search(text)) else "")
    status = int(m.group(1)) if (m := _OB_STATUS.search(text)) else None
    line = f"{code or status or type(exc).__name__}"
    known = _by_code(uri, code)
    if known is not None:
        return known
    if isinstance(exc, ox.UnauthenticatedError) or status == 401:
        return WorkerFault(f"{uri}: {line}: this worker's S3 credentials are refused")
    if isinstance(exc, FileNotFoundError) or status == 404:
        return NotFound(f"{uri}: NotFound")
    if isinstance(exc, PermissionError) or status == 403:
        return AccessDenied(f"{uri}: AccessDenied")
    if code in _RETRYABLE_S3 or status is None or status >= 500 or status == 429:
        return Transient(f"{uri}: {line}: {' '.join(text.split())[:200]}")  # 5xx, throttling, connections
    return StorageError(f"{uri}: {line}")


# Codes that say the caller's credentials are wrong, whatever object it asks for.
_CREDENTIAL_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                     "TokenRefreshRequired", "InvalidClientTokenId", "AuthorizationHeaderMalformed")


def _by_code(uri: str, code: str) -> Exception | None:
    """The kinds an S3 error code alone decides (boto3 and obstore): not found, refused credentials, denied."""
    if code in ("NoSuchKey", "404", "NotFound", "NoSuchBucket"):
        return NotFound(f"{uri}: {code}")
    if code in _CREDENTIAL_CODES:
        return WorkerFault(f"{uri}: {code}: this worker's S3 credentials are refused")
    if code in ("AccessDenied", "403", "Forbidden"):
        return AccessDenied(f"{uri}: {code}")
    return None


def s3_error(exc: Any, uri: str) -> Exception:
    """Map a botocore ClientError to a typed error."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    known = _by_code(uri, code)
    if known is not None:
        return known
    if code in _RETRYABLE_S3 or (status is not None and status >= 500):
        return Transient(f"{uri}: {code or status}")
    return StorageError(f"{uri}: {code or status}: {exc}")


def make_s3_client(settings: Settings) -> Any:
    """A thread-safe boto3 S3 client with timeouts, standard retries and a pool sized for the fetch threads."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": 2, "mode": "standard"},
        # botocore >= 1.36 computes CRCs of every GET's body by default: ~15% of its client CPU per GET
        # (docs/benchmarks.md, "Object clients"); TCP and TLS already protect the bytes in transit.
        response_checksum_validation="when_required",
        request_checksum_calculation="when_required",
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout,
        max_pool_connections=max(10, settings.fetch_threads, settings.list_workers + 2),
    )
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region, config=config)
