"""Streaming intake: single new uploads, batched on the worker by two knobs.

``label_one`` tasks (one object each, on ``LABELQ_LIVE_QUEUE``) run in a worker
started with ``labelq worker --live``: a threads pool whose concurrency exceeds
``max_batch_size`` (celery-batches' first trap: the prefetch window must be larger
than the flush size, or a batch can never fill). Each task thread hands its object
to the process's :class:`Batcher` and waits: objects are fetched and decoded in the
engine's pools, and the batcher flushes when ``max_batch_size`` are ready or the
first has waited ``batch_timeout`` seconds. Records are written per item (the
second trap: one failure must not fail the batch), then the policy's actions run.
Each task returns, and is acknowledged, only after its record is written.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any

from .engine import Engine, Item
from .errors import UsageError
from .records import Record

logger = logging.getLogger(__name__)


def validate_batching(max_batch_size: int, batch_timeout: float, concurrency: int) -> None:
    """The two knobs, checked where they are set, with what to do about them."""
    if max_batch_size < 1:
        raise UsageError("max_batch_size must be at least 1 (LABELQ_MAX_BATCH_SIZE)")
    if not 0 < batch_timeout <= 10:
        raise UsageError("batch_timeout must be between 0 and 10 seconds (LABELQ_BATCH_TIMEOUT), e.g. 0.05")
    if concurrency <= max_batch_size:
        raise UsageError(
            f"live worker concurrency {concurrency} must exceed max_batch_size {max_batch_size}: "
            "with fewer tasks in flight a batch never fills and every image waits batch_timeout"
        )


@dataclass
class _Pending:
    job: str
    models: tuple[str, ...]
    item: Item
    done: Future[list[Record]]
    ready_at: float


class Batcher:
    """Collects decoded items from many task threads into batches; one flusher thread infers."""

    def __init__(
        self,
        engine: Engine,
        classifier: Callable[[str], Any],
        write: Callable[[str, list[Record]], Future[None] | None],
        *,
        max_batch_size: int,
        batch_timeout: float,
    ) -> None:
        self.engine = engine
        self.classifier = classifier
        self.write = write
        self.max_batch_size = max_batch_size
        self.batch_timeout = batch_timeout
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="labelq-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: str, ref: Any, models: Sequence[str]) -> Future[list[Record]]:
        """Fetch and decode in the engine's pools; join a batch when decoded."""
        done: Future[list[Record]] = Future()
        key = tuple(models)
        with self._lock:  # decode views only grow, so items in flight keep theirs
            wanted = [self.classifier(m) for m in key]
            if any(c not in self.engine.classifiers for c in wanted):
                self.engine.use(self.engine.classifiers + [c for c in wanted if c not in self.engine.classifiers])

        def decoded(f: Future[Item]) -> None:
            self._queue.put(_Pending(job, key, f.result(), done, time.monotonic()))

        self.engine.submit(ref).add_done_callback(decoded)
        return done

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = first.ready_at + self.batch_timeout
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self._flush(batch)

    def _flush(self, batch: list[_Pending]) -> None:
        groups: dict[tuple[str, tuple[str, ...]], list[_Pending]] = {}
        for p in batch:
            groups.setdefault((p.job, p.models), []).append(p)
        for (job, models), group in groups.items():
            try:
                classifiers = [self.classifier(m) for m in models]
                records = self.engine.infer([p.item for p in group], job=job, classifiers=classifiers)
                after = self.write(job, records)
            except Exception as exc:
                logger.exception("live batch of %d failed to write", len(group))
                for p in group:
                    p.done.set_exception(exc)
                continue
            if after is None:
                _resolve(group, records)
            else:  # tasks end (and are acknowledged) once the policy's actions ran, off this thread
                after.add_done_callback(partial(_after_actions, group, records))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)


def _after_actions(group: list[_Pending], records: list[Record], _done: Future[None]) -> None:
    _resolve(group, records)


def _resolve(group: list[_Pending], records: list[Record]) -> None:
    """Hand each waiting task its object's records."""
    by_uri: dict[str, list[Record]] = {}
    for rec in records:
        by_uri.setdefault(rec.uri, []).append(rec)
    for p in group:
        p.done.set_result(by_uri.get(p.item.ref.uri, []))
