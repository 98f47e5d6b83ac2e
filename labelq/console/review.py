"""The review queue: objects a moderation policy acted on, and reviewers' decisions about them.

Everything here is read from and written to the moderation audit trail (``labelq:audit``): the
policy's actions put an object in the queue, a reviewer's decision is one more audit entry
(action ``review:confirm``, ``review:release`` or ``review:label``, with ``reviewer`` and
``human_label``), so the trail stays the one record of what happened. Releasing also writes
``labelq:released`` (uri → etag), which the moderator consults so that version of the object is
never acted on again.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import keys
from ..errors import UsageError
from ..records import utcnow

logger = logging.getLogger(__name__)

REVIEW = "review:"
DECISIONS = ("confirm", "release", "label")
QUEUED = ("move", "copy", "tag")  # policy actions that put an object under review
_TAG_UNSAFE = re.compile(r"[^\w .:/=+\-@]", re.UNICODE)


def _action_type() -> Any:
    """The audit entry type, from wherever the moderation code lives now."""
    try:
        from ..moderation.audit import Action  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        from ..policy import Action  # type: ignore[no-redef,unused-ignore]
    return Action


def _fields() -> set[str]:
    return set(_action_type().__dataclass_fields__)


def parse_entry(raw: bytes | str) -> Any:
    data = json.loads(raw)
    known = _fields()
    return _action_type()(**{k: v for k, v in data.items() if k in known})


def audit_newest(redis: Any, *, limit: int = 5000, page: int = 500) -> Iterator[Any]:
    """Audit entries newest first (XREVRANGE), at most ``limit``."""
    end, seen = "+", 0
    while seen < limit:
        entries = redis.xrevrange(keys.AUDIT, max=end, min="-", count=min(page, limit - seen))
        if not entries:
            return
        for _, data in entries:
            raw = data.get(b"a") or data.get("a")
            if raw:
                seen += 1
                yield parse_entry(raw)
        last = entries[-1][0]
        end = "(" + (last.decode() if isinstance(last, bytes) else last)
        if len(entries) < page:
            return


def audit_oldest(redis: Any, *, page: int = 1000) -> Iterator[Any]:
    """Every audit entry in time order (XRANGE, a page at a time)."""
    start = "-"
    while True:
        entries = redis.xrange(keys.AUDIT, min=start, max="+", count=page)
        for _, data in entries:
            raw = data.get(b"a") or data.get("a")
            if raw:
                yield parse_entry(raw)
        if len(entries) < page:
            return
        last = entries[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else last)


@dataclass
class Item:
    """One version (uri, etag) of an object the policy acted on."""

    uri: str
    etag: str
    model: str
    label: str
    score: float
    policy_version: str
    time: str
    job: str | None
    labelled_at: str | None
    actions: list[str] = field(default_factory=list)
    quarantine_uri: str | None = None
    moved: bool = False
    decision: Any = None  # the latest review entry, if any

    @property
    def key(self) -> tuple[str, str]:
        return self.uri, self.etag

    @property
    def shown_uri(self) -> str:
        """Where the object is now: its quarantine copy while moved and not released."""
        released = self.decision is not None and self.decision.action == REVIEW + "release"
        return self.quarantine_uri if self.moved and self.quarantine_uri and not released else self.uri


def queue(redis: Any, *, state: str = "pending", limit: int = 200, scan: int = 20000) -> list[Item]:
    """Objects acted on, newest first; ``state`` pending (no decision yet), decided or all."""
    decisions: dict[tuple[str, str], Any] = {}
    items: dict[tuple[str, str], Item] = {}
    for a in audit_newest(redis, limit=scan):
        key = (a.uri, a.etag or "")
        if a.action.startswith(REVIEW):
            decisions.setdefault(key, a)  # newest first: the first one seen is the latest
            continue
        if a.action not in QUEUED or a.result != "ok":
            continue
        item = items.get(key)
        if item is None:
            item = items[key] = Item(a.uri, a.etag or "", a.model, a.label, float(a.score), a.policy_version, a.time,
                                     a.job, a.labelled_at)
        if a.action not in item.actions:
            item.actions.insert(0, a.action)
        if a.action in ("move", "copy") and a.detail.startswith(("s3://", "file://")):
            item.quarantine_uri = item.quarantine_uri or a.detail
            item.moved = item.moved or a.action == "move"
    out = []
    for key, item in items.items():
        item.decision = decisions.get(key)
        if state == "all" or (state == "pending") == (item.decision is None):
            out.append(item)
        if len(out) >= limit:
            break
    return out


def locations(redis: Any, records: Any, *, scan: int = 20000) -> dict[str, str]:
    """Where moved objects are now: uri → quarantine uri, for those of ``records`` a policy moved
    to quarantine and no reviewer released (their original key is empty)."""
    recs = list(records)
    if not recs:
        return {}
    uris = [r.uri for r in recs]
    moved = redis.hmget(keys.ACTIONS, [f"{u}{keys.SEP}move" for u in uris])
    released = redis.hmget(keys.RELEASED, uris)
    want = {r.uri for r, m, rel in zip(recs, moved, released, strict=True)
            if m is not None and (rel is None or _text(rel) != (r.etag or ""))}
    out: dict[str, str] = {}
    if want:
        for a in audit_newest(redis, limit=scan):
            if a.uri in want and a.action == "move" and a.result == "ok" and a.uri not in out:
                out[a.uri] = a.detail
                if len(out) == len(want):
                    break
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def find(redis: Any, uri: str, etag: str) -> Item:
    for item in queue(redis, state="all", limit=10**9):
        if item.key == (uri, etag):
            return item
    raise UsageError("that object is not in the review queue (no policy acted on this version of it)")


def decide(services: Any, stores: Any, item: Item, decision: str, reviewer: str, human_label: str | None) -> Any:
    """Carry out and audit a reviewer's decision; returns the audit entry."""
    if decision not in DECISIONS:
        raise UsageError(f"decision must be one of {', '.join(DECISIONS)}")
    human_label = (human_label or "").strip() or None
    if decision == "label" and not human_label:
        raise UsageError("type the label to set")
    if human_label and len(human_label) > 200:
        raise UsageError("a label is at most 200 characters")
    detail = ""
    if decision == "release":
        detail = _release(stores, item, reviewer)
    entry = _action_type()(
        uri=item.uri, model=item.model, label=item.label, score=item.score, policy_version=item.policy_version,
        action=REVIEW + decision, result="ok", detail=detail, time=utcnow(), job=item.job, etag=item.etag,
        labelled_at=item.labelled_at,
    )
    if "reviewer" in _fields():
        entry.reviewer, entry.human_label = reviewer, human_label
    else:  # moderation code without reviewer fields: keep them in the detail
        entry.detail = json.dumps({"reviewer": reviewer, "human_label": human_label, "detail": detail})
    pipe = services.redis.pipeline(transaction=True)
    pipe.xadd(keys.AUDIT, {"a": entry.to_json()})
    if decision == "release":
        pipe.hset(keys.RELEASED, item.uri, item.etag)
    pipe.execute()
    logger.info("review %s of %s by %s", decision, item.uri, reviewer)
    return entry


def _release(stores: Any, item: Item, reviewer: str) -> str:
    """Put a quarantined object back at its original key (tagged as reviewed); returns what was done."""
    if item.decision is not None and item.decision.action == REVIEW + "release":
        return "already released"
    if item.uri.startswith("s3://"):
        return _release_s3(stores.s3.client, item, reviewer)
    if item.uri.startswith("file://"):
        return _release_local(stores.local, item)
    raise UsageError(f"cannot release {item.uri}")


def _release_s3(client: Any, item: Item, reviewer: str) -> str:
    from botocore.exceptions import ClientError

    from ..objects import split_s3

    bucket, key = split_s3(item.uri)
    done = []
    if item.moved and item.quarantine_uri:
        qbucket, qkey = split_s3(item.quarantine_uri)
        if qbucket != bucket or not qkey.endswith(key):
            raise UsageError(f"the quarantine copy {item.quarantine_uri} is not in the object's bucket")
        try:
            head = client.head_object(Bucket=bucket, Key=key)
            if head.get("ETag", "").strip('"') != item.etag:
                raise UsageError("a new object was uploaded at the original key since; nothing restored")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": qbucket, "Key": qkey})
        client.delete_object(Bucket=qbucket, Key=qkey)
        done.append(f"restored from {item.quarantine_uri}")
    current = client.get_object_tagging(Bucket=bucket, Key=key).get("TagSet", [])
    tags = {t["Key"]: t["Value"] for t in current}
    tags.update({"labelq-review": "released", "labelq-reviewer": _TAG_UNSAFE.sub("_", reviewer)[:256]})
    client.put_object_tagging(Bucket=bucket, Key=key,
                              Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()][-10:]})
    done.append("tagged labelq-review=released")
    return "; ".join(done)


def _release_local(local: Any, item: Item) -> str:
    if not (item.moved and item.quarantine_uri):
        return "local files have no tags: nothing to do"
    src = local._resolve(item.quarantine_uri)  # both inside the storage root, or AccessDenied
    dest = local._resolve(item.uri)
    if dest.exists():
        raise UsageError("a file exists at the original path since; nothing restored")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(src, dest)
    return f"restored from {item.quarantine_uri}"


def human_label_of(entry: Any) -> str | None:
    label = getattr(entry, "human_label", None)
    if label is None and entry.detail.startswith("{"):
        try:
            label = json.loads(entry.detail).get("human_label")
        except ValueError:
            label = None
    return label


def reviewer_of(entry: Any) -> str | None:
    name = getattr(entry, "reviewer", None)
    if name is None and entry.detail.startswith("{"):
        try:
            name = json.loads(entry.detail).get("reviewer")
        except ValueError:
            name = None
    return name


def export_rows(redis: Any) -> Iterator[dict[str, Any]]:
    """The latest decision per object version, oldest first, as rows for retraining."""
    latest: dict[tuple[str, str, str], Any] = {}
    for a in audit_oldest(redis):
        if a.action.startswith(REVIEW):
            latest[(a.uri, a.etag or "", a.model)] = a
    for a in latest.values():
        decision = a.action[len(REVIEW):]
        human = human_label_of(a)
        if human is None and decision == "confirm":
            human = a.label  # confirming the quarantine agrees with the model's label
        yield {"uri": a.uri, "model": a.model, "label": a.label, "score": a.score, "human_label": human,
               "decision": decision, "reviewer": reviewer_of(a), "time": a.time, "etag": a.etag, "job": a.job}
