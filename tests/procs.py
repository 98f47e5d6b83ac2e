"""Real labelq processes for end-to-end tests: workers, the Celery CLI, the producer.

Every process runs in its own session, so its whole process group (``labelq
worker`` is a launcher with one Celery child per device) can be signalled at
once, and writes stdout and stderr to a log file that the test reads back.
A :class:`Procs` registry remembers everything a test started and stops it at
teardown, failed test or not: SIGTERM to the leader, then SIGKILL to the group.

Workers are configured only through ``LABELQ_*`` environment variables
(:func:`labelq_env`), exactly as a user would; readiness is read from the log
(``worker NAME ready``, logged by :mod:`labelq.worker` once models are loaded and
the consumer runs). Helpers at the bottom read the Redis broker's queue and its
``unacked`` hash, so tests can count the messages a producer published and see
which chunk a worker holds.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import glob
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BIN = Path(sys.executable).parent
LABELQ = str(BIN / "labelq")
HOSTNAME = socket.gethostname()
QUEUE = "labelq"
READY = re.compile(r"worker (\S+) ready")
# celery.worker.strategy / celery.app.trace lines at INFO
RECEIVED = re.compile(r"Task labelq\.label_chunk\[([^\]]+)\] received")
SUCCEEDED = re.compile(r"Task labelq\.label_chunk\[([^\]]+)\] succeeded")
# labelq.worker, once a chunk's records are all written
CHUNK_DONE = re.compile(r"job (\S+) chunk (\S+): (\d+) images, (\d+) records in ([\d.]+)s")

# Keep each process to one core's worth of threads: the test machine is small.
THREAD_LIMITS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


_STARTED: set[int] = set()  # process groups this test session started


@atexit.register
def _kill_leftovers() -> None:
    """A safety net for an interrupted session: no process group we started outlives it."""
    for pgid in _STARTED:
        if group_members(pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)


class ProcError(RuntimeError):
    """A test process did not start, answer or stop in time."""


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


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(Path(stat).parent.name))
    return members


class Proc:
    """One command in its own process group, output appended to ``log``; restartable."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str], log: Path, cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.log = log
        self.cwd = cwd or log.parent
        self.popen: subprocess.Popen[bytes] | None = None
        self.offset = 0  # log size when the latest start began
        self.starts = 0

    # ------------------------------------------------------------------ life

    def start(self) -> Proc:
        if self.alive():
            raise ProcError(f"{self} is already running")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        self.starts += 1
        _STARTED.add(self.popen.pid)
        logger.info("started %s (pid %d), log %s", self, self.popen.pid, self.log)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, "not started"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def group_alive(self) -> bool:
        if self.popen is None:
            return False
        self.popen.poll()
        return bool(group_members(self.popen.pid))

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def signal(self, sig: int, *, group: bool = False) -> None:
        """Send ``sig`` to the leader only (the launcher forwards it) or to the whole group."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.popen.pid, sig)
            else:
                self.popen.send_signal(sig)

    def wait_gone(self, timeout: float) -> bool:
        """Wait until every process of the group has exited; whether they did."""
        deadline = time.monotonic() + timeout
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.group_alive()

    def kill(self) -> None:
        """SIGKILL the whole group at once (launcher and worker), as a machine loss would."""
        self.signal(signal.SIGKILL, group=True)
        if not self.wait_gone(15):
            raise ProcError(f"{self} survived SIGKILL")
        if self.popen is not None:
            self.popen.wait(5)

    def terminate(self, timeout: float = 60.0) -> int | None:
        """SIGTERM to the leader and wait for the group to exit on its own; its exit code."""
        self.signal(signal.SIGTERM)
        if not self.wait_gone(timeout):
            raise ProcError(f"{self} still running {timeout:.0f}s after SIGTERM\n{self.tail()}")
        return self.returncode()

    def stop(self, timeout: float = 20.0) -> None:
        """Clean-up: SIGTERM the leader, then SIGKILL the group after ``timeout``. Idempotent."""
        if not self.group_alive():
            return
        self.signal(signal.SIGTERM)
        self.signal(signal.SIGCONT, group=True)  # a stopped (SIGSTOP) process acts on SIGTERM only once continued
        if not self.wait_gone(timeout):
            logger.warning("%s ignored SIGTERM for %.0fs; killing its group", self, timeout)
            self.signal(signal.SIGKILL, group=True)
            self.wait_gone(10)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)

    def wait(self, timeout: float) -> int:
        """Wait for the leader to exit; its exit code."""
        assert self.popen is not None
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ProcError(f"{self} did not exit in {timeout:.0f}s\n{self.tail()}") from None

    # ------------------------------------------------------------------ log

    def text(self, *, since_start: bool = False) -> str:
        """The log (all of it, or what the latest start wrote)."""
        if not self.log.exists():
            return ""
        with open(self.log, "rb") as f:
            if since_start:
                f.seek(self.offset)
            return f.read().decode("utf-8", errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:]) or "(empty log)"

    def wait_for(self, check: Callable[[str], Any], *, timeout: float, what: str, since_start: bool = True) -> Any:
        """Poll the log until ``check(text)`` is truthy; fail early if the process dies."""
        deadline = time.monotonic() + timeout
        while True:
            found = check(self.text(since_start=since_start))
            if found:
                return found
            if not self.alive():
                raise ProcError(f"{self} exited ({self.returncode()}) before {what}\n{self.tail()}")
            if time.monotonic() > deadline:
                raise ProcError(f"{self}: no {what} after {timeout:.0f}s\n{self.tail()}")
            time.sleep(0.1)

    def __str__(self) -> str:
        return " ".join(Path(self.argv[0]).name if i == 0 else a for i, a in enumerate(self.argv[:6]))


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


# ------------------------------------------------------------------ the Redis broker


def _decode_message(raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """A kombu Redis-transport message (JSON text or already a dict) with its Celery body decoded."""
    msg = dict(raw) if isinstance(raw, dict) else json.loads(raw)
    body = msg["body"]
    if msg.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    msg["decoded"] = json.loads(body) if msg.get("content-type") == "application/json" else None
    return msg


@dataclass(frozen=True)
class Chunk:
    """A ``label_chunk`` task as published: its task id, job, refs, models and chunk id."""

    task_id: str
    job: str
    uris: tuple[str, ...]
    models: tuple[str, ...]
    chunk: str | None

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> Chunk:
        args = msg["decoded"][0]
        job, refs, models = args[0], args[1], args[2]
        chunk = args[3] if len(args) > 3 else None
        return cls(msg["headers"]["id"], job, tuple(r[0] for r in refs), tuple(models), chunk)


def queue_keys(client: Any, queue: str = QUEUE) -> list[str]:
    """The Redis lists of a kombu queue: the plain one and one per priority step."""
    names = [queue]
    for key in client.scan_iter(match=queue + "\x06\x16*"):
        names.append(key.decode() if isinstance(key, bytes) else key)
    return names


def queue_length(client: Any, queue: str = QUEUE) -> int:
    """Messages waiting in the queue, over all its priority lists (LLEN of each)."""
    return sum(int(client.llen(k)) for k in queue_keys(client, queue))


def queued_chunks(client: Any, queue: str = QUEUE) -> list[Chunk]:
    """Every label_chunk message waiting in the queue, decoded (LRANGE: no consumer is disturbed)."""
    out = []
    for key in queue_keys(client, queue):
        for raw in client.lrange(key, 0, -1):
            out.append(Chunk.from_message(_decode_message(raw)))
    return out


def unacked_chunks(client: Any) -> dict[str, Chunk]:
    """Task id → chunk of every message delivered to a worker and not yet acknowledged.

    kombu keeps them in the ``unacked`` hash (delivery tag → ``[message, exchange, routing key]``)
    until the ack, and puts them back on the queue after the visibility timeout.
    """
    out = {}
    for raw in client.hvals("unacked"):
        msg = _decode_message(json.loads(raw)[0])
        if msg["decoded"] is not None:
            chunk = Chunk.from_message(msg)
            out[chunk.task_id] = chunk
    return out


class RedisMonitor:
    """Every command a Redis server runs while the ``with`` block runs (MONITOR, in a thread).

    ``commands`` holds redis-py's parsed entries (``command``, ``client_type`` — ``lua``
    for commands a script ran —, ``client_address``, ``db``...), in order.
    """

    STOP = "labelq-test-monitor-stop"

    def __init__(self, connect: Callable[[], Any]) -> None:
        self.connect = connect
        self.commands: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        client = self.connect()
        try:
            with client.monitor() as m:
                self._ready.set()
                for cmd in m.listen():
                    if cmd["command"] == f"ECHO {self.STOP}":
                        return
                    self.commands.append(cmd)
        finally:
            client.close()

    def __enter__(self) -> RedisMonitor:
        self._thread.start()
        if not self._ready.wait(10):
            raise ProcError("MONITOR did not start")
        time.sleep(0.1)  # the server has registered the monitor once it answers its first command
        return self

    def __exit__(self, *exc: object) -> None:
        client = self.connect()
        try:
            client.echo(self.STOP)
        finally:
            client.close()
        self._thread.join(30)

    def from_clients(self) -> list[list[str]]:
        """Commands sent by clients (not run inside scripts), split into words."""
        return [c["command"].split() for c in self.commands if c.get("client_type") != "lua"]


# ------------------------------------------------------------------ waiting


def wait_until(
    check: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    every: float = 0.1,
    describe: Callable[[], str] | None = None,
) -> Any:
    """Poll ``check`` until truthy; its value. ``describe`` adds context to the timeout error."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = describe() if describe else ""
            raise ProcError(f"no {what} after {timeout:.0f}s\n{extra}")
        time.sleep(every)


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
