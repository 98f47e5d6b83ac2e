"""The actions that change objects: tag, copy and move into quarantine, on S3 and in the local root;
and the reviewers' actions on them (release, confirm, and undoing either).

This module is the one implementation of tag merging (:func:`merge_tags`), of link-safe local
moves (:func:`local_move`) and of putting objects back (:func:`restore`, :func:`requarantine`):
the moderator and the console both use it.

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
import re
import shutil
import stat
import uuid
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import AccessDenied, UsageError
from ..storage import LocalStore, Stores, file_uri, path_of, split_s3
from .audit import Action

MAX_TAGS = 10  # S3 keeps at most 10 tags per object
POLICY_TAGS = ("labelq-label", "labelq-score", "labelq-policy")  # what a policy's tag action writes
REVIEW_TAGS = ("labelq-review", "labelq-reviewer", "labelq-reason")  # what a reviewer's decision writes
_TAG_UNSAFE = re.compile(r"[^\w .:/=+\-@]", re.UNICODE)


def merge_tags(current: dict[str, str], add: dict[str, str], remove: Sequence[str] = ()) -> dict[str, str]:
    """The one tag rule: drop ``remove``, then set ``add`` (values made S3-safe); when that holds more than
    MAX_TAGS, the added tags stay and the other tags are dropped from the last."""
    kept = {k: v for k, v in current.items() if k not in remove and k not in add}
    added = {k: _TAG_UNSAFE.sub("_", v)[:256] for k, v in add.items()}
    room = max(0, MAX_TAGS - len(added))
    return {**dict(list(kept.items())[:room]), **added}


def get_tags(client: Any, bucket: str, key: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in client.get_object_tagging(Bucket=bucket, Key=key).get("TagSet", [])}


def put_tags(client: Any, bucket: str, key: str, tags: dict[str, str]) -> None:
    client.put_object_tagging(Bucket=bucket, Key=key, Tagging={"TagSet": [{"Key": k, "Value": v}
                                                                         for k, v in tags.items()]})


def retag(client: Any, uri: str, add: dict[str, str], remove: Sequence[str] = ()) -> dict[str, str]:
    """Merge tags into an S3 object's tags; returns the tags it had before."""
    bucket, key = split_s3(uri)
    before = get_tags(client, bucket, key)
    put_tags(client, bucket, key, merge_tags(before, add, remove))
    return before


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
        retag(client, a.uri, {"labelq-label": a.label, "labelq-score": f"{a.score:.4f}",
                              "labelq-policy": a.policy_version})
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
    dest = root / quarantine_prefix / src.relative_to(root)
    return local_move(store, a.uri, file_uri(dest), copy=a.action == "copy", replace=True)


def local_move(store: LocalStore, src_uri: str, dest_uri: str, *, copy: bool = False, replace: bool = False) -> str:
    """Move (or copy) a file to another path inside the storage root, never through a symbolic link;
    refuses to overwrite an existing file unless ``replace``. Returns the destination URI."""
    root = store.root
    if root is None:
        raise AccessDenied("no local storage root is set (LABELQ_LOCAL_ROOT)")
    src = store._resolve(src_uri)  # inside the root, or AccessDenied
    dest = path_of(dest_uri)  # not resolved: the walk below refuses any link on the way instead of following it
    if not dest.is_absolute() or ".." in dest.parts or root not in dest.parents:
        raise AccessDenied(f"path is outside the storage root {root}: {dest}")
    src_rel, dest_rel = src.relative_to(root), dest.relative_to(root)
    sfd = _open_dir(root, _parts(src_rel.parent), create=False)
    try:
        dfd = _open_dir(root, _parts(dest_rel.parent), create=True)
        try:
            _refuse_link(dfd, dest.name, dest)
            if not replace and _exists(dfd, dest.name):
                raise UsageError(f"a file exists at {dest_rel} since; nothing moved")
            if copy:
                _copy(sfd, src.name, dfd, dest.name)
            else:
                _move(sfd, src.name, dfd, dest.name)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    return file_uri(dest)


def _exists(dfd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dfd)
    except FileNotFoundError:
        return False
    return True


# ----------------------------------------------------------------------------- reviewers' actions


def _s3_missing(exc: Exception) -> bool:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return code in ("404", "NoSuchKey", "NotFound")


def s3_move(client: Any, src_uri: str, dest_uri: str, *, expect_etag: str | None = None) -> None:
    """Copy an S3 object to another key of its bucket (tags go with it), then delete the source. With
    ``expect_etag``, refuses when a different object is at the destination."""
    from botocore.exceptions import ClientError

    sbucket, skey = split_s3(src_uri)
    dbucket, dkey = split_s3(dest_uri)
    if sbucket != dbucket:
        raise UsageError(f"{src_uri} and {dest_uri} are in different buckets")
    if expect_etag is not None:
        try:
            head = client.head_object(Bucket=dbucket, Key=dkey)
            if head.get("ETag", "").strip('"') != expect_etag:
                raise UsageError(f"a new object was uploaded at {dest_uri} since; nothing moved")
        except ClientError as exc:
            if not _s3_missing(exc):
                raise
    client.copy_object(Bucket=dbucket, Key=dkey, CopySource={"Bucket": sbucket, "Key": skey})
    client.delete_object(Bucket=sbucket, Key=skey)


def review_tags(decision: str, reviewer: str, reason: str | None) -> dict[str, str]:
    tags = {"labelq-review": {"release": "released", "confirm": "confirmed"}.get(decision, decision),
            "labelq-reviewer": reviewer}
    if reason:
        tags["labelq-reason"] = reason
    return tags


def restore(stores: Stores, item: Any, reviewer: str, reason: str | None = None) -> tuple[str, dict[str, Any]]:
    """Release: a moved object goes back to its key; on S3 the policy's tags go and review tags come.
    Returns what was done and what :func:`requarantine` needs to reverse it."""
    done: list[str] = []
    undo: dict[str, Any] = {"restored": False}
    if item.uri.startswith("s3://"):
        client = stores.s3.client
        if item.moved and item.quarantine_uri:
            s3_move(client, item.quarantine_uri, item.uri, expect_etag=item.etag)
            undo["restored"] = True
            done.append(f"restored from {item.quarantine_uri}")
        undo["tags"] = retag(client, item.uri, review_tags("release", reviewer, reason), POLICY_TAGS)
        done.append("tagged labelq-review=released")
    elif item.uri.startswith("file://"):
        if item.moved and item.quarantine_uri:
            local_move(stores.local, item.quarantine_uri, item.uri)
            undo["restored"] = True
            done.append(f"restored from {item.quarantine_uri}")
        else:
            done.append("local files have no tags: nothing to do")
    else:
        raise UsageError(f"cannot release {item.uri}")
    return "; ".join(done), undo


def confirm(stores: Stores, item: Any, reviewer: str, reason: str | None = None) -> tuple[str, dict[str, Any]]:
    """Confirm: the object stays where the policy put it; on S3 it is tagged as reviewed where it is now."""
    if not item.shown_uri.startswith("s3://"):
        return "", {}
    before = retag(stores.s3.client, item.shown_uri, review_tags("confirm", reviewer, reason))
    return "tagged labelq-review=confirmed", {"tags": before, "at": item.shown_uri}


def requarantine(stores: Stores, item: Any) -> str:
    """Undo a release: the object goes back to its quarantine copy, with the tags it had."""
    undo = item.undo or {}
    if item.uri.startswith("s3://"):
        client = stores.s3.client
        if "tags" in undo:
            bucket, key = split_s3(item.uri)
            put_tags(client, bucket, key, dict(undo["tags"]))
        if undo.get("restored") and item.quarantine_uri:
            s3_move(client, item.uri, item.quarantine_uri)
            return f"moved back to {item.quarantine_uri}"
        return "tags restored"
    if item.uri.startswith("file://") and undo.get("restored") and item.quarantine_uri:
        local_move(stores.local, item.uri, item.quarantine_uri)
        return f"moved back to {item.quarantine_uri}"
    return "nothing to reverse"


def untag(stores: Stores, item: Any) -> str:
    """Undo a confirm: the tags the object had before."""
    undo = item.undo or {}
    if "tags" in undo and str(undo.get("at", "")).startswith("s3://"):
        bucket, key = split_s3(undo["at"])
        put_tags(stores.s3.client, bucket, key, dict(undo["tags"]))
        return "tags restored"
    return "nothing to reverse"


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
