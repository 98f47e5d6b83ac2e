"""``python -m bench scale``: N worker processes against one Redis, with a SIMULATED model.

Real parts: one redis-server; labelq's producer (:func:`labelq.producer.enqueue`
over a manifest of ``s3://sim/...`` URIs, with its skip check and job book
writes); labelq's Celery configuration and queue; N Celery worker processes
(``--pool solo``, as ``labelq worker`` starts them) whose task writes each batch's
records through :meth:`JobBook.record` as the real task does. Simulated part: the
model and the image pipeline: a fixed sleep per batch (see
:mod:`bench.scale_worker`). So ideal throughput is exactly
``N * batch_size / batch_seconds``, and anything short of it is coordination cost.

Reported per N: efficiency (measured / ideal images/s, measured from the start of
enqueueing to the job's ``finished_at``), Redis round trips per image (counted in
redis-py in the producer and every worker; a pipeline or script call is one),
Redis commands per image (``INFO commandstats`` deltas, commands inside Lua
scripts included) and Redis CPU per image.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from .common import OUT, cores, log
from .servers import Proc, Redis, commandstats, wait_until

MODEL = "simulated-model"


@contextlib.contextmanager
def counting_round_trips() -> Iterator[list[int]]:
    """Count redis-py sends (round trips) made in this process inside the block."""
    import redis.connection

    box = [0]
    original = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> Any:
        box[0] += 1
        return original(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    try:
        yield box
    finally:
        redis.connection.AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


def _parse(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def run(ns: list[int], *, chunks_per_worker: int, batch_s: float, batch_size: int, chunk_size: int,
        variant: str = "labelq", more_chunk_sizes: tuple[int, ...] = ()) -> dict[str, Any]:
    """Rows for each N at ``chunk_size``; then, on the same N = max(ns) workers, one row per
    ``more_chunk_sizes`` (the chunk size is the producer's setting; workers do not change),
    with the same images per worker."""
    from labelq.config import load_settings
    from labelq.jobs import JobBook
    from labelq.redis_store import RedisStore, connect
    from labelq.worker import make_app

    counts_dir = OUT / "scale-counts"
    shutil.rmtree(counts_dir, ignore_errors=True)
    counts_dir.mkdir(parents=True)
    manifests = OUT / "scale-manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    rows = []
    with Redis("scale-redis") as server:
        env = dict(os.environ)
        env.update({
            "LABELQ_BROKER_URL": server.url,
            "LABELQ_MODELS": MODEL,
            "LABELQ_BATCH_SIZE": str(batch_size),
            "LABELQ_CHUNK_SIZE": str(chunk_size),
            "BENCH_SIM_BATCH_S": str(batch_s),
            "BENCH_SIM_COUNTS": str(counts_dir),
            "BENCH_SIM_VARIANT": variant,
        })
        settings = load_settings(broker_url=server.url, models=[MODEL], batch_size=batch_size, chunk_size=chunk_size)
        app = make_app(settings)
        client = connect(server.url)
        book = JobBook(client, ttl=settings.result_ttl)
        store = RedisStore(client, ttl=settings.result_ttl)
        workers: list[Proc] = []
        try:
            for n in ns:
                start_s = _start_workers(workers, n, env)
                rows.append(_one(n, server, client, app, book, store, settings, counts_dir, manifests,
                                 chunks_per_worker=chunks_per_worker, batch_s=batch_s, start_s=start_s))
            for size in more_chunk_sizes:
                other = settings.model_copy(update={"chunk_size": size})
                per_worker = max(2, round(chunks_per_worker * chunk_size / size))
                rows.append(_one(max(ns), server, client, app, book, store, other, counts_dir, manifests,
                                 chunks_per_worker=per_worker, batch_s=batch_s, start_s=0.0))
        finally:
            for w in workers:
                w.stop(timeout=30)
    return {"simulation": True, "model": "SIMULATED: fixed sleep per batch, no fetch/decode/model", "variant": variant,
            "batch_seconds": batch_s, "batch_size": batch_size, "chunk_size": chunk_size,
            "chunks_per_worker": chunks_per_worker, "cores": cores(), "rows": rows}


def _start_workers(workers: list[Proc], n: int, env: dict[str, str]) -> float:
    start = time.perf_counter()
    while len(workers) < n:
        i = len(workers)
        name = f"sim{i}@{socket.gethostname()}"
        wenv = dict(env, LABELQ_WORKER_NAME=name)
        workers.append(Proc([sys.executable, "-m", "celery", "-A", "bench.scale_worker", "worker", "--pool", "solo",
                             "-n", name, "-Q", "labelq", "--loglevel", "INFO", "--without-gossip",
                             "--without-mingle", "--without-heartbeat"], f"sim-worker-{i}", env=wenv))
    for w in workers:
        wait_until(partial(_ready, w), timeout=300, what=w.name, alive=w.alive)
    return time.perf_counter() - start


def _ready(worker: Proc) -> bool:
    return b" ready" in worker.log.read_bytes()


def _one(n: int, server: Redis, client: Any, app: Any, book: Any, store: Any, settings: Any, counts_dir: Path,
         manifests: Path, *, chunks_per_worker: int, batch_s: float, start_s: float) -> dict[str, Any]:
    from labelq.producer import enqueue

    images = n * chunks_per_worker * settings.chunk_size
    job = f"sim-n{n}-{int(time.time())}"
    manifest = manifests / f"{job}.txt"  # URIs new to the result store: nothing is skipped
    manifest.write_text("".join(f"s3://sim/{job}/img_{k:08d}.jpg\n" for k in range(images)), encoding="utf-8")
    stats0, cpu0 = commandstats(client), _redis_cpu(client)
    t0 = time.time()
    with counting_round_trips() as producer_rt:
        enqueue(str(manifest), settings, app=app, book=book, store=store, job=job, force=False)
    producer_s = time.time() - t0
    polls = 0
    while True:
        state = client.hget(f"labelq:job:{job}", "state")
        polls += 1
        if state == b"done":
            break
        time.sleep(0.25)
    finished = client.hget(f"labelq:job:{job}", "finished_at").decode()
    seconds = _parse(finished) - t0
    cpu1, stats1 = _redis_cpu(client), commandstats(client)
    deltas = {k: v - stats0.get(k, 0) for k, v in stats1.items() if v - stats0.get(k, 0) > 0}
    deltas["hget"] = deltas.get("hget", 0) - polls - 1  # this driver's own polling
    deltas.pop("info", None)
    time.sleep(0.3)  # the last task's count file
    worker_rt = 0
    for f in counts_dir.glob("*.json"):
        with contextlib.suppress(ValueError, OSError):
            worker_rt += int(json.loads(f.read_text())["round_trips"].get(job, 0))
    ideal = n * settings.batch_size / batch_s
    measured = images / seconds
    commands = sum(deltas.values())
    row = {
        "workers": n, "chunk_size": settings.chunk_size, "images": images, "seconds": round(seconds, 3), "images_per_s": round(measured, 1),
        "ideal_images_per_s": round(ideal, 1), "efficiency": round(measured / ideal, 4),
        "round_trips_per_image": round((worker_rt + producer_rt[0]) / images, 4),
        "worker_round_trips_per_image": round(worker_rt / images, 4),
        "producer_round_trips_per_image": round(producer_rt[0] / images, 4),
        "commands_per_image": round(commands / images, 3),
        "commands": dict(sorted(((k, round(v / images, 4)) for k, v in deltas.items()), key=lambda kv: -kv[1])),
        "redis_cpu_us_per_image": round(1e6 * (cpu1 - cpu0) / images, 1),
        "producer_seconds": round(producer_s, 2), "workers_start_s": round(start_s, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    log(f"  scale N={n:<3} chunk {settings.chunk_size:<4} {measured:8.0f} img/s of ideal {ideal:6.0f}: efficiency {100 * measured / ideal:5.1f}%  "
        f"round trips/img {row['round_trips_per_image']:.3f}  commands/img {row['commands_per_image']:.2f}  "
        f"Redis CPU {row['redis_cpu_us_per_image']:.0f} µs/img")
    return row


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
