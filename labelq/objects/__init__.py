"""Object stores behind one seam: the protocol (:mod:`.base`), one module per store, and the scheme table.

Callers ask :class:`Stores` for the store of a URI (``stores.store(uri)``) and never test a scheme.
Adding a store is one module with a class that follows :class:`~labelq.objects.base.ObjectStore` (and a
``from_settings`` class method) plus one line in :data:`SCHEMES`, as kombu's transports are added.
"""

from __future__ import annotations

import threading
from importlib import import_module
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import AccessDenied
from .base import (
    MAX_TAGS,
    Fetched,
    ObjectRef,
    ObjectStore,
    Store,
    Transient,
    kept,
    merge_tags,
    with_backoff,
    with_version,
)
from .local import LocalStore, file_uri, local_etag, path_of, walk_folder
from .s3 import S3Store, make_s3_client, s3_error, s3_uri, split_s3

# scheme → "module:Class" under labelq.objects; imported on first use, so a store's client library loads only
# when one of its URIs is met.
SCHEMES: dict[str, str] = {
    "file": "local:LocalStore",
    "s3": "s3:S3Store",
    "gs": "gcs:GcsStore",
    "az": "azure:AzureStore",
    "http": "http:HttpStore",
    "https": "http:HttpStore",
}

__all__ = [
    "MAX_TAGS",
    "SCHEMES",
    "Fetched",
    "LocalStore",
    "ObjectRef",
    "ObjectStore",
    "S3Store",
    "Store",
    "Stores",
    "Transient",
    "file_uri",
    "kept",
    "local_etag",
    "make_s3_client",
    "merge_tags",
    "path_of",
    "s3_error",
    "s3_uri",
    "scheme_of",
    "split_s3",
    "store_class",
    "walk_folder",
    "with_backoff",
    "with_version",
]


def scheme_of(uri: str) -> str:
    """The scheme of a URI (``s3`` of ``s3://b/k``); ``""`` for a plain path."""
    head, sep, _ = uri.partition("://")
    return head.lower() if sep else ""


def store_class(scheme: str) -> type[Any] | None:
    """The class serving ``scheme``, or None when no store does."""
    entry = SCHEMES.get(scheme)
    if entry is None:
        return None
    module, name = entry.split(":")
    cls: type[Any] = getattr(import_module(f"{__name__}.{module}"), name)
    return cls


class Stores:
    """The object stores of one process, by URI scheme; each made on first use and shared by threads."""

    def __init__(self, settings: Settings, *, local_root: Path | None = None, s3_client: Any = None) -> None:
        self.settings = settings
        self.local = LocalStore(local_root if local_root is not None else settings.local_root,
                                max_bytes=settings.max_bytes)
        self._options = {"s3_client": s3_client}
        self._made: dict[type[Any], Any] = {LocalStore: self.local}
        self._lock = threading.Lock()  # fetch threads race here on a fresh worker: one client, not sixteen

    def store(self, uri: str) -> ObjectStore:
        """The store of ``uri``'s scheme; ``AccessDenied`` (an error record, not a crash) when none serves it."""
        scheme = scheme_of(uri)
        cls = store_class(scheme)
        if cls is None:
            raise AccessDenied(f"unsupported URI scheme {scheme or 'none'!r}: {uri} "
                               f"(labelq reads {', '.join(f'{s}://' for s in SCHEMES)})")
        with self._lock:
            made = self._made.get(cls)
            if made is None:
                made = self._made[cls] = cls.from_settings(self.settings, **self._options)
            store: ObjectStore = made
            return store

    @property
    def s3(self) -> S3Store:
        """The S3 store (S3 Inventory reports and S3 event sources are S3 things)."""
        store = self.store("s3://")
        assert isinstance(store, S3Store)
        return store

    def fetch(self, ref: ObjectRef) -> bytes:
        return self.store(ref.uri).fetch(ref)

    def nearby(self, uri: str) -> bool:
        """Whether reading ``uri`` is a page-cache read on this host (a local file): no I/O thread needed."""
        cls = store_class(scheme_of(uri))
        return bool(cls is not None and getattr(cls, "nearby", False))
