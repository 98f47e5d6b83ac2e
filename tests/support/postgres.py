"""A private PostgreSQL cluster on a free port, or a throwaway database on the machine's server.

``initdb`` then ``postgres`` on a free port, TCP on 127.0.0.1 and its unix socket
in the cluster's folder, ``fsync=off`` (``durable=True`` keeps PostgreSQL's
durable defaults, for benchmarks). initdb refuses to run as root, so as root both
run as the ``postgres`` OS user (``runuser -u postgres --``) in a folder under /tmp
that it owns (pytest's own tmp folders are 0700 root). Binaries come from PATH or
/usr/lib/postgresql/*/bin (package ``postgresql``). Ready in ~1-2 s. Only if that
start fails is a uniquely named database made on the machine's server at
127.0.0.1:5432 (trust auth, user postgres), and dropped at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.procs import HOST, MissingBinary, Proc, ServerError, free_port, wait_until, which

logger = logging.getLogger(__name__)

PG_DIRS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql*/bin")

# Test speed over crash safety: a test cluster never outlives its session.
FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def connect_pg(port: int, dbname: str = "postgres", host: str = HOST) -> Any:
    """A psycopg 3 connection (autocommit) as user postgres."""
    import psycopg

    return psycopg.connect(host=host, port=port, user="postgres", dbname=dbname, connect_timeout=2, autocommit=True)


_connect_pg = connect_pg  # the name bench/ and older tests import


class PostgresServer:
    """A private PostgreSQL cluster, or a throwaway database on the machine's server.

    :meth:`start` tries the private cluster and falls back to the shared server at
    127.0.0.1:5432; :attr:`mode` says which (``"private"`` or ``"shared"``).
    ``durable`` keeps fsync and synchronous commits on; ``settings`` adds ``-c``
    options (e.g. ``{"shared_buffers": "256MB"}``).
    """

    def __init__(self, dbname: str = "labelq_test", *, durable: bool = False,
                 settings: Mapping[str, str] | None = None) -> None:
        self.dbname = dbname
        self.durable = durable
        self.settings = {"max_connections": "200", "logging_collector": "off",
                         **({} if durable else FAST), **(settings or {})}
        self.port = 0
        self.mode = ""
        self.folder: Path | None = None
        self.process: Proc | None = None
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
        folder = Path(tempfile.mkdtemp(prefix="labelq-pg-"))
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
            [*self._owner_prefix(), initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
             "--locale=C", *([] if self.durable else ["--no-sync"]), "--no-instructions"],
            check=True,
            capture_output=True,
            timeout=timeout,
            cwd=self.folder,
        )
        self.port = free_port()
        argv = [*self._owner_prefix(), postgres, "-D", str(data), "-p", str(self.port), "-h", HOST,
                "-k", str(self.folder)]
        for name, value in self.settings.items():
            argv += ["-c", f"{name}={value}"]
        self.process = Proc(
            argv, log=log, cwd=self.folder, watchdog=True, orphan_signal=signal.SIGINT, cleanup=self.folder
        ).start()
        wait_until(
            lambda: connect_pg(self.port).close() is None,
            timeout=timeout,
            every=0.05,
            what=f"postgres on port {self.port}",
            log=log,
            alive=self.process.alive,
        )
        with contextlib.closing(connect_pg(self.port)) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
        self.mode = "private"
        self.startup_s = time.monotonic() - start

    def _stop_private(self) -> None:
        if self.process is not None:
            # SIGINT is postgres's "fast" shutdown; SIGTERM would wait for clients
            self.process.stop(15.0, sig=signal.SIGINT, group=True)
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
        with contextlib.closing(connect_pg(port)) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
        self.mode = "shared"
        self.startup_s = time.monotonic() - start

    def _stop_shared(self) -> None:
        with contextlib.closing(connect_pg(self.port)) as conn:
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

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
