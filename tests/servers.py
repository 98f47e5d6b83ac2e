"""Private test servers on free ports: Redis, moto (S3 over HTTP), PostgreSQL, RabbitMQ.

Each server is started by the test session itself, pytest-redis style, on a port
nobody else uses, with its data in a temporary folder, and stopped at the end
(its whole process group, so nothing outlives the session). The machine's own
services on the standard ports are never touched, except as the fallbacks below.

What each one is, and what was chosen:

- **Redis**: ``redis-server`` (package ``redis-server``) on ``127.0.0.1:PORT``, no RDB
  snapshots, optionally AOF (``--appendonly yes --appendfsync always``) so that
  :meth:`RedisServer.stop` then :meth:`RedisServer.start` (same port, same folder)
  keeps the data. Ready in ~0.1 s.
- **S3**: moto's server (``python -m moto.server``) in a subprocess of this
  interpreter, over HTTP, so Celery workers started as other processes reach it at
  :attr:`MotoServer.endpoint_url`. Ready in ~1-2 s.
- **PostgreSQL**: a private cluster: ``initdb`` then ``postgres`` on a free port,
  TCP on 127.0.0.1 and its unix socket in the cluster's folder, ``fsync=off``.
  initdb refuses to run as root, so as root both run as the ``postgres`` OS user
  (``runuser -u postgres --``) in a folder under /tmp that it owns (pytest's own
  tmp folders are 0700 root). Binaries come from PATH or /usr/lib/postgresql/*/bin
  (package ``postgresql``). Ready in ~1-2 s. Only if that start fails is a uniquely
  named database made on the machine's server at 127.0.0.1:5432 (trust auth, user
  postgres), and dropped at the end.
- **RabbitMQ**: a private node ``labelq-test-PORT@localhost`` started with
  ``/usr/lib/rabbitmq/bin/rabbitmq-server`` directly (``/usr/sbin/rabbitmq-server``
  is a wrapper that switches to the ``rabbitmq`` user and drops our environment),
  with its own ``HOME`` holding its own Erlang cookie, its own mnesia, log, config,
  env-config and (empty) plugins files, AMQP and Erlang distribution on free ports;
  it registers with the machine's epmd (or starts one). Ready in ~4 s here; stopped
  with ``rabbitmqctl -n NODE stop``. Only if it is not up within 20 s is a fresh
  vhost made on the machine's node at 127.0.0.1:5672 (guest/guest) with
  ``rabbitmqctl add_vhost`` and ``set_permissions``, and deleted at the end.

Every server process gets a small watchdog process: if whoever started the server
dies without stopping it (SIGKILL, ``timeout``, a script that forgot), the watchdog
signals the server's process group, SIGKILLs it after 15 s and deletes its
temporary folder, so killed test runs leave no servers behind. The shared-server
fallbacks (a database, a vhost) are only cleaned up by a normal teardown.

A missing binary raises :class:`MissingBinary` naming the package to install; the
fixtures in conftest.py turn it into a skip (a failure under ``CI``).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A test server did not start or answer in time."""


class MissingBinary(ServerError):
    """A server's binary is not installed; ``package`` says what to install."""

    def __init__(self, binary: str, package: str) -> None:
        super().__init__(
            f"{binary} not found on PATH: install the {package!r} package (e.g. apt-get install {package})"
        )
        self.binary = binary
        self.package = package


# ---------------------------------------------------------------- helpers


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
    log: Path | None = None,
    alive: Callable[[], bool] | None = None,
) -> float:
    """Call ``check`` until it returns truthy; return the seconds it took.

    Exceptions from ``check`` count as "not yet". Raises :class:`ServerError` with
    the last exception and the log's tail after ``timeout`` seconds, or at once
    when ``alive`` says the server process has died.
    """
    start = time.monotonic()
    last: BaseException | None = None
    while time.monotonic() - start < timeout:
        try:
            if check():
                return time.monotonic() - start
        except Exception as exc:  # noqa: BLE001 - anything means "not ready yet"
            last = exc
        if alive is not None and not alive():
            raise ServerError(f"{what} exited while starting (last error: {last!r})\n{log_tail(log)}")
        time.sleep(0.05)
    raise ServerError(f"{what} not ready after {timeout:.0f} s (last error: {last!r})\n{log_tail(log)}")


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``, read from /proc."""
    members = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(Path(stat).parent.name))
    return members


# Run beside each server: when its owner dies without stopping it (SIGKILL, `timeout`,
# a script that forgot), the pipe closes with nothing written, and the watchdog
# signals the server's group, SIGKILLs it after 15 s, and deletes the folders named.
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


class Process:
    """A server process in its own session (so its process group can be signalled whole).

    Output goes to ``log``; :meth:`stop` sends ``sig`` to the group, waits for every
    member to exit, and SIGKILLs the group after ``timeout`` seconds. A watchdog
    process does the same with ``orphan_signal`` (and deletes ``cleanup``) if the
    process that started the server dies without calling :meth:`stop`.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        orphan_signal: int = signal.SIGTERM,
        cleanup: Path | None = None,
    ) -> None:
        self.argv = argv
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        self.pgid = self.popen.pid
        self._watchdog, self._watch_fd = self._start_watchdog(orphan_signal, cleanup)

    def _start_watchdog(self, sig: int, cleanup: Path | None) -> tuple[subprocess.Popen[bytes], int]:
        read_fd, write_fd = os.pipe()
        argv = [sys.executable, "-c", _WATCHDOG, str(self.pgid), str(int(sig))]
        if cleanup is not None:
            argv.append(str(cleanup))
        try:
            watchdog = subprocess.Popen(argv, stdin=read_fd, start_new_session=True)
        finally:
            os.close(read_fd)
        return watchdog, write_fd

    def _dismiss_watchdog(self) -> None:
        """Tell the watchdog the server was stopped on purpose, and reap it."""
        if self._watch_fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._watch_fd, b"stopped")
        os.close(self._watch_fd)
        self._watch_fd = -1
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._watchdog.wait(timeout=10)

    def alive(self) -> bool:
        """Whether the process we started is still running."""
        return self.popen.poll() is None

    def _group_alive(self) -> bool:
        self.popen.poll()  # reap our direct child so it does not linger as a zombie
        if os.path.isdir("/proc"):
            return bool(_group_members(self.pgid))
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        return True

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Signal the whole group, wait until it is gone, SIGKILL what is left after ``timeout``."""
        self._signal(sig)
        deadline = time.monotonic() + timeout
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._group_alive():
            logger.warning("%s ignored signal %d for %.0f s; killing its group", self.argv[0], sig, timeout)
            self._signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        self._dismiss_watchdog()

    def wait_group_gone(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the group to exit on its own; whether it did."""
        deadline = time.monotonic() + timeout
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._group_alive():
            return False
        self._dismiss_watchdog()
        return True


def _make_tmp(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


# ---------------------------------------------------------------- Redis


class RedisServer:
    """A private ``redis-server``; :meth:`stop` and :meth:`start` keep its port and folder.

    With ``aof=True`` every write is fsynced to an append-only file, so data
    survives a stop/start; without it a restart comes back empty.
    """

    def __init__(self, folder: Path, *, aof: bool = False, port: int | None = None) -> None:
        self.binary = which("redis-server", "redis-server")
        self.folder = folder
        self.aof = aof
        self.port = port or free_port()
        self.process: Process | None = None
        self.startup_s = 0.0

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self.port}/0"

    def argv(self) -> list[str]:
        """The command line: loopback only, no RDB snapshots, AOF if asked."""
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--dir",
            str(self.folder),
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
            "--databases",
            "16",
        ]
        if self.aof:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        return argv

    def client(self) -> Any:
        """A new ``redis.Redis`` connected to this server (close it when done)."""
        import redis

        return redis.Redis(host=HOST, port=self.port, db=0, socket_connect_timeout=2, socket_timeout=5)

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
        self.process = Process(self.argv(), log=self.folder / "redis.log")
        self.startup_s = wait_until(
            self.ping,
            timeout=timeout,
            what=f"redis-server on port {self.port}",
            log=self.process.log,
            alive=self.process.alive,
        )
        logger.info("redis-server on %s ready in %.2f s", self.url, self.startup_s)
        return self

    def stop(self) -> None:
        """Shut the server down (SIGTERM: AOF is flushed) and wait for it to exit."""
        if self.process is not None:
            self.process.stop(signal.SIGTERM)
            self.process = None


# ---------------------------------------------------------------- S3 (moto)


class MotoServer:
    """moto's S3 (and every other AWS service) over HTTP, in a subprocess."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.process: Process | None = None
        self.startup_s = 0.0

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT``: pass as ``endpoint_url`` to boto3 / ``LABELQ_S3_ENDPOINT_URL``."""
        return f"http://{HOST}:{self.port}"

    def answers(self) -> bool:
        """Whether the server answers HTTP (any status)."""
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True

    def start(self, timeout: float = 30.0) -> MotoServer:
        """Start the server and wait until it answers."""
        if self.process is not None and self.process.alive():
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]
        self.process = Process(argv, log=self.folder / "moto.log", env=dict(os.environ))
        self.startup_s = wait_until(
            self.answers,
            timeout=timeout,
            what=f"moto server on port {self.port}",
            log=self.process.log,
            alive=self.process.alive,
        )
        logger.info("moto server on %s ready in %.2f s", self.endpoint_url, self.startup_s)
        return self

    def stop(self) -> None:
        """Stop the server."""
        if self.process is not None:
            self.process.stop(signal.SIGTERM)
            self.process = None


# ---------------------------------------------------------------- PostgreSQL

PG_DIRS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql*/bin")


def _connect_pg(port: int, dbname: str = "postgres", host: str = HOST) -> Any:
    import psycopg

    return psycopg.connect(host=host, port=port, user="postgres", dbname=dbname, connect_timeout=2, autocommit=True)


class PostgresServer:
    """A private PostgreSQL cluster, or a throwaway database on the machine's server.

    :meth:`start` tries the private cluster and falls back to the shared server at
    127.0.0.1:5432; :attr:`mode` says which (``"private"`` or ``"shared"``).
    """

    def __init__(self, dbname: str = "labelq_test") -> None:
        self.dbname = dbname
        self.port = 0
        self.mode = ""
        self.folder: Path | None = None
        self.process: Process | None = None
        self.startup_s = 0.0

    @property
    def url(self) -> str:
        """A SQLAlchemy URL for psycopg 3: ``postgresql+psycopg://postgres@127.0.0.1:PORT/DB``."""
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{self.dbname}"

    # --- private cluster

    def _owner_prefix(self) -> list[str]:
        """``runuser -u postgres --`` when root (initdb refuses root), else nothing."""
        if os.geteuid() != 0:
            return []
        return [which("runuser", "util-linux"), "-u", "postgres", "--"]

    def _prepare_folder(self) -> Path:
        folder = _make_tmp("labelq-pg-")
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(folder, owner.pw_uid, owner.pw_gid)
        folder.chmod(0o700)
        return folder

    def start_private(self, timeout: float = 30.0) -> None:
        """initdb + postgres on a free port, as the ``postgres`` user when root."""
        initdb = which("initdb", "postgresql", PG_DIRS)
        postgres = str(Path(os.path.realpath(initdb)).with_name("postgres"))
        start = time.monotonic()
        self.folder = self._prepare_folder()
        data, log = self.folder / "data", self.folder / "postgres.log"
        subprocess.run(
            [
                *self._owner_prefix(),
                initdb,
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
            cwd=self.folder,
        )
        self.port = free_port()
        argv = [
            *self._owner_prefix(),
            postgres,
            "-D",
            str(data),
            "-p",
            str(self.port),
            "-h",
            HOST,
            "-k",
            str(self.folder),
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
            "-c",
            "logging_collector=off",
        ]
        self.process = Process(argv, log=log, cwd=self.folder, orphan_signal=signal.SIGINT, cleanup=self.folder)
        wait_until(
            lambda: _connect_pg(self.port).close() is None,
            timeout=timeout,
            what=f"postgres on port {self.port}",
            log=log,
            alive=self.process.alive,
        )
        with contextlib.closing(_connect_pg(self.port)) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
        self.mode = "private"
        self.startup_s = time.monotonic() - start

    def _stop_private(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGINT)  # "fast" shutdown; SIGTERM would wait for clients
            self.process = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    # --- shared fallback

    def start_shared(self, port: int = 5432) -> None:
        """Create a uniquely named database on the machine's server (trust auth, user postgres)."""
        start = time.monotonic()
        self.port = port
        self.dbname = f"labelq_test_{uuid.uuid4().hex[:12]}"
        with contextlib.closing(_connect_pg(port)) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
        self.mode = "shared"
        self.startup_s = time.monotonic() - start

    def _stop_shared(self) -> None:
        with contextlib.closing(_connect_pg(self.port)) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')

    # --- both

    def start(self) -> PostgresServer:
        """Start a private cluster, falling back to the shared server if that fails."""
        try:
            self.start_private()
        except MissingBinary:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means: try the shared server
            detail = exc.stderr.decode(errors="replace") if isinstance(exc, subprocess.CalledProcessError) else ""
            logger.warning("private PostgreSQL did not start (%r %s); using 127.0.0.1:5432", exc, detail)
            self._stop_private()
            try:
                self.start_shared()
            except Exception as shared_exc:
                raise ServerError(
                    f"no PostgreSQL: private start failed ({exc!r}), shared one too ({shared_exc!r})"
                ) from shared_exc
        logger.info("PostgreSQL (%s) at %s ready in %.2f s", self.mode, self.url, self.startup_s)
        return self

    def stop(self) -> None:
        """Stop the private cluster and delete its folder, or drop the shared database."""
        if self.mode == "shared":
            self._stop_shared()
        else:
            self._stop_private()
        self.mode = ""


# ---------------------------------------------------------------- RabbitMQ

RABBIT_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin")


def rabbit_binary(name: str) -> str:
    """RabbitMQ's own script ``name``, not Debian's /usr/sbin wrapper (which su's to ``rabbitmq``)."""
    for pattern in RABBIT_DIRS:
        for directory in sorted(glob.glob(pattern), reverse=True):
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return which(name, "rabbitmq-server")


def _amqp_connects(url: str) -> bool:
    import kombu

    with kombu.Connection(url, connect_timeout=2) as conn:
        conn.connect()
        return bool(conn.connected)


class RabbitServer:
    """A private RabbitMQ node on free ports, or a throwaway vhost on the machine's node.

    :meth:`start` tries the private node for ``timeout`` seconds and falls back to
    a fresh vhost on 127.0.0.1:5672; :attr:`mode` says which.
    """

    def __init__(self) -> None:
        self.port = 0
        self.vhost = ""
        self.mode = ""
        self.dist_port = 0
        self.node = ""
        self.folder: Path | None = None
        self.process: Process | None = None
        self.startup_s = 0.0

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:PORT/VHOST`` (the vhost ``/`` is written ``//``)."""
        return f"amqp://guest:guest@{HOST}:{self.port}/{self.vhost or '/'}"

    # --- private node

    def _env(self) -> dict[str, str]:
        assert self.folder is not None
        folder = self.folder
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            {
                "HOME": str(folder),  # its own .erlang.cookie, for the node and for rabbitmqctl
                "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_IP_ADDRESS": HOST,
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
                "RABBITMQ_LOG_BASE": str(folder / "log"),
                "RABBITMQ_PID_FILE": str(folder / "rabbit.pid"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
                "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
                "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
                "ERL_EPMD_ADDRESS": HOST,
            }
        )
        return env

    def _write_files(self) -> None:
        assert self.folder is not None
        (self.folder / "mnesia").mkdir()
        (self.folder / "log").mkdir()
        (self.folder / "enabled_plugins").write_text("[].\n")
        (self.folder / "rabbitmq.conf").write_text("loopback_users.guest = true\n")
        (self.folder / "rabbitmq-env.conf").write_text("")
        cookie = self.folder / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)

    def ctl(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n NODE ARGS`` against the private node."""
        return subprocess.run(
            [rabbit_binary("rabbitmqctl"), "-n", self.node, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start_private(self, timeout: float = 20.0) -> None:
        """Start node ``labelq-test-PORT@localhost`` and wait until AMQP connects."""
        server = rabbit_binary("rabbitmq-server")
        start = time.monotonic()
        self.port, self.dist_port = free_port(), free_port()
        self.node = f"labelq-test-{self.port}@localhost"
        self.folder = _make_tmp("labelq-rabbit-")
        self._write_files()
        self.process = Process(
            [server], log=self.folder / "server.log", env=self._env(), cwd=self.folder, cleanup=self.folder
        )
        wait_until(
            lambda: _amqp_connects(self.url),
            timeout=timeout,
            what=f"RabbitMQ node {self.node}",
            log=self.process.log,
            alive=self.process.alive,
        )
        self.mode = "private"
        self.startup_s = time.monotonic() - start

    def _stop_private(self) -> None:
        if self.process is not None:
            with contextlib.suppress(Exception):
                if self.process.alive():
                    self.ctl("stop", timeout=30)
            if not self.process.wait_group_gone(10):
                self.process.stop(signal.SIGTERM, timeout=10)
            self.process = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    # --- shared fallback

    def _shared_ctl(self, *args: str) -> None:
        ctl = which("rabbitmqctl", "rabbitmq-server")  # the /usr/sbin wrapper: runs as rabbitmq, its cookie
        subprocess.run([ctl, *args], check=True, capture_output=True, text=True, timeout=60)

    def start_shared(self, port: int = 5672) -> None:
        """A fresh vhost on the machine's node, guest given every permission on it."""
        start = time.monotonic()
        self.port = port
        self.vhost = f"labelq-test-{uuid.uuid4().hex[:12]}"
        self._shared_ctl("add_vhost", self.vhost)
        self._shared_ctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        wait_until(lambda: _amqp_connects(self.url), timeout=10, what=f"RabbitMQ vhost {self.vhost} on {port}")
        self.mode = "shared"
        self.startup_s = time.monotonic() - start

    # --- both

    def start(self, timeout: float = 20.0) -> RabbitServer:
        """Start a private node, falling back to a vhost on the shared node if it is not up in ``timeout`` s."""
        try:
            self.start_private(timeout)
        except MissingBinary:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means: try the shared node
            logger.warning("private RabbitMQ node did not start (%s); using a vhost on 127.0.0.1:5672", exc)
            self._stop_private()
            try:
                self.start_shared()
            except Exception as shared_exc:
                raise ServerError(
                    f"no RabbitMQ: private node failed ({exc}), shared one too ({shared_exc!r})"
                ) from shared_exc
        logger.info("RabbitMQ (%s) at %s ready in %.2f s", self.mode, self.url, self.startup_s)
        return self

    def stop(self) -> None:
        """Stop the private node and delete its folder, or delete the shared vhost."""
        if self.mode == "shared":
            with contextlib.suppress(Exception):
                self._shared_ctl("delete_vhost", self.vhost)
        else:
            self._stop_private()
        self.mode = ""
