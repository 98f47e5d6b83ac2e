"""Sources: what a user names as SOURCE, and its resumable listing.

SOURCE is a folder, a bucket prefix of an object store (``s3://bucket/prefix``, ``gs://bucket/prefix``,
``az://container/prefix``), a manifest (a text file of URIs — of any store in labelq.objects' scheme
table, ``https://`` image URLs included — or paths, one a line), the ``manifest.json`` of an S3
Inventory report (``s3://`` or local; labelq.inventory), or one image file.
:func:`iter_listing` yields every object as ``(ref, cursor)`` in a deterministic order; listing the
same source again with ``after=cursor`` yields exactly the objects after that one. A cursor is a plain
string, meaningful only for the source that made it:

=========== ===================================================================================
folder      the path relative to the folder, ``/``-separated: ``sub/b.jpg``
bucket      the key: ``prefix/sub/b.jpg`` (ListObjectsV2 ``StartAfter``, GCS ``startOffset``)
manifest    the 1-based number of the line that named the object: ``17``
inventory   ``PART:ROW``: 0-based index into the report's ``files``, 0-based row in that part
object      ``1``
=========== ===================================================================================
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import DEFAULT_SUFFIXES
from .errors import SourceError, UsageError
from .objects import SCHEMES, ObjectRef, Stores, file_uri, local_etag, path_of, scheme_of, store_class, walk_folder

KINDS = ("folder", "bucket", "manifest", "inventory", "object")
HEAD_BYTES = 4096  # bytes of a file read to tell an image from a text manifest


@dataclass(frozen=True)
class Source:
    """What the user named: a folder, an s3:// prefix, a manifest, an inventory report or one image."""

    kind: str  # one of KINDS
    location: str
    root: Path | None  # folder local files may be read from

    def __str__(self) -> str:
        return self.location


def parse_source(text: str, *, suffixes: tuple[str, ...] | list[str] = DEFAULT_SUFFIXES) -> Source:
    """Interpret SOURCE; raises UsageError with a clear message when it cannot be used.

    A file is one image when its name ends with one of ``suffixes`` or its first bytes are an image's;
    a file named ``*.json`` is an S3 Inventory manifest; any other file must be a text manifest.
    """
    scheme = scheme_of(text)
    if scheme and scheme != "file":
        cls = store_class(scheme)
        if cls is None or not cls.listable:
            listable = ", ".join(f"{s}://bucket/prefix" for s in ("s3", "gs", "az"))
            hint = " (a list of URLs is a manifest: a text file, one URL a line)" if cls is not None else ""
            raise UsageError(f"unsupported source {text!r}: use {listable}, a folder or a manifest file{hint}")
        if not text.split("://", 1)[1].split("/", 1)[0]:
            raise UsageError(f"bad source {text!r}: use {scheme}://bucket or {scheme}://bucket/prefix")
        if scheme == "s3" and text.endswith(".json"):
            return Source("inventory", text, None)
        return Source("bucket", text, None)
    path = path_of(text) if text.startswith("file://") else Path(text).expanduser()
    if path.is_dir():
        return Source("folder", str(path.resolve()), path.resolve())
    if path.is_file():
        path = path.resolve()
        if path.name.lower().endswith(".json"):
            return Source("inventory", str(path), None)
        head = _head(path)
        if path.name.lower().endswith(tuple(s.lower() for s in suffixes)) or is_image(head):
            return Source("object", str(path), path.parent)
        if not is_text(head):
            raise UsageError(f"{text} is neither an image nor a manifest: a manifest is a text file of URIs "
                             "or paths, one a line")
        return Source("manifest", str(path), path.parent)
    raise UsageError(f"source not found: {text} (expected a folder, a manifest file or s3://bucket/prefix)")


def iter_listing(source: Source, stores: Stores, *, after: str | None = None) -> Iterator[tuple[ObjectRef, str]]:
    """Lazily list the objects a source names as (ref, cursor), resuming after the cursor ``after``.

    Folders, buckets and inventories keep the configured suffixes; a manifest or a single file names its
    objects explicitly. S3 prefixes are listed by ``settings.list_workers`` concurrent streams, in key order.
    """
    suffixes = tuple(stores.settings.suffixes)
    if source.kind == "folder":
        yield from walk_folder(Path(source.location), suffixes, after=after)
    elif source.kind == "bucket":
        yield from stores.store(source.location).list(source.location, suffixes, after=after,
                                                      workers=stores.settings.list_workers)
    elif source.kind == "inventory":
        from .inventory import iter_inventory

        yield from iter_inventory(source.location, stores, suffixes, after=after)
    elif source.kind == "object":
        if after is None:
            path = Path(source.location)
            try:
                st = path.stat()
                yield ObjectRef(file_uri(path), st.st_size, local_etag(st)), "1"
            except OSError:
                yield ObjectRef(file_uri(path)), "1"  # fetching it reports not_found / access_denied
    else:
        yield from _manifest(Path(source.location), _line_cursor(after))


def iter_source(source: Source, stores: Stores) -> Iterator[ObjectRef]:
    """Lazily list the objects a source names, keeping the configured suffixes."""
    for ref, _ in iter_listing(source, stores):
        yield ref


# ----------------------------------------------------------------------------- manifests


def _manifest(path: Path, after: int) -> Iterator[tuple[ObjectRef, str]]:
    """A text file of URIs (or paths relative to the manifest), one a line; # starts a comment.

    A line may add an etag after a tab (``s3://b/k.jpg<TAB>etag``), so objects already labelled with that
    etag are skipped on a rerun; local files always take the etag of what is on disk.
    """
    with path.open(encoding="utf-8-sig") as f:  # a BOM (Windows editors) is not part of the first entry
        number = 0
        while True:
            try:
                line = f.readline()
            except UnicodeDecodeError:
                raise SourceError(f"{path}: not UTF-8 text after line {number}: a manifest is a text file of "
                                 "URIs or paths, one a line") from None
            if not line:
                return
            number += 1
            entry, _, etag = line.strip().partition("\t")
            entry, etag = entry.strip(), etag.strip().strip("\"")
            if number <= after or not entry or entry.startswith("#"):
                continue
            scheme = scheme_of(entry)
            if scheme and store_class(scheme) is not None:
                yield ObjectRef(entry, None, etag or None), str(number)
            elif scheme:
                raise SourceError(f"{path}: unsupported URI {entry!r} (line {number}): labelq reads "
                                 f"{', '.join(f'{s}://' for s in SCHEMES)}")
            else:
                local = Path(entry)
                local = Path(os.path.abspath(local if local.is_absolute() else path.parent / local))
                try:
                    st = local.stat()
                    yield ObjectRef(file_uri(local), st.st_size, local_etag(st)), str(number)
                except OSError:
                    yield ObjectRef(file_uri(local)), str(number)  # fetching it reports not_found / access_denied


def _line_cursor(after: str | None) -> int:
    if after is None:
        return 0
    if not after.isdigit():
        raise UsageError(f"bad manifest cursor {after!r}: expected a line number")
    return int(after)


# ----------------------------------------------------------------------------- file types


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(HEAD_BYTES)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def is_image(head: bytes) -> bool:
    """Whether bytes start like an image file (JPEG, PNG, GIF, WebP, TIFF, BMP, HEIF/AVIF, JPEG XL)."""
    return (
        head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*",
                         b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n"))
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        or (head[:2] == b"BM" and head[6:10] == b"\x00\x00\x00\x00")
        or head[4:8] == b"ftyp"
    )


def is_text(head: bytes) -> bool:
    """Whether bytes look like UTF-8 text (no NUL; a multi-byte character cut at the end is allowed)."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3 and len(head) == HEAD_BYTES
    return True
