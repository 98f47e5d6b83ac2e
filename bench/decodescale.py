"""``python -m bench decode``: per-core decode scaling, threads in one process vs decode processes.

labelq's fast path (JPEG draft decode + resize + crop to the model's geometry) on
1080p JPEGs held in memory, no model: (a) ``k`` threads of this process, as the
engine's decode pool; (b) :class:`labelq.feed.DecodePool` with ``k`` processes, the
pixels back through shared memory, as the engine with ``LABELQ_DECODE_PROCESSES=k``.
Reported per setting: images/s, the parent process's CPU per image (what the GPU
process would spend on feeding: pipes, copies, futures) and the machine's CPU per
image. Best of ``repeat`` runs; the processes are started before the clock.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .common import Probe, busy_seconds, cores, log, settle


def _threads(datas: list[bytes], k: int, limits: Any, geometry: Any) -> None:
    from labelq.images import decode, fit

    def one(data: bytes) -> None:
        fit(decode(data, limits, draft=[geometry]), geometry)

    with ThreadPoolExecutor(k) as pool:
        list(pool.map(one, datas))


def run(model: Path, paths: list[Path], workers: list[int], *, repeat: int) -> dict[str, Any]:
    from labelq.feed import DecodePool
    from labelq.images import Limits
    from labelq.models import derive_preprocessing

    from .modes import classifier

    clf = classifier(model)
    derived = derive_preprocessing(clf.processor)
    assert derived is not None, "the bench model has a fast path"
    geometry = derived[0]
    limits = Limits(50 << 20, 100_000_000, frozenset({"JPEG"}))
    datas = [p.read_bytes() for p in paths]
    rows: list[dict[str, Any]] = []
    log(f"decode scaling: {len(datas)} 1920x1080 JPEGs in memory, fast path to {geometry.out_size}, "
        f"{cores()} cores")
    for k in workers:
        for mode in ("threads", "processes"):
            pool = DecodePool(k, limits, [geometry], slots=4 * k) if mode == "processes" else None
            if pool is not None:  # start the processes and decode a few, off the clock
                for f in [pool.submit(d) for d in datas[: 2 * k]]:
                    f.result()

            def once(pool: Any = pool, k: int = k) -> None:
                if pool is None:
                    _threads(datas, k, limits, geometry)
                else:
                    for f in [pool.submit(d) for d in datas]:
                        f.result()

            runs = []
            for _ in range(repeat):
                settle()
                probe = Probe()
                own0, busy0, t0 = time.process_time(), busy_seconds(), time.perf_counter()
                once()
                wall = time.perf_counter() - t0
                runs.append({"wall_s": wall, "parent_cpu_s": time.process_time() - own0,
                             "machine_cpu_s": busy_seconds() - busy0, "foreign_cores": round(probe.foreign_cores(), 2)})
            if pool is not None:
                pool.close()
            best = min(runs, key=lambda r: r["wall_s"])
            row = {"mode": mode, "workers": k, "images_per_s": round(len(datas) / best["wall_s"], 1),
                   "parent_cpu_ms_per_image": round(1000 * best["parent_cpu_s"] / len(datas), 3),
                   "machine_cpu_ms_per_image": round(1000 * best["machine_cpu_s"] / len(datas), 3),
                   "foreign_cores": best["foreign_cores"], "runs": runs}
            rows.append(row)
            log(f"  {mode:<9} x{k}: {row['images_per_s']:7.1f} img/s, parent CPU {row['parent_cpu_ms_per_image']:.2f} "
                f"ms/img, machine CPU {row['machine_cpu_ms_per_image']:.2f} ms/img (others "
                f"{row['foreign_cores']:.2f} cores)")
    return {"images": len(datas), "geometry": list(geometry.out_size), "rows": rows}


def table(res: dict[str, Any]) -> str:
    lines = ["| decode in | workers | img/s | parent CPU ms/img | machine CPU ms/img | others (cores) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['mode']} | {r['workers']} | {r['images_per_s']:.1f} | {r['parent_cpu_ms_per_image']:.2f} | "
                     f"{r['machine_cpu_ms_per_image']:.2f} | {r['foreign_cores']:.2f} |")
    return "\n".join(lines)
