"""What every object store is: the :class:`ObjectStore` protocol, the object reference, and the rules
all stores share (tag merge, quarantine names, transient-error backoff).

A store owns one URI scheme (``file``, ``s3``, ``gs``, ``az``, ``http``/``https``) and speaks only in
URIs of that scheme. Errors are labelq's kinds (labelq.errors): ``NotFound``, ``AccessDenied``,
``TooLarge``, ``StorageError`` after retries; ``WorkerFault`` when this process cannot reach the store
at all (no credentials, no local root), so a worker fails the chunk back instead of writing records.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from ..errors import LabelqError, StorageError, UsageError
from ..retrying import backoff

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_TAGS = 10  # S3 keeps at most 10 tags per object; every store keeps the same set
_TAG_UNSAFE = re.compile(r"[^\w .:/=+\-@]", re.UNICODE)  # outside S3's (and Azure's) tag alphabet


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


class Fetched(bytes):
    """An object's bytes with the version its store gave them where the listing knew none (an HTTP ETag)."""

    version: str | None = None


def with_version(ref: ObjectRef, data: bytes) -> ObjectRef:
    """``ref`` with the version its fetched bytes carry, when the listing knew none (URL lists): the record's
    etag is then what the server said, so a rerun can tell a changed object."""
    version = getattr(data, "version", None)
    if version is None or ref.etag is not None:
        return ref
    return ObjectRef(ref.uri, ref.size if ref.size is not None else len(data), version)


class Store(Protocol):
    """What the engine needs from a store: the bytes of one object."""

    def fetch(self, ref: ObjectRef) -> bytes: ...


@runtime_checkable
class ObjectStore(Protocol):
    """One scheme's objects. Listing is lazy, in a fixed order, resumable after any cursor it yielded."""

    schemes: ClassVar[tuple[str, ...]]  # the URI schemes this store serves
    listable: ClassVar[bool]  # a prefix URI of this scheme names a set of objects (a bucket, a folder)
    actions: ClassVar[bool]  # tag / copy / move are supported (moderation)
    taggable: ClassVar[bool]  # tags (or metadata standing for them) can be written

    def fetch(self, ref: ObjectRef) -> bytes:
        """The object's bytes (at most LABELQ_MAX_BYTES, else ``TooLarge``)."""

    def head(self, uri: str) -> ObjectRef:
        """The object's size and etag, without its bytes; ``NotFound`` when it is gone."""

    def list(self, prefix_uri: str, suffixes: tuple[str, ...], *, after: str | None = None,
             workers: int = 1) -> Iterator[tuple[ObjectRef, str]]:
        """Objects under a prefix whose names end with a kept suffix, as (ref, cursor), after ``after``."""

    def tags(self, uri: str) -> dict[str, str]:
        """The object's tags (metadata where the store has no tags)."""

    def put_tags(self, uri: str, tags: Mapping[str, str]) -> None:
        """Replace the object's tags with ``tags`` (merged by :func:`merge_tags` first)."""

    def copy(self, uri: str, dest_uri: str) -> None:
        """Copy an object to another URI of the same store (never through a symbolic link)."""

    def move(self, uri: str, dest_uri: str) -> None:
        """Move an object (copy, then delete the source, where the store cannot rename)."""

    def restore(self, uri: str, dest_uri: str) -> None:
        """Put a quarantined object back where it was (a move the other way)."""

    def quarantine_uri(self, uri: str, prefix: str) -> str:
        """Where quarantine under ``prefix`` puts ``uri`` (same bucket or root)."""

    def in_quarantine(self, uri: str, prefix: str) -> bool:
        """Whether ``uri`` already lies under the quarantine ``prefix``."""


class NoActions:
    """Mixin of stores that cannot change objects (URL lists): each action is refused in one line."""

    actions: ClassVar[bool] = False

    def _refuse(self, uri: str, what: str) -> UsageError:
        scheme = uri.split("://", 1)[0]
        return UsageError(f"{what} is not possible on {scheme}:// objects ({uri}): labelq only reads them")

    def tags(self, uri: str) -> dict[str, str]:
        raise self._refuse(uri, "tagging")

    def put_tags(self, uri: str, tags: Mapping[str, str]) -> None:
        raise self._refuse(uri, "tagging")

    def copy(self, uri: str, dest_uri: str) -> None:
        raise self._refuse(uri, "copying")

    def move(self, uri: str, dest_uri: str) -> None:
        raise self._refuse(uri, "moving")

    def quarantine_uri(self, uri: str, prefix: str) -> str:
        raise self._refuse(uri, "quarantine")

    def in_quarantine(self, uri: str, prefix: str) -> bool:
        return False


def split_bucket(uri: str, scheme: str) -> tuple[str, str]:
    """``SCHEME://bucket/key`` → (bucket, key) (the key unquoted; it may start with ``/``)."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    if parsed.scheme != scheme or not parsed.netloc:
        raise ValueError(f"not a {scheme}://bucket/key URI: {uri}")
    return parsed.netloc, unquote(parsed.path[1:])  # keys may start with "/": strip only the separator


def bucket_uri(scheme: str, bucket: str, key: str) -> str:
    """The canonical URI of a key in a bucket (the key quoted)."""
    from urllib.parse import quote

    return f"{scheme}://{bucket}/{quote(key)}"


class BucketStore:
    """What every bucket-and-key store (S3, GCS, Azure) does the same way: URIs, quarantine names, move as
    copy-then-delete, and one call wrapper that turns the client's errors into labelq's kinds (retrying
    the transient ones). A store names its scheme and supplies ``copy``, ``_delete`` and ``_error``."""

    scheme: ClassVar[str]
    listable: ClassVar[bool] = True
    actions: ClassVar[bool] = True
    taggable: ClassVar[bool] = True
    attempts: int

    def split(self, uri: str) -> tuple[str, str]:
        return split_bucket(uri, self.scheme)

    def uri(self, bucket: str, key: str) -> str:
        return bucket_uri(self.scheme, bucket, key)

    def copy(self, uri: str, dest_uri: str) -> None:
        raise NotImplementedError

    def _delete(self, uri: str) -> None:
        raise NotImplementedError

    def _error(self, exc: BaseException, uri: str) -> Exception:
        """The client's exception as one of labelq's kinds (a :class:`Transient` when worth another try)."""
        raise NotImplementedError

    def move(self, uri: str, dest_uri: str) -> None:
        self.copy(uri, dest_uri)
        self._delete(uri)

    def restore(self, uri: str, dest_uri: str) -> None:
        self.move(uri, dest_uri)

    def quarantine_uri(self, uri: str, prefix: str) -> str:
        bucket, key = self.split(uri)
        return self.uri(bucket, prefix + key)

    def in_quarantine(self, uri: str, prefix: str) -> bool:
        return self.split(uri)[1].startswith(prefix)

    def _call(self, uri: str, call: Callable[[], T]) -> T:
        """``call()`` with the client's errors as labelq's kinds, transient ones retried with backoff."""
        def once() -> T:
            try:
                return call()
            except (LabelqError, UsageError):
                raise
            except Exception as exc:  # noqa: BLE001 - the client's exceptions become labelq's kinds
                raise self._error(exc, uri) from None

        return with_backoff(once, self.attempts, what=uri)


def merge_tags(current: Mapping[str, str], add: Mapping[str, str], remove: Sequence[str] = ()) -> dict[str, str]:
    """The one tag rule, for every store: drop ``remove``, then set ``add`` (values made safe for every
    store's tag alphabet); when that holds more than MAX_TAGS, the added tags stay and the other tags are
    dropped from the last (a policy's or a reviewer's tags are the evidence of what was done)."""
    kept = {k: v for k, v in current.items() if k not in remove and k not in add}
    added = {k: _TAG_UNSAFE.sub("_", v)[:256] for k, v in add.items()}
    room = max(0, MAX_TAGS - len(added))
    dropped = list(kept)[room:]
    if dropped:
        logger.warning("object has more than %d tags: %s dropped to make room for labelq's", MAX_TAGS, dropped)
    return {**dict(list(kept.items())[:room]), **added}


def under_prefix(key: str, prefix: str) -> str:
    """``key`` moved under ``prefix`` (``quarantine/`` + ``a/b.jpg``)."""
    return prefix + key


class Transient(StorageError):
    """A failure worth another try (5xx, throttling, timeouts, dropped connections)."""


def with_backoff(call: Callable[[], T], attempts: int, *, what: str, base: float = 0.1, cap: float = 5.0) -> T:
    """Run ``call``; on a :class:`Transient` error retry with exponential backoff and full jitter.

    After ``attempts`` tries the last error is raised as a plain StorageError.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Transient as exc:
            if attempt == attempts:
                raise StorageError(f"{exc} (gave up after {attempts} attempts)") from None
            delay = backoff(attempt, base, cap)
            logger.info("transient storage error on %s (attempt %d/%d), retrying in %.2fs", what, attempt, attempts,
                        delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def kept(name: str, suffixes: tuple[str, ...]) -> bool:
    """Whether a file or key name ends with one of ``suffixes`` (any case); every name when there are none."""
    return not suffixes or name.lower().endswith(suffixes)
