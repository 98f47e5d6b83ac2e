"""Shadow models and their promotion.

A policy's ``[shadow] models`` are candidates: they score what the active models score (live,
``labelq listen`` adds them to every upload's models; in bulk, ``labelq moderate shadow`` enqueues a
job over a sample of an old job's objects) and never act. :func:`shadow_refs` draws that sample with
the audit samples' hash rule (:func:`.rules.in_sample`, with the candidate as the model and
:data:`SHADOW_LABEL` as the label), so a higher rate keeps every object a lower one drew.

Promotion (``labelq moderate promote``) rewrites the policy file so every rule and sample of the
active model names the candidate instead (:func:`promote`), as clean TOML (:func:`policy_toml`),
written atomically (:func:`write_policy`), and audited (:func:`promote_action`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections.abc import Collection, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

from ..errors import UsageError
from ..records import Record
from .audit import Action
from .rules import Policy, in_sample, load_policy

SHADOW_LABEL = "shadow"  # the label in_sample hashes for a shadow job's sample (the model is the candidate)


def shadow_job_name(job: str) -> str:
    """The default name of the shadow job of ``job``."""
    return f"{job}.shadow"


def shadow_refs(records: Iterable[Record], *, candidate: str, rate: float,
                skip_models: Collection[str] = ()) -> Iterator[tuple[str, str | None]]:
    """(uri, etag) of each object with an ok record of an active model (not the candidate, not ``skip_models``)
    that the sample at ``rate`` draws; each object once."""
    if not 0.0 < rate <= 1.0:
        raise UsageError(f"--rate must be above 0 and at most 1, not {rate:g}")
    seen: set[str] = set()
    for rec in records:
        if not rec.ok or rec.model == candidate or rec.model in skip_models or rec.uri in seen:
            continue
        if in_sample(rec.uri, rec.etag, candidate, SHADOW_LABEL, rate):
            seen.add(rec.uri)
            yield rec.uri, rec.etag


def write_manifest(path: Path, refs: Iterable[tuple[str, str | None]]) -> int:
    """A manifest of ``uri<TAB>etag`` lines (the producer's format), written atomically; how many lines."""
    n = 0
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for uri, etag in refs:
                f.write(f"{uri}\t{etag}\n" if etag else f"{uri}\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def promote(policy: Policy, candidate: str, *, model: str | None = None, threshold: float | None = None,
            version: str | None = None, today: dt.date | None = None) -> tuple[Policy, str]:
    """The policy with ``candidate`` in place of the active model: every rule and sample of that model names the
    candidate (each rule's threshold replaced when ``threshold`` is given), the candidate leaves the shadow
    models, the version is ``version`` or ``OLD.promoted-YYYY-MM-DD``. Returns (new policy, the model replaced).

    The active model is ``model``, or the one model the rules and samples name (UsageError when they name
    several and ``model`` is not given)."""
    active = [m for m in policy.models if m != candidate]
    if candidate in policy.models and model is None:
        raise UsageError(f"{candidate} already acts in policy {policy.version}: nothing to promote")
    if model is None:
        if len(active) != 1:
            raise UsageError(f"the policy's rules name {len(active)} models ({', '.join(active) or 'none'}): say which "
                             "one the candidate replaces with --model")
        model = active[0]
    elif model not in policy.models:
        raise UsageError(f"no rule or sample of policy {policy.version} names {model}")
    if model == candidate:
        raise UsageError("the candidate is the model it would replace")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--threshold must be between 0 and 1, not {threshold:g}")
    day = (today or dt.datetime.now(dt.timezone.utc).date()).isoformat()
    new_version = version or f"{policy.version}.promoted-{day}"
    if not new_version.strip():
        raise UsageError("--version must not be empty")
    rules = tuple(replace(r, model=candidate, threshold=r.threshold if threshold is None else float(threshold))
                  if r.model == model else r for r in policy.rules)
    samples = tuple(replace(s, model=candidate) if s.model == model else s for s in policy.samples)
    shadow = tuple(m for m in policy.shadow if m != candidate)
    return replace(policy, version=new_version, rules=rules, samples=samples, shadow=shadow), model


def promote_action(path: Path, old: Policy, new: Policy, model: str, candidate: str) -> Action:
    """The audit entry of a promotion."""
    return Action(uri=str(path), model=candidate, label="", score=0.0, policy_version=new.version, action="promote",
                  result="ok", detail=f"{model} -> {candidate}, version {old.version} -> {new.version}")


def _str(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's; DEL must be escaped too)."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")


def _num(value: float) -> str:
    return repr(float(value))


def policy_toml(policy: Policy) -> str:
    """A policy as clean TOML that :func:`.rules.load_policy` reads back to the same policy."""
    lines = [f"version = {_str(policy.version)}", f"quarantine_prefix = {_str(policy.quarantine_prefix)}"]
    if policy.stream or policy.webhook or policy.webhook_attempts != 4:
        lines += ["", "[notify]"]
        if policy.stream:
            lines.append(f"stream = {_str(policy.stream)}")
        if policy.webhook:
            lines.append(f"webhook = {_str(policy.webhook)}")
        lines.append(f"webhook_attempts = {policy.webhook_attempts}")
    for r in policy.rules:
        lines += ["", "[[rule]]", f"model = {_str(r.model)}", f"label = {_str(r.label)}",
                  f"threshold = {_num(r.threshold)}", f"actions = [{', '.join(_str(a) for a in r.actions)}]"]
    for s in policy.samples:
        bands = ", ".join(f"[{_num(b.lo)}, {_num(b.hi)}, {_num(b.rate)}]" for b in s.bands)
        lines += ["", "[[sample]]", f"model = {_str(s.model)}", f"label = {_str(s.label)}", f"bands = [{bands}]"]
    if policy.shadow:
        lines += ["", "[shadow]", f"models = [{', '.join(_str(m) for m in policy.shadow)}]"]
    return "\n".join(lines) + "\n"


def write_policy(path: Path, text: str) -> Policy:
    """Replace the policy file atomically (a temporary file beside it, checked by load_policy, then renamed);
    the file keeps its mode. Returns the policy as read back."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".toml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, os.stat(path).st_mode & 0o777)
        except OSError:
            pass
        policy = load_policy(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return policy
