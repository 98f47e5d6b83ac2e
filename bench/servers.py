"""Private servers and worker processes for one bench run, on free ports.

Each is started in its own session, so stopping it signals exactly the process
group the bench started and nothing else. Logs go to ``bench/out/logs``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import OUT

HOST = "127.0.0.1"
LOGS = OUT / "logs"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], Any], *, timeout: float, what: str, alive: Callable[[], bool] | None = None) -> None:
    start = time.monotonic()
    last: BaseException | None = None
    while time.monotonic() - start < timeout:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - "not ready yet"
            last = exc
        if alive is not None and not alive():
            raise RuntimeError(f"{what} exited while starting (last error: {last!r}); see {LOGS}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s (last error: {last!r}); see {LOGS}")


class Proc:
    """A subprocess in its own session; :meth:`stop` signals its group, then kills it after a grace period."""

    def __init__(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log = LOGS / f"{name}.log"
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          env=env, start_new_session=True, cwd=str(OUT.parent.parent))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the process and its reaped children (Linux /proc)."""
        return sum(_proc_cpu(pid) for pid in _group(self.pid))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.popen.poll() is not None and not _group(self.pid):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.popen.poll()
            if not _group(self.pid):
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


def _group(pgid: int) -> list[int]:
    """Live members of a process group (from /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(stat.parent.name))
    return members


def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / ticks


class Redis:
    """A private redis-server: loopback, no persistence."""

    def __init__(self, name: str = "redis") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: install the redis-server package")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="labelq-bench-redis-"))
        argv = [binary, "--port", str(self.port), "--bind", HOST, "--dir", str(self.dir), "--save", "",
                "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"]
        self.proc = Proc(argv, name)
        wait_until(self.ping, timeout=15, what="redis-server", alive=self.proc.alive)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def client(self) -> Any:
        import redis

        return redis.Redis(host=HOST, port=self.port, socket_timeout=30)

    def ping(self) -> bool:
        with contextlib.closing(self.client()) as c:
            return bool(c.ping())

    def stop(self) -> None:
        self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Redis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Moto:
    """moto's S3 over HTTP in a subprocess of this interpreter."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = Proc([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)], "moto",
                         env=dict(os.environ))
        wait_until(self._answers, timeout=60, what="moto server", alive=self.proc.alive)

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1")

    def stop(self) -> None:
        self.proc.stop()

    def __enter__(self) -> Moto:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def commandstats(client: Any) -> dict[str, int]:
    """``INFO commandstats`` as {command: calls}."""
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
