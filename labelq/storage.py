"""Object stores: where image bytes come from.

One small interface over a local folder and S3 (and S3-compatible stores such as
MinIO and moto). Listing is lazy and paginated; every object is an :class:`ObjectRef`
carrying its canonical URI, size and etag. A record's ``uri`` names the object the
same way everywhere: ``s3://bucket/key`` or ``file:///absolute/path``. What a user
names as SOURCE, and its resumable listing, is labelq.sources (re-exported here).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlparse

from .config import Settings
from .errors import AccessDenied, NotFound, StorageError, TooLarge, WorkerFault
from .retrying import backoff

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """One object to label: canonical URI, size in bytes and etag (None when unknown)."""

    uri: str
    size: int | None = None
    etag: str | None = None

    def to_json(self) -> list[Any]:
        """Compact JSON form used in Celery messages: ``[uri, size, etag]``."""
        return [self.uri, self.size, self.etag]

    @classmethod
    def from_json(cls, value: Any) -> ObjectRef:
        if isinstance(value, dict):
            return cls(**value)
        uri, size, etag = value
        return cls(uri, size, etag)

    def asdict(self) -> dict[str, Any]:
        return asdict(self)


class Store(Protocol):
    """What the engine needs from a store."""

    def fetch(self, ref: ObjectRef) -> bytes: ...


# ----------------------------------------------------------------------------- local


def file_uri(path: Path) -> str:
    """Canonical ``file://`` URI of an absolute path."""
    return "file://" + quote(str(path))


def path_of(uri: str) -> Path:
    """The local path a ``file://`` URI names."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise ValueError(f"not a file URI: {uri}")
    return Path(unquote(parsed.path))


def local_etag(st: os.stat_result) -> str:
    """A cheap change detector for local files: size and mtime in nanoseconds."""
    return hashlib.blake2s(f"{st.st_size}:{st.st_mtime_ns}".encode(), digest_size=8).hexdigest()


class LocalStore:
    """Files under one root folder; anything resolving outside it is refused."""

    def __init__(self, root: Path | None, *, max_bytes: int) -> None:
        self.root = root.resolve() if root is not None else None
        self.max_bytes = max_bytes

    def _resolve(self, uri: str) -> Path:
        if self.root is None:
            raise WorkerFault("local files are not enabled here: set LABELQ_LOCAL_ROOT to the folder workers may read")
        raw = path_of(uri)
        if not raw.is_absolute() or ".." in raw.parts:
            raise AccessDenied(f"path escapes the storage root: {raw}")
        path = raw.resolve()
        if path != self.root and self.root not in path.parents:
            raise AccessDenied(f"path is outside the storage root {self.root}: {raw}")
        return path

    def fetch(self, ref: ObjectRef) -> bytes:
        path = self._resolve(ref.uri)
        try:
            st = path.stat()
            if not stat.S_ISREG(st.st_mode):
                raise NotFound(f"not a regular file: {path}")
            size = st.st_size
            if size > self.max_bytes:
                raise TooLarge(f"object is {size} bytes, over the limit of {self.max_bytes} (LABELQ_MAX_BYTES)")
            with path.open("rb") as f:
                data = f.read(self.max_bytes + 1)
        except FileNotFoundError:
            raise NotFound(f"no such file: {path}") from None
        except PermissionError:
            raise AccessDenied(f"permission denied: {path}") from None
        except IsADirectoryError:
            raise NotFound(f"is a directory: {path}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from None
        if len(data) > self.max_bytes:
            raise TooLarge(f"object is over the limit of {self.max_bytes} bytes (LABELQ_MAX_BYTES)")
        return data

    def list(self, folder: Path, suffixes: tuple[str, ...]) -> Iterator[ObjectRef]:
        """Files under ``folder`` (recursively, sorted per directory, lazily) with a kept suffix."""
        for ref, _ in walk_folder(folder, suffixes):
            yield ref


def walk_folder(folder: Path, suffixes: tuple[str, ...], *, after: str | None = None) -> Iterator[tuple[ObjectRef, str]]:
    """Files under ``folder`` with a kept suffix, lazily, as (ref, path relative to ``folder`` with ``/``).

    Order: a directory's files by name, then its subdirectories by name, each subtree whole; symlinked
    directories are not entered. ``after`` (a relative path this walk yielded) resumes right after it,
    reading only the directories on its path and those after it.
    """
    yield from _walk(folder.resolve(), "", suffixes, after.split("/") if after else None)


def _walk(current: Path, rel: str, suffixes: tuple[str, ...], after: list[str] | None) -> Iterator[tuple[ObjectRef, str]]:
    try:
        entries = sorted(os.scandir(current), key=lambda e: e.name)
    except OSError as exc:
        logger.warning("cannot list %s: %s", current, exc)
        return
    subdirs = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            subdirs.append(entry)
        elif entry.is_file() and kept(entry.name, suffixes) and (after is None or (len(after) == 1 and entry.name > after[0])):
            st = entry.stat()
            yield ObjectRef(file_uri(Path(entry.path)), st.st_size, local_etag(st)), rel + entry.name
    for entry in subdirs:
        if after is None or len(after) == 1 or entry.name > after[0]:
            yield from _walk(Path(entry.path), rel + entry.name + "/", suffixes, None)
        elif entry.name == after[0]:
            yield from _walk(Path(entry.path), rel + entry.name + "/", suffixes, after[1:])


def kept(name: str, suffixes: tuple[str, ...]) -> bool:
    """Whether a file or key name ends with one of ``suffixes`` (any case); every name when there are none."""
    return not suffixes or name.lower().endswith(suffixes)


_kept = kept


# ----------------------------------------------------------------------------- S3


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3://bucket/key URI: {uri}")
    return parsed.netloc, unquote(parsed.path[1:])  # keys may start with "/": strip only the separator


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{quote(key)}"


_RETRYABLE_S3 = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling", "500", "502", "503", "504"}


class S3Store:
    """S3 through boto3: the usual credential chain, botocore's standard retries on top of ours."""

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.max_bytes = settings.max_bytes
        self.attempts = settings.s3_max_attempts
        self.client = client if client is not None else make_s3_client(settings)
        self._gets = ObstoreGets(settings) if settings.s3_client == "obstore" else None

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
            raise _Transient(f"s3://{bucket}/{key}: {exc}") from None

    def list(self, bucket: str, prefix: str, suffixes: tuple[str, ...], *, after: str | None = None,
             workers: int = 1) -> Iterator[ObjectRef]:
        """Objects under the prefix in key order, after the key ``after``, one page (1000 keys) at a time.

        ``workers`` > 1 lists sub-prefixes concurrently (labelq.listing.fan_out), in the same order.
        """
        from .listing import list_keys

        for ref, _ in list_keys(self.client, bucket, prefix, suffixes, after=after, workers=workers):
            yield ref


class _Transient(StorageError):
    """A failure worth another try (5xx, throttling, timeouts, dropped connections)."""


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
        return _Transient(f"{uri}: {line}: {' '.join(text.split())[:200]}")  # 5xx, throttling, connections
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
        return _Transient(f"{uri}: {code or status}")
    return StorageError(f"{uri}: {code or status}: {exc}")


def with_backoff(call: Any, attempts: int, *, what: str, base: float = 0.1, cap: float = 5.0) -> Any:
    """Run ``call``; on a transient error retry with exponential backoff and full jitter.

    After ``attempts`` tries the last error is raised as a plain StorageError.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except _Transient as exc:
            if attempt == attempts:
                raise StorageError(f"{exc} (gave up after {attempts} attempts)") from None
            delay = backoff(attempt, base, cap)
            logger.info("transient storage error on %s (attempt %d/%d), retrying in %.2fs", what, attempt, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


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


# ----------------------------------------------------------------------------- routing


class Stores:
    """Routes a ref to the store its URI scheme names; S3 client made on first use."""

    def __init__(self, settings: Settings, *, local_root: Path | None = None, s3_client: Any = None) -> None:
        self.settings = settings
        self.local = LocalStore(local_root if local_root is not None else settings.local_root, max_bytes=settings.max_bytes)
        self._s3_client = s3_client
        self._s3: S3Store | None = None
        self._lock = threading.Lock()

    @property
    def s3(self) -> S3Store:
        with self._lock:  # fetch threads race here on a fresh worker: one client, not sixteen
            if self._s3 is None:
                self._s3 = S3Store(self.settings, self._s3_client)
            return self._s3

    def fetch(self, ref: ObjectRef) -> bytes:
        scheme = ref.uri.split("://", 1)[0]
        if scheme == "s3":
            return self.s3.fetch(ref)
        if scheme == "file":
            return self.local.fetch(ref)
        raise AccessDenied(f"unsupported URI scheme {scheme!r}: {ref.uri}")
