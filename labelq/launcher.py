"""`labelq worker`: one Celery worker process per device, pinned, supervised.

Each child is ``celery -A labelq.worker worker --pool threads --concurrency N`` (N =
``LABELQ_CHUNKS_IN_FLIGHT``, 2 by default; 1 runs ``--pool solo``) with its own node
name (``gpu0@host``, ``cpu@host``) and ``CUDA_VISIBLE_DEVICES`` set to its one GPU, so
it sees it as ``cuda:0``. Both pools run tasks in the worker process itself: CUDA is
initialised there and never in a process that forks, and the N task threads share
one copy of the models and one engine. SIGTERM/SIGINT are passed on: each child
finishes the chunks it holds (warm shutdown) and exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
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
    """Start one child per slot and wait; restart none (a supervisor above us does that).

    ``name`` replaces the node name prefix (``cpu``, ``gpu0``): several workers on one
    host need distinct names (``--name cpu2``; with several devices ``NAME-gpu0``, ...).
    """
    slots = plan(devices)
    if live:
        slots = [Slot(f"live-{s.name}", s.device, s.visible) for s in slots]
    if name:
        slots = [Slot(name if len(slots) == 1 else f"{name}-{s.name}", s.device, s.visible) for s in slots]
    children: list[tuple[Slot, subprocess.Popen[bytes]]] = []
    for slot in slots:
        env = dict(os.environ)
        env["LABELQ_DEVICE"] = slot.device
        env["LABELQ_WORKER_NAME"] = f"{slot.name}@{socket.gethostname()}"
        if slot.visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.visible
        if settings.metrics_port and len(slots) > 1:
            env["LABELQ_METRICS_PORT"] = str(settings.metrics_port + len(children))
        proc = subprocess.Popen(child_command(slot, settings, loglevel, live=live), env=env)
        children.append((slot, proc))
        logger.info("started worker %s (pid %d, device %s)", slot.name, proc.pid, slot.device)

    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for _, proc in children:
            if proc.poll() is None:
                proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    worst = 0
    while children:
        for slot, proc in list(children):
            code = proc.poll()
            if code is None:
                continue
            children.remove((slot, proc))
            if code != 0 and not stopping:
                logger.error("worker %s exited with %d", slot.name, code)
            worst = worst or code
        time.sleep(0.2)
    return worst
