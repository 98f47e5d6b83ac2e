"""Real labelq processes for end-to-end tests: workers, the Celery CLI, the producer.

Workers are configured only through ``LABELQ_*`` environment variables
(:func:`labelq_env`), exactly as a user would; readiness is read from the log
(``worker NAME ready``, logged by :mod:`labelq.worker` once models are loaded and
the consumer runs). A :class:`Procs` registry remembers everything a test started
and stops it at teardown, failed test or not: SIGTERM to the leader, then SIGKILL
to the group (see :class:`tests.support.procs.Proc`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.procs import Proc
from tests.support.redis import QUEUE

logger = logging.getLogger(__name__)

BIN = Path(sys.executable).parent
LABELQ = str(BIN / "labelq")
HOSTNAME = socket.gethostname()
READY = re.compile(r"worker (\S+) ready")
# celery.worker.strategy / celery.app.trace lines at INFO
RECEIVED = re.compile(r"Task labelq\.label_chunk\[([^\]]+)\] received")
SUCCEEDED = re.compile(r"Task labelq\.label_chunk\[([^\]]+)\] succeeded")
# labelq.worker, once a chunk's records are all written
CHUNK_DONE = re.compile(r"job (\S+) chunk (\S+): (\d+) images, (\d+) records in ([\d.]+)s")

# Keep each process to one core's worth of threads: the test machine is small.
THREAD_LIMITS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def labelq_env(
    *,
    broker: str,
    models: Sequence[str | Path] = (),
    s3: str | None = None,
    results: str | None = None,
    redis: str | None = None,
    base: Mapping[str, str] | None = None,
    **settings: Any,
) -> dict[str, str]:
    """The environment of a labelq process: this one's (minus LABELQ_*) plus settings.

    ``settings`` are more knobs by field name: ``visibility_timeout=10`` becomes
    ``LABELQ_VISIBILITY_TIMEOUT=10``. AWS credentials and offline hub variables
    come from the test session's environment (see tests/conftest.py).
    """
    env = {k: v for k, v in (base if base is not None else os.environ).items() if not k.startswith("LABELQ_")}
    env.update(THREAD_LIMITS)
    env["PYTHONUNBUFFERED"] = "1"
    env["LABELQ_BROKER_URL"] = broker
    if models:
        env["LABELQ_MODELS"] = ",".join(str(m) for m in models)
    if s3:
        env["LABELQ_S3_ENDPOINT_URL"] = s3
    if results:
        env["LABELQ_RESULTS_URL"] = results
    if redis:
        env["LABELQ_REDIS_URL"] = redis
    for name, value in settings.items():
        if value is not None:
            env["LABELQ_" + name.upper()] = str(value)
    return env


class Worker(Proc):
    """A labelq worker, started one of three ways:

    * ``labelq worker --devices cpu``: node ``cpu@host`` (the default);
    * ``labelq worker --devices cpu --name NAME`` (``name``): node ``NAME@host``;
    * ``celery -A labelq.worker worker --pool solo -n NODE@%h`` (``node``): the Celery CLI.

    Two workers on one host need distinct node names.
    """

    def __init__(self, env: Mapping[str, str], *, log: Path, node: str | None = None, name: str | None = None,
                 loglevel: str = "INFO") -> None:
        if node is not None:
            argv = [
                sys.executable, "-m", "celery", "-A", "labelq.worker", "worker", "--pool", "solo",
                "-n", f"{node}@%h", "-Q", QUEUE, "--loglevel", loglevel, "--without-gossip", "--without-mingle",
            ]
            self.node = f"{node}@{HOSTNAME}"
        else:
            argv = [LABELQ, "worker", "--devices", "cpu", "--loglevel", loglevel]
            if name is not None:
                argv += ["--name", name]
            self.node = f"{name or 'cpu'}@{HOSTNAME}"
        super().__init__(argv, env=env, log=log)

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Wait until the latest start logged ``worker NODE ready``; the seconds it took."""
        start = time.monotonic()
        self.wait_for(
            lambda t: any(m == self.node for m in READY.findall(t)), timeout=timeout, what=f"'worker {self.node} ready'"
        )
        return time.monotonic() - start

    def start_ready(self, timeout: float = 120.0) -> Worker:
        self.start()
        self.wait_ready(timeout)
        return self

    # ------------------------------------------------------------------ what the log says

    def received(self, *, since_start: bool = True) -> list[str]:
        return RECEIVED.findall(self.text(since_start=since_start))

    def succeeded(self, *, since_start: bool = True) -> list[str]:
        return SUCCEEDED.findall(self.text(since_start=since_start))

    def in_flight(self) -> list[str]:
        """Task ids this start received and has not finished (solo pool: at most one runs)."""
        done = set(self.succeeded())
        return [t for t in self.received() if t not in done]

    def chunks_done(self, *, since_start: bool = False) -> list[tuple[str, str, int, int]]:
        """(job, chunk id, images, records) of every chunk this worker finished."""
        return [(j, c, int(i), int(r)) for j, c, i, r, _ in CHUNK_DONE.findall(self.text(since_start=since_start))]


class Procs:
    """Everything a test (or module) started; :meth:`close` stops it all, in reverse order."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.items: list[Proc] = []

    def worker(self, env: Mapping[str, str], *, node: str | None = None, name: str | None = None,
               start: bool = True, ready: bool = True, timeout: float = 120.0) -> Worker:
        """A worker (see :class:`Worker` for ``node`` and ``name``), started and ready unless told otherwise."""
        label = node or name or "cpu"
        w = Worker(env, log=self.folder / f"worker-{label}-{len(self.items)}.log", node=node, name=name)
        self.items.append(w)
        if start:
            w.start()
            if ready:
                w.wait_ready(timeout)
        return w

    def workers(self, env: Mapping[str, str], nodes: Sequence[str | None], timeout: float = 180.0, *,
                names: Sequence[str | None] | None = None) -> list[Worker]:
        """Start several workers at once, then wait for each (their model loads overlap).

        ``nodes`` are Celery CLI node names (None: the launcher); ``names`` launcher names.
        """
        names = list(names) if names is not None else [None] * len(nodes)
        out = [self.worker(env, node=n, name=m, ready=False) for n, m in zip(nodes, names, strict=True)]
        for w in out:
            w.wait_ready(timeout)
        return out

    def spawn(self, args: Sequence[str], env: Mapping[str, str], *, name: str = "labelq") -> Proc:
        """Start ``labelq ARGS`` in the background (e.g. a producer to kill)."""
        p = Proc([LABELQ, *args], env=env, log=self.folder / f"{name}-{len(self.items)}.log")
        self.items.append(p)
        return p.start()

    def close(self, timeout: float = 20.0) -> None:
        """SIGTERM every leader at once, wait for all, SIGKILL the groups still there after ``timeout``."""
        running = [p for p in reversed(self.items) if p.group_alive()]
        for p in running:
            p.signal(signal.SIGTERM)
            p.signal(signal.SIGCONT, group=True)
        deadline = time.monotonic() + timeout
        for p in running:
            try:
                if not p.wait_gone(max(0.0, deadline - time.monotonic())):
                    logger.warning("%s ignored SIGTERM for %.0fs; killing its group", p, timeout)
                    p.signal(signal.SIGKILL, group=True)
                    p.wait_gone(10)
                if p.popen is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.popen.wait(5)
            except Exception:  # clean-up goes on for the others
                logger.exception("could not stop %s", p)

    def logs(self) -> str:
        """Every log, for a failure message."""
        return "\n".join(f"==== {p.log.name}\n{p.tail(60)}" for p in self.items)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def check(self) -> Result:
        if self.returncode != 0:
            raise AssertionError(
                f"labelq {' '.join(self.args)} exited {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
            )
        return self


def cli(args: Sequence[str], env: Mapping[str, str], *, timeout: float = 120.0, cwd: Path | None = None) -> Result:
    """Run ``labelq ARGS`` to completion in its own process group (killed whole on timeout)."""
    start = time.monotonic()
    p = subprocess.Popen(
        [LABELQ, *args],
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise AssertionError(
            f"labelq {' '.join(args)} still running after {timeout:.0f}s\nstdout:\n{out.decode(errors='replace')}\n"
            f"stderr:\n{err.decode(errors='replace')[-4000:]}"
        ) from None
    return Result(
        list(args), p.returncode, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - start
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def by_key(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(uri, model) → records (a list, so duplicates show)."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rec in records:
        out.setdefault((rec["uri"], rec["model"]), []).append(rec)
    return out


def chunk_executions(workers: Iterable[Worker], job: str) -> dict[str, int]:
    """Chunk id → how many times any of these workers finished it (from their logs)."""
    counts: dict[str, int] = {}
    for w in workers:
        for j, chunk, _, _ in w.chunks_done():
            if j == job:
                counts[chunk] = counts.get(chunk, 0) + 1
    return counts
