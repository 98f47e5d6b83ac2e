"""Redis bytes per result record, measured: for sizing the Redis of a labelq stack.

Starts a private ``redis-server`` on a free port (AOF on as in docker-compose.yml, automatic
AOF rewrites off so the growth is measured whole), writes realistic records through
:meth:`labelq.jobs.JobBook.record` in worker-sized batches, and reports per record (one
image x one model):

- ``used_memory`` growth (``INFO memory``): the RAM the data needs, before allocator
  fragmentation and headroom;
- AOF growth on disk, and the RDB snapshot size (``BGSAVE``) for the same data.

Records are written as a worker writes them: chunks of ``--chunk`` objects, each in batches of
``--batch`` (the record store's write, then :meth:`JobBook.record` with (chunk, position, record)
items), then :meth:`JobBook.chunk_done`. Two modes: ``bodies=True`` (records in Redis: the
:class:`labelq.results.redis.RedisStore`, a record JSON in ``labelq:rec:{model}`` and
``labelq:job:{job}:rec:{model}``) and ``bodies=False`` (records in PostgreSQL or Parquet: Redis keeps
only the job's counters and the done chunks' ids). A third row measures the broker queue: bytes per
object while its chunk waits (published with :func:`labelq.producer.publish`, no worker running).

Records look like real ones: ``s3://`` URIs of ~60 characters, S3 etags, top_k=5
ImageNet-1k labels with float32 softmax scores, ISO timestamps, a job and worker name.

    .venv/bin/python bench/redis_bytes.py                 # 10,000 records per mode
    .venv/bin/python bench/redis_bytes.py -n 100000 --batch 64 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from labelq.jobs import JobBook, chunk_id
from labelq.records import Record, utcnow
from labelq.results.redis import RedisStore

MODEL = "timm/mobilenetv3_small_100.lamb_in1k"
JOB = "photos-2026-05"
WORKER = "gpu0@ip-10-0-12-34"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[Any]:
    """A private redis-server (AOF on, RDB snapshots off) and a client; stopped on exit."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: apt-get install redis-server")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
            "--appendonly", "yes", "--appendfsync", "no", "--auto-aof-rewrite-percentage", "0", "--protected-mode", "no", "--loglevel", "warning"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=2)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"redis-server did not start on port {port}") from None
                time.sleep(0.05)
        yield client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def imagenet_labels() -> list[str]:
    """ImageNet-1k class descriptions as a real timm repo names them (``tabby, tabby cat``...)."""
    from labelq.testing import timm_label_names

    return timm_label_names(1000)


def make_records(n: int, *, labels: list[str], seed: int = 0) -> list[Record]:
    """``n`` records of distinct objects, as a worker writes them for one model."""
    rng = np.random.default_rng(seed)
    now = utcnow()
    out = []
    for i in range(n):
        logits = rng.normal(0.0, 3.0, len(labels)).astype(np.float32)
        probs = np.exp(logits - logits.max())
        probs = (probs / probs.sum()).astype(np.float32)
        top = np.argsort(probs)[::-1][:5]
        top_k = [{"label": labels[int(j)], "score": float(probs[j])} for j in top]
        # s3://photos-prod/uploads/2026/05/17/0a1b2c3d4e5f6a7b8c9d.jpg: 60 characters
        uri = f"s3://photos-prod/uploads/2026/05/{1 + i % 28:02d}/{rng.bytes(10).hex()}.jpg"
        out.append(Record(uri, rng.bytes(16).hex(), MODEL, top_k[0]["label"], top_k[0]["score"], top_k,
                          job=JOB, worker=WORKER, processed_at=now))
    return out


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(records: list[Record], *, bodies: bool, batch: int, chunk: int = 256) -> dict[str, Any]:
    """Write ``records`` as a worker does (chunks of ``chunk``, batches of ``batch``) into a fresh server; bytes per record."""
    with tempfile.TemporaryDirectory(prefix="labelq-redis-bytes-") as tmp:
        folder = Path(tmp)
        with redis_server(folder) as client:
            book = JobBook(client, ttl=30 * 24 * 3600)
            store = RedisStore(client, ttl=30 * 24 * 3600)
            book.open(JOB, source="s3://photos-prod/uploads/2026/05/", models=[MODEL])
            client.bgrewriteaof()  # a compact base file, so the AOF growth below is the records' own
            _wait_persist(client, "aof_rewrite_in_progress")
            mem0 = int(client.info("memory")["used_memory"])
            aof0 = folder_bytes(folder / "appendonlydir")
            start = time.perf_counter()
            for c in range(0, len(records), chunk):
                part = records[c : c + chunk]
                cid = chunk_id(JOB, [MODEL], [r.uri for r in part])
                for i in range(0, len(part), batch):
                    items = [(cid, i + k, rec) for k, rec in enumerate(part[i : i + batch])]
                    if bodies:
                        store.write([rec for _, _, rec in items], chunk=cid)
                    book.record(JOB, items)
                book.chunk_done(JOB, cid)
            seconds = time.perf_counter() - start
            mem1 = int(client.info("memory")["used_memory"])
            aof1 = folder_bytes(folder / "appendonlydir")
            client.bgsave()
            _wait_persist(client, "rdb_bgsave_in_progress")
            rdb = (folder / "dump.rdb").stat().st_size
            info = book.info(JOB)
            assert info is not None and info.ok == len(records), info
    n = len(records)
    return {
        "records": n,
        "bodies": bodies,
        "batch": batch,
        "chunk": chunk,
        "used_memory_per_record": round((mem1 - mem0) / n, 1),
        "aof_per_record": round((aof1 - aof0) / n, 1),
        "rdb_per_record": round(rdb / n, 1),
        "json_per_record": round(sum(len(r.to_json().encode()) for r in records) / n, 1),
        "uri_chars": round(sum(len(r.uri) for r in records) / n, 1),
        "writes_per_s": round(n / seconds),
    }


def measure_queue(records: list[Record], *, chunk: int) -> dict[str, Any]:
    """Publish the records' objects as label_chunk messages (nobody consumes them); bytes per object."""
    from labelq.config import load_settings
    from labelq.objects import ObjectRef
    from labelq.producer import publish
    from labelq.tasks import make_app

    with tempfile.TemporaryDirectory(prefix="labelq-redis-bytes-") as tmp, redis_server(Path(tmp)) as client:
        port = client.connection_pool.connection_kwargs["port"]
        settings = load_settings(broker_url=f"redis://127.0.0.1:{port}/0", chunk_size=chunk, models=[MODEL])
        app = make_app(settings)
        refs = [ObjectRef(r.uri, 250_000 + i, r.etag) for i, r in enumerate(records)]
        publish(app, settings, JOB, refs[:1], [MODEL], f"{JOB}:warm")  # the queue's own key and the connection
        client.delete(settings.queue)
        mem0 = int(client.info("memory")["used_memory"])
        for n, start in enumerate(range(0, len(refs), chunk)):
            publish(app, settings, JOB, refs[start : start + chunk], [MODEL], f"{JOB}:{n}")
        mem1 = int(client.info("memory")["used_memory"])
        messages = int(client.llen(settings.queue))
        app.pool.force_close_all()
    n = len(records)
    assert messages == -(-n // chunk), messages
    return {"records": n, "queue": True, "chunk": chunk, "used_memory_per_object": round((mem1 - mem0) / n, 1),
            "bytes_per_message": round((mem1 - mem0) / messages)}


def _wait_persist(client: Any, flag: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    time.sleep(0.05)
    while int(client.info("persistence").get(flag, 0)) and time.monotonic() < deadline:
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--records", type=int, default=10_000, help="records per mode (default 10000)")
    parser.add_argument("--batch", type=int, default=32, help="records per JobBook.record call (default 32)")
    parser.add_argument("--chunk", type=int, default=256, help="objects per chunk (default 256, LABELQ_CHUNK_SIZE)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = parser.parse_args(argv)
    records = make_records(args.records, labels=imagenet_labels())
    results = [measure(records, bodies=bodies, batch=args.batch, chunk=args.chunk) for bodies in (True, False)]
    queue = measure_queue(records, chunk=args.chunk)
    if args.json:
        for row in [*results, queue]:
            print(json.dumps(row))
        return 0
    print(f"{args.records} records (1 model, top_k=5 ImageNet labels, URIs of ~{results[0]['uri_chars']:.0f} chars, "
          f"record JSON ~{results[0]['json_per_record']:.0f} B), chunks of {args.chunk} in batches of {args.batch}, "
          f"{redis_version()}")
    print(f"{'store':<34}{'RAM B/rec':>10}{'AOF B/rec':>11}{'RDB B/rec':>11}{'writes/s':>10}")
    for row in results:
        name = "records in Redis (RedisStore)" if row["bodies"] else "records in SQL/Parquet (job book)"
        print(f"{name:<34}{row['used_memory_per_record']:>10.0f}{row['aof_per_record']:>11.0f}"
              f"{row['rdb_per_record']:>11.0f}{row['writes_per_s']:>10}")
    print(f"{'queued chunks (per object)':<34}{queue['used_memory_per_object']:>10.0f}"
          f"   ({queue['bytes_per_message']} B per message of {args.chunk} refs)")
    return 0


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False).stdout
    return "redis " + out.split(" v=")[1].split()[0] if " v=" in out else "redis ?"


if __name__ == "__main__":
    sys.exit(main())
