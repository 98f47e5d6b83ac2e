"""Decode fan-out across processes: bytes in, a model's uint8 pixels back through shared memory.

One process's decode threads share one GIL and one interpreter: enough for a CPU
worker, whose model takes most of the cores anyway, not for a GPU that labels
thousands of images a second. :class:`DecodePool` starts ``processes`` decode
processes (spawned, so no torch or CUDA state is inherited), each running the same
:func:`labelq.images.decode` + :func:`labelq.images.fit` as the threads do, so
the pixels are identical. Per geometry the pool owns one shared-memory array of
``slots`` images; a process writes an image's pixels into its slot and answers
with a few bytes, and the parent copies the slot out (one memcpy of ~150 KB)
and frees it. Image bytes go to the processes over pipes.

Failures stay per item: a decode error comes back as the same typed error the
threads raise, and a process that dies (a crash in a codec, the OOM killer)
fails only the image it was decoding, with a ``corrupt`` error; the images queued
behind it go to the other processes and a new process takes its place.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import pickle
import queue
import struct
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from . import errors
from .errors import Corrupt, LabelqError
from .images import Geometry, Limits, decode, fit

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<QI")  # request: sequence number, slot; then the image bytes
_IN_FLIGHT = 2  # requests queued per process: one decoding, one waiting, so none idles between images
_FAILED_STARTS = 3  # processes in a row that die before they are ready: the pool gives up (see PoolBroken)
_READY = b"R"


class PoolBroken(RuntimeError):
    """The decode processes cannot run here (they die on start); the caller decodes in threads instead."""


@dataclass(slots=True)
class _Request:
    seq: int
    data: bytes
    future: Future[tuple[list[np.ndarray], float]]
    slot: int = -1


@dataclass(slots=True)
class _Proc:
    process: Any
    conn: Connection
    in_flight: deque[_Request] = field(default_factory=deque)
    ready: bool = False  # it said so after attaching the shared memory; dying before that is a start failure


class DecodePool:
    """``processes`` decode processes for fixed geometries; :meth:`submit` never blocks.

    ``submit(data)`` returns a future of (one uint8 HxWx3 array per geometry, decode
    seconds), or raises the item's :class:`~labelq.errors.LabelqError`. Processes start
    on the first submit. Thread-safe.
    """

    def __init__(self, processes: int, limits: Limits, geometries: Sequence[Geometry], *, slots: int = 64,
                 draft: bool = True) -> None:
        if processes < 1:
            raise ValueError("a decode pool needs at least one process (LABELQ_DECODE_PROCESSES)")
        if not geometries:
            raise ValueError("a decode pool needs at least one geometry")
        self.processes = processes
        self.limits = limits
        self.geometries = list(geometries)
        self.draft = draft
        self.slots = max(slots, processes * _IN_FLIGHT)
        self._shapes = [(self.slots, *g.out_size, 3) for g in self.geometries]
        self._shm: list[shared_memory.SharedMemory] = []
        self._arrays: list[np.ndarray] = []
        self._procs: list[_Proc] = []
        self._free: list[int] = list(range(self.slots))
        self._backlog: deque[_Request] = deque()
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._started = False
        self._closed = False
        self.broken: str | None = None  # why the pool gave up, once it has
        self._failed_starts = 0
        self._receiver: threading.Thread | None = None
        self._wake_r, self._wake_w = mp.Pipe(duplex=False)
        self._ctx = mp.get_context("spawn")

    # ------------------------------------------------------------------ life

    def _start(self) -> None:
        for shape in self._shapes:
            shm = shared_memory.SharedMemory(create=True, size=int(np.prod(shape)))
            self._shm.append(shm)
            self._arrays.append(np.ndarray(shape, dtype=np.uint8, buffer=shm.buf))
        self._procs = [self._spawn() for _ in range(self.processes)]
        self._receiver = threading.Thread(target=self._receive, name="labelq-feed", daemon=True)
        self._receiver.start()
        self._started = True
        logger.info("decode pool: %d processes, %d shared slots for %d geometr%s", self.processes, self.slots,
                    len(self.geometries), "y" if len(self.geometries) == 1 else "ies")

    def _spawn(self) -> _Proc:
        parent, child = self._ctx.Pipe(duplex=True)
        spec = ([s.name for s in self._shm], self._shapes, self.limits, self.geometries, self.draft)
        process = self._ctx.Process(target=_serve, args=(child, spec), name="labelq-decode", daemon=True)
        process.start()
        child.close()
        return _Proc(process, parent)

    def close(self) -> None:
        """Stop the processes, fail what is still queued, free the shared memory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._backlog) + [r for p in self._procs for r in p.in_flight]
            self._backlog.clear()
            for p in self._procs:
                p.in_flight.clear()
        for req in pending:
            _fail(req, Corrupt("decode pool closed before this image was decoded"))
        if self._started:
            self._wake_w.send_bytes(b"x")
            if self._receiver is not None:
                self._receiver.join(timeout=5)
            for p in self._procs:
                try:
                    p.conn.send_bytes(b"")
                except OSError:
                    pass
            for p in self._procs:
                p.process.join(timeout=5)
                if p.process.is_alive():
                    p.process.kill()
                    p.process.join(timeout=5)
                p.conn.close()
            self._release()

    def _release(self) -> None:
        """Free the shared memory (the processes are gone or never started)."""
        for p in self._procs:
            if p.process.is_alive():
                p.process.kill()
        self._arrays.clear()
        for shm in self._shm:
            shm.close()
            shm.unlink()
        self._shm.clear()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ work

    def submit(self, data: bytes) -> Future[tuple[list[np.ndarray], float]]:
        """Queue one image's bytes; the future holds its pixels per geometry and the decode seconds."""
        req = _Request(next(self._seq), data, Future())
        with self._lock:
            if self._closed:
                raise RuntimeError("decode pool is closed")
            if self.broken:
                raise PoolBroken(self.broken)
            if not self._started:
                try:
                    self._start()
                except Exception as exc:  # no processes here (limits, sandbox): threads instead
                    self.broken = f"decode processes could not start: {type(exc).__name__}: {exc}"
                    self._release()
                    raise PoolBroken(self.broken) from exc
            self._backlog.append(req)
            self._dispatch()
        return req.future

    def _dispatch(self) -> None:
        """Hand backlog items to the least-busy processes while slots are free (lock held)."""
        while self._backlog and self._free:
            proc = min(self._procs, key=lambda p: len(p.in_flight))
            if len(proc.in_flight) >= _IN_FLIGHT:
                return
            req = self._backlog.popleft()
            req.slot = self._free.pop()
            proc.in_flight.append(req)
            try:
                proc.conn.send_bytes(_HEADER.pack(req.seq, req.slot) + req.data)
            except OSError:  # the process died; the receiver restarts it and re-queues its requests
                logger.debug("decode process pipe closed while sending", exc_info=True)

    def _receive(self) -> None:
        """One thread: results from every process, and the death of any of them."""
        while True:
            with self._lock:
                if self._closed:
                    return
                by_conn = {p.conn: p for p in self._procs}
                by_sentinel = {p.process.sentinel: p for p in self._procs}
            ready = wait([self._wake_r, *by_conn, *by_sentinel])
            for obj in ready:
                if obj is self._wake_r:
                    return
                if obj in by_conn:
                    proc = by_conn[obj]  # type: ignore[index]
                    try:
                        message = proc.conn.recv_bytes()
                    except (EOFError, OSError):
                        continue  # its sentinel follows
                    if message == _READY:
                        proc.ready = True
                        with self._lock:
                            self._failed_starts = 0
                        continue
                    self._done(proc, pickle.loads(message))
            for obj in ready:
                if obj in by_sentinel:
                    self._replace(by_sentinel[obj])  # type: ignore[index]

    def _done(self, proc: _Proc, message: tuple[int, int, float, str | None, str | None]) -> None:
        seq, slot, seconds, kind, text = message
        with self._lock:
            if not proc.in_flight or proc.in_flight[0].seq != seq:
                logger.warning("decode pool: unexpected answer %d from a decode process", seq)
                return
            req = proc.in_flight.popleft()
            req.data = b""
            pixels = [a[slot].copy() for a in self._arrays] if kind is None else []
            self._free.append(slot)
            self._dispatch()
        if kind is None:
            req.future.set_result((pixels, seconds))
        else:
            _fail(req, _error(kind, text or ""))

    def _replace(self, proc: _Proc) -> None:
        """A process died: fail the image it was decoding, re-queue the rest, start another."""
        with self._lock:
            if self._closed or proc not in self._procs:
                return
            proc.process.join(timeout=1)
            code = proc.process.exitcode
            proc.conn.close()
            requests = list(proc.in_flight)
            proc.in_flight.clear()
            for req in requests:
                self._free.append(req.slot)
            orphans: list[_Request] = []
            victim = requests[0] if requests and proc.ready else None  # a start failure is no image's fault
            if not proc.ready:
                self._failed_starts += 1
            if self._failed_starts >= _FAILED_STARTS:
                self.broken = (f"{self._failed_starts} decode processes in a row exited (code {code}) before they "
                               "were ready: is the program's entry point guarded by `if __name__ == '__main__':`?")
                orphans = requests + list(self._backlog)
                self._backlog.clear()
                self._procs.remove(proc)
            else:
                rest = requests[1:] if victim is not None else requests
                self._backlog.extendleft(reversed(rest))  # not the culprit: decode them elsewhere
                self._procs[self._procs.index(proc)] = self._spawn()
                self._dispatch()
        if self.broken:
            logger.error("decode pool disabled: %s", self.broken)
            for req in orphans:
                if not req.future.done():
                    req.future.set_exception(PoolBroken(self.broken))
            return
        logger.error("decode process %s died (exit code %s); starting another", proc.process.pid, code)
        if victim is not None:
            _fail(victim, Corrupt(f"the decode process crashed on this image (exit code {code})"))


def _fail(req: _Request, exc: LabelqError) -> None:
    if not req.future.done():
        req.future.set_exception(exc)


def _error(kind: str, text: str) -> LabelqError:
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, LabelqError):
        return cls(text)
    return Corrupt(text)


# ---------------------------------------------------------------------- the process side


def _serve(conn: Connection, spec: tuple[list[str], list[tuple[int, ...]], Limits, list[Geometry], bool]) -> None:
    """A decode process: read requests, decode + fit into the shared slots, answer per item."""
    names, shapes, limits, geometries, draft = spec
    shms = [shared_memory.SharedMemory(name=n) for n in names]
    arrays = [np.ndarray(s, dtype=np.uint8, buffer=m.buf) for s, m in zip(shapes, shms, strict=True)]
    inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def read() -> None:  # drain the pipe at once, so the parent's send never waits for a decode
        try:
            while True:
                message = conn.recv_bytes()
                inbox.put(message)
                if not message:
                    return
        except (EOFError, OSError):
            inbox.put(b"")

    threading.Thread(target=read, daemon=True).start()
    try:
        conn.send_bytes(_READY)
        while True:
            message = inbox.get()
            if not message:
                return
            seq, slot = _HEADER.unpack_from(message)
            data = message[_HEADER.size:]
            start = time.perf_counter()
            kind: str | None = None
            text: str | None = None
            try:
                image = decode(data, limits, draft=geometries if draft else ())
                for g, arr in zip(geometries, arrays, strict=True):
                    arr[slot] = fit(image, g)
            except LabelqError as exc:
                kind, text = type(exc).__name__, str(exc)
            except Exception as exc:  # noqa: BLE001 - per item, as the engine's threads do
                kind, text = "Corrupt", f"{type(exc).__name__}: {exc}"
            conn.send_bytes(pickle.dumps((seq, slot, time.perf_counter() - start, kind, text)))
    except (EOFError, OSError, KeyboardInterrupt):
        return
    finally:
        del arrays
        for m in shms:
            m.close()
