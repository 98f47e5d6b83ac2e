"""The moderator: evaluates a policy on records, carries out its actions once per object, audits them.

Every action taken is written to the audit trail (see :mod:`.audit`). An action
already applied to a record of an object is not applied again (``labelq:actions``),
so re-applying a policy acts only on what changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .. import keys
from ..errors import LabelqError
from ..objects import Stores
from ..records import Record, utcnow
from ..reviews import ReviewStore
from . import audit, outbox
from .actions import take
from .audit import Action
from .rules import Policy

logger = logging.getLogger(__name__)


class Moderator:
    """Evaluates a policy on records and carries out its actions, once per object and action."""

    def __init__(self, policy: Policy, *, redis: Any, stores: Stores) -> None:
        self.policy = policy
        self.redis = redis
        self.stores = stores

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
        """Actions the policy asks for that were not applied to these objects before."""
        planned: list[Action] = []
        for rec in records:
            if self.in_quarantine(rec.uri):  # a copy we made: acting on it again would loop
                continue
            for rule, score in self.policy.matches(rec):
                for kind in rule.actions:
                    planned.append(Action(rec.uri, rec.model, rule.label, score, self.policy.version, kind,
                                          job=rec.job, etag=rec.etag, labelled_at=rec.processed_at,
                                          threshold=rule.threshold))
        if not planned:
            return []
        fields = [f"{a.uri}{keys.SEP}{a.action}" for a in planned]
        done = self.redis.hmget(keys.ACTIONS, fields)
        fresh: list[Action] = []
        seen: set[str] = set()
        for action, fld, prior in zip(planned, fields, done, strict=True):
            # Done means done to this record of the object. A new upload at the same key (even of the same
            # bytes, after a move) is labelled anew and acted on again; re-applying a policy to stored
            # records is not. A redelivered chunk plans a notification again; the outbox drops it (one
            # notification per object version and policy version).
            if (prior is None or _acted_on(prior) != action.version_key) and fld not in seen:
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
        ReviewStore(self.redis).add(actions, pipeline=pipe)  # objects moved, copied or tagged wait for review
        for a in actions:
            if a.result == "ok":
                pipe.hset(keys.ACTIONS, f"{a.uri}{keys.SEP}{a.action}", f"{a.policy_version}{keys.SEP}{a.version_key}")
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
        if a.action == "notify":  # queued with the audit entry (see _audit), sent by the outbox's thread
            p = self.policy
            return ", ".join([f"stream {p.stream}"] * bool(p.stream) + ["webhook (outbox)"] * bool(p.webhook))
        return take(a, self.stores, self.policy.quarantine_prefix)


def _is_released(value: bytes | str | None, etag: str | None) -> bool:
    if value is None:
        return False
    return (value.decode() if isinstance(value, bytes) else value) == (etag or "")


def _acted_on(value: bytes | str) -> str:
    """The record version an ``labelq:actions`` entry was applied to."""
    text = value.decode() if isinstance(value, bytes) else value
    return text.split(keys.SEP, 1)[1] if keys.SEP in text else ""
