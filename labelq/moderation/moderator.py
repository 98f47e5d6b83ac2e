"""The moderator: evaluates a policy on records, carries out its actions once per object, audits them.

Every action taken is written to the audit trail (see :mod:`.audit`). An action
already applied to a record of an object is not applied again (``labelq:actions``),
so re-applying a policy acts only on what changed. Audit samples (``[[sample]]``) are
planned the same way, once per object version, as ``sample`` actions that change no
storage and put the object under review. A shadow model's records are never acted on
or sampled. A moderator made with :meth:`Moderator.from_file` reloads its policy file
when it changes (checked at most every ``reload_every`` seconds).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .. import keys
from ..errors import LabelqError, UsageError
from ..objects import Stores
from ..records import Record, utcnow
from ..reviews import ReviewStore
from . import audit, outbox
from .actions import take
from .audit import Action
from .rules import Policy, load_policy

logger = logging.getLogger(__name__)


class Moderator:
    """Evaluates a policy on records and carries out its actions, once per object and action."""

    def __init__(self, policy: Policy, *, redis: Any, stores: Stores, path: Path | None = None,
                 reload_every: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.redis = redis
        self.stores = stores
        self.path = path  # the policy's file, reloaded when it changes (None: never)
        self.reload_every = reload_every
        self._clock = clock
        self._checked = clock()
        self._stamp = _stamp(path) if path is not None else None

    @classmethod
    def from_file(cls, path: Path, *, redis: Any, stores: Stores, reload_every: float = 5.0) -> Moderator:
        """A moderator of the policy in ``path`` that follows the file's changes (see :meth:`refresh`)."""
        return cls(load_policy(path), redis=redis, stores=stores, path=Path(path), reload_every=reload_every)

    def refresh(self) -> bool:
        """Reload the policy file when its mtime or size changed (looked at most every ``reload_every`` seconds);
        a file that no longer parses keeps the old policy and logs one error line. Whether a new policy is in."""
        if self.path is None or self._clock() - self._checked < self.reload_every:
            return False
        self._checked = self._clock()
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            policy = load_policy(self.path)
        except (UsageError, LabelqError) as exc:
            logger.error("policy %s changed but cannot be used, keeping version %s: %s", self.path,
                         self.policy.version, " / ".join(str(exc).splitlines()))
            return False
        logger.info("policy %s reloaded: version %s -> %s", self.path, self.policy.version, policy.version)
        self.policy = policy
        return True

    def keep(self, records: Sequence[Record],
             recorded: Callable[[list[Record]], set[tuple[str, str]]] | None = None) -> list[Record]:
        """The records to write: all but ``not_found`` records of objects this moderator moved to quarantine
        that already have a record in the same job.

        A redelivered task finds nothing at the key of an object we moved; its ok record must stand. A later
        job naming the moved object has no record of it: its ``not_found`` record is written (every object
        that reaches a worker ends with a record). ``recorded`` says which (uri, model) pairs of these records
        their job already holds; without it, every ``not_found`` of a moved object is dropped.
        """
        gone = [r.uri for r in records if r.error_kind == "not_found"]
        moved = self.moved(gone) if gone else set()
        if not moved:
            return list(records)
        suspects = [r for r in records if r.error_kind == "not_found" and r.uri in moved]
        have = recorded(suspects) if recorded is not None else {(r.uri, r.model) for r in suspects}
        return [r for r in records if not (r.error_kind == "not_found" and r.uri in moved and (r.uri, r.model) in have)]

    def plan(self, records: Iterable[Record]) -> list[Action]:
        """Actions the policy asks for that were not applied to these objects before.

        A policy file that changed is reloaded first (:meth:`refresh`); only :meth:`plan` reloads, so the
        actions of one :meth:`apply` are carried out and audited under the policy that planned them."""
        self.refresh()
        policy = self.policy
        planned: list[Action] = []
        for rec in records:
            if rec.model in policy.shadow:  # a candidate's record: scored beside the active model, never acted on
                continue
            if self.in_quarantine(rec.uri):  # a copy we made: acting on it again would loop
                continue
            for rule, score in policy.matches(rec):
                for kind in rule.actions:
                    planned.append(Action(rec.uri, rec.model, rule.label, score, policy.version, kind,
                                          job=rec.job, etag=rec.etag, labelled_at=rec.processed_at,
                                          threshold=rule.threshold))
            for sample, band, score in policy.sampled(rec):
                planned.append(Action(rec.uri, rec.model, sample.label, score, policy.version, "sample",
                                      detail=str(band), job=rec.job, etag=rec.etag, labelled_at=rec.processed_at,
                                      sample_rate=band.rate))
        if not planned:
            return []
        fields = [mark(a) for a in planned]
        done = self.redis.hmget(keys.ACTIONS, fields)
        fresh: list[Action] = []
        seen: set[str] = set()
        for action, fld, prior in zip(planned, fields, done, strict=True):
            # Done means done to this record of the object. A new upload at the same key (even of the same
            # bytes, after a move) is labelled anew and acted on again; re-applying a policy to stored
            # records is not. A redelivered chunk plans a notification again; the outbox drops it (one
            # notification per object version and policy version). A sample is once per object version
            # (its etag), whichever record of it and policy version drew it.
            if (prior is None or not _same_version(prior, action)) and fld not in seen:
                seen.add(fld)
                fresh.append(action)
        if fresh:  # a version a reviewer released from quarantine is never acted on again
            uris = list(dict.fromkeys(a.uri for a in fresh))
            released = dict(zip(uris, self.redis.hmget(keys.RELEASED, uris), strict=True))
            fresh = [a for a in fresh if not _is_released(released[a.uri], a.etag)]
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
        """The audit entries, the once-only bookkeeping, the review items and the outbox's notifications, in one
        transaction."""
        p = self.policy
        pipe = self.redis.pipeline(transaction=True)
        audit.append(pipe, actions)
        ReviewStore(self.redis).add(actions, pipeline=pipe)  # objects moved, copied, tagged or sampled wait for review
        for a in actions:
            if a.result == "ok":
                pipe.hset(keys.ACTIONS, mark(a), f"{a.policy_version}{keys.SEP}{a.version_key}")
                if a.action == "notify":
                    outbox.queue(pipe, a, stream=p.stream, webhook=p.webhook, attempts=p.webhook_attempts)
                elif a.action == "move":
                    outbox.forget(pipe, a)
        pipe.execute()

    def in_quarantine(self, uri: str) -> bool:
        """Whether a URI lies under the quarantine prefix (of its bucket, or of the local root)."""
        try:
            store = self.stores.store(uri)
        except LabelqError:
            return False
        return bool(store.in_quarantine(uri, self.policy.quarantine_prefix))

    def moved(self, uris: Sequence[str]) -> set[str]:
        """Which of these objects this policy engine moved to quarantine."""
        if not uris:
            return set()
        found = self.redis.hmget(keys.ACTIONS, [f"{u}{keys.SEP}move" for u in uris])
        return {u for u, v in zip(uris, found, strict=True) if v is not None}

    def _do(self, a: Action) -> str:
        if a.action == "sample":  # an audit sample changes no storage: the review item is the whole action
            return a.detail
        if a.action == "notify":  # queued with the audit entry (see _audit), sent by the outbox's thread
            p = self.policy
            return ", ".join([f"stream {p.stream}"] * bool(p.stream) + ["webhook (outbox)"] * bool(p.webhook))
        return take(a, self.stores, self.policy.quarantine_prefix)


def _is_released(value: bytes | str | None, etag: str | None) -> bool:
    if value is None:
        return False
    return (value.decode() if isinstance(value, bytes) else value) == (etag or "")


def mark(a: Action) -> str:
    """An action's field in ``labelq:actions`` (its once-only mark): uri and action; a sample also names its model
    and label (each ``[[sample]]`` draws on its own)."""
    if a.action == "sample":
        return keys.SEP.join((a.uri, a.action, a.model, a.label))
    return f"{a.uri}{keys.SEP}{a.action}"


def _same_version(prior: bytes | str, a: Action) -> bool:
    done = _acted_on(prior)
    if a.action == "sample":
        return done.split(keys.SEP, 1)[0] == (a.etag or "")
    return done == a.version_key


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _acted_on(value: bytes | str) -> str:
    """The record version an ``labelq:actions`` entry was applied to."""
    text = value.decode() if isinstance(value, bytes) else value
    return text.split(keys.SEP, 1)[1] if keys.SEP in text else ""
