"""A private RabbitMQ node on free ports, or a throwaway vhost on the machine's node.

The node ``labelq-test-PORT@localhost`` is started with
``/usr/lib/rabbitmq/bin/rabbitmq-server`` directly (``/usr/sbin/rabbitmq-server``
is a wrapper that switches to the ``rabbitmq`` user and drops our environment),
with its own ``HOME`` holding its own Erlang cookie, its own mnesia, log, config,
env-config and (empty) plugins files, AMQP and Erlang distribution on free ports;
it registers with the machine's epmd (or starts one). Ready in ~4 s here; stopped
with ``rabbitmqctl -n NODE stop``; :meth:`RabbitServer.restart` stops it that way and starts it again
on the same ports and data (durable queues and persistent messages come back). Only if it is not up within 20 s is a fresh
vhost made on the machine's node at 127.0.0.1:5672 (guest/guest) with
``rabbitmqctl add_vhost`` and ``set_permissions``, and deleted at the end.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.support.procs import HOST, MissingBinary, Proc, ServerError, free_port, wait_until, which

logger = logging.getLogger(__name__)

RABBIT_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin")


def rabbit_binary(name: str) -> str:
    """RabbitMQ's own script ``name``, not Debian's /usr/sbin wrapper (which su's to ``rabbitmq``)."""
    for pattern in RABBIT_DIRS:
        for directory in sorted(glob.glob(pattern), reverse=True):
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return which(name, "rabbitmq-server")


def amqp_connects(url: str) -> bool:
    """Whether an AMQP connection to ``url`` opens."""
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
        self.process: Proc | None = None
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
        self.folder = Path(tempfile.mkdtemp(prefix="labelq-rabbit-"))
        self._write_files()
        log = self.folder / "server.log"
        self.process = Proc(
            [server], log=log, env=self._env(), cwd=self.folder, watchdog=True, cleanup=self.folder
        ).start()
        wait_until(
            lambda: amqp_connects(self.url),
            timeout=timeout,
            every=0.05,
            what=f"RabbitMQ node {self.node}",
            log=log,
            alive=self.process.alive,
        )
        self.mode = "private"
        self.startup_s = time.monotonic() - start

    def restart(self, timeout: float = 30.0) -> float:
        """Stop the private node (``rabbitmqctl stop``, as an operator would) and start it again on the same ports,
        cookie and data folder; the seconds AMQP was unreachable."""
        if self.mode != "private" or self.process is None:
            raise ServerError("only a private node can be restarted")
        start = time.monotonic()
        self.ctl("stop", timeout=30)
        if not self.process.wait_gone(20):
            raise ServerError(f"RabbitMQ node {self.node} did not stop\n{self.process.tail()}")
        self.process.start()
        wait_until(lambda: amqp_connects(self.url), timeout=timeout, every=0.05, what=f"RabbitMQ node {self.node} back",
                   log=self.process.log, alive=self.process.alive)
        return time.monotonic() - start

    def queues(self, column: str) -> dict[str, str]:
        """Queue name → ``column`` of ``rabbitmqctl list_queues`` (``type``: classic/quorum; ``messages``: ready +
        unacknowledged) on the private node."""
        out = self.ctl("list_queues", "name", column, "--no-table-headers", "--quiet").stdout
        return dict(line.split("\t")[:2] for line in out.splitlines() if "\t" in line)

    def _stop_private(self) -> None:
        if self.process is not None:
            with contextlib.suppress(Exception):
                if self.process.alive():
                    self.ctl("stop", timeout=30)
            if not self.process.wait_gone(10):
                self.process.stop(10.0, sig=signal.SIGTERM, group=True)
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
        wait_until(lambda: amqp_connects(self.url), timeout=10, what=f"RabbitMQ vhost {self.vhost} on {port}")
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
