"""``python -m bench sinks``: records/s into the durable record stores from N concurrent writers.

Real parts: a private PostgreSQL cluster with durable commits (``fsync``, ``synchronous_commit`` and
``full_page_writes`` on: PostgreSQL's defaults, unlike the test cluster), a local folder, moto's S3
over HTTP, and labelq's own stores (:mod:`labelq.results`). Simulated part: the records (realistic
sizes: an S3 uri, a 5-entry top-k, a hub model id and revision), made before the clock starts.

Measured:

* PostgreSQL batch write method, one writer: COPY into a temp table + ``INSERT ... SELECT ... ON
  CONFLICT`` vs multi-row ``INSERT ... VALUES ... ON CONFLICT`` vs psycopg's pipelined executemany;
* records/s with N writer processes, each writing its own job's chunks as a worker would
  (PostgreSQL: one transaction per batch; Parquet: one file per chunk, local folder and moto S3);
* the skip check (:func:`labelq.results.settled` over groups of 500 listed objects) against the
  written data: objects checked per second.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import OUT, cores, log, machine, write_json

MODEL = "org/simulated-classifier"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def records(worker: int, n: int, job: str) -> list[Any]:
    from labelq.records import Record

    top = [{"label": f"class_{k}", "score": round(0.9 / (k + 1), 6)} for k in range(5)]
    return [
        Record(f"s3://images-prod/2026/12/02/w{worker:02d}/{i:09d}.jpg", f'"{worker:02d}{i:030d}"', MODEL,
               top[0]["label"], top[0]["score"], top, job=job, worker=f"celery@host-{worker}",
               processed_at="2026-12-02T00:00:00.000Z", model_revision=REVISION)
        for i in range(n)
    ]


# ---------------------------------------------------------------- PostgreSQL with durable commits


def group_cpu(root: int | None) -> float:
    """CPU seconds of a process and all its descendants, exited children included (the postmaster reaps
    its backends into its own children's time). PostgreSQL's children setsid(): a process group misses them."""
    from tests.support.procs import proc_cpu as _proc_cpu

    if not root:
        return 0.0
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return sum(_proc_cpu(pid) for pid in tree)


@contextlib.contextmanager
def durable_postgres() -> Iterator[tuple[str, int]]:
    """initdb + postgres on a free port with PostgreSQL's durable defaults; yields (SQLAlchemy URL, the server's root pid)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.support.postgres import PG_DIRS
    from tests.support.postgres import connect_pg as _connect_pg
    from tests.support.procs import HOST, free_port, wait_until, which

    initdb = which("initdb", "postgresql", PG_DIRS)
    postgres = str(Path(os.path.realpath(initdb)).with_name("postgres"))
    folder = Path(tempfile.mkdtemp(prefix="labelq-bench-pg-"))
    owner = []
    if os.geteuid() == 0:  # initdb refuses root
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        owner = [which("runuser", "util-linux"), "-u", "postgres", "--"]
    folder.chmod(0o700)
    data = folder / "data"
    subprocess.run([*owner, initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C",
                    "--no-instructions"], check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([*owner, postgres, "-D", str(data), "-p", str(port), "-h", HOST, "-k", str(folder),
                             "-c", "max_connections=100", "-c", "shared_buffers=256MB"],
                            stdout=subprocess.DEVNULL, stderr=(folder / "log").open("wb"), start_new_session=True)
    try:
        wait_until(lambda: _connect_pg(port).close() is None, timeout=30, what="postgres", alive=lambda: proc.poll() is None)
        with contextlib.closing(_connect_pg(port)) as conn:
            conn.execute('CREATE DATABASE "bench"')
            settings = {name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                        for name in ("fsync", "synchronous_commit", "full_page_writes")}
        log(f"PostgreSQL (private, durable: {settings}) on port {port}")
        yield f"postgresql+psycopg://postgres@{HOST}:{port}/bench", proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- writers


def _writer(url: str, kwargs: dict[str, Any], tag: str, worker: int, n: int, batch: int, chunk: int, go: Any,
            ready: Any, out: Any) -> None:
    """One worker process: open the store, make its records, wait for the start, write them."""
    from labelq.results import open_store

    if "s3_endpoint" in kwargs:
        import boto3

        kwargs = {"s3_client": boto3.client("s3", endpoint_url=kwargs["s3_endpoint"], region_name="us-east-1")}
    store = open_store(url, **kwargs)
    job = f"bench-{tag}-{worker}"  # a fresh job per run: rows are inserted, as a new job's are
    recs = records(worker, n, job)
    store.write(records(worker + 1000, 8, "warm-up"), chunk="warm-up:0")  # connect, create the temp table
    ready.put(worker)
    go.wait()
    cpu = time.process_time()
    start = time.perf_counter()
    for c in range(0, n, chunk):
        group = recs[c : c + chunk]
        if store.per_chunk:
            store.write(group, chunk=f"{job}:{c // chunk}")
        else:
            for b in range(0, len(group), batch):
                store.write(group[b : b + batch])
    out.put((worker, start, time.perf_counter(), time.process_time() - cpu))
    store.close()


def concurrent(url: str, workers: int, per_worker: int, *, batch: int, chunk: int, server: int | None = None,
               **kwargs: Any) -> dict[str, Any]:
    """N spawned writer processes started together; records/s over the wall time of all of them, and CPU
    per record in the writers and (``server``: its process group) in the database server."""
    ctx = mp.get_context("spawn")
    go, ready, out = ctx.Event(), ctx.Queue(), ctx.Queue()
    tag = uuid.uuid4().hex[:8]
    procs = [ctx.Process(target=_writer, args=(url, kwargs, tag, w, per_worker, batch, chunk, go, ready, out))
             for w in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    server_before = group_cpu(server)
    go.set()
    spans = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    time.sleep(0.5)  # backends exit and are reaped: their CPU lands in the postmaster's
    wall = max(span[2] for span in spans) - min(span[1] for span in spans)
    total = workers * per_worker
    return {"workers": workers, "records": total, "seconds": round(wall, 3), "records_per_s": round(total / wall),
            "batch": batch, "chunk": chunk, "client_cpu_us_per_record": round(1e6 * sum(s[3] for s in spans) / total, 1),
            "server_cpu_us_per_record": round(1e6 * (group_cpu(server) - server_before) / total, 1) if server else None,
            "load_avg_1m": round(os.getloadavg()[0], 1)}


def pg_methods(url: str, server: int, n: int, batches: tuple[int, ...], repeat: int) -> list[dict[str, Any]]:
    """One writer, each method, each batch size; best of ``repeat`` (fresh job ids: inserts, not updates)."""
    from labelq.results.sql import PG_METHODS, SQLStore

    rows = []
    for batch in batches:
        for method in PG_METHODS:
            store = SQLStore(url, pg_method=method)
            store.write(records(99, 8, "warm-up"))
            best = float("inf")
            cpu_client: list[float] = []
            cpu_server: list[float] = []
            for r in range(repeat):
                recs = records(0, n, f"methods-{method}-{batch}-{r}")
                server_before, client_before = group_cpu(server), time.process_time()
                start = time.perf_counter()
                for b in range(0, n, batch):
                    store.write(recs[b : b + batch])
                best = min(best, time.perf_counter() - start)
                cpu_client.append(time.process_time() - client_before)
                cpu_server.append(group_cpu(server) - server_before)
            # the same records again: a redelivered chunk (every row an update)
            start = time.perf_counter()
            for b in range(0, n, batch):
                store.write(recs[b : b + batch])
            update = time.perf_counter() - start
            store.close()
            row = {"method": method, "batch": batch, "records": n, "insert_records_per_s": round(n / best),
                   "upsert_existing_records_per_s": round(n / update),
                   "client_cpu_us_per_record": round(1e6 * min(cpu_client) / n, 1),
                   "server_cpu_us_per_record": round(1e6 * min(cpu_server) / n, 1),
                   "load_avg_1m": round(os.getloadavg()[0], 1)}
            log(f"  PostgreSQL {method:<12} batch {batch:>4}: {row['insert_records_per_s']:>7} rec/s new, "
                f"{row['upsert_existing_records_per_s']:>7} rec/s redelivered; CPU µs/record: client "
                f"{row['client_cpu_us_per_record']}, server {row['server_cpu_us_per_record']}")
            rows.append(row)
    return rows


def skip_rate(url: str, workers: int, per_worker: int, **kwargs: Any) -> dict[str, Any]:
    """settled() over every written object, in listing-order groups of 500: objects checked per second."""
    from labelq.objects import ObjectRef
    from labelq.results import open_store, settled

    store = open_store(url, **kwargs)
    refs = [ObjectRef(r.uri, 1, r.etag) for w in range(workers) for r in records(w, per_worker, "x")]
    start = time.perf_counter()
    done = 0
    for g in range(0, len(refs), 500):
        finished, _ = settled(store, refs[g : g + 500], [MODEL], {MODEL: REVISION})
        done += len(finished)
    seconds = time.perf_counter() - start
    store.close()
    assert done == len(refs), (done, len(refs))
    return {"objects": len(refs), "seconds": round(seconds, 3), "objects_per_s": round(len(refs) / seconds)}


def run(*, workers: list[int], per_worker: int, quick: bool = False) -> dict[str, Any]:
    from .servers import Moto

    res: dict[str, Any] = {"machine": machine(), "cores": cores(), "workers": workers, "per_worker": per_worker,
                           "command": "python -m bench " + " ".join(sys.argv[1:])}
    with durable_postgres() as (pg, server):
        log("PostgreSQL batch write methods (one writer):")
        res["pg_methods"] = pg_methods(pg, server, 5_000 if quick else 20_000, (64, 256, 1024), 1 if quick else 2)
        cost: dict[str, float] = {}  # CPU per record (writer + server) over the batch sizes: robust to a busy machine
        for r in res["pg_methods"]:
            cost[r["method"]] = cost.get(r["method"], 0.0) + r["client_cpu_us_per_record"] + r["server_cpu_us_per_record"]
        best = {"method": min(cost, key=cost.__getitem__)}
        res["pg_method_chosen"] = best["method"]
        log(f"PostgreSQL, {best['method']}, N writers (batch 64 = a 32-image batch of 2 models; 256):")
        res["pg"] = []
        for batch in (64, 256):
            for n in workers:
                row = concurrent(pg, n, per_worker, batch=batch, chunk=256, server=server, pg_method=best["method"])
                row["method"] = best["method"]
                log(f"  N={n:<3} batch {batch:>4}: {row['records_per_s']:>7} rec/s; CPU µs/record: client "
                    f"{row['client_cpu_us_per_record']}, server {row['server_cpu_us_per_record']}")
                res["pg"].append(row)
        res["pg_skip"] = skip_rate(pg, max(workers), per_worker)
        log(f"  skip check: {res['pg_skip']['objects_per_s']} objects/s")
    folder = Path(tempfile.mkdtemp(prefix="labelq-bench-parquet-"))
    try:
        url = f"parquet://{folder}"
        log("Parquet, local folder, N writers (one file per 256-record chunk):")
        res["parquet_local"] = []
        for n in workers:
            row = concurrent(url, n, per_worker, batch=64, chunk=256)
            log(f"  N={n:<3}: {row['records_per_s']:>7} rec/s; CPU µs/record: writer {row['client_cpu_us_per_record']}")
            res["parquet_local"].append(row)
        res["parquet_local_skip"] = skip_rate(url, max(workers), per_worker)
        log(f"  skip check: {res['parquet_local_skip']['objects_per_s']} objects/s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    with Moto() as moto:
        client = moto.client()
        client.create_bucket(Bucket="bench")
        url = "parquet+s3://bench/records"
        log("Parquet on moto S3 (a single-process Python server: a floor, not S3's speed), N writers:")
        res["parquet_s3"] = []
        for n in workers:
            row = concurrent(url, n, per_worker // 4, batch=64, chunk=256, s3_endpoint=moto.endpoint_url)
            log(f"  N={n:<3}: {row['records_per_s']:>7} rec/s")
            res["parquet_s3"].append(row)
        res["parquet_s3_skip"] = skip_rate(url, max(workers), per_worker // 4, s3_client=client)
        log(f"  skip check: {res['parquet_s3_skip']['objects_per_s']} objects/s")
    write_json(OUT / "sinks.json", res)
    return res


def table(res: dict[str, Any]) -> str:
    lines = ["| sink | writers | records per write | records/s | writer CPU µs/rec | server CPU µs/rec | load |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in res["pg"]:
        lines.append(f"| PostgreSQL ({row['method']}) | {row['workers']} | {row['batch']} | {row['records_per_s']:,} | "
                     f"{row['client_cpu_us_per_record']} | {row['server_cpu_us_per_record']} | {row['load_avg_1m']} |")
    for name, key in (("Parquet, local folder", "parquet_local"), ("Parquet, moto S3", "parquet_s3")):
        for row in res[key]:
            lines.append(f"| {name} | {row['workers']} | {row['chunk']} | {row['records_per_s']:,} | "
                         f"{row['client_cpu_us_per_record']} | | {row['load_avg_1m']} |")
    lines += ["", "| PostgreSQL method (1 writer) | batch | new records/s | redelivered records/s | client CPU µs/rec "
              "| server CPU µs/rec |", "|---|---:|---:|---:|---:|---:|"]
    for row in res["pg_methods"]:
        lines.append(f"| {row['method']} | {row['batch']} | {row['insert_records_per_s']:,} | "
                     f"{row['upsert_existing_records_per_s']:,} | {row['client_cpu_us_per_record']} | "
                     f"{row['server_cpu_us_per_record']} |")
    lines += ["", "| skip check (groups of 500) | objects | objects/s |", "|---|---:|---:|"]
    for name, key in (("PostgreSQL", "pg_skip"), ("Parquet, local", "parquet_local_skip"),
                      ("Parquet, moto S3", "parquet_s3_skip")):
        lines.append(f"| {name} | {res[key]['objects']:,} | {res[key]['objects_per_s']:,} |")
    return "\n".join(lines)
