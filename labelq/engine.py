"""The batch pipeline: fetch → decode → batch → infer → records.

The engine knows nothing of Celery or of where records go. It takes an iterator of
object refs and a list of classifiers and yields, per batch, one record per
(image, model). Fetch runs in an I/O thread pool, decode in a CPU thread pool
(Pillow releases the GIL), and both run ahead of inference by a bounded window
of ``prefetch_batches`` batches, so memory stays bounded however long the listing.
A failure is always per item: it becomes an error record, never a failed batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import Settings
from .errors import LabelqError, ModelError, StorageError
from .images import Geometry, Limits, decode
from .models import Classifier, Prediction
from .records import Record, utcnow
from .storage import ObjectRef, Store

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Item:
    """One object on its way through the pipeline: its inputs per view, or its error."""

    ref: ObjectRef
    inputs: dict[Any, np.ndarray] | None = None
    error: LabelqError | None = None


@dataclass
class Stats:
    """Counts and seconds per stage, summed over the engine's life (thread-safe adds)."""

    images: int = 0
    records: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    labels: dict[str, Counter[str]] = field(default_factory=dict)
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_time(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    def count(self, records: Sequence[Record]) -> None:
        with self._lock:
            for rec in records:
                self.records += 1
                if rec.ok:
                    self.labels.setdefault(rec.model, Counter())[rec.label or ""] += 1
                else:
                    self.errors[rec.error_kind or "model_error"] += 1


Observer = Callable[[str, float, int], None]  # (stage, seconds, items) for metrics


class Engine:
    """Fetch/decode thread pools and loaded classifiers, reused across many runs."""

    def __init__(
        self,
        classifiers: Sequence[Classifier],
        store: Store,
        settings: Settings,
        *,
        worker: str | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.worker = worker
        self.observe = observe
        self.limits = Limits(settings.max_bytes, settings.max_pixels, frozenset(settings.formats))
        self.use(classifiers)
        self._fetch_pool = ThreadPoolExecutor(settings.fetch_threads, thread_name_prefix="labelq-fetch")
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="labelq-decode")
        self.stats = Stats()

    def use(self, classifiers: Sequence[Classifier]) -> None:
        """Set the classifiers the next runs label with (a worker switches per chunk)."""
        if not classifiers:
            raise ValueError("the engine needs at least one classifier")
        self.classifiers = list(classifiers)
        self.views: list[Any] = list(dict.fromkeys(c.view for c in self.classifiers))
        self._fast_geometries = [v for v in self.views if isinstance(v, Geometry)]
        self._preparer = {c.view: c for c in self.classifiers}

    # ------------------------------------------------------------------ stages

    def _fetch(self, ref: ObjectRef) -> bytes:
        start = time.perf_counter()
        try:
            return self.store.fetch(ref)
        finally:
            self._timed("fetch", start)

    def _decode(self, ref: ObjectRef, data: bytes) -> Item:
        """Decode once (draft only if every view is a fast one) and prepare each view."""
        start = time.perf_counter()
        try:
            all_fast = len(self._fast_geometries) == len(self.views)
            image = decode(data, self.limits, draft=self._fast_geometries if all_fast else ())
            inputs = {view: self._preparer[view].prepare(image) for view in self.views}
            return Item(ref, inputs)
        except LabelqError as exc:
            return Item(ref, error=exc)
        except Exception as exc:
            logger.exception("unexpected decode failure on %s", ref.uri)
            return Item(ref, error=_as_corrupt(exc))
        finally:
            self._timed("decode", start)

    def _fetch_decode(self, ref: ObjectRef) -> Item:
        try:
            data = self._fetch(ref)
        except LabelqError as exc:
            return Item(ref, error=exc)
        except Exception as exc:  # noqa: BLE001
            return Item(ref, error=StorageError(f"{type(exc).__name__}: {exc}"))
        return self._decode(ref, data)

    def _timed(self, stage: str, start: float, items: int = 1) -> None:
        seconds = time.perf_counter() - start
        self.stats.add_time(stage, seconds)
        if self.observe is not None:
            self.observe(stage, seconds, items)

    def submit(self, ref: ObjectRef) -> Future[Item]:
        """Start fetching and decoding one object; the future never raises.

        Remote objects are fetched in the I/O pool, then decoded in the CPU pool. A local file
        is read and decoded in one CPU-pool task: a page-cache read needs no thread of its own,
        and sixteen I/O threads contending for the GIL cost more than the read.
        """
        if ref.uri.startswith("file://"):
            return self._decode_pool.submit(self._fetch_decode, ref)
        out: Future[Item] = Future()

        def decoded(df: Future[Item]) -> None:
            out.set_result(df.result())

        def fetched(ff: Future[bytes]) -> None:
            try:
                data = ff.result()
            except LabelqError as exc:
                out.set_result(Item(ref, error=exc))
                return
            except Exception as exc:  # noqa: BLE001
                out.set_result(Item(ref, error=StorageError(f"{type(exc).__name__}: {exc}")))
                return
            try:
                self._decode_pool.submit(self._decode, ref, data).add_done_callback(decoded)
            except RuntimeError as exc:  # pool shut down
                out.set_result(Item(ref, error=StorageError(f"engine closed: {exc}")))

        self._fetch_pool.submit(self._fetch, ref).add_done_callback(fetched)
        return out

    # ------------------------------------------------------------------ pipeline

    def batches(self, refs: Iterable[ObjectRef]) -> Iterator[list[Item]]:
        """Decoded batches in listing order, with up to ``prefetch_batches`` more in flight."""
        size = self.settings.batch_size
        window = size * (self.settings.prefetch_batches + 1)
        pending: deque[Future[Item]] = deque()
        it = iter(refs)
        exhausted = False
        while True:
            while not exhausted and len(pending) < window:
                ref = next(it, None)
                if ref is None:
                    exhausted = True
                    break
                pending.append(self.submit(ref))
            if not pending:
                return
            batch = [pending.popleft().result() for _ in range(min(size, len(pending)))]
            yield batch

    def run(self, refs: Iterable[ObjectRef], *, job: str | None = None) -> Iterator[list[Record]]:
        """Label every ref; yields the records of each batch (one per image and model)."""
        for batch in self.batches(refs):
            records = self.infer(batch, job=job)
            self.stats.images += len(batch)
            self.stats.count(records)
            yield records

    def infer(
        self, batch: Sequence[Item], *, job: str | None = None, classifiers: Sequence[Classifier] | None = None
    ) -> list[Record]:
        """Run the classifiers (default: all in use) over the decoded items of one batch."""
        classifiers = list(classifiers) if classifiers is not None else self.classifiers
        records: list[Record] = []
        now = utcnow()
        good = [item for item in batch if item.error is None]
        for item in batch:
            if item.error is not None:
                records.extend(self._record(item.ref, c.name, item.error, job, now) for c in classifiers)
        for clf in classifiers:
            if not good:
                break
            start = time.perf_counter()
            preds = predict_isolated(clf, [item.inputs[clf.view] for item in good])  # type: ignore[index]
            self._timed("infer", start, len(good))
            for item, pred in zip(good, preds, strict=True):
                records.append(self._record(item.ref, clf.name, pred, job, now))
        return records

    def _record(self, ref: ObjectRef, model: str, pred: Prediction | LabelqError, job: str | None, now: str) -> Record:
        if isinstance(pred, LabelqError):
            return Record(ref.uri, ref.etag, model, status="error", error_kind=pred.kind, error=str(pred),
                          job=job, worker=self.worker, processed_at=now)
        return Record(ref.uri, ref.etag, model, pred.label, pred.score, pred.top_k, job=job, worker=self.worker,
                      processed_at=now)

    def close(self) -> None:
        self._fetch_pool.shutdown(wait=True, cancel_futures=True)
        self._decode_pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def predict_isolated(clf: Classifier, inputs: list[np.ndarray]) -> list[Prediction | LabelqError]:
    """Predict a batch; on a failure split it in halves and retry, down to the bad item.

    An out-of-memory error frees the cache first. A single item that still fails
    becomes a ``model_error``; its batch-mates are labelled.
    """
    try:
        return list(clf.predict(np.stack(inputs)))
    except Exception as exc:  # noqa: BLE001 - isolate, never fail the batch
        _free_memory(exc)
        if len(inputs) == 1:
            logger.warning("model %s failed on one item: %s: %s", clf.name, type(exc).__name__, exc)
            return [ModelError(f"{clf.name}: {type(exc).__name__}: {exc}")]
        logger.info("model %s failed on a batch of %d (%s); splitting", clf.name, len(inputs), type(exc).__name__)
        mid = len(inputs) // 2
        return predict_isolated(clf, inputs[:mid]) + predict_isolated(clf, inputs[mid:])


def _free_memory(exc: BaseException) -> None:
    if "out of memory" in str(exc).lower():
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass


def _as_corrupt(exc: Exception) -> LabelqError:
    from .errors import Corrupt

    return Corrupt(f"{type(exc).__name__}: {exc}")
