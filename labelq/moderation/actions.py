"""The actions that change objects: tag, copy and move into quarantine, in whichever store holds them.

Each store does its own writing (labelq.objects: S3 object tags and CopyObject, GCS metadata and
rewrites, Azure index tags and server-side copies, link-safe local writes); this module decides what
to write, with the one tag-merge rule (:func:`labelq.objects.merge_tags`) for every store.
"""

from __future__ import annotations

from ..objects import Stores, merge_tags, scheme_of
from .audit import Action


def take(a: Action, stores: Stores, quarantine_prefix: str) -> str:
    """Carry out a tag, copy or move; returns what was done (the quarantine URI, or a note)."""
    store = stores.store(a.uri)
    if not store.actions:
        return f"skipped: no {a.action} for {scheme_of(a.uri)}:// objects"
    if a.action == "tag":
        if not store.taggable:
            return f"skipped: {scheme_of(a.uri)}:// objects have no tags"
        tags = {"labelq-label": a.label, "labelq-score": f"{a.score:.4f}", "labelq-policy": a.policy_version}
        store.put_tags(a.uri, merge_tags(store.tags(a.uri), tags))
        return f"tagged labelq-label={a.label}"
    dest: str = store.quarantine_uri(a.uri, quarantine_prefix)
    if a.action == "move":
        store.move(a.uri, dest)
    else:
        store.copy(a.uri, dest)
    return dest
