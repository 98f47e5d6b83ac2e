"""Live job figures the console shows: rate, ETA, label counts, failures by kind (nothing stored)."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

RATE_WINDOW = 60.0  # seconds of samples the rate is measured over
SUMMARY_LIMIT = 200_000  # records read for a job's label chart (beyond: a sample, said so on the page)
DEAD_LETTERS_PER_KIND = 50


def _seconds(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class Progress:
    objects_done: int
    objects_total: int | None
    percent: float | None
    rate: float | None  # objects per second
    eta_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class RateMeter:
    """Objects per second per job, from the counters seen by recent page loads (in memory only)."""

    def __init__(self) -> None:
        self._samples: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def progress(self, info: Any) -> Progress:
        n_models = max(1, len(info.models))
        done = info.processed // n_models
        total = info.total
        now = time.time()
        rate: float | None = None
        if info.done:
            start, end = _seconds(info.created_at), _seconds(info.finished_at)
            if start and end and end > start:
                rate = done / (end - start)
        else:
            with self._lock:
                samples = self._samples.setdefault(info.id, deque(maxlen=120))
                samples.append((now, done))
                while samples and now - samples[0][0] > RATE_WINDOW:
                    samples.popleft()
                first = samples[0]
            if now - first[0] >= 2.0:
                rate = (done - first[1]) / (now - first[0])
            else:
                start = _seconds(info.created_at)
                rate = done / (now - start) if start and now > start else None
        eta = None
        if total is not None and rate and rate > 0 and not info.done:
            eta = max(0.0, (total - done) / rate)
        percent = 100.0 * done / total if total else (100.0 if info.done else None)
        return Progress(done, total, None if percent is None else min(percent, 100.0), rate, eta)


@dataclass
class Summary:
    labels: dict[str, Counter[str]] = field(default_factory=dict)  # model → label → records
    dead: dict[str, list[Any]] = field(default_factory=dict)  # error kind → records (first few)
    workers: dict[str, list[int]] = field(default_factory=dict)  # worker → [ok records, failed records]
    read: int = 0
    sampled: bool = False


def summarise(records: Any, limit: int = SUMMARY_LIMIT) -> Summary:
    s = Summary()
    for rec in records:
        if s.read >= limit:
            s.sampled = True
            break
        s.read += 1
        counts = s.workers.setdefault(rec.worker or "?", [0, 0])
        counts[0 if rec.ok else 1] += 1
        if rec.ok:
            s.labels.setdefault(rec.model, Counter())[rec.label or "?"] += 1
        else:
            group = s.dead.setdefault(rec.error_kind or "?", [])
            if len(group) < DEAD_LETTERS_PER_KIND:
                group.append(rec)
    return s


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
