"""The actions that change objects: a policy's tag, copy and move into quarantine; and the reviewers'
actions on them (release, confirm, and undoing either), in whichever store holds the object.

Each store does its own writing (labelq.objects: S3 object tags and CopyObject, GCS metadata, Azure
index tags, link-safe local writes); this module decides what to write, with the one tag rule
(:func:`labelq.objects.merge_tags`). The moderator and the console both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import NotFound, UsageError
from ..objects import Stores, merge_tags, scheme_of
from .audit import Action

POLICY_TAGS = ("labelq-label", "labelq-score", "labelq-policy")  # what a policy's tag action writes
REVIEW_TAGS = ("labelq-review", "labelq-reviewer", "labelq-reason")  # what a reviewer's decision writes


def take(a: Action, stores: Stores, quarantine_prefix: str) -> str:
    """Carry out a tag, copy or move; returns what was done (the quarantine URI, or a note)."""
    store = stores.store(a.uri)
    if not store.actions:
        return f"skipped: no {a.action} for {scheme_of(a.uri)}:// objects"
    if a.action == "tag":
        if not store.taggable:
            return f"skipped: {scheme_of(a.uri)}:// objects have no tags"
        retag(store, a.uri, {"labelq-label": a.label, "labelq-score": f"{a.score:.4f}",
                             "labelq-policy": a.policy_version})
        return f"tagged labelq-label={a.label}"
    dest: str = store.quarantine_uri(a.uri, quarantine_prefix)
    if a.action == "move":
        store.move(a.uri, dest)
    else:
        store.copy(a.uri, dest)
    return dest


def retag(store: Any, uri: str, add: dict[str, str], remove: Sequence[str] = ()) -> dict[str, str]:
    """Merge tags into an object's tags by the one rule; returns the tags it had before."""
    before: dict[str, str] = store.tags(uri)
    store.put_tags(uri, merge_tags(before, add, remove))
    return before


def move_back(store: Any, src_uri: str, dest_uri: str, *, expect_etag: str | None = None) -> None:
    """Move an object to ``dest_uri`` (tags go with it) unless another object is there since: one with
    ``expect_etag`` (the same bytes) may be replaced, anything else is refused and nothing moves."""
    try:
        there = store.head(dest_uri)
    except NotFound:
        there = None
    if there is not None and (expect_etag is None or there.etag != expect_etag):
        raise UsageError(f"a new object is at {dest_uri} since; nothing moved")
    store.move(src_uri, dest_uri)


def review_tags(decision: str, reviewer: str, reason: str | None) -> dict[str, str]:
    tags = {"labelq-review": {"release": "released", "confirm": "confirmed"}.get(decision, decision),
            "labelq-reviewer": reviewer}
    if reason:
        tags["labelq-reason"] = reason
    return tags


def restore(stores: Stores, item: Any, reviewer: str, reason: str | None = None) -> tuple[str, dict[str, Any]]:
    """Release: a moved object goes back to its key; the policy's tags go and review tags come.
    Returns what was done and what :func:`requarantine` needs to reverse it."""
    store = stores.store(item.uri)
    sample_only = bool(getattr(item, "sample_only", False))  # an audit sample no rule acted on: nothing to restore
    if not store.actions:
        if sample_only:
            return "an audit sample: nothing in storage to restore", {"restored": False}
        raise UsageError(f"cannot release {item.uri}: labelq only reads {scheme_of(item.uri)}:// objects")
    done: list[str] = []
    undo: dict[str, Any] = {"restored": False}
    if item.moved and item.quarantine_uri:
        move_back(store, item.quarantine_uri, item.uri, expect_etag=item.etag)
        undo["restored"] = True
        done.append(f"restored from {item.quarantine_uri}")
    if store.taggable:
        undo["tags"] = retag(store, item.uri, review_tags("release", reviewer, reason),
                             () if sample_only else POLICY_TAGS)
        done.append("tagged labelq-review=released")
    elif not done:
        done.append(f"{scheme_of(item.uri)}:// objects have no tags: nothing to do")
    return "; ".join(done), undo


def confirm(stores: Stores, item: Any, reviewer: str, reason: str | None = None) -> tuple[str, dict[str, Any]]:
    """Confirm: the object stays where the policy put it, tagged as reviewed where it is now."""
    store = stores.store(item.shown_uri)
    if not store.actions or not store.taggable:
        return "", {}
    before = retag(store, item.shown_uri, review_tags("confirm", reviewer, reason))
    return "tagged labelq-review=confirmed", {"tags": before, "at": item.shown_uri}


def requarantine(stores: Stores, item: Any) -> str:
    """Undo a release: the object goes back to its quarantine copy, with the tags it had."""
    undo = item.undo or {}
    store = stores.store(item.uri)
    if "tags" in undo:
        store.put_tags(item.uri, dict(undo["tags"]))
    if undo.get("restored") and item.quarantine_uri:
        move_back(store, item.uri, item.quarantine_uri)
        return f"moved back to {item.quarantine_uri}"
    return "tags restored" if "tags" in undo else "nothing to reverse"


def untag(stores: Stores, item: Any) -> str:
    """Undo a confirm: the tags the object had before."""
    undo = item.undo or {}
    if "tags" in undo and undo.get("at"):
        stores.store(undo["at"]).put_tags(undo["at"], dict(undo["tags"]))
        return "tags restored"
    return "nothing to reverse"
