"""Background moderation: a versioned TOML policy applied to records as they are written.

* :mod:`.rules` — the policy file, parsed and validated; which rules a record fires
* :mod:`.moderator` — :class:`Moderator`: plan, act once per object, audit; ``keep`` for the writer
* :mod:`.actions` — tag, copy, move on S3 and in the local root (never through a link)
* :mod:`.outbox` — notifications: queued with the audit entry, delivered by their own thread
* :mod:`.notify` — a foreground webhook POST (retried with backoff)
* :mod:`.audit` — the audit trail: append, read back, export
* :mod:`.shadow` — shadow models: the sample a shadow job labels; promoting a candidate in the policy file
"""

from __future__ import annotations

from .audit import AUDIT_FIELDS, Action, iter_audit, write_audit
from .moderator import Moderator
from .notify import post_json
from .outbox import Deliverer
from .rules import ACTIONS, Band, Policy, Rule, Sample, in_sample, load_policy

__all__ = [
    "ACTIONS",
    "AUDIT_FIELDS",
    "Action",
    "Band",
    "Deliverer",
    "Moderator",
    "Policy",
    "Rule",
    "Sample",
    "in_sample",
    "iter_audit",
    "load_policy",
    "post_json",
    "write_audit",
]
