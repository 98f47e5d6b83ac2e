"""Servers and processes for one bench run: tests/support's helpers with bench's defaults.

tests/ and bench/ share one set of helpers (tests/support/: :class:`Proc`,
:func:`wait_until`, :class:`RedisServer`, :class:`MotoServer`, ...); this module
only adds what a bench run wants: each process's log is ``bench/out/logs/NAME.log``
(written afresh each run), the repository root is the working directory (so
``celery -A bench.*`` finds its app), processes start when made and stop as a
whole process group, and the servers start when made and keep their folders
out of the way.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support import procs
from tests.support.moto import MotoServer
from tests.support.procs import HOST, free_port, group_members, proc_cpu, wait_until
from tests.support.redis import RedisServer, commandstats

from .common import OUT, ROOT

LOGS = OUT / "logs"

__all__ = ["HOST", "LOGS", "Moto", "Proc", "Redis", "commandstats", "free_port", "group_members", "proc_cpu",
           "wait_until"]


def _fresh_log(name: str) -> Path:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}.log"
    log.unlink(missing_ok=True)
    return log


class Proc(procs.Proc):
    """A command started at once in the repo root, logging to ``bench/out/logs/NAME.log``; stops its whole group."""

    def __init__(self, argv: Sequence[str], name: str, env: Mapping[str, str] | None = None) -> None:
        super().__init__(argv, log=_fresh_log(name), env=env, cwd=ROOT)
        self.name = name
        self.start()

    def stop(self, timeout: float = 20.0, *, sig: int = signal.SIGTERM, group: bool = True) -> None:
        super().stop(timeout, sig=sig, group=group)


class Redis(RedisServer):
    """A private redis-server (loopback, no persistence), started when made; its data folder is deleted on stop."""

    def __init__(self, name: str = "redis") -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="labelq-bench-redis-")), log=_fresh_log(name))
        self.start()

    @property
    def proc(self) -> procs.Proc:
        assert self.process is not None
        return self.process

    def client(self, **options: Any) -> Any:
        return super().client(**{"socket_timeout": 30, **options})

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class Moto(MotoServer):
    """moto's S3 over HTTP, started when made (60 s allowed: a loaded bench machine is slow)."""

    def __init__(self, name: str = "moto") -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="labelq-bench-moto-")), log=_fresh_log(name))
        self.start(timeout=60)

    @property
    def proc(self) -> procs.Proc:
        assert self.process is not None
        return self.process

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.folder, ignore_errors=True)
