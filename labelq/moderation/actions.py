"""The actions that change objects: tag, copy and move into quarantine, on S3 and in the local root.

Local writes stay inside the storage root and never go through a symbolic link:
every folder on the way to the quarantine copy is opened relative to its parent with
``O_NOFOLLOW`` (a link there is refused, not followed), a copy is written to a new
temporary file (``O_CREAT | O_EXCL | O_NOFOLLOW``) in the destination folder and
renamed into place, and a symbolic link already at the destination is refused. A
rename replaces a directory entry, never what a link points at, so even a link made
between the check and the rename redirects nothing. (POSIX only: ``dir_fd`` calls.)
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import uuid
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import AccessDenied
from ..storage import LocalStore, Stores, file_uri, split_s3
from .audit import Action

MAX_TAGS = 10  # S3 keeps at most 10 tags per object


def take(a: Action, stores: Stores, quarantine_prefix: str) -> str:
    """Carry out a tag, copy or move; returns what was done (an S3 URI, a file URI, or a note)."""
    if a.uri.startswith("s3://"):
        return s3_action(stores.s3.client, a, quarantine_prefix)
    if a.uri.startswith("file://"):
        return local_action(stores.local, a, quarantine_prefix)
    return f"skipped: no {a.action} for {a.uri.split('://')[0]}"


def s3_action(client: Any, a: Action, quarantine_prefix: str) -> str:
    bucket, key = split_s3(a.uri)
    if a.action == "tag":
        current = client.get_object_tagging(Bucket=bucket, Key=key).get("TagSet", [])
        tags = {t["Key"]: t["Value"] for t in current}
        tags.update({"labelq-label": a.label, "labelq-score": f"{a.score:.4f}", "labelq-policy": a.policy_version})
        client.put_object_tagging(Bucket=bucket, Key=key,
                                  Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()][:MAX_TAGS]})
        return f"tagged labelq-label={a.label}"
    target = quarantine_prefix + key
    client.copy_object(Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": key})
    if a.action == "move":
        client.delete_object(Bucket=bucket, Key=key)
    return f"s3://{bucket}/{target}"


def local_action(store: LocalStore, a: Action, quarantine_prefix: str) -> str:
    if a.action == "tag":
        return "skipped: local files have no tags"
    root = store.root
    src = store._resolve(a.uri)  # refuses paths outside the root
    assert root is not None
    rel = src.relative_to(root)
    dest = root / quarantine_prefix / rel
    src_dir = _parts(rel.parent)
    dest_dir = _parts(PurePosixPath(quarantine_prefix) / PurePosixPath(*rel.parent.parts))
    sfd = _open_dir(root, src_dir, create=False)
    try:
        dfd = _open_dir(root, dest_dir, create=True)
        try:
            _refuse_link(dfd, dest.name, dest)
            if a.action == "move":
                _move(sfd, src.name, dfd, dest.name)
            else:
                _copy(sfd, src.name, dfd, dest.name)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    return file_uri(dest)


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
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # the quarantine folder is on another file system: copy, then remove
            raise
        _copy(sfd, src, dfd, dest)
        os.unlink(src, dir_fd=sfd)


def _copy(sfd: int, src: str, dfd: int, dest: str) -> None:
    """Copy bytes, mode and times (as shutil.copy2) to a new temporary file, then rename it into place."""
    tmp = f".{dest}.{uuid.uuid4().hex[:12]}.labelq-tmp"
    rfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=sfd)
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
