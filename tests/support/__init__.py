"""One set of server and process helpers for tests/ and bench/.

- :mod:`tests.support.procs`: :class:`~tests.support.procs.Proc` (a command in its own
  process group, its output in a log file, restartable, optionally watched by a
  watchdog), :func:`~tests.support.procs.wait_until`, :func:`~tests.support.procs.free_port`,
  :func:`~tests.support.procs.which`, process-group and CPU helpers, the errors.
- :mod:`tests.support.redis`: :class:`~tests.support.redis.RedisServer` and readers of
  the Redis broker (queued and unacked chunks, MONITOR, ``INFO commandstats``).
- :mod:`tests.support.moto`: :class:`~tests.support.moto.MotoServer` (S3 over HTTP).
- :mod:`tests.support.postgres`: :class:`~tests.support.postgres.PostgresServer`.
- :mod:`tests.support.rabbit`: :class:`~tests.support.rabbit.RabbitServer`.
- :mod:`tests.support.workers`: real ``labelq`` processes (workers, the CLI) and the
  environment they get.

Test modules import from these modules directly; bench/servers.py adds bench's defaults (logs in
bench/out/logs, the repo root as working directory). Nothing here imports pytest.
"""
