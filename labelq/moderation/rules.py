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

    [[sample]]                             # audit samples: reviewers judge a random share of records
    model = "Falconsai/nsfw_image_detection"
    label = "nsfw"
    bands = [[0.0, 0.5, 0.005], [0.5, 0.8, 0.02], [0.8, 1.0, 0.01]]   # [from, to, rate]: score in [from, to)

    [shadow]
    models = ["org/candidate"]             # score beside the active model, never act or sample

A rule fires when the record's score for ``label`` (from its top_k) is at least
``threshold``. A sample takes the band holding the record's score for ``label`` (0.0 when its
top_k lacks the label; the last band includes 1.0) and samples the record when
:func:`in_sample` says so at the band's rate.

The whole file is checked against a schema (:class:`PolicyFile`, pydantic, strict types, no unknown
keys) before anything uses it; every problem is one line naming its field, e.g.
``policy p.toml: rule 2: threshold: must be between 0 and 1, not 1.5``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .. import keys
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
class Band:
    """Records whose score lies in ``[lo, hi)`` (``hi`` included when it is 1.0) are sampled at ``rate``."""

    lo: float
    hi: float
    rate: float

    def holds(self, score: float) -> bool:
        return self.lo <= score < self.hi or (self.hi == 1.0 and score == 1.0)

    def __str__(self) -> str:
        return f"band [{self.lo:g}, {self.hi:g}{']' if self.hi == 1.0 else ')'} rate {self.rate:g}"


@dataclass(frozen=True)
class Sample:
    """One ``[[sample]]``: audit sampling of (model, label) by score band."""

    model: str
    label: str
    bands: tuple[Band, ...]

    def band(self, score: float) -> Band | None:
        return next((b for b in self.bands if b.holds(score)), None)


def in_sample(uri: str, etag: str | None, model: str, label: str, rate: float) -> bool:
    """Whether an object version is in the sample at ``rate``: blake2b of (uri, etag, model, label) as a uniform
    number in [0, 1), below ``rate``. Deterministic (a redelivered or re-applied record is sampled the same way)
    and nested (what a rate samples, every higher rate samples too)."""
    if rate <= 0.0:
        return False
    text = keys.SEP.join((uri, etag or "", model, label))
    u = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2.0**64
    return u < rate


def scores_of(rec: Record) -> dict[str, float]:
    """A record's scores by label: its top_k, and its top label."""
    scores = {t["label"]: float(t["score"]) for t in rec.top_k}
    if rec.label is not None and rec.score is not None:
        scores.setdefault(rec.label, float(rec.score))
    return scores


@dataclass(frozen=True)
class Policy:
    version: str
    rules: tuple[Rule, ...]
    quarantine_prefix: str = "quarantine/"
    stream: str | None = None
    webhook: str | None = None
    webhook_attempts: int = 4
    samples: tuple[Sample, ...] = ()
    shadow: tuple[str, ...] = field(default=())  # candidate models: scored beside the active ones, never acted on

    def matches(self, rec: Record) -> list[tuple[Rule, float]]:
        """Rules this record fires, with the score that fired each (none for a shadow model's record)."""
        if not rec.ok or rec.model in self.shadow:
            return []
        scores = scores_of(rec)
        return [(r, scores[r.label]) for r in self.rules
                if r.model == rec.model and r.label in scores and scores[r.label] >= r.threshold]

    def sample_rate(self, model: str, label: str, score: float) -> float:
        """The rate records of (model, label) with this score are sampled at; 0 when no band holds it."""
        for s in self.samples:
            if s.model == model and s.label == label:
                band = s.band(score)
                return band.rate if band is not None else 0.0
        return 0.0

    def sampled(self, rec: Record) -> list[tuple[Sample, Band, float]]:
        """The samples this ok record is in, each with its band and the score (0.0 for a label its top_k
        lacks); none for a shadow model's record."""
        if not rec.ok or rec.model in self.shadow:
            return []
        scores = scores_of(rec)
        out = []
        for s in self.samples:
            if s.model != rec.model:
                continue
            score = scores.get(s.label, 0.0)
            band = s.band(score)
            if band is not None and in_sample(rec.uri, rec.etag, s.model, s.label, band.rate):
                out.append((s, band, score))
        return out

    @property
    def models(self) -> tuple[str, ...]:
        """The models the rules and samples act on (the active models)."""
        return tuple(dict.fromkeys([r.model for r in self.rules] + [s.model for s in self.samples]))


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


class SampleTable(_Strict):
    """One ``[[sample]]``: ``bands`` of ``[from, to, rate]``, score in [from, to), not overlapping."""

    model: str = Field(min_length=1)
    label: str = Field(min_length=1)
    bands: list[list[float]]

    @field_validator("bands")
    @classmethod
    def _bands(cls, v: list[list[float]]) -> list[list[float]]:
        if not v:
            raise ValueError("bands: give at least one [from, to, rate]")
        for i, b in enumerate(v, 1):
            if len(b) != 3:
                raise ValueError(f"bands: band {i} must be [from, to, rate], not {len(b)} numbers")
            lo, hi, rate = b
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(f"bands: band {i} needs 0 <= from < to <= 1, not [{lo:g}, {hi:g})")
            if not 0.0 < rate <= 1.0:
                raise ValueError(f"bands: band {i} rate must be above 0 and at most 1, not {rate:g}")
        ordered = sorted(range(len(v)), key=lambda n: v[n][0])
        for first, then in pairwise(ordered):
            (lo1, hi1, _), (lo2, hi2, _) = v[first], v[then]
            if lo2 < hi1:
                raise ValueError(f"bands: band {then + 1} [{lo2:g}, {hi2:g}) overlaps band {first + 1} "
                                 f"[{lo1:g}, {hi1:g})")
        return v


class ShadowTable(_Strict):
    """``[shadow]``: candidate models scored beside the active ones, never acted on."""

    models: list[str]

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str]) -> list[str]:
        if any(not m for m in v):
            raise ValueError("models: a model name must not be empty")
        return v


class PolicyFile(_Strict):
    """The policy file's schema: what :func:`load_policy` accepts, field by field."""

    version: str | int
    quarantine_prefix: str = "quarantine/"
    notify: NotifyTable = NotifyTable()
    rule: list[RuleTable]
    sample: list[SampleTable] = []
    shadow: ShadowTable = ShadowTable(models=[])

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

    @model_validator(mode="after")
    def _samples(self) -> PolicyFile:
        seen: set[tuple[str, str]] = set()
        for i, s in enumerate(self.sample, 1):
            if (s.model, s.label) in seen:
                raise ValueError(f"sample {i}: a second [[sample]] for model {s.model!r} label {s.label!r}")
            seen.add((s.model, s.label))
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
    samples = tuple(Sample(s.model, s.label, tuple(Band(float(lo), float(hi), float(rate))
                                                   for lo, hi, rate in sorted(s.bands)))
                    for s in doc.sample)
    return Policy(str(doc.version), rules, doc.quarantine_prefix, doc.notify.stream, doc.notify.webhook,
                  doc.notify.webhook_attempts, samples, tuple(dict.fromkeys(doc.shadow.models)))
