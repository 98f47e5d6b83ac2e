"""Files under one root folder (``file://`` URIs): reads that never leave the root, writes that never go
through a symbolic link.

Reads resolve the path and refuse anything outside the root. Writes (quarantine copies and moves) open
every folder on the way relative to its parent with ``O_NOFOLLOW`` (a link there is refused, not
followed), write a copy to a new temporary file (``O_CREAT | O_EXCL | O_NOFOLLOW``) in the destination
folder and rename it into place, and refuse a symbolic link already at the destination. A rename
replaces a directory entry, never what a link points at, so even a link made between the check and the
rename redirects nothing. (POSIX only: ``dir_fd`` calls.)
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urlparse

from ..config import Settings
from ..errors import AccessDenied, NotFound, StorageError, TooLarge, UsageError, WorkerFault
from .base import ObjectRef, kept

logger = logging.getLogger(__name__)


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

    schemes: ClassVar[tuple[str, ...]] = ("file",)
    listable: ClassVar[bool] = True
    actions: ClassVar[bool] = True
    taggable: ClassVar[bool] = False  # no tags on local files: a tag action is skipped, not failed
    nearby: ClassVar[bool] = True  # reads come from this host's page cache

    def __init__(self, root: Path | None, *, max_bytes: int) -> None:
        self.root = root.resolve() if root is not None else None
        self.max_bytes = max_bytes

    @classmethod
    def from_settings(cls, settings: Settings, **_: Any) -> LocalStore:
        return cls(settings.local_root, max_bytes=settings.max_bytes)

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

    def head(self, uri: str) -> ObjectRef:
        path = self._resolve(uri)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise NotFound(f"no such file: {path}") from None
        except OSError as exc:
            raise StorageError(f"cannot stat {path}: {exc}") from None
        return ObjectRef(file_uri(path), st.st_size, local_etag(st))

    def list(self, prefix_uri: str, suffixes: tuple[str, ...], *, after: str | None = None,
             workers: int = 1) -> Iterator[tuple[ObjectRef, str]]:
        """Files under the folder ``prefix_uri`` names, as (ref, path relative to it): :func:`walk_folder`."""
        return walk_folder(path_of(prefix_uri), suffixes, after=after)

    # ------------------------------------------------------------------ actions

    def tags(self, uri: str) -> dict[str, str]:
        return {}

    def put_tags(self, uri: str, tags: Mapping[str, str]) -> None:
        raise UsageError(f"local files have no tags: {uri}")

    def quarantine_uri(self, uri: str, prefix: str) -> str:
        root = self._root()
        rel = self._resolve(uri).relative_to(root)
        return file_uri(root / prefix / rel)

    def in_quarantine(self, uri: str, prefix: str) -> bool:
        root = self.root
        return root is not None and str(path_of(uri)).startswith(str(root / prefix))

    def copy(self, uri: str, dest_uri: str) -> None:
        self._write(uri, dest_uri, move=False)

    def move(self, uri: str, dest_uri: str) -> None:
        self._write(uri, dest_uri, move=True)

    def restore(self, uri: str, dest_uri: str) -> None:
        """Put a quarantined file back where it was (a move the other way, as link-safe)."""
        self._write(uri, dest_uri, move=True)

    def _root(self) -> Path:
        if self.root is None:
            raise WorkerFault("local files are not enabled here: set LABELQ_LOCAL_ROOT to the folder workers may read")
        return self.root

    def _write(self, uri: str, dest_uri: str, *, move: bool) -> None:
        root = self._root()
        src = self._resolve(uri)  # refuses paths outside the root
        rel = src.relative_to(root)
        dest = path_of(dest_uri)
        if ".." in dest.parts or (dest != root and root not in dest.parents):
            raise AccessDenied(f"destination is outside the storage root {root}: {dest}")
        drel = dest.relative_to(root)
        sfd = _open_dir(root, _parts(rel.parent), create=False)
        try:
            dfd = _open_dir(root, _parts(PurePosixPath(*drel.parent.parts)), create=True)
            try:
                _refuse_link(dfd, dest.name, dest)
                if move:
                    _move(sfd, src.name, dfd, dest.name)
                else:
                    _copy(sfd, src.name, dfd, dest.name)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)


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


# ----------------------------------------------------------------------------- link-safe writes


def _parts(path: PurePosixPath | Path) -> list[str]:
    parts = [p for p in path.parts if p not in ("", ".")]
    if any(p == ".." or "/" in p or os.sep in p for p in parts) or path.is_absolute():
        raise AccessDenied(f"path escapes the storage root: {path}")
    return parts


def _open_dir(root: Path, parts: Sequence[str], *, create: bool) -> int:
    """A descriptor of ``root/parts...``, made as needed, reached without following any link."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, name in enumerate(parts):
            if create:
                try:
                    os.mkdir(name, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = Path(root, *parts[: i + 1])
                    raise AccessDenied(f"refusing to write through a symbolic link or non-folder: {where}") from None
                if exc.errno == errno.ENOENT:
                    raise NotFound(f"no such folder: {Path(root, *parts[: i + 1])}") from None
                raise
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _refuse_link(dfd: int, name: str, shown: Path) -> None:
    try:
        st = os.lstat(name, dir_fd=dfd)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise AccessDenied(f"refusing to replace a symbolic link: {shown}")


def _move(sfd: int, src: str, dfd: int, dest: str) -> None:
    try:
        os.rename(src, dest, src_dir_fd=sfd, dst_dir_fd=dfd)
    except FileNotFoundError:
        raise NotFound(f"no such file: {src}") from None
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # the destination is on another file system: copy, then remove
            raise
        _copy(sfd, src, dfd, dest)
        os.unlink(src, dir_fd=sfd)


def _copy(sfd: int, src: str, dfd: int, dest: str) -> None:
    """Copy bytes, mode and times (as shutil.copy2) to a new temporary file, then rename it into place."""
    tmp = f".{dest}.{uuid.uuid4().hex[:12]}.labelq-tmp"
    try:
        rfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=sfd)
    except FileNotFoundError:
        raise NotFound(f"no such file: {src}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AccessDenied(f"refusing to read through a symbolic link: {src}") from None
        raise
    try:
        st = os.fstat(rfd)
        if not stat.S_ISREG(st.st_mode):
            raise AccessDenied(f"not a regular file: {src}")
        wfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
        try:
            with open(rfd, "rb", closefd=False) as r, open(wfd, "wb", closefd=False) as w:
                shutil.copyfileobj(r, w, 1024 * 1024)
            os.fchmod(wfd, stat.S_IMODE(st.st_mode))
            os.utime(wfd, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(wfd)
        os.rename(tmp, dest, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass
        raise
    finally:
        os.close(rfd)
