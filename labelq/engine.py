"""The batch pipeline: fetch → decode → batch → infer → records.

The engine knows nothing of Celery or of where records go. It takes an iterator of
object refs and a list of classifiers and yields, per batch, one record per
(image, model). Fetch runs in an I/O thread pool, decode in a CPU thread pool
(Pillow releases the GIL), and both run ahead of inference by a bounded window
of ``prefetch_batches`` batches, so memory stays bounded however long the listing.
A failure is always per item: it becomes an error record, never a failed batch.

Several runs may share one engine from different threads (a worker's chunks in
flight): their fetches and decodes share the pools, the models run one batch at a
time, and :meth:`Engine.using` lets runs with the same classifiers in together
while a run that needs others waits for them to finish. So one chunk's objects
decode while another's last batch infers, and the pipeline does not drain between
chunks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import Settings
from .errors import LabelqError, ModelError, StorageError, WorkerFault
from .feed import DecodePool, PoolBroken
from .gpudecode import DeviceJpeg, is_plain_jpeg
from .gpudecode import supported as device_decode_supported
from .images import Geometry, Limits, decode, open_checked
from .models import Classifier, Prediction
from .objects import ObjectRef, Store, with_version
from .records import Record, utcnow

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Item:
    """One object on its way through the pipeline: its inputs per view, or its error."""

    ref: ObjectRef
    inputs: dict[Any, Any] | None = None
    error: LabelqError | None = None
    raw: bytes | None = None  # a JPEG left for the device to decode (LABELQ_GPU_DECODE); its header passed the limits


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

    def count(self, records: Sequence[Record], images: int = 0) -> None:
        with self._lock:
            self.images += images
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
        raise_worker_faults: bool = False,
    ) -> None:
        self.store = store
        # In a worker, "this worker cannot read objects" (bad credentials, no local root) fails the
        # whole chunk back to the queue instead of becoming per-object access_denied records.
        self.raise_worker_faults = raise_worker_faults
        self.settings = settings
        self.worker = worker
        self.observe = observe
        self.limits = Limits(settings.max_bytes, settings.max_pixels, frozenset(settings.formats))
        self._feed: DecodePool | None = None  # decode processes (LABELQ_DECODE_PROCESSES), else threads
        self.device_jpeg: DeviceJpeg | None = None  # JPEG decode on the model's device (LABELQ_GPU_DECODE)
        self.use(classifiers)
        self._fetch_pool = ThreadPoolExecutor(settings.fetch_threads, thread_name_prefix="labelq-fetch")
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="labelq-decode")
        self.stats = Stats()
        self._model_lock = threading.Lock()  # one batch on the models at a time, whichever run it is from
        self._users = threading.Condition()  # runs inside using(): how many, and how many wait to switch
        self._active = 0
        self._switching = 0

    @contextmanager
    def using(self, classifiers: Sequence[Classifier]) -> Iterator[Engine]:
        """Run with these classifiers, alongside other threads' runs that use the same ones.

        A run that needs other classifiers waits until the runs inside have finished (and
        runs that arrive after it wait for its switch), then switches the engine: the items
        in flight were decoded for the views of the classifiers they were submitted with.
        """
        wanted = list(classifiers)

        def may_enter() -> bool:  # nobody waits to switch, and the engine is idle or has these classifiers
            return self._switching == 0 and (self._active == 0 or wanted == self.classifiers)

        with self._users:
            if not may_enter():
                switch = wanted != self.classifiers
                self._switching += switch
                try:  # a switch waits for the runs inside; the others for the switches asked before them
                    self._users.wait_for(lambda: self._active == 0 if switch else may_enter())
                finally:
                    self._switching -= switch
            if wanted != self.classifiers:
                self.use(wanted)
            self._active += 1
        try:
            yield self
        finally:
            with self._users:
                self._active -= 1
                self._users.notify_all()

    def use(self, classifiers: Sequence[Classifier]) -> None:
        """Set the classifiers the next runs label with (a worker switches per chunk)."""
        if not classifiers:
            raise ValueError("the engine needs at least one classifier")
        self.classifiers = list(classifiers)
        self.views: list[Any] = list(dict.fromkeys(c.view for c in self.classifiers))
        self._fast_geometries = [v for v in self.views if isinstance(v, Geometry)]
        self._preparer = {c.view: c for c in self.classifiers}
        self._use_device_decode()
        self._use_feed()

    def _use_device_decode(self) -> None:
        """JPEGs decoded on the CUDA device when asked for and every model can take it (fast views, one device)."""
        self.device_jpeg = None
        if not self.settings.gpu_decode:
            return
        devices = {str(c.device) for c in self.classifiers}
        cuda = all(c.device.type == "cuda" for c in self.classifiers) and len(devices) == 1
        if cuda and len(self._fast_geometries) == len(self.views) and device_decode_supported(self._fast_geometries):
            self.device_jpeg = DeviceJpeg(self.classifiers[0].device, self._fast_geometries)
        else:
            logger.info("LABELQ_GPU_DECODE ignored: it needs every model on one CUDA device with a fast path "
                        "(bilinear or bicubic resize); decoding on the CPU")

    def _use_feed(self) -> None:
        """Decode processes for the views in use, when asked for and every view is a fast geometry.

        The processes write fixed-size pixels into shared memory, so they serve fast views only; a
        model on the exact path (its own processor) keeps the decode in threads. A change of views
        (a worker switching models) starts a pool for the new geometries on its first image.
        """
        wanted = self.settings.decode_processes
        if self._feed is not None and (self._feed.geometries != self._fast_geometries or self._feed.broken):
            self._feed.close()
            self._feed = None
        if wanted < 1 or self._feed is not None or self.device_jpeg is not None:
            return
        if len(self._fast_geometries) != len(self.views):
            logger.info("decode in threads: a model uses its own processor (exact path), which the decode "
                        "processes do not run")
            return
        slots = self.settings.batch_size * (self.settings.prefetch_batches + 1) + 2 * wanted
        self._feed = DecodePool(wanted, self.limits, self._fast_geometries, slots=slots)

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
            if self.device_jpeg is not None and is_plain_jpeg(data, open_checked(data, self.limits).mode):
                return Item(ref, raw=data)  # the limits passed on the header; the device decodes it with its batch
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

    def _nearby(self, uri: str) -> bool:
        nearby = getattr(self.store, "nearby", None)
        return bool(nearby(uri)) if nearby is not None else False

    def _fetch_decode(self, ref: ObjectRef) -> Item:
        try:
            data = self._fetch(ref)
        except LabelqError as exc:
            return Item(ref, error=exc)
        except Exception as exc:  # noqa: BLE001
            return Item(ref, error=StorageError(f"{type(exc).__name__}: {exc}"))
        return self._decode(with_version(ref, data), data)

    def _timed(self, stage: str, start: float, items: int = 1) -> None:
        self._spent(stage, time.perf_counter() - start, items)

    def _spent(self, stage: str, seconds: float, items: int = 1) -> None:
        self.stats.add_time(stage, seconds)
        if self.observe is not None:
            self.observe(stage, seconds, items)

    def submit(self, ref: ObjectRef) -> Future[Item]:
        """Start fetching and decoding one object; the future never raises.

        Remote objects are fetched in the I/O pool, then decoded in the decode processes when
        there are any, else in the CPU pool. Without decode processes a local file is read and
        decoded in one CPU-pool task: a page-cache read needs no thread of its own, and sixteen
        I/O threads contending for the GIL cost more than the read.
        """
        feed = self._feed if self._feed is not None and not self._feed.broken else None
        if feed is None and self._nearby(ref.uri):
            return self._decode_pool.submit(self._fetch_decode, ref)
        out: Future[Item] = Future()

        def fetched(ff: Future[bytes]) -> None:
            data = _fetched(ref, ff, out)
            if data is not None:
                self._decode_into(out, with_version(ref, data), data, feed)

        self._fetch_pool.submit(self._fetch, ref).add_done_callback(fetched)
        return out

    def _decode_into(self, out: Future[Item], ref: ObjectRef, data: bytes, feed: DecodePool | None) -> None:
        """Decode fetched bytes into ``out``: in the decode processes when given, else in the CPU pool.

        Never raises and never loses an item: a broken or failing process pool falls back to a thread.
        """
        if feed is not None:
            try:
                feed.submit(data).add_done_callback(lambda df: self._fed(out, ref, data, df, feed))
                return
            except PoolBroken:
                pass
            except RuntimeError as exc:  # pool closed
                out.set_result(Item(ref, error=StorageError(f"engine closed: {exc}")))
                return
            except Exception:  # never lose an item to the feed
                logger.exception("decode pool failed; decoding %s in a thread", ref.uri)
        try:
            self._decode_pool.submit(self._decode, ref, data).add_done_callback(lambda f: out.set_result(f.result()))
        except RuntimeError as exc:  # pool shut down
            out.set_result(Item(ref, error=StorageError(f"engine closed: {exc}")))

    def _fed(self, out: Future[Item], ref: ObjectRef, data: bytes,
             df: Future[tuple[list[np.ndarray], float]], feed: DecodePool) -> None:
        """A decode process's answer: the item's pixels per geometry, or its error (per item, never per batch)."""
        try:
            pixels, seconds = df.result()
        except LabelqError as exc:
            out.set_result(Item(ref, error=exc))
            return
        except PoolBroken:  # the processes cannot run here: decode in a thread as before
            self._decode_into(out, ref, data, None)
            return
        except Exception as exc:  # noqa: BLE001
            out.set_result(Item(ref, error=_as_corrupt(exc)))
            return
        self._spent("decode", seconds)  # timed in the decode process
        out.set_result(Item(ref, dict(zip(feed.geometries, pixels, strict=True))))

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

    overlap: bool | None = None  # launch batch k+1 before collecting batch k; None: when a model is on CUDA

    def run(self, refs: Iterable[ObjectRef], *, job: str | None = None) -> Iterator[list[Record]]:
        """Label every ref; yields the records of each batch (one per image and model).

        With a model on CUDA, batch k+1 is staged (pinned buffer, copy stream) and its forward pass
        queued before batch k's results are collected: the host→device copy runs under batch k's
        compute and the GPU never waits for the host between batches. Records of a batch are then
        yielded one batch later than without overlap.
        """
        overlap = self.overlap if self.overlap is not None else any(c.device.type == "cuda" for c in self.classifiers)
        previous: tuple[list[Item], dict[Classifier, Any]] | None = None
        for batch in self.batches(refs):
            if not overlap:
                yield self._counted(batch, self.infer(batch, job=job))
                continue
            launched = self._launch(batch)
            if previous is not None:
                yield self._counted(previous[0], self.infer(previous[0], job=job, launched=previous[1]))
            previous = (batch, launched)
        if previous is not None:
            yield self._counted(previous[0], self.infer(previous[0], job=job, launched=previous[1]))

    def _counted(self, batch: Sequence[Item], records: list[Record]) -> list[Record]:
        self.stats.count(records, len(batch))
        return records

    def _decode_on_device(self, batch: Sequence[Item]) -> None:
        """Decode the batch's device-bound JPEGs in one call; any the device fails on are decoded on the CPU."""
        waiting = [item for item in batch if item.raw is not None]
        if not waiting:
            return
        start = time.perf_counter()
        datas = [item.raw for item in waiting if item.raw is not None]
        try:
            decoded = self.device_jpeg.decode(datas) if self.device_jpeg is not None else [None] * len(waiting)
        except Exception:  # the CPU takes them all
            logger.exception("device JPEG decode failed; decoding the batch on the CPU")
            decoded = [None] * len(waiting)
        self._timed("decode_device", start, len(waiting))
        for item, data, inputs in zip(waiting, datas, decoded, strict=True):
            item.raw = None
            if inputs is not None:
                item.inputs = inputs
            else:  # per item, with the CPU's errors
                cpu = self._decode_cpu(item.ref, data)
                item.inputs, item.error = cpu.inputs, cpu.error

    def _decode_cpu(self, ref: ObjectRef, data: bytes) -> Item:
        jpeg, self.device_jpeg = self.device_jpeg, None
        try:
            return self._decode(ref, data)
        finally:
            self.device_jpeg = jpeg

    def _launch(self, batch: Sequence[Item]) -> dict[Classifier, Any]:
        """Stage and queue every classifier's forward pass on a batch; a failure is kept for :meth:`infer`."""
        with self._model_lock:
            return self._launch_locked(batch)

    def _launch_locked(self, batch: Sequence[Item]) -> dict[Classifier, Any]:
        self._decode_on_device(batch)
        good = [item for item in batch if item.error is None]
        launched: dict[Classifier, Any] = {}
        if not good:
            return launched
        for clf in self.classifiers:
            try:
                launched[clf] = clf.launch(clf.stage(stack([item.inputs[clf.view] for item in good])))  # type: ignore[index]
            except Exception as exc:  # noqa: BLE001 - infer() isolates the bad item
                launched[clf] = exc
        return launched

    def infer(
        self, batch: Sequence[Item], *, job: str | None = None, classifiers: Sequence[Classifier] | None = None,
        launched: dict[Classifier, Any] | None = None,
    ) -> list[Record]:
        """Run the classifiers (default: all in use) over the decoded items of one batch.

        ``launched``: forward passes :meth:`_launch` already queued for this batch, collected here.
        """
        with self._model_lock:
            return self._infer_locked(batch, job, classifiers, launched)

    def _infer_locked(self, batch: Sequence[Item], job: str | None, classifiers: Sequence[Classifier] | None,
                      launched: dict[Classifier, Any] | None) -> list[Record]:
        classifiers = list(classifiers) if classifiers is not None else self.classifiers
        records: list[Record] = []
        now = utcnow()
        if self.raise_worker_faults:
            for item in batch:
                if isinstance(item.error, WorkerFault):
                    raise item.error
        self._decode_on_device(batch)
        good = [item for item in batch if item.error is None]
        for item in batch:
            if item.error is not None:
                records.extend(self._record(item.ref, c.name, item.error, job, now) for c in classifiers)
        for clf in classifiers:
            if not good:
                break
            start = time.perf_counter()
            preds = _collect_or_isolate(clf, launched, [item.inputs[clf.view] for item in good])  # type: ignore[index]
            self._timed("infer", start, len(good))
            for item, pred in zip(good, preds, strict=True):
                records.append(self._record(item.ref, clf.name, pred, job, now))
        return records

    def _record(self, ref: ObjectRef, model: str, pred: Prediction | LabelqError, job: str | None, now: str) -> Record:
        rev = next((getattr(c, "revision", None) for c in self.classifiers if c.name == model), None)
        if isinstance(pred, LabelqError):
            return Record(ref.uri, ref.etag, model, status="error", error_kind=pred.kind, error=str(pred),
                          job=job, worker=self.worker, processed_at=now, model_revision=rev)
        return Record(ref.uri, ref.etag, model, pred.label, pred.score, pred.top_k, job=job, worker=self.worker,
                      processed_at=now, model_revision=rev)

    def close(self) -> None:
        self._fetch_pool.shutdown(wait=True, cancel_futures=True)
        self._decode_pool.shutdown(wait=True, cancel_futures=True)
        if self._feed is not None:
            self._feed.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stack(inputs: Sequence[Any]) -> Any:
    """One batch from per-item inputs: numpy arrays, or tensors already on a device (GPU-decoded)."""
    if inputs and not isinstance(inputs[0], np.ndarray):
        import torch

        return torch.stack(list(inputs))
    return np.stack(inputs)


def _collect_or_isolate(clf: Classifier, launched: dict[Classifier, Any] | None, inputs: list[Any]
                        ) -> list[Prediction | LabelqError]:
    """A launched batch's predictions; on any failure (or none launched) the isolating path."""
    handle = launched.get(clf) if launched else None
    if handle is not None and not isinstance(handle, Exception):
        try:
            preds: list[Prediction | LabelqError] = list(clf.collect(handle))
            if len(preds) == len(inputs):
                return preds
        except Exception as exc:  # noqa: BLE001 - retried below, item by item if need be
            _free_memory(exc)
    return predict_isolated(clf, inputs)


def _fetched(ref: ObjectRef, ff: Future[bytes], out: Future[Item]) -> bytes | None:
    """A fetch's bytes, or None once ``out`` holds the item's error (never raises: per item, never per batch)."""
    try:
        return ff.result()
    except LabelqError as exc:
        out.set_result(Item(ref, error=exc))
    except Exception as exc:  # noqa: BLE001
        out.set_result(Item(ref, error=StorageError(f"{type(exc).__name__}: {exc}")))
    return None


def predict_isolated(clf: Classifier, inputs: list[np.ndarray]) -> list[Prediction | LabelqError]:
    """Predict a batch; on a failure split it in halves and retry, down to the bad item.

    An out-of-memory error frees the cache first. A single item that still fails
    becomes a ``model_error``; its batch-mates are labelled.
    """
    try:
        return list(clf.predict(stack(inputs)))
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
