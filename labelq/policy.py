"""Moved to :mod:`labelq.moderation`; this shim keeps ``labelq.policy`` imports working
(bench/latency.py and the console's fallbacks still use it). New code imports labelq.moderation."""

from __future__ import annotations

from .moderation import (
    ACTIONS,
    AUDIT_FIELDS,
    Action,
    Moderator,
    Policy,
    Rule,
    iter_audit,
    load_policy,
    post_json,
    write_audit,
)

__all__ = ["ACTIONS", "AUDIT_FIELDS", "Action", "Moderator", "Policy", "Rule", "iter_audit", "load_policy", "post_json",
           "write_audit"]
