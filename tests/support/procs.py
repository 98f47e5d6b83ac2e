"""Processes in their own process group, and waiting for things, for tests and bench.

Every :class:`Proc` runs in its own session, so its whole process group (a
server's helpers, ``labelq worker``'s launcher and its Celery children) can be
signalled at once, and appends its stdout and stderr to a log file that the
caller reads back. Nothing a session started outlives it:

- :meth:`Proc.stop` signals the leader (or the group), waits for every member to
  exit, and SIGKILLs the group after a grace period; it is idempotent;
- an ``atexit`` hook SIGKILLs every group still alive when the interpreter exits;
- with ``watchdog=True`` (the servers use it) a small watchdog process signals the
  group, SIGKILLs it after 15 s and deletes ``cleanup`` if the process that
  started it dies without stopping it (SIGKILL, ``timeout``, a script that forgot).

:func:`wait_until` is the one polling helper: it calls a check until it returns
something truthy, treats an exception as "not yet", stops early when the process
it waits on has died, and fails with the last error and the log's tail.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"

_STARTED: set[int] = set()  # process groups this interpreter started
_SIGTERM = signal.SIGTERM  # for defaults in Proc, whose signal() method hides the module there


class ProcError(RuntimeError):
    """A process or server did not start, answer or stop in time."""


class ServerError(ProcError):
    """A test server did not start or answer in time."""


class MissingBinary(ServerError):
    """A server's binary is not installed; ``package`` says what to install."""

    def __init__(self, binary: str, package: str) -> None:
        super().__init__(
            f"{binary} not found on PATH: install the {package!r} package (e.g. apt-get install {package})"
        )
        self.binary = binary
        self.package = package


# ---------------------------------------------------------------- small helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = HOST) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def which(binary: str, package: str, extra_dirs: tuple[str, ...] = ()) -> str:
    """The full path of ``binary`` (PATH first, then ``extra_dirs`` globs), or :class:`MissingBinary`."""
    found = shutil.which(binary)
    if found:
        return found
    for pattern in extra_dirs:
        for directory in sorted(glob.glob(pattern), reverse=True):
            candidate = Path(directory) / binary
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise MissingBinary(binary, package)


def log_tail(path: Path | None, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(empty log)"


def wait_until(
    check: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    every: float = 0.1,
    alive: Callable[[], bool] | None = None,
    log: Path | None = None,
    describe: Callable[[], str] | None = None,
) -> Any:
    """Call ``check`` every ``every`` seconds until it returns something truthy; return that value.

    An exception from ``check`` counts as "not yet". Raises :class:`ProcError` after
    ``timeout`` seconds, or at once when ``alive`` says the awaited process died,
    with the last exception and ``describe()`` (else the tail of ``log``).
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
        except Exception as exc:  # noqa: BLE001 - anything means "not yet"
            last, value = exc, None
        if value:
            return value
        if alive is not None and not alive():
            problem = "the process exited first"
        elif time.monotonic() > deadline:
            problem = f"not after {timeout:.0f}s"
        else:
            time.sleep(every)
            continue
        context = describe() if describe is not None else log_tail(log) if log is not None else ""
        raise ProcError(f"no {what}: {problem} (last error: {last!r})\n{context}") from last


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``, read from /proc."""
    members = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(Path(stat).parent.name))
    return members


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its reaped children (Linux /proc); 0 when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / ticks


@atexit.register
def _kill_leftovers() -> None:
    """A safety net for an interrupted session: no process group we started outlives it."""
    for pgid in _STARTED:
        if group_members(pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)


# Run beside a watched process: when its owner dies without stopping it, the pipe
# closes with nothing written, and the watchdog signals the process group, SIGKILLs
# it after 15 s, and deletes the folders named.
_WATCHDOG = """
import os, shutil, signal, sys, time
if sys.stdin.buffer.read():
    sys.exit(0)
pgid, sig = int(sys.argv[1]), int(sys.argv[2])
def send(s):
    try:
        os.killpg(pgid, s)
        return True
    except ProcessLookupError:
        return False
if send(sig):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and send(0):
        time.sleep(0.1)
    send(signal.SIGKILL)
for folder in sys.argv[3:]:
    shutil.rmtree(folder, ignore_errors=True)
"""


# ---------------------------------------------------------------- one process


class Proc:
    """One command in its own process group, output appended to ``log``; restartable.

    ``env`` None inherits this process's environment; ``cwd`` defaults to the log's
    folder. With ``watchdog=True`` each start gets a watchdog that sends
    ``orphan_signal`` to the group (then SIGKILL) and deletes ``cleanup`` if this
    interpreter dies without stopping the process.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        watchdog: bool = False,
        orphan_signal: int = signal.SIGTERM,
        cleanup: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.log = log
        self.cwd = cwd or log.parent
        self.watchdog = watchdog
        self.orphan_signal = orphan_signal
        self.cleanup = cleanup
        self.popen: subprocess.Popen[bytes] | None = None
        self.offset = 0  # log size when the latest start began
        self.starts = 0
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._watch_fd = -1

    # ------------------------------------------------------------------ life

    def start(self) -> Proc:
        """Start the command (again); the log is appended to."""
        if self.alive():
            raise ProcError(f"{self} is already running")
        self._dismiss_watchdog()
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
        if self.watchdog:
            self._start_watchdog()
        logger.info("started %s (pid %d), log %s", self, self.popen.pid, self.log)
        return self

    def _start_watchdog(self) -> None:
        read_fd, write_fd = os.pipe()
        argv = [sys.executable, "-c", _WATCHDOG, str(self.pid), str(int(self.orphan_signal))]
        if self.cleanup is not None:
            argv.append(str(self.cleanup))
        try:
            self._watchdog = subprocess.Popen(argv, stdin=read_fd, start_new_session=True)
        finally:
            os.close(read_fd)
        self._watch_fd = write_fd

    def _dismiss_watchdog(self) -> None:
        """Tell the watchdog the process was stopped on purpose, and reap it."""
        if self._watch_fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._watch_fd, b"stopped")
        os.close(self._watch_fd)
        self._watch_fd = -1
        if self._watchdog is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._watchdog.wait(timeout=10)
            self._watchdog = None

    @property
    def pid(self) -> int:
        """The leader's pid, which is also the process group id."""
        assert self.popen is not None, "not started"
        return self.popen.pid

    pgid = pid

    def alive(self) -> bool:
        """Whether the leader is running."""
        return self.popen is not None and self.popen.poll() is None

    def group_alive(self) -> bool:
        """Whether any process of the group is running (the leader is reaped on the way)."""
        if self.popen is None:
            return False
        self.popen.poll()
        return bool(group_members(self.popen.pid))

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the group's live members and their reaped children."""
        return sum(proc_cpu(pid) for pid in group_members(self.pid)) if self.popen is not None else 0.0

    def signal(self, sig: int, *, group: bool = False) -> None:
        """Send ``sig`` to the leader only (a launcher forwards it) or to the whole group."""
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
        if self.group_alive():
            return False
        self._dismiss_watchdog()
        return True

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

    def stop(self, timeout: float = 20.0, *, sig: int = _SIGTERM, group: bool = False) -> None:
        """Clean-up: ``sig`` to the leader (or the group), SIGKILL the group after ``timeout``. Idempotent."""
        if self.group_alive():
            self.signal(sig, group=group)
            self.signal(signal.SIGCONT, group=True)  # a stopped (SIGSTOP) process acts on signals once continued
            if not self.wait_gone(timeout):
                logger.warning("%s ignored signal %d for %.0fs; killing its group", self, sig, timeout)
                self.signal(signal.SIGKILL, group=True)
                self.wait_gone(10)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)
        self._dismiss_watchdog()

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
