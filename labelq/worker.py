"""The worker: task bodies bound to the task contract, and the per-process runtime.

``celery -A labelq.worker worker`` works as is; ``labelq worker --devices ...``
(see :mod:`labelq.launcher`) starts one process per device, pinned with
``CUDA_VISIBLE_DEVICES``, whose threads pool works on ``LABELQ_CHUNKS_IN_FLIGHT``
chunks at once through one engine: one chunk's objects are fetched and decoded
while another's batches are on the model, so the pipeline does not drain between
chunks. Models load once per process, after any fork: in the process itself for the
solo and threads pools, in each child for prefork. A worker whose models do not
load does not consume: it exits non-zero with one line.

A task acknowledges its chunk only when every record of it is written. A failure that
is not about one object (a model that does not load, a store that cannot be reached,
Redis out of memory, a bug) sends the chunk back with backoff; after
``LABELQ_CHUNK_ATTEMPTS`` attempts it is parked in the job's dead letters, where
``labelq status`` shows it and ``labelq retry`` runs it again. Nothing is acknowledged
and gone.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import sys
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from celery import signals
from celery.exceptions import Reject, Retry
from celery.worker.control import inspect_command

from .config import Settings, load_settings, redact
from .errors import UsageError
from .redis_client import is_redis_url
from .tasks import CHUNK_TASK, LIVE_TASK, make_app

logger = logging.getLogger(__name__)

EXIT_NO_MODEL = 3  # a worker whose models do not load exits with this code


class Runtime:
    """What one worker process holds: settings, services, engine, classifiers, moderator."""

    def __init__(self, settings: Settings, name: str) -> None:
        from .logs import quiet_libraries
        from .objects import Stores
        from .services import open_services

        quiet_libraries()
        self.settings = settings
        self.name = name
        self.services = open_services(settings, check=False)
        self.watch = watch_services(settings, self.services.redis, name)
        self.through_outage(self.services.redis.ping, "reach the job state Redis", "job state (redis)")
        self.watch.start()
        self.book = self.services.book
        self.records = self.services.records
        self.classifiers: dict[str, Any] = {}
        self._lock = threading.Lock()  # what is made on first use: classifiers, the engine, the batcher
        self._write_lock = threading.Lock()  # chunks in flight write one at a time (stores need not be thread-safe)
        self.metrics = None
        if settings.metrics_port:
            from .metrics import Metrics
            from .redis_client import connect

            self.metrics = Metrics()
            broker = connect(settings.broker_url, master=settings.sentinel_master) if is_redis_url(settings.broker_url) else None
            if broker is not None:
                self.metrics.watch_queue(broker, [settings.queue, settings.live_queue], self.book)
            from .health import register_metrics

            register_metrics(self.watch, self.metrics.registry)
            self.metrics.serve(settings.metrics_port)
        self.engine: Any = None  # made with the first chunk's classifiers
        self._stores = Stores(settings)
        self._batcher: Any = None
        self.moderator: Any = None
        self.outbox: Any = None  # the moderation outbox's deliverer (a thread), with a policy
        self._moderation = ThreadPoolExecutor(1, thread_name_prefix="labelq-moderate")
        self._moderation_slots = threading.BoundedSemaphore(64)
        if settings.policy is not None:
            from .moderation import Deliverer, Moderator

            self.moderator = Moderator.from_file(settings.policy, redis=self.services.redis, stores=self._stores,
                                                 reload_every=settings.policy_reload)
            self.outbox = Deliverer(self.services.redis, timeout=settings.outbox_timeout).start()
            logger.info("moderation policy %s (version %s)", settings.policy, self.moderator.policy.version)
        for model in settings.models:
            self.classifier(model)
        if self.classifiers:
            check_visibility(settings, sum(c.seconds_per_image for c in self.classifiers.values()))
        self._in_hand: dict[tuple[str, str], int] = {}  # (job, chunk) → tasks on it: their deadlines move on
        self._hand_lock = threading.Lock()
        self.healer: Any = None

    def start_healer(self) -> None:
        """The heal thread (labelq.heal): heartbeats for the chunks in hand, heal rounds under the lock."""
        if self.healer is not None or not self.settings.heal_interval:
            return
        from .heal import Healer

        def republished(n: int) -> None:
            if self.metrics is not None:
                self.metrics.republished.inc(n)

        self.healer = Healer(self.settings, app=self.services.app, book=self.book, store=self.records,
                             name=self.name, in_hand=self.held, on_republish=republished).start()

    def held(self) -> list[tuple[str, str]]:
        with self._hand_lock:
            return list(self._in_hand)

    def take(self, job: str, chunk: str) -> None:
        with self._hand_lock:
            self._in_hand[(job, chunk)] = self._in_hand.get((job, chunk), 0) + 1

    def drop(self, job: str, chunk: str) -> None:
        with self._hand_lock:
            left = self._in_hand.pop((job, chunk), 1) - 1
            if left > 0:
                self._in_hand[(job, chunk)] = left

    def recorded(self, job: str, uris: list[str], models: list[str]) -> set[tuple[str, str]]:
        """(uri, model) pairs the job has a record for in the record store (the truth)."""
        out: set[tuple[str, str]] = set()
        for model in models:
            out.update((uri, model) for uri in self.records.job_get_many(job, model, uris))
        return out

    def _recorded_for(self, records: list[Any]) -> set[tuple[str, str]]:
        groups: dict[tuple[str, str], list[str]] = {}
        for rec in records:
            groups.setdefault((rec.job or "", rec.model), []).append(rec.uri)
        out: set[tuple[str, str]] = set()
        for (job, model), uris in groups.items():
            out |= self.recorded(job, uris, [model])
        return out

    def classifier(self, name: str) -> Any:
        """A loaded classifier; loaded (and warmed up) on first use, then kept."""
        with self._lock:
            return self._load(name)

    def _load(self, name: str) -> Any:
        from .models import load_classifier

        clf = self.classifiers.get(name)
        if clf is None:
            start = time.perf_counter()
            try:
                clf = load_classifier(name, self.settings)
            except UsageError:
                raise
            except Exception as exc:  # noqa: BLE001 - say which model, in one line
                raise UsageError(f"cannot load model {name}: {type(exc).__name__}: {exc}") from None
            seconds = clf.warmup(min(self.settings.batch_size, 8))
            if self.metrics is not None:
                self.metrics.model_load.labels(name).set(time.perf_counter() - start)
            logger.info("%s: %s ready (warm-up batch %.2fs)", self.name, name, seconds)
            self.classifiers[name] = clf
        return clf

    def _engine(self, classifiers: list[Any]) -> Any:
        """The bulk engine, shared by the chunks in flight (each runs inside ``engine.using``)."""
        from .engine import Engine

        with self._lock:
            if self.engine is None:
                observe = self.metrics.observe_stage if self.metrics is not None else None
                self.engine = Engine(classifiers, self._stores, self.settings, worker=self.name, observe=observe,
                                     raise_worker_faults=True)
            return self.engine

    def label(self, job: str, refs: list[Any], models: list[str], chunk: str) -> tuple[int, int]:
        """Label one chunk; its records are written (and counted) batch by batch. Returns (images, records)."""
        from .objects import ObjectRef

        classifiers = [self.classifier(m) for m in models]
        engine = self._engine(classifiers)
        position = {ref[0]: i for i, ref in enumerate(refs)}
        model_index = {m: i for i, m in enumerate(models)}
        n_models = len(models)
        per_chunk = getattr(self.records, "per_chunk", False)
        buffered: list[Any] = []
        images = written = 0
        start = time.perf_counter()
        moderated = []
        with engine.using(classifiers):
            for records in engine.run((ObjectRef.from_json(r) for r in refs), job=job):
                items = [(chunk, position[r.uri] * n_models + model_index[r.model], r) for r in records]
                if per_chunk:
                    buffered.extend(items)
                else:
                    moderated.append(self.write(job, items, chunk=chunk))
                images += len(records) // n_models
                written += len(records)
        if per_chunk and buffered:
            moderated.append(self.write(job, buffered, chunk=chunk))
        for done in moderated:  # the chunk is acknowledged only once its actions ran
            if done is not None:
                done.result()
        seconds = time.perf_counter() - start
        if is_redis_url(self.settings.broker_url) and seconds > self.settings.visibility_timeout / 2:
            logger.warning(
                "a chunk of %d images took %.0fs, over half of visibility_timeout (%ds): chunks still in progress "
                "may be redelivered to another worker; raise LABELQ_VISIBILITY_TIMEOUT or lower LABELQ_CHUNK_SIZE",
                len(refs), seconds, self.settings.visibility_timeout,
            )
        return images, written

    def write(self, job: str, items: list[tuple[str, int, Any]], *, chunk: str | None = None) -> Future[None] | None:
        """Write (chunk, position, record) items: the records to the store, then the job's counts.

        With a policy, the moderator decides which records to keep (a redelivered task must not
        turn an object it moved to quarantine into a ``not_found`` record), and its actions run
        on the moderation thread; the returned future says when they ran (tasks wait for it
        before they are acknowledged).
        """
        records = [rec for _, _, rec in items]
        if self.moderator is not None:
            kept = {id(r) for r in self.moderator.keep(records, recorded=self._recorded_for)}
            items = [it for it in items if id(it[2]) in kept]
            records = [rec for _, _, rec in items]
            if not records:
                return None
        start = time.perf_counter()

        def write() -> None:  # idempotent: records are upserts, counts are per position of the chunk
            self.records.write(records, chunk=chunk)
            self.book.record(job, items)

        with self._write_lock:
            self.through_outage(write, f"write {len(records)} records of job {job}", "job state (redis)")
        if self.metrics is not None:
            self.metrics.observe_stage("write", time.perf_counter() - start, len(records))
            self.metrics.observe_records(records)
        if self.moderator is None:
            return None
        self._moderation_slots.acquire()  # bounded: a writer far ahead of the actions waits
        return self._moderation.submit(self._moderate, records)

    def through_outage(self, step: Any, what: str, service: str) -> Any:
        """Run ``step``; while Redis/the broker is unreachable, say "degraded" and retry with backoff for up to
        ``LABELQ_OUTAGE_WAIT`` seconds (then the error goes up: the chunk is not acknowledged)."""
        from .retrying import through_outage

        def waiting(exc: BaseException, delay: float) -> None:
            self.watch.failed(service, exc)
            logger.info("%s: could not %s (%s); trying again in %.1fs", self.name, what, type(exc).__name__, delay)

        return through_outage(step, what=what, wait=self.settings.outage_wait, on_wait=waiting)

    def write_live(self, job: str, records: list[Any]) -> Future[None] | None:
        """The live path's records: each upload is a chunk of its own (``live:`` + a digest of uri and etag)."""
        items = [(live_chunk(r.uri, r.etag), zlib.crc32(r.model.encode()) % 4096, r) for r in records]
        after = self.write(job, items)
        for chunk in dict.fromkeys(c for c, _, _ in items):
            self.book.chunk_done(job, chunk)
        return after

    def _moderate(self, records: list[Any]) -> None:
        try:
            self.moderator.apply(records)
        except Exception:
            logger.exception("moderation of %d records failed", len(records))
        finally:
            self._moderation_slots.release()

    def batcher(self) -> Any:
        """The live path's batcher, made on first use (its engine decodes for the loaded models)."""
        from .engine import Engine
        from .live import Batcher

        with self._lock:
            if self._batcher is None:
                engine = Engine(list(self.classifiers.values()) or [self._load(m) for m in self.settings.models],
                                self._stores, self.settings, worker=self.name)
                self._batcher = Batcher(engine, self.classifier, self.write_live,
                                        max_batch_size=self.settings.max_batch_size,
                                        batch_timeout=self.settings.batch_timeout)
            return self._batcher


def watch_services(settings: Settings, redis: Any, name: str) -> Any:
    """This worker's :class:`labelq.health.Watch`: the job Redis, and the broker when it is another server."""
    from .health import Watch
    from .redis_client import connect

    # its own clients: one quick try per probe
    probe = connect(settings.jobs_redis, master=settings.sentinel_master, check=False, retries=0)
    probes: dict[str, Any] = {"job state (redis)": probe.ping}
    if settings.broker_url != settings.jobs_redis:
        if is_redis_url(settings.broker_url):
            probes["broker"] = connect(settings.broker_url, master=settings.sentinel_master, check=False, retries=0).ping
        else:
            from kombu import Connection

            def broker() -> None:
                with Connection(settings.broker_url, connect_timeout=3) as conn:
                    conn.ensure_connection(max_retries=0)

            probes["broker"] = broker
    return Watch(probes, who=f"worker {name}")


def live_chunk(uri: str, etag: str | None) -> str:
    import hashlib

    return "live:" + hashlib.blake2b(f"{uri}\0{etag or ''}".encode(), digest_size=10).hexdigest()


def check_visibility(settings: Settings, model_seconds_per_image: float) -> float:
    """Warn when chunks could outlive the Redis visibility timeout; returns the expected chunk seconds.

    With the Redis broker an unacknowledged chunk is handed to another worker after
    ``visibility_timeout`` seconds, even while the first is still working on it. The
    estimate is the models' warm-up time per image plus a decode allowance, for a full
    chunk; we want it well under half the timeout.
    """
    decode_allowance = 0.02  # seconds per image for fetch + decode on one core (measured ~6-26 ms)
    # chunks in flight share the model: each takes that many times as long
    expected = settings.chunk_size * settings.chunks_in_flight * (model_seconds_per_image + decode_allowance)
    if is_redis_url(settings.broker_url) and expected > settings.visibility_timeout / 2:
        logger.warning(
            "visibility_timeout is %ds but a chunk of %d images is expected to take about %.0fs: chunks may be "
            "redelivered while still in progress; set LABELQ_VISIBILITY_TIMEOUT above %.0f or lower LABELQ_CHUNK_SIZE",
            settings.visibility_timeout, settings.chunk_size, expected, 2 * expected,
        )
    return expected


_runtime: Runtime | None = None
_runtime_error: str | None = None
_runtime_lock = threading.Lock()


def runtime(hostname: str | None = None) -> Runtime:
    """This process's runtime, made on first use (after any fork)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            name = hostname or os.environ.get("LABELQ_WORKER_NAME") or f"{os.getpid()}@{socket.gethostname()}"
            _runtime = Runtime(load_settings(), name)
            _runtime.start_healer()
        return _runtime


def retry_delay(settings: Settings, attempt: int) -> float:
    """Seconds before attempt ``attempt + 1`` of a failed chunk: doubling from chunk_retry_delay, jittered."""
    base = settings.chunk_retry_delay * (2 ** max(0, attempt - 1))
    return min(300.0, base) * (0.75 + random.random() / 2)


def _failed(task: Any, exc: BaseException, job: str, payload: dict[str, Any], items: int) -> dict[str, Any]:
    """A task failed as a whole: send it back with backoff, or park it after the last attempt.

    Never acknowledges work that is not done. When the broker or Redis cannot take the retry or
    the dead letter (out of memory, read-only, down), it keeps trying for a while; if they never
    come back the process exits without acknowledging, and the broker hands the chunk to another
    worker after the visibility timeout.
    """
    settings = _runtime.settings if _runtime is not None else load_settings()
    attempt = int(getattr(task.request, "retries", 0) or 0) + 1
    what = " ".join(f"{type(exc).__name__}: {exc}".split())
    chunk = payload["chunk"]
    metrics = _runtime.metrics if _runtime is not None else None
    if metrics is not None:
        metrics.chunk_failures.labels("retried" if attempt < settings.chunk_attempts else "dead_lettered").inc()
    if attempt < settings.chunk_attempts:
        delay = retry_delay(settings, attempt)
        logger.warning("job %s chunk %s failed (attempt %d/%d), retrying in %.0fs: %s", job, chunk, attempt,
                       settings.chunk_attempts, delay, what)

        def send_retry() -> None:
            try:
                task.retry(countdown=delay, max_retries=settings.chunk_attempts + 1, exc=exc)
            except Retry as sent:
                raise _Sent(sent) from None

        try:
            _persist(send_retry, f"send the retry of job {job} chunk {chunk}", settings)
        except _Sent as sent:
            raise sent.retry from None
        raise AssertionError("unreachable: a sent retry raises")
    payload.update(error=what[:2000], attempts=attempt, worker=getattr(task.request, "hostname", None),
                   at=time.time())

    def park() -> int:
        book = runtime().book if _runtime is not None else _open_book(settings)
        return book.park(job, chunk, payload, items)

    missing = _persist(park, f"dead-letter job {job} chunk {chunk}", settings)
    logger.error("job %s chunk %s failed %d times and is dead-lettered (%d records not written): %s; "
                 "`labelq status %s` shows it, `labelq retry %s` runs it again", job, chunk, attempt, missing,
                 what, job, job)
    return {"dead": True, "error": what}


class _Sent(Exception):
    def __init__(self, retry: Retry) -> None:
        self.retry = retry


def _open_book(settings: Settings) -> Any:
    from .services import open_services

    return open_services(settings).book


def _persist(step: Any, what: str, settings: Settings) -> Any:
    """Run ``step`` until Redis/the broker takes it, for at most half the visibility timeout (<= 5 min).

    Past that the process exits without acknowledging its chunk (the broker redelivers it).
    """
    deadline = time.monotonic() + min(300.0, settings.visibility_timeout / 2)
    delay = 0.5
    while True:
        try:
            return step()
        except _Sent:
            raise
        except Exception as exc:  # noqa: BLE001 - Redis/broker refusing writes
            if time.monotonic() > deadline:
                line = f"labelq worker: could not {what} ({type(exc).__name__}: {exc}); exiting without " \
                       "acknowledging it: the broker hands it to another worker after the visibility timeout"
                logger.critical(line)
                print(line, file=sys.stderr, flush=True)
                os._exit(1)
            logger.warning("could not %s (%s: %s); trying again in %.1fs", what, type(exc).__name__, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def label_chunk(self: Any, job: str, refs: list[Any], models: list[str], chunk: str | None = None) -> dict[str, Any]:
    """Celery task: label a chunk of refs ``[[uri, size, etag], ...]`` with the named models."""
    from .jobs import chunk_id

    chunk = chunk or chunk_id(job, models, [r[0] for r in refs])
    try:
        rt = runtime(getattr(self.request, "hostname", None))
        if rt.through_outage(lambda: rt.book.started(job, chunk, rt.settings.chunk_deadline),
                             f"start job {job} chunk {chunk}", "job state (redis)"):
            # The "done" mark is a cache: the records decide (a Redis restarted empty can take records
            # written before it while a mark written after it stands).
            if len(rt.recorded(job, [r[0] for r in refs], models)) >= len({r[0] for r in refs}) * len(models):
                logger.info("job %s chunk %s was already labelled: a duplicate message, skipped", job, chunk)
                return {"images": 0, "records": 0, "duplicate": True}
            logger.warning("job %s chunk %s is marked done but records of it are missing: labelling it again",
                           job, chunk)
        start = time.perf_counter()
        rt.take(job, chunk)
        try:
            images, records = rt.label(job, refs, models, chunk)
        finally:
            rt.drop(job, chunk)
        state = rt.through_outage(lambda: rt.book.chunk_done(job, chunk), f"finish job {job} chunk {chunk}",
                                  "job state (redis)")
        if state == "verifying" and rt.healer is not None:
            rt.healer.wake()  # the counters say the job is complete: verify it against the records now
    except (Retry, Reject):
        raise
    except Exception as exc:
        logger.debug("chunk failure", exc_info=True)
        payload = {"chunk": chunk, "refs": refs, "models": models}
        return _failed(self, exc, job, payload, len(refs) * len(models))
    seconds = time.perf_counter() - start
    if rt.metrics is not None:
        rt.metrics.chunks.inc()
    logger.info("job %s chunk %s: %d images, %d records in %.2fs", job, chunk, images, records, seconds)
    return {"images": images, "records": records, "seconds": round(seconds, 3)}


def label_one(self: Any, job: str, ref: list[Any], models: list[str], uploaded_at: float | None = None) -> dict[str, Any]:
    """Celery task (live queue): label one new object, batched with its neighbours on this worker."""
    from .objects import ObjectRef

    try:
        rt = runtime(getattr(self.request, "hostname", None))
        records = rt.batcher().submit(job, ObjectRef.from_json(ref), models).result()
    except (Retry, Reject):
        raise
    except Exception as exc:  # noqa: BLE001
        payload = {"chunk": live_chunk(ref[0], ref[2] if len(ref) > 2 else None), "refs": [ref], "models": models}
        return _failed(self, exc, job, payload, len(models))
    out: dict[str, Any] = {"uri": ref[0], "records": len(records)}
    if uploaded_at is not None:
        out["latency_s"] = round(time.time() - uploaded_at, 4)
    return out


def bind(app: Any) -> Any:
    """Bind the task bodies to the contract's names."""
    app.task(name=CHUNK_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)(label_chunk)
    app.task(name=LIVE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)(label_one)
    return app


# ------------------------------------------------------------------------- signals


def _start_or_exit(hostname: str | None) -> None:
    """Make the runtime (load the models) before consuming; a worker that cannot exits non-zero."""
    global _runtime_error
    try:
        runtime(hostname)
    except BaseException as exc:  # noqa: BLE001 - any failure here means this worker must not consume
        _runtime_error = str(exc) if isinstance(exc, UsageError) else f"{type(exc).__name__}: {exc}"
        line = f"labelq worker {hostname or ''}: cannot start, not consuming: {_runtime_error}".replace("\n", " ")
        logger.critical(line)
        print(line, file=sys.stderr, flush=True)
        os._exit(EXIT_NO_MODEL)


@signals.celeryd_after_setup.connect
def _preload_in_process(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """Solo/threads pools run tasks in this process: load models now, before consuming.

    After Celery set up logging (``worker_init`` comes before it, and start-up warnings would be lost).
    """
    pool = str(getattr(instance, "pool_cls", "")).lower()
    if "solo" in pool or "thread" in pool:
        _start_or_exit(str(sender) if sender else None)


@signals.worker_process_init.connect
def _preload_in_child(**_: Any) -> None:
    """Prefork: each child loads its own models after the fork; a child that cannot stops the whole
    worker (its parent), rather than letting the pool restart it forever."""
    from billiard.process import current_process

    if current_process().name != "MainProcess":
        try:
            runtime()
        except BaseException as exc:  # noqa: BLE001
            logger.critical("labelq worker child cannot start, stopping the worker: %s: %s", type(exc).__name__, exc)
            import signal

            os.kill(os.getppid(), signal.SIGTERM)
            os._exit(EXIT_NO_MODEL)


@signals.worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    s = load_settings()
    logger.info("worker %s ready: broker %s, models %s", getattr(sender, "hostname", "?"), redact(s.broker_url),
                ", ".join(s.models))


def _true_banner(app: Any) -> Any:
    """Celery's start-up banner and its "Connected to" line show kombu's ``redis://:**@host`` even for a URL
    without a password: show the broker URL as configured, its password (if any) redacted as labelq does."""
    from celery.apps.worker import Worker

    def shown(text: str) -> str:
        return text.replace(app.connection_for_write().as_uri(), redact(app.conf.broker_url))

    class LabelqWorker(Worker):  # type: ignore[misc]
        def startup_info(self, artlines: bool = True) -> str:
            return shown(super().startup_info(artlines))

    class ShownUrl(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if isinstance(record.args, tuple):
                record.args = tuple(shown(a) if isinstance(a, str) else a for a in record.args)
            return True

    app.Worker = app.subclass_with_self(LabelqWorker)
    logging.getLogger("celery.worker.consumer.connection").addFilter(ShownUrl())
    return app


app = _true_banner(bind(make_app(load_settings())))


@inspect_command()
def labelq_info(state: Any) -> dict[str, Any]:
    """Remote-control answer for `labelq ping` and `enqueue`: this worker's device, loaded models and the
    folder it may read file:// URIs from (LABELQ_LOCAL_ROOT; None: it refuses them)."""
    rt = _runtime
    if rt is None:
        root = load_settings().local_root
        return {"device": None, "models": [], "ready": False, "error": _runtime_error,
                "local_root": str(root) if root else None}
    models = {name: str(clf.device) for name, clf in rt.classifiers.items()}
    devices = sorted(set(models.values()))
    root = rt.settings.local_root
    return {"device": devices[0] if len(devices) == 1 else devices, "models": sorted(models), "ready": True,
            "local_root": str(root) if root else None, "health": rt.watch.state()}
