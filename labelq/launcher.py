"""`labelq worker`: one Celery worker process per device, pinned, supervised.

Each child is ``celery -A labelq.worker worker --pool threads --concurrency N`` (N =
``LABELQ_CHUNKS_IN_FLIGHT``, 2 by default; 1 runs ``--pool solo``) with its own node
name (``gpu0@host``, ``cpu@host``) and ``CUDA_VISIBLE_DEVICES`` set to its one GPU, so
it sees it as ``cuda:0``. Both pools run tasks in the worker process itself: CUDA is
initialised there and never in a process that forks, and the N task threads share
one copy of the models and one engine. SIGTERM/SIGINT are passed on: each child
finishes the chunks it holds (warm shutdown) and exits.

A child that dies (SIGKILL, out of memory, a crash) is started again with backoff; its
chunks in hand go back to the broker (late acks) and are redelivered. A child that keeps
dying right after its start (exit 3: a model that does not load) is not restarted in a
tight loop: after ``LABELQ_WORKER_RESTARTS`` quick deaths the launcher exits non-zero with
the child's one-line reason.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from .config import Settings
from .errors import UsageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slot:
    name: str  # node name prefix: gpu0, cpu
    device: str  # LABELQ_DEVICE in the child
    visible: str | None  # CUDA_VISIBLE_DEVICES in the child (None: leave as is)


def count_gpus() -> int:
    """Visible CUDA devices, asked of nvidia-smi so this process never initialises CUDA."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def plan(devices: str, *, gpus: int | None = None) -> list[Slot]:
    """auto → one slot per GPU (or one cpu slot); cpu; or a list of GPU indices."""
    spec = devices.strip().lower()
    if spec == "cpu":
        return [Slot("cpu", "cpu", "")]
    if spec == "auto":
        n = count_gpus() if gpus is None else gpus
        if n == 0:
            return [Slot("cpu", "cpu", "")]
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(n)]
        return [Slot(f"gpu{i}", "cuda:0", i) for i in ids[:n]]
    try:
        ids = [str(int(part)) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--devices must be auto, cpu or GPU indices like 0,1 — not {devices!r}") from None
    if not ids:
        raise UsageError("--devices names no device")
    return [Slot(f"gpu{i}", "cuda:0", i) for i in ids]


def live_concurrency(settings: Settings) -> int:
    """Task threads of a live worker: twice the flush size, so batches can fill."""
    from .live import validate_batching

    concurrency = 2 * settings.max_batch_size
    validate_batching(settings.max_batch_size, settings.batch_timeout, concurrency)
    return concurrency


def child_command(slot: Slot, settings: Settings, loglevel: str, *, live: bool = False) -> list[str]:
    """Bulk: chunks_in_flight task threads (1: solo pool) on the bulk queue. Live: a threads pool on the live
    queue (one model copy, one batcher)."""
    if live:
        pool = ["--pool", "threads", "--concurrency", str(live_concurrency(settings))]
    elif settings.chunks_in_flight > 1:
        pool = ["--pool", "threads", "--concurrency", str(settings.chunks_in_flight)]
    else:
        pool = ["--pool", "solo"]
    return [
        sys.executable, "-m", "celery", "-A", "labelq.worker", "worker",
        *pool,
        "-n", f"{slot.name}@{socket.gethostname()}",
        "-Q", settings.live_queue if live else settings.queue,
        "--loglevel", loglevel,
        "--without-gossip", "--without-mingle",
    ]


def run_workers(
    devices: str, settings: Settings, *, loglevel: str = "INFO", name: str | None = None, live: bool = False
) -> int:
    """Start one child per slot and supervise them until SIGTERM/SIGINT (see :class:`Supervisor`).

    ``name`` replaces the node name prefix (``cpu``, ``gpu0``): several workers on one
    host need distinct names (``--name cpu2``; with several devices ``NAME-gpu0``, ...).
    """
    slots = plan(devices)
    if live:
        slots = [Slot(f"live-{s.name}", s.device, s.visible) for s in slots]
    if name:
        slots = [Slot(name if len(slots) == 1 else f"{name}-{s.name}", s.device, s.visible) for s in slots]
    host = socket.gethostname()
    children = []
    for i, slot in enumerate(slots):
        env = dict(os.environ)
        env["LABELQ_DEVICE"] = slot.device
        env["LABELQ_WORKER_NAME"] = f"{slot.name}@{host}"
        if slot.visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.visible
        if settings.metrics_port and len(slots) > 1:
            env["LABELQ_METRICS_PORT"] = str(settings.metrics_port + i)
        children.append(Child(slot, child_command(slot, settings, loglevel, live=live), env))
    return Supervisor(children, restarts=settings.worker_restarts, min_uptime=settings.worker_min_uptime).run()


RESTART_BACKOFF = (1.0, 60.0)  # seconds: first delay before restarting a child that died quickly, and the cap
REASON_PREFIX = "labelq worker"  # a child's one-line reason for exiting starts so (labelq.worker prints it)


@dataclass
class Child:
    """One device process: what starts it, and what happened to it."""

    slot: Slot
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0  # monotonic
    quick_deaths: int = 0  # deaths in a row within min_uptime of the start
    restart_at: float | None = None  # monotonic; None: not waiting to restart
    reason: str = ""  # the last one-line reason it printed
    code: int = 0
    pid: int = 0
    _reader: threading.Thread | None = None

    def start(self) -> None:
        self.reason = ""
        self.proc = subprocess.Popen(self.argv, env=self.env, stderr=subprocess.PIPE)
        self.started = time.monotonic()
        self.pid = self.proc.pid
        self.restart_at = None
        self._reader = threading.Thread(target=self._forward, args=(self.proc,), daemon=True,
                                        name=f"stderr-{self.slot.name}")
        self._reader.start()
        logger.info("started worker %s (pid %d, device %s)", self.slot.name, self.proc.pid, self.slot.device)

    def _forward(self, proc: subprocess.Popen[bytes]) -> None:
        """Pass the child's stderr on line by line, remembering its last one-line reason."""
        assert proc.stderr is not None
        out = getattr(sys.stderr, "buffer", None)
        for line in iter(proc.stderr.readline, b""):
            text = line.decode(errors="replace").strip()
            if text.startswith(REASON_PREFIX):
                self.reason = text
            try:
                if out is not None:
                    out.write(line)
                    out.flush()
            except (OSError, ValueError):  # our stderr is gone: keep draining so the child never blocks
                out = None

    def reap(self) -> int | None:
        """The exit code if it just exited (its stderr read to the end), else None."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is None:
            return None
        if self._reader is not None:
            self._reader.join(5)
        self.proc = None
        self.code = code
        return code


class Supervisor:
    """Keeps one process per device running: a child that dies is started again with backoff.

    A child that dies within ``min_uptime`` seconds of its start counts as a quick death;
    ``restarts`` quick deaths in a row (a model that does not load, a bad setting) stop the
    launcher with that child's exit code and its one-line reason, rather than restarting
    it in a tight loop. SIGTERM/SIGINT are passed on to every child and nothing restarts.
    """

    def __init__(self, children: list[Child], *, restarts: int, min_uptime: float) -> None:
        self.children = children
        self.restarts = restarts
        self.min_uptime = min_uptime
        self.stopping = False

    def stop(self, signum: int, _frame: object = None) -> None:
        self.stopping = True
        for child in self.children:
            child.restart_at = None
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signum)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        for child in self.children:
            child.start()
        worst = 0
        while any(c.proc is not None or c.restart_at is not None for c in self.children):
            now = time.monotonic()
            for child in self.children:
                if child.restart_at is not None and now >= child.restart_at and not self.stopping:
                    child.start()
                code = child.reap()
                if code is None:
                    continue
                if self.stopping:
                    worst = worst or code
                    continue
                gave_up = self._died(child, code)
                if gave_up is not None:
                    return gave_up
            time.sleep(0.2)
        return worst

    def _died(self, child: Child, code: int) -> int | None:
        """Schedule a restart; or, after too many quick deaths, stop the others and return the exit code."""
        lived = time.monotonic() - child.started
        child.quick_deaths = child.quick_deaths + 1 if lived < self.min_uptime else 0
        how = f"killed by signal {-code}" if code < 0 else f"exited with {code}"
        reason = f": {child.reason}" if child.reason else ""
        if child.quick_deaths > self.restarts or self.restarts == 0:
            line = (f"labelq worker: device process {child.slot.name} {how} {child.quick_deaths} times in a row within "
                    f"{self.min_uptime:g}s of its start; not restarting it{reason}")
            logger.error(line)
            print(line, file=sys.stderr, flush=True)
            self.stop(signal.SIGTERM)
            for other in self.children:
                if other.proc is not None:
                    try:
                        other.proc.wait(120)
                    except subprocess.TimeoutExpired:
                        other.proc.kill()
                    other.reap()
            return code if code > 0 else 1
        delay = min(RESTART_BACKOFF[1], RESTART_BACKOFF[0] * 2 ** max(0, child.quick_deaths - 1))
        delay *= 0.75 + random.random() / 2
        logger.error("worker %s (pid %s) %s after %.0fs%s; restarting it in %.1fs (quick deaths in a row: %d of %d)",
                     child.slot.name, child.pid, how, lived, reason, delay, child.quick_deaths, self.restarts)
        child.restart_at = time.monotonic() + delay
        return None
