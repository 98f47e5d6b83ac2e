"""A private ``redis-server``, and readers of the Redis broker's queue and ``unacked`` hash.

:class:`RedisServer` runs ``redis-server`` (package ``redis-server``) on
``127.0.0.1:PORT``, no RDB snapshots, optionally AOF (``--appendonly yes
--appendfsync always``) so that :meth:`RedisServer.stop` then
:meth:`RedisServer.start` (same port, same folder) keeps the data. Ready in ~0.1 s.

The helpers below read a kombu Redis transport without consuming: the messages a
producer published (:func:`queued_chunks`), the ones a worker holds
(:func:`unacked_chunks`), every command the server ran (:class:`RedisMonitor`) and
its ``INFO commandstats`` (:func:`commandstats`).

:class:`SentinelGroup` is Redis with high availability, for real: a master, a replica
(``--replicaof``) and 1 to 3 ``redis-server --sentinel`` watching the master under the
name ``labelq``, with a failure detected after ``down_after_ms`` (1 s) and a failover
retried after ``failover_timeout_ms`` (3 s); :meth:`SentinelGroup.kill_master`
SIGKILLs the master and :meth:`SentinelGroup.wait_failover` waits for the promotion.
Each sentinel's config names the replica and the other sentinels, so none has to discover
them (that takes seconds): the group is ready in well under a second.
"""


from __future__ import annotations

import base64
import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.procs import HOST, Proc, ProcError, free_port, log_tail, wait_until, which

logger = logging.getLogger(__name__)

QUEUE = "labelq"


class RedisServer:
    """A private ``redis-server``; :meth:`stop` and :meth:`start` keep its port and folder.

    With ``aof=True`` every write is fsynced to an append-only file, so data
    survives a stop/start; without it a restart comes back empty. The log is
    ``folder/redis.log`` unless ``log`` says otherwise.
    """

    def __init__(self, folder: Path, *, aof: bool = False, port: int | None = None, log: Path | None = None,
                 extra: tuple[str, ...] = (), password: str | None = None) -> None:
        self.binary = which("redis-server", "redis-server")
        self.auth = password  # --requirepass (and --masterauth, for a replica of a server with the same)
        self.folder = folder
        self.aof = aof
        self.extra = extra  # more arguments, e.g. ("--replicaof", HOST, "6379")
        self.port = port or free_port()
        self.log = log or folder / "redis.log"
        self.process: Proc | None = None
        self.startup_s = 0.0

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self.port}/0"

    def argv(self) -> list[str]:
        """The command line: loopback only, no RDB snapshots, AOF if asked."""
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(self.folder),
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--loglevel", "warning",
            "--databases", "16",
        ]  # fmt: skip
        if self.aof:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        if self.auth:
            argv += ["--requirepass", self.auth, "--masterauth", self.auth]
        return argv + list(self.extra)

    def client(self, **options: Any) -> Any:
        """A new ``redis.Redis`` connected to this server (close it when done); ``options`` override the defaults."""
        import redis

        settings: dict[str, Any] = {"db": 0, "socket_connect_timeout": 2, "socket_timeout": 5,
                                    "password": self.auth, **options}
        return redis.Redis(host=HOST, port=self.port, **settings)

    def ping(self) -> bool:
        """Whether the server answers PING."""
        with contextlib.closing(self.client()) as client:
            return bool(client.ping())

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.process is not None and self.process.alive()

    def start(self, timeout: float = 15.0) -> RedisServer:
        """Start (or restart) the server and wait until it answers PING."""
        if self.alive():
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        self.process = Proc(self.argv(), log=self.log, cwd=self.folder, watchdog=True).start()
        wait_until(
            self.ping,
            timeout=timeout,
            every=0.05,
            what=f"redis-server on port {self.port}",
            log=self.log,
            alive=self.process.alive,
        )
        self.startup_s = time.monotonic() - start
        logger.info("redis-server on %s ready in %.2f s", self.url, self.startup_s)
        return self

    def stop(self) -> None:
        """Shut the server down (SIGTERM: AOF is flushed) and wait for it to exit."""
        if self.process is not None:
            self.process.stop(15.0, sig=signal.SIGTERM, group=True)
            self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _replication(server: RedisServer) -> dict[str, Any]:
    with contextlib.closing(server.client(decode_responses=True)) as client:
        return dict(client.info("replication"))


class SentinelServer(RedisServer):
    """One ``redis-server sentinel.conf --sentinel`` on a free port, watching ``master`` as ``name``."""

    def __init__(self, folder: Path, *, name: str, master: RedisServer, quorum: int, down_after_ms: int,
                 failover_timeout_ms: int) -> None:
        super().__init__(folder)
        self.name, self.master = name, master
        self.quorum, self.down_after_ms, self.failover_timeout_ms = quorum, down_after_ms, failover_timeout_ms
        self.myid = f"{self.port:040x}"  # a sentinel's run id: 40 hex digits, here from its (unique) port
        self.known: list[str] = []  # more config lines: the replica and the other sentinels, so none waits to find them

    def argv(self) -> list[str]:
        """The config file (sentinels rewrite theirs) then ``--sentinel``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "sentinel.conf"
        conf.write_text("\n".join([
            f"port {self.port}",
            f"bind {HOST}",
            "protected-mode no",
            f"dir {self.folder}",
            f"sentinel monitor {self.name} {HOST} {self.master.port} {self.quorum}",
            f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}",
            f"sentinel failover-timeout {self.name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {self.name} 1",
            f"sentinel myid {self.myid}",
            *([f"sentinel auth-pass {self.name} {self.master.auth}"] if self.master.auth else []),
            *self.known,
            "",
        ]))  # fmt: skip
        return [self.binary, str(conf), "--sentinel", "--loglevel", "notice"]

    def master_info(self) -> dict[str, Any]:
        """``SENTINEL MASTER name``: the master's address, flags, known replicas and sentinels."""
        with contextlib.closing(self.client(decode_responses=True)) as client:
            return dict(client.sentinel_master(self.name))


class SentinelGroup:
    """A master, one replica and ``sentinels`` sentinels (quorum: a majority) on free ports, under ``name``.

    :attr:`url` is the sentinel:// URL labelq takes (with ``LABELQ_SENTINEL_MASTER`` = :attr:`name`).
    """

    def __init__(self, folder: Path, *, sentinels: int = 3, name: str = "labelq", down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000, password: str | None = None) -> None:
        self.folder, self.name, self.password = folder, name, password
        fast_sync = ("--repl-diskless-sync-delay", "0")  # a replica's first sync at once, not after 5 s
        self.master = RedisServer(folder / "master", extra=fast_sync, password=password)
        self.replica = RedisServer(folder / "replica", extra=(*fast_sync, "--replicaof", HOST, str(self.master.port)),
                                   password=password)
        self.sentinels = [
            SentinelServer(folder / f"sentinel-{i}", name=name, master=self.master, quorum=sentinels // 2 + 1,
                           down_after_ms=down_after_ms, failover_timeout_ms=failover_timeout_ms)
            for i in range(sentinels)
        ]
        for s in self.sentinels:
            s.known = [f"sentinel known-replica {name} {HOST} {self.replica.port}"] + [
                f"sentinel known-sentinel {name} {HOST} {o.port} {o.myid}" for o in self.sentinels if o is not s
            ]
        self.startup_s = 0.0

    @property
    def url(self) -> str:
        """``sentinel://[:PASSWORD@]127.0.0.1:P1/0;sentinel://127.0.0.1:P2;...`` (the master's password and db on
        the first sentinel, as kombu reads them)."""
        auth = f":{self.password}@" if self.password else ""
        first, *rest = self.sentinels
        return ";".join([f"sentinel://{auth}{HOST}:{first.port}/0", *(f"sentinel://{HOST}:{s.port}" for s in rest)])

    @property
    def servers(self) -> list[RedisServer]:
        """The data servers (the master as started, the replica as started)."""
        return [self.master, self.replica]

    def start(self, timeout: float = 30.0) -> SentinelGroup:
        """Start everything and wait until every sentinel knows the replica and every other sentinel."""
        start = time.monotonic()
        self.master.start()
        self.replica.start()
        wait_until(lambda: _replication(self.replica).get("master_link_status") == "up",
                   timeout=timeout, what="the replica in sync", log=self.replica.log)
        for s in self.sentinels:
            s.start()
        others = len(self.sentinels) - 1

        def known() -> bool:
            infos = [s.master_info() for s in self.sentinels]
            return all(int(i["num-slaves"]) >= 1 and int(i["num-other-sentinels"]) >= others for i in infos)

        wait_until(known, timeout=timeout, every=0.1, what="sentinels that know the replica and each other",
                   describe=lambda: "\n".join(str(s.master_info()) for s in self.sentinels))
        self.startup_s = time.monotonic() - start
        logger.info("sentinel group %s ready in %.2f s", self.url, self.startup_s)
        return self

    def master_port(self) -> int:
        """The master's port as the first sentinel that answers sees it now."""
        for s in self.sentinels:
            with contextlib.suppress(Exception):
                return int(s.master_info()["port"])
        raise ProcError("no sentinel answers")

    def server_on(self, port: int) -> RedisServer:
        return next(r for r in self.servers if r.port == port)

    def kill_master(self) -> RedisServer:
        """SIGKILL the current master (no shutdown, no flush): the server it was."""
        server = self.server_on(self.master_port())
        assert server.process is not None
        server.process.kill()
        server.process = None
        return server

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> RedisServer:
        """Wait until the sentinels name a new master that says it is one; that server."""

        def promoted() -> RedisServer | None:
            port = self.master_port()
            if port == old_port:
                return None
            server = self.server_on(port)
            return server if _replication(server)["role"] == "master" else None

        return wait_until(promoted, timeout=timeout, every=0.05, what=f"a new master (old: port {old_port})",
                          describe=lambda: "\n".join(log_tail(s.log) for s in self.sentinels))

    def stop(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.stop()

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def commandstats(client: Any) -> dict[str, int]:
    """``INFO commandstats`` as {command: calls}."""
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


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
