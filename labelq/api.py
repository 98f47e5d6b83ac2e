"""labelq as a Python library: label in this process, or drive distributed jobs.

- :func:`label` runs the engine of ``labelq run`` in this process and yields each
  :class:`~labelq.records.Record` as it is made (and written, when ``db`` names a result table);
  the result also has ``to_arrow()``, ``to_pandas()`` and ``to_list()``. It takes whatever a
  notebook has at hand: a source (folder, ``s3://`` prefix, manifest, S3 Inventory report, one
  image), a list of paths or URIs, or images already in memory (PIL images or encoded bytes).
- :class:`Client` does what ``labelq enqueue/status/retry/export/jobs`` do for distributed jobs.

Errors are the exceptions of :mod:`labelq.errors`: :class:`~labelq.errors.UsageError` for what was
asked (a missing source, an unknown model, a service down), :class:`~labelq.errors.JobFailed` and
:class:`~labelq.errors.JobStalled` from :meth:`Client.wait`. Importing this module is cheap: torch
loads when :func:`label` starts labelling, not before.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Settings, load_settings
from .errors import JobFailed, JobStalled, UsageError
from .objects import ObjectRef, Stores, file_uri, local_etag
from .records import Record, arrow_schema

if TYPE_CHECKING:
    import pandas
    import pyarrow

    from .jobs import JobInfo
    from .services import Services

logger = logging.getLogger(__name__)

VERIFY_AFTER_S = 3.0  # a job left `verifying` this long while we wait is verified here (its source is readable here)
MEMORY_SCHEME = "memory://"  # the URI of an image handed in as bytes or a PIL image: memory://NAME

__all__ = ["Client", "Labels", "label"]


class Labels:
    """The records of :func:`label` (or :meth:`Client.export`): iterate them as they come, or collect
    them once as a table. A ``Labels`` is consumed once, like a generator."""

    def __init__(self, records: Iterator[Record]) -> None:
        self._records = records

    def __iter__(self) -> Iterator[Record]:
        return self._records

    def __next__(self) -> Record:
        return next(self._records)

    def to_list(self) -> list[Record]:
        return list(self._records)

    def to_arrow(self) -> pyarrow.Table:
        """Every (remaining) record as an Arrow table with the export's columns."""
        import pyarrow as pa

        from .records import FIELDS

        rows = [rec.to_dict() for rec in self._records]
        return pa.Table.from_pylist([{k: row.get(k) for k in FIELDS} for row in rows], schema=arrow_schema())

    def to_pandas(self) -> pandas.DataFrame:
        """Every (remaining) record as a pandas DataFrame (needs pandas)."""
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise UsageError("to_pandas() needs pandas: pip install pandas (or use to_arrow())") from None
        return self.to_arrow().to_pandas()


# ----------------------------------------------------------------------------- in this process


def label(
    source: Any,
    *,
    models: Sequence[str] | str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    db: str | None = None,
    job: str | None = None,
    force: bool = False,
    settings: Settings | None = None,
    **options: Any,
) -> Labels:
    """Label images in this process; records come as the batches finish.

    ``source``: a source text or path (a folder, ``s3://bucket/prefix``, a manifest, an S3 Inventory
    ``manifest.json``, one image file), or an iterable whose items are paths, URIs (``s3://``,
    ``file://``), PIL images, encoded image bytes, or ``(name, image_or_bytes)`` pairs (a single PIL
    image or bytes object works too). In-memory images get the URI ``memory://NAME`` (NAME: the name
    given, else their position).

    ``models``: hub ids or local folders (default ``LABELQ_MODELS``). ``db``: a result table URL
    (``sqlite:///labels.db``, ``postgresql://…``) to write the records to and to skip objects already
    labelled there (``force`` relabels); without it nothing is stored. ``options``: any other setting
    by its field name (``top_k=3``, ``max_pixels=…``); ``settings`` replaces the environment's.

    Nothing heavy happens until the result is iterated; bad images become error records, as in
    ``labelq run``. A bad source or model raises :class:`~labelq.errors.UsageError` on the first
    ``next()``.
    """
    if isinstance(models, str):
        models = [models]
    overrides = {"models": list(models) if models else None, "batch_size": batch_size, "device": device, **options}
    if settings is None:
        settings = load_settings(**overrides)
    else:
        clean = {k: v for k, v in overrides.items() if v is not None}
        settings = settings.model_copy(update=clean) if clean else settings
    return Labels(_label(source, settings, db=db, job=job, force=force))


def _label(source: Any, settings: Settings, *, db: str | None, job: str | None, force: bool) -> Iterator[Record]:
    from .embedded import skip_done_keeping
    from .engine import Engine
    from .models import check_model, load_classifier

    refs, blobs, job_name, root = _refs(source, settings)
    job = job or job_name
    for name in settings.models:
        check_model(name)  # one line per model that cannot be had, before torch loads
    store = _open_table(db, settings) if db else None
    try:
        classifiers = [load_classifier(name, settings) for name in settings.models]
        names = [c.name for c in classifiers]
        revisions = {c.name: getattr(c, "revision", None) for c in classifiers}
        stores = _MemoryFirst(Stores(settings, local_root=root), blobs)
        kept: list[Record] = []

        def keep(done: Sequence[Record]) -> None:
            kept.extend(rec if rec.job == job else replace(rec, job=job) for rec in done)

        todo: Iterable[ObjectRef] = refs
        if store is not None and not force:
            todo = skip_done_keeping(refs, store, names, revisions, keep)
        with Engine(classifiers, stores, settings, worker="api") as engine:
            for records in engine.run(todo, job=job):
                if kept:  # records of objects already done: re-filed under this job, handed back first
                    done, kept[:] = list(kept), []
                    if store is not None:
                        store.write(done)
                    yield from done
                if store is not None:
                    store.write(records)
                yield from records
            if kept:
                if store is not None:
                    store.write(kept)
                yield from kept
    finally:
        if store is not None:
            store.close()


def _open_table(url: str, settings: Settings) -> Any:
    from .results import open_store

    return open_store(url, settings=settings)


class _MemoryFirst:
    """The engine's store: in-memory images by their ``memory://`` URI, everything else from the stores."""

    def __init__(self, stores: Stores, blobs: dict[str, bytes]) -> None:
        self.stores = stores
        self.settings = stores.settings
        self.blobs = blobs

    def fetch(self, ref: ObjectRef) -> bytes:
        if ref.uri.startswith(MEMORY_SCHEME):
            return self.blobs.pop(ref.uri)  # fetched once: the engine holds the bytes from here
        return self.stores.fetch(ref)

    def nearby(self, uri: str) -> bool:
        return uri.startswith(MEMORY_SCHEME) or self.stores.nearby(uri)


def _refs(source: Any, settings: Settings) -> tuple[Iterator[ObjectRef], dict[str, bytes], str, Path | None]:
    """What to label: refs, the in-memory images by URI, a job name and the local root for files."""
    from .embedded import default_job, local_root_for
    from .jobs import new_job_id
    from .sources import iter_source, parse_source

    if isinstance(source, str | os.PathLike):
        parsed = parse_source(os.fspath(source), suffixes=settings.suffixes)
        stores = Stores(settings, local_root=local_root_for(parsed, settings))
        return iter_source(parsed, stores), {}, default_job(parsed), local_root_for(parsed, settings)
    if _is_image(source) or isinstance(source, bytes | bytearray | memoryview):
        source = [source]
    if not isinstance(source, Iterable):
        raise UsageError(f"cannot label a {type(source).__name__}: give a source (folder, s3://…, manifest), "
                         "or a list of paths, URIs, PIL images or image bytes")
    blobs: dict[str, bytes] = {}

    def refs() -> Iterator[ObjectRef]:
        for position, item in enumerate(source):
            name, value = item if isinstance(item, tuple) and len(item) == 2 else (str(position), item)
            if isinstance(value, str | os.PathLike) and not isinstance(item, tuple):
                yield _ref_of(os.fspath(value))
                continue
            uri = MEMORY_SCHEME + str(name)
            if uri in blobs:
                raise UsageError(f"two images named {name!r}: names of in-memory images must differ")
            blobs[uri] = _encoded(value, name)
            yield ObjectRef(uri, len(blobs[uri]), None)

    # Files a list names are read wherever they are (the caller named them), as with a manifest.
    return refs(), blobs, new_job_id(), Path(os.path.abspath(os.sep))


def _ref_of(text: str) -> ObjectRef:
    if "://" in text:
        return ObjectRef(text)
    path = Path(os.path.abspath(text))
    try:
        return ObjectRef(file_uri(path), path.stat().st_size, local_etag(path.stat()))
    except OSError:
        return ObjectRef(file_uri(path))  # fetching it says not_found / access_denied


def _is_image(value: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(value, Image.Image)


def _encoded(value: Any, name: Any) -> bytes:
    """Bytes the engine decodes: encoded image bytes as given; a PIL image as a fast lossless PNG."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if _is_image(value):
        buf = io.BytesIO()
        image = value if value.mode in ("RGB", "RGBA", "L", "LA", "P", "I;16", "1") else value.convert("RGB")
        image.save(buf, format="PNG", compress_level=1)
        return buf.getvalue()
    raise UsageError(f"item {name!r} is a {type(value).__name__}: give a path, a URI, a PIL image or image bytes")


# ----------------------------------------------------------------------------- distributed jobs


class Client:
    """Distributed jobs from Python: what ``labelq enqueue/status/wait/retry/export/jobs`` do.

    Connections come from the same settings as the CLI (``LABELQ_BROKER_URL``, ``LABELQ_REDIS_URL``,
    ``LABELQ_RESULTS_URL``); the arguments override them. Workers are started as usual
    (``labelq worker``). Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        broker_url: str | None = None,
        redis_url: str | None = None,
        results_url: str | None = None,
        *,
        settings: Settings | None = None,
        services: Services | None = None,
        **options: Any,
    ) -> None:
        overrides = {"broker_url": broker_url, "redis_url": redis_url, "results_url": results_url, **options}
        if services is not None:  # the CLI hands in what it opened
            self.settings = services.settings
        elif settings is None:
            self.settings = load_settings(**overrides)
        else:
            clean = {k: v for k, v in overrides.items() if v is not None}
            self.settings = settings.model_copy(update=clean) if clean else settings
        if services is None:
            from .services import open_services

            services = open_services(self.settings)
        self.services = services
        self._background: list[threading.Thread] = []

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Let any listing still running in this process finish, then close the connections."""
        for thread in self._background:
            thread.join()
        self.services.close()

    def enqueue(
        self,
        source: str | os.PathLike[str],
        *,
        job: str | None = None,
        models: Sequence[str] | str | None = None,
        chunk_size: int | None = None,
        force: bool = False,
    ) -> str:
        """List ``source`` and queue its images; returns the job id (``job``, or a new one).

        The listing runs until at most ``LABELQ_MAX_QUEUED_CHUNKS`` chunks wait in the broker; the rest
        goes on in a thread of this process as the workers drain the queue (:meth:`close` and
        :meth:`wait` let it finish). Enqueueing the same ``job`` again resumes its listing.
        """
        from .hub import check_model
        from .jobs import new_job_id
        from .producer import QueueFull
        from .producer import enqueue as do_enqueue

        if isinstance(models, str):
            models = [models]
        settings = self.settings.model_copy(update={k: v for k, v in
                                                    {"models": list(models) if models else None,
                                                     "chunk_size": chunk_size}.items() if v is not None})
        for name in settings.models:
            check_model(name)
        job = job or new_job_id()
        services = self.services
        text = os.fspath(source)
        try:
            result = do_enqueue(text, settings, app=services.app, book=services.book, store=services.records,
                                job=job, force=force, wait_for_room=False)
            return result.job
        except QueueFull:
            pass

        def go_on() -> None:
            try:
                do_enqueue(text, settings, app=services.app, book=services.book, store=services.records, job=job,
                           force=force, wait_for_room=True)
            except Exception:
                logger.exception("listing of job %s stopped; enqueue the same job again to resume it", job)

        thread = threading.Thread(target=go_on, name=f"labelq-producer-{job}", daemon=True)
        thread.start()
        self._background.append(thread)
        return job

    def status(self, job: str) -> JobInfo:
        """Where the job stands (state, totals, counts by error kind); UsageError when there is no such job."""
        return self.services.job(job)

    def jobs(self, limit: int = 50) -> list[JobInfo]:
        """Recent jobs, newest first."""
        return self.services.book.jobs(limit)

    def wait(
        self,
        job: str,
        *,
        timeout: float | None = None,
        progress: Callable[[JobInfo], None] | None = None,
        poll: float = 1.0,
        stall_timeout: float | None = None,
    ) -> JobInfo:
        """Block until the job is done; returns its info. ``labelq enqueue --wait`` and ``status --follow`` are this.

        It wakes on the job's events (a chunk done or dead-lettered, the listing over, the verification; see
        :mod:`labelq.job_events`), and reads the job every ``poll`` seconds besides (progress, and a lost
        event costs at most that). ``progress`` is called with the job's info at every wake-up. A job left ``verifying`` (its counters say
        complete; no worker has checked its records against the source yet, e.g. none can read the source) is
        verified from this process after VERIFY_AFTER_S. Raises :class:`~labelq.errors.JobFailed` when chunks were
        dead-lettered (``retry`` runs them again), :class:`~labelq.errors.JobStalled` when nothing moved for
        ``stall_timeout`` seconds (default ``LABELQ_STALL_TIMEOUT``: is a worker running?), and
        :class:`TimeoutError` after ``timeout``.
        """
        from .job_events import JobEvents

        book = self.services.book
        self.status(job)  # UsageError when there is no such job
        with JobEvents(book.redis, job) as events:  # subscribed before the first read: no event falls between
            return self._wait(job, events, timeout=timeout, progress=progress, poll=poll, stall_timeout=stall_timeout)

    def _wait(self, job: str, events: Any, *, timeout: float | None, progress: Callable[[JobInfo], None] | None,
              poll: float, stall_timeout: float | None) -> JobInfo:
        book = self.services.book
        stall = self.settings.stall_timeout if stall_timeout is None else stall_timeout
        start = moved_at = time.monotonic()
        last: tuple[Any, ...] | None = None
        verifying_since: float | None = None
        while True:
            try:
                info = book.info(job)
            except Exception as exc:  # noqa: BLE001 - Redis went away while waiting
                raise UsageError(f"lost the job Redis while waiting for job {job}: {type(exc).__name__}: {exc}; "
                                 f"`labelq status {job}` shows it once Redis is back") from None
            if info is None:
                raise UsageError(f"job {job} disappeared (expired, or Redis lost its data)")
            if progress is not None:
                progress(info)
            if info.done:
                if info.state == "failed":
                    raise JobFailed(info)
                return info
            if info.state != "verifying":
                verifying_since = None
            elif verifying_since is None:
                verifying_since = time.monotonic()
            elif time.monotonic() - verifying_since > VERIFY_AFTER_S:
                verifying_since = None
                self._verify(job)
                continue
            now = (info.processed, info.dead, info.chunks_done, info.listed, book.oldest_waiting()[1])
            if now != last:
                moved_at, last = time.monotonic(), now
            elif time.monotonic() - moved_at > stall and not any(t.is_alive() for t in self._background):
                raise JobStalled(info, stall)
            if timeout is not None and time.monotonic() - start > timeout:
                raise TimeoutError(f"job {job} not done after {timeout:g}s ({info.processed} records so far)")
            nap = poll
            if verifying_since is not None:  # wake to verify from here when no worker did
                nap = min(nap, max(0.05, verifying_since + VERIFY_AFTER_S - time.monotonic() + 0.01))
            if timeout is not None:
                nap = min(nap, max(0.05, start + timeout - time.monotonic() + 0.01))
            events.wait(nap)

    def _verify(self, job: str) -> None:
        """Check a job against its records and source from here (labelq.heal.verify); the workers' heal may
        do it instead, so a failure is only logged."""
        from .heal import verify

        try:
            verify(job, self.settings, app=self.services.app, book=self.services.book, store=self.services.records)
        except Exception as exc:  # noqa: BLE001
            logger.debug("verify %s: %s", job, exc)

    def retry(self, job: str) -> int:
        """Re-enqueue the job's dead-lettered chunks and every object whose records are missing or failed with a
        retryable kind, as the record store says; returns how many objects."""
        from .producer import retry as do_retry

        return do_retry(job, self.settings, app=self.services.app, book=self.services.book,
                        store=self.services.records)

    def export(self, job: str) -> Labels:
        """The job's records, one per (object, model): iterate, or ``.to_arrow()`` / ``.to_pandas()``."""
        self.status(job)
        return Labels(iter(self.services.job_records(job)))
