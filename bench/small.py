"""``python -m bench small``: whole ``labelq enqueue --wait`` against ``labelq run``'s labelling time, one warm worker.

A short job pays what a long one hides: how the listing is cut into chunks (does every chunk in flight have
work from the start, and do they finish together?) and how ``--wait`` learns that the job is done. On the same
objects in a moto S3 bucket, each round runs, in a rotating order:

* ``labelq run`` in this process (``run_embedded`` from the bucket), timed from before its listing to its last
  record (its summary clock plus its listing's opening): the labelling time;
* ``after``: ``python -m labelq enqueue s3://… --job J --wait`` with this tree's code, against one warm
  ``labelq worker`` of this tree; the whole command, process start to exit (its start-up included);
* ``before`` (``--before /path/to/checkout``): the same with another checkout's code for both the worker and
  the command (PYTHONPATH), e.g. the main branch: fixed chunks and a 0.5 s poll.

Each worker has its own Redis database and queue (one heal lock each), and is idle while the others run. The
ratio ``labelq run seconds ÷ enqueue --wait seconds`` is taken within each round; medians and ranges are
reported, with the load average of the machine at each run (it is shared: ratios only).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .common import log, settle
from .distributed import BUCKET, Variant, _clear_labelq, _enqueue, _job_seconds, _start_worker
from .servers import Moto, Redis

ROOT = Path(__file__).resolve().parents[1]


def _upload(s3: Any, paths: list[Path], prefix: str, n: int) -> None:
    """``n`` objects under ``prefix``: the files, repeated under other keys when ``n`` is larger."""
    def put(i: int) -> None:
        p = paths[i % len(paths)]
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{i // len(paths):03d}-{p.name}", Body=p.read_bytes())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(n)))


def run(model: str, sets: dict[str, tuple[list[Path], int]], *, rounds: dict[str, int], batch_size: int,
        before: Path | None) -> dict[str, Any]:
    """``sets``: name → (image files, objects); ``rounds``: name → rounds. Returns every run's figures."""
    from labelq.embedded import run_embedded

    from .modes import _tmp_db, settings, torch_threads

    out: dict[str, Any] = {"sets": {}, "before": str(before) if before else None}
    with Redis("small-redis") as redis, Moto() as moto:
        s3 = moto.client()
        s3.create_bucket(Bucket=BUCKET)
        first = next(iter(sets.values()))[0]
        _upload(s3, first, "warmup", min(len(first), 2 * batch_size))
        for name, (paths, n) in sets.items():
            start = time.perf_counter()
            _upload(s3, paths, f"small-{name}", n)
            log(f"  uploaded {n} objects ({len(paths)} distinct files) to s3://{BUCKET}/small-{name}/ in "
                f"{time.perf_counter() - start:.0f}s")
        trees = {"after": ROOT, **({"before": before} if before else {})}
        workers: dict[str, Any] = {}
        try:
            for i, (label, tree) in enumerate(trees.items()):
                db = f"redis://127.0.0.1:{redis.port}/{i + 1}"
                # PYTHONSAFEPATH: `python -m labelq` (run from this repo's root) imports the tree's code, not the cwd's
                variant = Variant(label, env=(("PYTHONPATH", str(tree)), ("PYTHONSAFEPATH", "1"),
                                              ("LABELQ_BROKER_URL", db)))
                worker, env, _ = _start_worker(variant, model, first, redis, moto, batch_size=batch_size,
                                               queue=f"labelq-{label}")
                client = redis.client(db=i + 1)
                workers[label] = (worker, env, client)
                _enqueue(env, f"s3://{BUCKET}/warmup/", f"warmup-{label}")
            modes = ["labelq run", *trees]
            for name, (_, n) in sets.items():
                source = f"s3://{BUCKET}/small-{name}/"
                runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
                for r in range(rounds[name]):
                    for mode in modes[r % len(modes):] + modes[: r % len(modes)]:
                        settle()
                        load = os.getloadavg()[0]
                        if mode == "labelq run":
                            with _tmp_db() as db, torch_threads(None):
                                summary = run_embedded(source, settings(Path(model), db_url=db, batch_size=batch_size,
                                                                        s3_endpoint_url=moto.endpoint_url,
                                                                        s3_region="us-east-1"),
                                                       force=True, progress=False)
                            if summary.errors or summary.images != n:
                                raise RuntimeError(f"labelq run: {summary.images} images, {dict(summary.errors)}")
                            runs[mode].append({"seconds": summary.seconds + summary.opening_seconds, "load": load})
                            continue
                        _, env, client = workers[mode]
                        _clear_labelq(client)
                        job = f"small-{name}-{r}"
                        start = time.perf_counter()
                        _enqueue(env, source, job)
                        wall = time.perf_counter() - start
                        runs[mode].append({"seconds": wall, "job_clock": _job_seconds(client, job, n), "load": load})
                    log(f"    {name} round {r + 1}/{rounds[name]}: " + ", ".join(
                        f"{m} {runs[m][-1]['seconds']:.2f}s" for m in modes))
                out["sets"][name] = {"objects": n, "runs": runs, "summary": _summary(runs, modes)}
        finally:
            for worker, _, _ in workers.values():
                worker.stop()
    return out


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _summary(runs: dict[str, list[dict[str, float]]], modes: list[str]) -> dict[str, Any]:
    base = [r["seconds"] for r in runs["labelq run"]]
    out: dict[str, Any] = {"labelq run": {"seconds_median": round(_median(base), 2)}}
    for mode in modes[1:]:
        walls = [r["seconds"] for r in runs[mode]]
        ratios = [b / w for b, w in zip(base, walls, strict=True)]
        out[mode] = {"seconds_median": round(_median(walls), 2), "seconds_min": round(min(walls), 2),
                     "seconds_max": round(max(walls), 2), "ratio_median": round(_median(ratios), 3),
                     "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
                     "job_clock_median": round(_median([r["job_clock"] for r in runs[mode]]), 2)}
    loads = [r["load"] for m in modes for r in runs[m]]
    out["load_average"] = [round(min(loads), 2), round(max(loads), 2)]
    return out


def table(res: dict[str, Any]) -> str:
    lines = ["| objects | mode | seconds, median (min–max) | labelq run ÷ it, median of rounds (min–max) "
             "| job clock s | load average |", "|---:|---|---:|---:|---:|---:|"]
    for got in res["sets"].values():
        s = got["summary"]
        lines.append(f"| {got['objects']} | labelq run (labelling time) | {s['labelq run']['seconds_median']:.2f} | | "
                     f"| {s['load_average'][0]}–{s['load_average'][1]} |")
        for mode, m in s.items():
            if mode in ("labelq run", "load_average"):
                continue
            lines.append(f"| {got['objects']} | enqueue --wait, {mode} | {m['seconds_median']:.2f} "
                         f"({m['seconds_min']:.2f}–{m['seconds_max']:.2f}) | **{m['ratio_median']:.2f}** "
                         f"({m['ratio_min']:.2f}–{m['ratio_max']:.2f}) | {m['job_clock_median']:.2f} | |")
    return "\n".join(lines)
