"""Moderation policy: per model, label → threshold → actions; applied and audited.

A policy is a versioned TOML file::

    version = "2026-11-25.1"
    quarantine_prefix = "quarantine/"      # where copy/move put objects (same bucket or folder)

    [notify]
    stream = "labelq:events"               # a Redis stream (XADD), optional
    webhook = "https://hooks.example/mod"  # POST JSON, retried with backoff, optional

    [[rule]]
    model = "Falconsai/nsfw_image_detection"
    label = "nsfw"
    threshold = 0.8
    actions = ["tag", "move", "notify"]    # any of tag, copy, move, notify

A rule fires when the record's score for ``label`` (from its top_k) is at least
``threshold``. Every action taken is written to the audit trail (object, model,
label, score, policy version, action, result, time). An action already applied to
an object is not applied again, so re-applying a policy acts only on what changed.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import keys
from .errors import UsageError
from .records import Record, utcnow
from .storage import Stores, file_uri, split_s3

logger = logging.getLogger(__name__)

ACTIONS = ("tag", "copy", "move", "notify")
_ORDER = {"tag": 0, "copy": 1, "notify": 2, "move": 3}  # move last: it changes the object's key


@dataclass(frozen=True)
class Rule:
    model: str
    label: str
    threshold: float
    actions: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    version: str
    rules: tuple[Rule, ...]
    quarantine_prefix: str = "quarantine/"
    stream: str | None = None
    webhook: str | None = None
    webhook_attempts: int = 4

    def matches(self, rec: Record) -> list[tuple[Rule, float]]:
        """Rules this record fires, with the score that fired each."""
        if not rec.ok:
            return []
        scores = {t["label"]: float(t["score"]) for t in rec.top_k}
        if rec.label is not None and rec.score is not None:
            scores.setdefault(rec.label, float(rec.score))
        return [(r, scores[r.label]) for r in self.rules
                if r.model == rec.model and r.label in scores and scores[r.label] >= r.threshold]


def load_policy(path: Path | str) -> Policy:
    """Parse and validate a policy file; UsageError says what to fix."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"policy file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"policy {path} is not valid TOML: {exc}") from None
    version = data.get("version")
    if not version:
        raise UsageError(f"policy {path}: set a version (version = \"1\"), it is stored with every action")
    rules = []
    for i, raw in enumerate(data.get("rule", [])):
        where = f"policy {path}, rule {i + 1}"
        try:
            threshold = float(raw["threshold"])
            rule = Rule(str(raw["model"]), str(raw["label"]), threshold, tuple(raw.get("actions", [])))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{where}: needs model, label, threshold (0-1) and actions ({exc})") from None
        if not 0.0 <= threshold <= 1.0:
            raise UsageError(f"{where}: threshold must be between 0 and 1, not {threshold}")
        bad = [a for a in rule.actions if a not in ACTIONS]
        if bad or not rule.actions:
            raise UsageError(f"{where}: actions must be some of {', '.join(ACTIONS)}, not {bad or 'none'}")
        rules.append(Rule(rule.model, rule.label, threshold, tuple(sorted(set(rule.actions), key=lambda a: _ORDER[a]))))
    if not rules:
        raise UsageError(f"policy {path}: no [[rule]] tables")
    notify = data.get("notify", {})
    policy = Policy(str(version), tuple(rules), str(data.get("quarantine_prefix", "quarantine/")),
                    notify.get("stream"), notify.get("webhook"), int(notify.get("webhook_attempts", 4)))
    if policy.webhook_attempts < 1:
        raise UsageError(f"policy {path}: [notify] webhook_attempts must be at least 1")
    if any("notify" in r.actions for r in rules) and not (policy.stream or policy.webhook):
        raise UsageError(f"policy {path}: a rule notifies, so set [notify] stream and/or webhook")
    if not policy.quarantine_prefix or policy.quarantine_prefix.startswith("/") or ".." in policy.quarantine_prefix:
        raise UsageError(f"policy {path}: quarantine_prefix must be a relative prefix like 'quarantine/'")
    return policy


@dataclass
class Action:
    """One action, planned or taken; what the audit trail stores."""

    uri: str
    model: str
    label: str
    score: float
    policy_version: str
    action: str
    result: str = "planned"  # ok | failed: ... | skipped: ...
    detail: str = ""
    time: str = field(default_factory=utcnow)
    job: str | None = None
    etag: str | None = None  # the version of the object acted on:
    labelled_at: str | None = None  # its etag and the record's processed_at

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @property
    def version_key(self) -> str:
        return f"{self.etag or ''}{keys.SEP}{self.labelled_at or ''}"


AUDIT_FIELDS = tuple(Action.__dataclass_fields__)


class Moderator:
    """Evaluates a policy on records and carries out its actions, once per object and action."""

    def __init__(self, policy: Policy, *, redis: Any, stores: Stores) -> None:
        self.policy = policy
        self.redis = redis
        self.stores = stores

    def plan(self, records: Iterable[Record]) -> list[Action]:
        """Actions the policy asks for that were not applied to these objects before."""
        planned: list[Action] = []
        for rec in records:
            if self.in_quarantine(rec.uri):  # a copy we made: acting on it again would loop
                continue
            for rule, score in self.policy.matches(rec):
                for kind in rule.actions:
                    planned.append(Action(rec.uri, rec.model, rule.label, score, self.policy.version, kind,
                                          job=rec.job, etag=rec.etag, labelled_at=rec.processed_at))
        if not planned:
            return []
        fields = [f"{a.uri}{keys.SEP}{a.action}" for a in planned]
        done = self.redis.hmget(keys.ACTIONS, fields)
        fresh: list[Action] = []
        seen: set[str] = set()
        for action, fld, prior in zip(planned, fields, done, strict=True):
            # Done means done to this record of the object. A new upload at the same key (even of the same
            # bytes, after a move) is labelled anew and acted on again; re-applying a policy to stored
            # records is not. Notifications are therefore at least once when a chunk is redelivered.
            if (prior is None or _acted_on(prior) != action.version_key) and fld not in seen:
                seen.add(fld)
                fresh.append(action)
        return fresh

    def apply(self, records: Iterable[Record]) -> list[Action]:
        """Plan, carry out and audit; returns the actions with their results."""
        actions = self.plan(records)
        for action in actions:
            try:
                action.detail = self._do(action)
                action.result = "ok"
            except Exception as exc:  # noqa: BLE001 - one failed action must not stop the others
                action.result = "failed"
                action.detail = f"{type(exc).__name__}: {exc}"
                logger.warning("moderation %s on %s failed: %s", action.action, action.uri, action.detail)
            action.time = utcnow()
        if actions:
            self._audit(actions)
        return actions

    def _audit(self, actions: Sequence[Action]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for a in actions:
            pipe.xadd(keys.AUDIT, {"a": a.to_json()})
            if a.result == "ok":
                pipe.hset(keys.ACTIONS, f"{a.uri}{keys.SEP}{a.action}", f"{a.policy_version}{keys.SEP}{a.version_key}")
        pipe.execute()

    def in_quarantine(self, uri: str) -> bool:
        """Whether a URI lies under the quarantine prefix (of its bucket, or of the local root)."""
        if uri.startswith("s3://"):
            return split_s3(uri)[1].startswith(self.policy.quarantine_prefix)
        root = self.stores.local.root
        if uri.startswith("file://") and root is not None:
            from .storage import path_of

            return str(path_of(uri)).startswith(str(root / self.policy.quarantine_prefix))
        return False

    def moved(self, uris: Sequence[str]) -> set[str]:
        """Which of these objects this policy engine moved to quarantine."""
        if not uris:
            return set()
        found = self.redis.hmget(keys.ACTIONS, [f"{u}{keys.SEP}move" for u in uris])
        return {u for u, v in zip(uris, found, strict=True) if v is not None}

    # ------------------------------------------------------------------ actions

    def _do(self, a: Action) -> str:
        if a.action == "notify":
            return self._notify(a)
        if a.uri.startswith("s3://"):
            return self._s3(a)
        if a.uri.startswith("file://"):
            return self._local(a)
        return f"skipped: no {a.action} for {a.uri.split('://')[0]}"

    def _s3(self, a: Action) -> str:
        client = self.stores.s3.client
        bucket, key = split_s3(a.uri)
        if a.action == "tag":
            current = client.get_object_tagging(Bucket=bucket, Key=key).get("TagSet", [])
            tags = {t["Key"]: t["Value"] for t in current}
            tags.update({"labelq-label": a.label, "labelq-score": f"{a.score:.4f}", "labelq-policy": a.policy_version})
            client.put_object_tagging(Bucket=bucket, Key=key,
                                      Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()][:10]})
            return f"tagged labelq-label={a.label}"
        target = self.policy.quarantine_prefix + key
        client.copy_object(Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": key})
        if a.action == "move":
            client.delete_object(Bucket=bucket, Key=key)
        return f"s3://{bucket}/{target}"

    def _local(self, a: Action) -> str:
        if a.action == "tag":
            return "skipped: local files have no tags"
        root = self.stores.local.root
        src = self.stores.local._resolve(a.uri)  # refuses paths outside the root
        assert root is not None
        dest = root / self.policy.quarantine_prefix / src.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if a.action == "move":
            shutil.move(src, dest)
        else:
            shutil.copy2(src, dest)
        return file_uri(dest)

    def _notify(self, a: Action) -> str:
        sent = []
        payload = {"uri": a.uri, "model": a.model, "label": a.label, "score": a.score,
                   "policy_version": a.policy_version, "job": a.job or ""}
        if self.policy.stream:
            self.redis.xadd(self.policy.stream, {k: str(v) for k, v in payload.items()}, maxlen=1_000_000,
                            approximate=True)
            sent.append(f"stream {self.policy.stream}")
        if self.policy.webhook:
            post_json(self.policy.webhook, payload, attempts=self.policy.webhook_attempts)
            sent.append("webhook")
        return ", ".join(sent)


def _acted_on(value: bytes | str) -> str:
    """The record version an ``labelq:actions`` entry was applied to."""
    text = value.decode() if isinstance(value, bytes) else value
    return text.split(keys.SEP, 1)[1] if keys.SEP in text else ""


def post_json(url: str, payload: dict[str, Any], *, attempts: int = 4, timeout: float = 5.0) -> None:
    """POST JSON; retry 5xx and connection errors with exponential backoff and jitter."""
    body = json.dumps(payload).encode()
    for attempt in range(1, attempts + 1):
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                if resp.status < 300:
                    return
                raise urllib.error.HTTPError(url, resp.status, "unexpected status", resp.headers, None)
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == attempts:
                raise
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            if attempt == attempts:
                raise
        time.sleep(random.uniform(0, min(5.0, 0.2 * 2 ** (attempt - 1))))


def iter_audit(redis: Any, *, job: str | None = None, page: int = 1000) -> Iterator[Action]:
    """The audit trail in time order, a page at a time (XRANGE)."""
    start = "-"
    while True:
        entries = redis.xrange(keys.AUDIT, min=start, max="+", count=page)
        if not entries:
            return
        for _, data in entries:
            raw = data.get(b"a") or data.get("a")
            action = Action(**json.loads(raw))
            if job is None or action.job == job:
                yield action
        last = entries[-1][0]
        last = last.decode() if isinstance(last, bytes) else last
        start = "(" + last
        if len(entries) < page:
            return


def write_audit(actions: Iterable[Action], fmt: str, out: Any) -> int:
    """Export the audit trail as JSONL or CSV."""
    import csv

    n = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=AUDIT_FIELDS)
        writer.writeheader()
        for a in actions:
            writer.writerow(asdict(a))
            n += 1
        return n
    for a in actions:
        out.write(a.to_json() + "\n")
        n += 1
    return n
