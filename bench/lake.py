"""``python -m bench lake``: a Delta Lake record table built by the workers' write path, then compacted.

Real parts: labelq's Delta store (:class:`labelq.results.lake.DeltaStore`) in a local folder, written by
N writer processes exactly as workers write (one Parquet file per chunk of ``--chunk`` records, put once,
committed in batches of ``--commit-files`` files), ``DeltaStore.compact`` and DuckDB. Simulated part: the
records (no model; realistic sizes, 10 labels), made in each writer.

Measured: write rate, commits and commits per minute, the table's file count before and after compaction,
compaction time, and ``SELECT label, count(*) … GROUP BY label`` in DuckDB over the table (the table's
``to_pyarrow_dataset()`` registered in DuckDB; DuckDB's own ``delta_scan`` needs its ``delta`` extension,
which DuckDB downloads on first use: tried, and reported when it is not there), before and after.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import OUT, cores, log, machine, write_json

MODEL = "org/simulated-classifier"
REVISION = "0123456789abcdef0123456789abcdef01234567"
LABELS = [f"class_{k}" for k in range(10)]
QUERY = "SELECT label, count(*) AS n FROM labels GROUP BY label ORDER BY label"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("lake", help="a Delta table of 10 M records from the write path: commits, compaction, DuckDB")
    p.add_argument("--records", type=int, default=10_000_000)
    p.add_argument("--writers", type=int, default=2, help="writer processes")
    p.add_argument("--chunk", type=int, default=256, help="records per chunk file (LABELQ_CHUNK_SIZE)")
    p.add_argument("--commit-files", type=int, default=500, help="LABELQ_LAKE_COMMIT_FILES")
    p.add_argument("--target-mb", type=int, default=128, help="LABELQ_LAKE_TARGET_MB")
    p.add_argument("--folder", default=None, help="where the table goes (default: a temporary folder, removed)")
    p.add_argument("--quick", action="store_true", help="200 000 records")


def _writer(url: str, w: int, chunks: range, chunk: int, commit_files: int, out: Any) -> None:
    from labelq.records import Record
    from labelq.results import open_store

    store = open_store(url)
    store.commit_files = commit_files
    store.commit_seconds = 3600.0
    job = "bench-lake"
    top = [{"label": LABELS[k], "score": round(0.9 / (k + 1), 6)} for k in range(5)]
    write_s = 0.0
    for c in chunks:
        base = c * chunk
        recs = [
            Record(f"s3://images-prod/2026/12/06/{(base + i):010d}.jpg", f'"{base + i:032d}"', MODEL,
                   LABELS[(base + i) * 7 % 10], 0.9, top, job=job, worker=f"celery@host-{w}",
                   processed_at="2026-12-06T00:00:00.000Z", model_revision=REVISION)
            for i in range(chunk)
        ]
        t = time.perf_counter()
        store.write(recs, chunk=f"{job}:{c:08d}")
        write_s += time.perf_counter() - t
    t = time.perf_counter()
    store.close()  # commits the tail
    write_s += time.perf_counter() - t
    out.put({"writer": w, "commits": store.commits, "write_s": write_s})


def _query(dt: Any) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect()
    con.register("labels", dt.to_pyarrow_dataset())
    times = []
    rows: list[Any] = []
    for _ in range(3):
        t = time.perf_counter()
        rows = con.sql(QUERY).fetchall()
        times.append(time.perf_counter() - t)
    return {"first_s": round(times[0], 3), "best_s": round(min(times), 3), "rows": sum(n for _, n in rows),
            "labels": len(rows)}


def _delta_scan(root: Path) -> str:
    """Whether DuckDB's own delta_scan works here (its extension is downloaded on first use)."""
    import duckdb

    try:
        con = duckdb.connect()
        con.sql(f"SELECT count(*) FROM delta_scan('{root}')").fetchall()
        return "ok"
    except Exception as exc:  # noqa: BLE001  (reported, not raised: the bench goes on without it)
        return f"unavailable: {str(exc).splitlines()[0][:160]}"


def run(args: argparse.Namespace) -> int:
    from labelq.results import open_store

    n_chunks = -(-(200_000 if args.quick else args.records) // args.chunk)
    total = n_chunks * args.chunk  # whole chunks, as workers write them
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="labelq-lake-"))
    root = folder / "table"
    shutil.rmtree(root, ignore_errors=True)
    url = f"delta://{root}"
    open_store(url).close()  # create the table once
    log(f"lake: {total:,} records in {n_chunks:,} chunk files of {args.chunk}, {args.writers} writers -> {root}")
    ctx = mp.get_context("spawn")  # deltalake's runtime does not survive a fork
    queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, w, range(w, n_chunks, args.writers), args.chunk,
                                                args.commit_files, queue)) for w in range(args.writers)]
    started = time.perf_counter()
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - started
    commits = sum(r["commits"] for r in results)
    store = open_store(url)
    dt = store.table()
    files_before = len(dt.file_uris())
    bytes_before = sum(f.stat().st_size for f in root.glob("job=*/model=*/*.parquet"))
    log(f"  written in {wall:.1f}s ({total / wall:,.0f} records/s), {commits} commits, {files_before:,} files")
    q_before = _query(dt)
    log(f"  GROUP BY label before compaction: {q_before}")
    t = time.perf_counter()
    compacted = store.compact(args.target_mb * 1024 * 1024)
    compact_s = time.perf_counter() - t
    dt = store.table()
    files_after = len(dt.file_uris())
    log(f"  compacted in {compact_s:.1f}s: {compacted}, {files_after} files")
    q_after = _query(dt)
    log(f"  GROUP BY label after compaction: {q_after}")
    scan = _delta_scan(root)
    per_day_files = 1e9 / args.chunk
    res = {
        "machine": machine(), "cores": cores(), "records": total, "chunk": args.chunk, "writers": args.writers,
        "commit_files": args.commit_files, "write_wall_s": round(wall, 1), "records_per_s": round(total / wall),
        "commits": commits, "commits_per_min": round(commits / (wall / 60), 1),
        "files_before": files_before, "bytes_before": bytes_before, "files_after": files_after,
        "compaction": compacted, "compact_s": round(compact_s, 1), "group_by_before": q_before,
        "group_by_after": q_after, "duckdb_delta_scan": scan,
        "at_1e9_per_day": {"files_per_day": round(per_day_files),
                           "commits_per_min": round(per_day_files / args.commit_files / 1440, 1)},
        "exact": q_before["rows"] == total and q_after["rows"] == total,
    }
    write_json(OUT / "lake.json", res)
    print(table(res))
    print(f"wrote {OUT / 'lake.json'}")
    store.close()
    if not args.folder:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if res["exact"] else 1


def table(res: dict[str, Any]) -> str:
    b, a = res["group_by_before"], res["group_by_after"]
    return "\n".join([
        f"records {res['records']:,} by {res['writers']} writers in {res['write_wall_s']} s "
        f"({res['records_per_s']:,}/s); chunk files of {res['chunk']}, commit every {res['commit_files']} files",
        f"commits {res['commits']} ({res['commits_per_min']}/min here; at 1e9 records/day: "
        f"{res['at_1e9_per_day']['commits_per_min']}/min)",
        f"files {res['files_before']:,} ({res['bytes_before'] / 1e6:.0f} MB) -> {res['files_after']:,} after compaction "
        f"({res['compact_s']} s)",
        f"DuckDB GROUP BY label: before {b['first_s']} s first / {b['best_s']} s best; "
        f"after {a['first_s']} s / {a['best_s']} s; rows {a['rows']:,} (exact: {res['exact']})",
        f"DuckDB delta_scan: {res['duckdb_delta_scan']}",
    ])
