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

The whole file is checked against a schema (:class:`PolicyFile`, pydantic, strict types, no unknown
keys) before anything uses it; every problem is one line naming its field, e.g.
``policy p.toml: rule 2: threshold: must be between 0 and 1, not 1.5``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class NotifyTable(_Strict):
    """``[notify]``: where notifications go."""

    stream: str | None = None
    webhook: str | None = None
    webhook_attempts: int = 4  # POSTs per notification, at least 1

    @field_validator("webhook_attempts")
    @classmethod
    def _attempts(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be at least 1, not {v}")
        return v


class RuleTable(_Strict):
    """One ``[[rule]]``."""

    model: str = Field(min_length=1)
    label: str = Field(min_length=1)
    threshold: float
    actions: list[str]

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, not {v:g}")
        return v

    @field_validator("actions")
    @classmethod
    def _actions(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a not in ACTIONS]
        if bad or not v:
            raise ValueError(f"actions must be some of {', '.join(ACTIONS)}, not {bad or 'none'}")
        return v


class PolicyFile(_Strict):
    """The policy file's schema: what :func:`load_policy` accepts, field by field."""

    version: str | int
    quarantine_prefix: str = "quarantine/"
    notify: NotifyTable = NotifyTable()
    rule: list[RuleTable]

    @field_validator("version")
    @classmethod
    def _version(cls, v: str | int) -> str | int:
        if isinstance(v, bool) or not str(v):
            raise ValueError('set a version (version = "1"), it is stored with every action')
        return v

    @field_validator("quarantine_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or v.startswith("/") or ".." in v:
            raise ValueError(f"quarantine_prefix must be a relative prefix like 'quarantine/', not {v!r}")
        return v

    @field_validator("rule")
    @classmethod
    def _rules(cls, v: list[RuleTable]) -> list[RuleTable]:
        if not v:
            raise ValueError("no [[rule]] tables")
        return v

    @model_validator(mode="after")
    def _notify_target(self) -> PolicyFile:
        if any("notify" in r.actions for r in self.rule) and not (self.notify.stream or self.notify.webhook):
            raise ValueError("a rule notifies, so set [notify] stream and/or webhook")
        return self


_KINDS = {  # pydantic error types → what the field must be, in the file's words
    "string_type": "a string", "int_type": "an integer", "float_type": "a number", "list_type": "a list",
    "model_type": "a table", "dict_type": "a table", "bool_type": "true or false",
}
_TOML_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "table"}


def _where(loc: tuple[Any, ...]) -> str:
    """``("rule", 1, "threshold")`` → ``rule 2: threshold``; ``("notify", "webhook")`` → ``notify.webhook``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f" {part + 1}"
        elif out:
            out += (": " if out[-1].isdigit() else ".") + part
        else:
            out = part
    return out


def _explain(e: Any) -> str:
    """One pydantic error as ``FIELD: what is wrong``."""
    loc = tuple(p for p in e["loc"] if p not in ("str", "int"))  # the branches of ``version: str | int``
    where = _where(loc)
    kind, value = e["type"], e.get("input")
    got = f"{_TOML_TYPES.get(type(value), type(value).__name__)} {value!r}"[:80]
    if kind == "value_error":
        text = str(e["msg"]).removeprefix("Value error, ")
        if loc and isinstance(loc[-1], str) and text.startswith(loc[-1]):
            where = _where(loc[:-1])  # the message names its field itself
        return f"{where}: {text}" if where else text
    if kind == "missing":
        if loc == ("version",):
            return 'set a version (version = "1"), it is stored with every action'
        if loc == ("rule",):
            return "no [[rule]] tables"
        return f"{where}: is missing"
    if kind == "extra_forbidden":
        return f"{where}: unknown key (a typo?)"
    if kind in _KINDS:
        return f"{where}: must be {_KINDS[kind]}, not {got}"
    if kind == "string_too_short":
        return f"{where}: must not be empty"
    return f"{where}: {e['msg']}, not {got}"


def load_policy(path: Path | str) -> Policy:
    """Parse and validate a policy file; UsageError says what to fix, one line per problem naming its field."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"policy file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"policy {path} is a folder: give the policy's TOML file") from None
    except OSError as exc:
        raise UsageError(f"cannot read policy {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"policy {path} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}): "
                         "save it as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"policy {path} is not valid TOML: {exc}") from None
    try:
        doc = PolicyFile.model_validate(data)
    except ValidationError as exc:
        lines = list(dict.fromkeys(_explain(e) for e in exc.errors()))
        raise UsageError("\n".join(f"policy {path}: {line}" for line in lines)) from None
    rules = tuple(Rule(r.model, r.label, float(r.threshold), tuple(sorted(set(r.actions), key=lambda a: _ORDER[a])))
                  for r in doc.rule)
    return Policy(str(doc.version), rules, doc.quarantine_prefix, doc.notify.stream, doc.notify.webhook,
                  doc.notify.webhook_attempts)
