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
    """Count redis-py sends (round trips) made by this thread inside the block."""
    import threading

    import redis.connection

    box = [0]
    original = redis.connection.AbstractConnection.send_packed_command
    me = threading.get_ident()

    def counted(self: Any, command: Any, check_health: bool = True) -> Any:
        if threading.get_ident() == me:
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
    from labelq.redis_client import connect
    from labelq.services import open_records
    from labelq.tasks import make_app

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
        store = open_records(settings, client)  # the job Redis itself (LABELQ_RESULTS_URL unset)
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


# ----------------------------------------------------------------------------- one large job

INVENTORY_SCHEMA = "Bucket, Key, Size, LastModifiedDate, ETag, StorageClass"


def write_inventory(folder: Path, objects: int, *, parts: int = 10, bucket: str = "sim-photos") -> Path:
    """A local S3 Inventory report (CSV, gzipped parts) of ``objects`` JPEG keys; its manifest.json."""
    import gzip

    shutil.rmtree(folder, ignore_errors=True)
    (folder / "data").mkdir(parents=True)
    files = []
    per = -(-objects // parts)
    for p in range(parts):
        name = f"data/part-{p:04d}.csv.gz"
        with gzip.open(folder / name, "wt", encoding="utf-8", compresslevel=1) as f:
            for k in range(p * per, min(objects, (p + 1) * per)):
                # s3://sim-photos/uploads/2026/05/17/00123456-0a1b2c3d4e5f.jpg: ~60 characters, as real keys
                f.write(f"{bucket},uploads/2026/05/{1 + k % 28:02d}/{k:08d}-{k * 2654435761 % 2**48:012x}.jpg,"
                        f"{250_000 + k % 9973},2026-05-17T03:00:00.000Z,\"{k:032x}\",STANDARD\n")
        files.append({"key": name, "size": (folder / name).stat().st_size, "MD5checksum": ""})
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"sourceBucket": bucket, "destinationBucket": f"arn:aws:s3:::{bucket}-inv",
                                    "fileFormat": "CSV", "fileSchema": INVENTORY_SCHEMA, "files": files}))
    return manifest


class Sampler:
    """Polls the broker queue, the bounded-queue zset and ``used_memory`` from a thread of its own."""

    def __init__(self, client: Any, queue: str, every: float = 0.05) -> None:
        import threading

        self.client, self.queue, self.every = client, queue, every
        self.max_queue = self.max_waiting = self.max_memory = 0
        self.calls = {"llen": 0, "zcard": 0, "info": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from labelq import keys

        n = 0
        while not self._stop.is_set():
            self.max_queue = max(self.max_queue, int(self.client.llen(self.queue)))
            self.max_waiting = max(self.max_waiting, int(self.client.zcard(keys.CHUNKS)))
            self.calls["llen"] += 1
            self.calls["zcard"] += 1
            if n % 10 == 0:
                self.max_memory = max(self.max_memory, int(self.client.info("memory")["used_memory"]))
                self.calls["info"] += 1
            n += 1
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def run_large(objects: int, *, workers: int, chunk_size: int, batch_size: int, batch_s: float, bound: int,
              sink: str = "parquet") -> dict[str, Any]:
    """One job of ``objects`` through the real producer (an S3 Inventory report on local disk), the
    broker and ``workers`` simulated workers, records into a Parquet folder: what Redis holds per
    object at the end, the largest queue seen, round trips per object."""
    from labelq import keys
    from labelq.config import load_settings
    from labelq.jobs import JobBook
    from labelq.producer import enqueue
    from labelq.redis_client import connect
    from labelq.services import open_records
    from labelq.tasks import make_app

    counts_dir = OUT / "scale-large-counts"
    shutil.rmtree(counts_dir, ignore_errors=True)
    counts_dir.mkdir(parents=True)
    sink_dir = OUT / "scale-large-parquet"
    shutil.rmtree(sink_dir, ignore_errors=True)
    if sink != "parquet":
        raise SystemExit("only the Parquet sink is wired here (parquet:///...)")
    results_url = f"parquet://{sink_dir.resolve()}"
    t = time.perf_counter()
    manifest = write_inventory(OUT / "scale-large-inventory", objects)
    log(f"  inventory of {objects} objects written in {time.perf_counter() - t:.1f}s: {manifest}")
    job = f"large-{objects}-{int(time.time())}"
    with Redis("scale-large-redis") as server:
        env = dict(os.environ)
        env.update({
            "LABELQ_BROKER_URL": server.url, "LABELQ_MODELS": MODEL, "LABELQ_RESULTS_URL": results_url,
            "LABELQ_BATCH_SIZE": str(batch_size), "LABELQ_CHUNK_SIZE": str(chunk_size),
            "LABELQ_MAX_QUEUED_CHUNKS": str(bound), "BENCH_SIM_BATCH_S": str(batch_s),
            "BENCH_SIM_COUNTS": str(counts_dir), "BENCH_SIM_VARIANT": "labelq",
            "OMP_NUM_THREADS": "1",
        })
        settings = load_settings(broker_url=server.url, models=[MODEL], batch_size=batch_size, chunk_size=chunk_size,
                                 max_queued_chunks=bound, results_url=results_url)
        app = make_app(settings)
        client = connect(server.url)
        book = JobBook(client, ttl=settings.result_ttl)
        store = open_records(settings, client)
        procs: list[Proc] = []
        try:
            start_s = _start_workers(procs, workers, env)
            time.sleep(1.0)
            mem0, memstats0 = int(client.info("memory")["used_memory"]), _memory_stats(client)
            stats0, processed0 = commandstats(client), int(client.info("stats")["total_commands_processed"])
            t0 = time.time()
            polls = 0
            with Sampler(client, settings.queue) as sampler:
                with counting_round_trips() as producer_rt:
                    result = enqueue(str(manifest), settings, app=app, book=book, store=store, job=job)
                producer_s = time.time() - t0
                while client.hget(keys.job(job), "state") not in (b"done", b"failed"):
                    polls += 1
                    time.sleep(0.25)
                polls += 1
            seconds = _parse(client.hget(keys.job(job), "finished_at").decode()) - t0
            time.sleep(1.5)  # the last tasks' acks and count files
            mem1, memstats1 = int(client.info("memory")["used_memory"]), _memory_stats(client)
            stats1, processed1 = commandstats(client), int(client.info("stats")["total_commands_processed"])
            info = book.info(job)
            breakdown = _job_memory(client, job)
            slowlog = int(client.slowlog_len())  # Lua calls over 10 ms on a loaded machine (at most 128 kept)
        finally:
            for w in procs:
                w.stop(timeout=30)
    assert info is not None
    deltas = {k: v - stats0.get(k, 0) for k, v in stats1.items() if v - stats0.get(k, 0) > 0}
    own = {"hget": polls + 2, "hgetall": 0, "info": sampler.calls["info"] + 3, "llen": sampler.calls["llen"],
           "zcard": sampler.calls["zcard"]}  # this driver's own polling (and its final reads)
    for k, v in own.items():
        if k in deltas:
            deltas[k] = max(0, deltas[k] - v)
    worker_rt = 0
    for f in counts_dir.glob("*.json"):
        with contextlib.suppress(ValueError, OSError):
            worker_rt += int(json.loads(f.read_text())["round_trips"].get(job, 0))
    rows = _parquet_rows(sink_dir)
    n = objects
    growth = mem1 - mem0
    row = {
        "objects": n, "job": job, "state": info.state, "total": info.total, "ok": info.ok, "error": info.error,
        "dead": info.dead, "listed": info.listed, "enqueued": info.enqueued, "chunks": info.chunks,
        "chunks_done": info.chunks_done, "sink": f"Parquet folder ({results_url})", "sink_rows": rows,
        "workers": workers, "chunk_size": chunk_size, "batch_size": batch_size, "batch_seconds": batch_s,
        "bound": bound, "seconds": round(seconds, 1), "objects_per_s": round(n / seconds),
        "producer_seconds": round(producer_s, 1), "producer_state": result.state, "workers_start_s": round(start_s, 1),
        "used_memory_before": mem0, "used_memory_after": mem1, "used_memory_peak_seen": sampler.max_memory,
        "used_memory_growth": growth, "used_memory_growth_per_object": round(growth / n, 3),
        "peak_growth_per_object": round((sampler.max_memory - mem0) / n, 3),
        "job_keys_bytes": breakdown,
        "slowlog_entries": slowlog,
        "memory_stats_growth": {k: memstats1.get(k, 0) - v for k, v in memstats0.items()},
        "max_queue_length": sampler.max_queue, "max_waiting_chunks": sampler.max_waiting,
        "round_trips_per_object": round((worker_rt + producer_rt[0]) / n, 4),
        "worker_round_trips_per_object": round(worker_rt / n, 4),
        "producer_round_trips_per_object": round(producer_rt[0] / n, 4),
        "commandstats_calls_per_object": round(sum(deltas.values()) / n, 3),
        "commands_processed_per_object": round((processed1 - processed0 - sum(own.values())) / n, 4),
        "commands": dict(sorted(((k, round(v / n, 4)) for k, v in deltas.items()), key=lambda kv: -kv[1])),
        "cores": cores(), "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    log(f"  large job: {n} objects in {seconds:.0f}s ({n / seconds:.0f}/s), Redis +{growth} B "
        f"({growth / n:.2f} B/object), largest queue {sampler.max_queue} (bound {bound}), round trips/object "
        f"{row['round_trips_per_object']:.4f}, state {info.state} ok {info.ok}")
    return row


def _memory_stats(client: Any) -> dict[str, int]:
    """The parts of ``used_memory`` (MEMORY STATS): data, per-key overhead, client buffers, script caches."""
    raw = client.memory_stats()
    wanted = ("dataset.bytes", "overhead.total", "clients.normal", "clients.slaves", "lua.caches", "functions.caches",
              "overhead.hashtable.main", "overhead.hashtable.expires", "startup.allocated", "aof.buffer",
              "replication.backlog", "keys.count")
    return {k: int(raw[k]) for k in wanted if isinstance(raw.get(k), int)}


def _job_memory(client: Any, job: str) -> dict[str, int]:
    """MEMORY USAGE of every key labelq keeps for the job, and of the broker's own keys."""
    out: dict[str, int] = {}
    for key in client.scan_iter(count=1000):
        name = key.decode()
        usage = int(client.memory_usage(key, samples=0) or 0)
        label = name.replace(job, "{job}")
        if ":chunk:" in label:
            label = "labelq:job:{job}:chunk:* (chunks in flight)"
        out[label] = out.get(label, 0) + usage
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _parquet_rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(p).num_rows for p in folder.rglob("*.parquet"))


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.scale``: the one-large-job measurement (``python -m bench scale`` runs the N sweep)."""
    import argparse

    from .common import machine, offline_env, write_json

    parser = argparse.ArgumentParser(description=run_large.__doc__)
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2, help="simulated worker processes")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batch-seconds", type=float, default=0.0, help="simulated model time per batch")
    parser.add_argument("--bound", type=int, default=100, help="LABELQ_MAX_QUEUED_CHUNKS")
    args = parser.parse_args(argv)
    offline_env()
    row = run_large(args.objects, workers=args.workers, chunk_size=args.chunk_size, batch_size=args.batch_size,
                    batch_s=args.batch_seconds, bound=args.bound)
    row["machine"] = machine()
    row["command"] = "python -m bench.scale " + " ".join(sys.argv[1:] if argv is None else argv)
    write_json(OUT / "scale-large.json", row)
    print(json.dumps({k: v for k, v in row.items() if k != "machine"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
