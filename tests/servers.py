"""Private test servers on free ports: re-exported from tests/support/.

Each server lives in its own module there, which says how it is started and what
it falls back to: :mod:`tests.support.redis`, :mod:`tests.support.moto`,
:mod:`tests.support.postgres`, :mod:`tests.support.rabbit`; the process and
waiting helpers are in :mod:`tests.support.procs`. Every server is started by the
test session itself on a port nobody else uses, with its data in a temporary
folder, and stopped at the end (its whole process group); a watchdog process
stops it if its owner dies without doing so. A missing binary raises
:class:`MissingBinary` naming the package to install; the fixtures in conftest.py
turn it into a skip (a failure under ``CI``). This module keeps the old import
path working; new code imports from tests.support.
"""

from __future__ import annotations

from tests.support.moto import MotoServer
from tests.support.postgres import PG_DIRS, PostgresServer, _connect_pg, connect_pg
from tests.support.procs import (
    HOST,
    MissingBinary,
    Proc,
    ServerError,
    free_port,
    group_members,
    log_tail,
    port_open,
    wait_until,
    which,
)
from tests.support.rabbit import RABBIT_DIRS, RabbitServer, amqp_connects, rabbit_binary
from tests.support.redis import RedisServer

Process = Proc  # the old name of a server's process
_group_members = group_members

__all__ = [
    "HOST", "PG_DIRS", "RABBIT_DIRS", "MissingBinary", "MotoServer", "PostgresServer", "Proc", "Process",
    "RabbitServer", "RedisServer", "ServerError", "_connect_pg", "_group_members", "amqp_connects", "connect_pg",
    "free_port", "group_members", "log_tail", "port_open", "rabbit_binary", "wait_until", "which",
]
