"""Real labelq processes and the Redis broker's readers: re-exported from tests/support/.

The helpers live in :mod:`tests.support.procs` (:class:`Proc`, :func:`wait_until`),
:mod:`tests.support.workers` (workers, the CLI, ``labelq_env``) and
:mod:`tests.support.redis` (queue and ``unacked`` readers, MONITOR); this module
keeps the old import path working. New code imports from tests.support.
"""

from __future__ import annotations

from tests.support.procs import HOST, Proc, ProcError, free_port, group_members, wait_until
from tests.support.redis import (
    QUEUE,
    Chunk,
    RedisMonitor,
    queue_keys,
    queue_length,
    queued_chunks,
    unacked_chunks,
)
from tests.support.workers import (
    BIN,
    CHUNK_DONE,
    HOSTNAME,
    LABELQ,
    READY,
    RECEIVED,
    SUCCEEDED,
    THREAD_LIMITS,
    Procs,
    Result,
    Worker,
    by_key,
    chunk_executions,
    cli,
    labelq_env,
    read_jsonl,
)

__all__ = [
    "BIN", "CHUNK_DONE", "HOST", "HOSTNAME", "LABELQ", "QUEUE", "READY", "RECEIVED", "SUCCEEDED", "THREAD_LIMITS",
    "Chunk", "Proc", "ProcError", "Procs", "RedisMonitor", "Result", "Worker", "by_key", "chunk_executions", "cli",
    "free_port", "group_members", "labelq_env", "queue_keys", "queue_length", "queued_chunks", "read_jsonl",
    "unacked_chunks", "wait_until",
]
