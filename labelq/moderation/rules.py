"""A moderation policy: its TOML file, parsed and validated, and which rules a record fires.

A policy is a versioned TOML file::

    version = "2026-11-25.1"
    quarantine_prefix = "quarantine/"      # where copy/move put objects (same bucket or folder)

    [notify]
    stream = "labelq:events"               # a Redis stream (XADD), optional
    webhook = "https://hooks.example/mod"  # POST JSON, retried with backoff, optional
    webhook_attempts = 4                   # POSTs per notification, at least 1

    [[rule]]
    model = "Falconsai/nsfw_image_detection"
    label = "nsfw"
    threshold = 0.8
    actions = ["tag", "move", "notify"]    # any of tag, copy, move, notify

A rule fires when the record's score for ``label`` (from its top_k) is at least
``threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..records import Record

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
