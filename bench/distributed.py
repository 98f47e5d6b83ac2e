"""The distributed path: own Redis, moto S3 over HTTP, one ``labelq worker``, ``labelq enqueue --wait``.

Images are uploaded to a bucket on the moto server; the worker is
``python -m labelq worker --devices cpu`` (one Celery process, LABELQ_CHUNKS_IN_FLIGHT task threads); each
timed run is ``python -m labelq enqueue s3://bench/PREFIX --job NAME --wait`` as a
subprocess, after a warm-up job. Variants restart the worker with other settings or
environment (prototypes), or read the same files from a folder instead of S3, which
shows what the storage endpoint (moto: Python, on the same two cores) costs. Two clocks: the job's own (``created_at`` →
``finished_at`` in Redis, what a long job converges to) and the wall time of the
``enqueue --wait`` command (adds its start-up, ~1 s, and its 0.5 s polling).
CPU seconds of moto, Redis and the worker during each run say who used the cores.

``measure`` runs each variant's jobs back to back; ``paired`` (``python -m bench throughput``) interleaves
every mode, ``labelq run`` included, round by round, and takes each ratio within a round.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .common import QUIET, Measure, Probe, log, settle
from .servers import Moto, Proc, Redis, wait_until

BUCKET = "bench"


def _parse(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _upload(s3: Any, paths: list[Path], prefix: str) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{p.name}", Body=p.read_bytes()), paths))


def _bucket(moto: Moto, paths: list[Path], batch_size: int) -> Any:
    """The bench bucket on moto with every image under ``run/`` and a warm-up set under ``warmup/``; its client."""
    s3 = moto.client()
    s3.create_bucket(Bucket=BUCKET)
    _upload(s3, paths, "run")
    _upload(s3, paths[: min(len(paths), 2 * batch_size)], "warmup")
    return s3


def _clear_labelq(client: Any) -> None:
    """Forget labelq's records and jobs (Celery's own keys stay, so the worker keeps its queue)."""
    for key in client.scan_iter(match="labelq:*", count=1000):
        client.delete(key)


@dataclass(frozen=True)
class Variant:
    """One configuration of the worker: extra environment, and where the images are read from."""

    name: str
    env: tuple[tuple[str, str], ...] = ()
    source: str = "s3"  # "s3": the moto bucket; "local": the same files as a folder (no S3 endpoint)
    pool: tuple[str, ...] = ()  # PROTOTYPE: run `celery -A APP worker --pool ...` instead of `labelq worker`
    app: str = "labelq.worker"  # with pool: the Celery app module (bench.proto_worker: chunks through one pipeline)


DEFAULT = Variant("defaults")


def measure(model: str, paths: list[Path], *, batch_size: int, repeat: int,
            variants: tuple[Variant, ...] = (DEFAULT,)) -> dict[str, dict[str, Measure]]:
    """Each variant: a fresh ``labelq worker``, a warm-up job, then ``repeat`` timed jobs of every image."""
    out: dict[str, dict[str, Measure]] = {}
    with Redis("dist-redis") as redis, Moto() as moto:
        start = time.perf_counter()
        s3 = _bucket(moto, paths, batch_size)
        upload_s = time.perf_counter() - start
        fetch = _fetch_alone(s3, [f"run/{p.name}" for p in paths], moto)
        log(f"    S3 (moto over HTTP) fetch alone, 16 threads: {fetch['images_per_s']:.0f} img/s, "
            f"{fetch['moto_cpu_ms_per_image']:.1f} ms of moto CPU per image")
        for variant in variants:
            out[variant.name] = _variant(variant, model, paths, redis, moto, batch_size=batch_size, repeat=repeat)
            out[variant.name]["job"].extra.update({"upload_s": round(upload_s, 1), "s3_fetch_alone": fetch})
    return out


@dataclass(frozen=True)
class Embedded:
    """``labelq run`` in this process: from the moto bucket (``source="s3"``) or the folder."""

    name: str
    source: str = "s3"
    settings: tuple[tuple[str, str], ...] = ()


def paired(model: str, paths: list[Path], *, batch_size: int, rounds: int, embedded: tuple[Embedded, ...],
           variants: tuple[tuple[Variant, str], ...]) -> dict[str, Any]:
    """Interleaved rounds: each round runs every mode once, in a rotating order, on the same objects.

    A worker per variant is started first (each on its own queue, warmed up, idle while the others
    run), so a round is seconds long and the machine's drift (this VM's speed moves by ±20% over
    minutes) hits every mode of a round alike. ``variants`` pairs each with the embedded mode it is
    compared with; the ratio is taken within each round, and its median and range are reported.
    ``labelq run`` is timed from before its listing (its summary clock plus the listing's opening),
    like a job's clock, which starts when the producer creates the job.
    """
    from labelq.embedded import run_embedded

    from .modes import _tmp_db, settings, torch_threads

    by_name = {e.name: e for e in embedded}
    with Redis("dist-redis") as redis, Moto() as moto:
        _bucket(moto, paths, batch_size)
        client = redis.client()
        workers: dict[str, tuple[Proc, dict[str, str], str]] = {}
        try:
            for i, (variant, _) in enumerate(variants):
                workers[variant.name] = _start_worker(variant, model, paths, redis, moto, batch_size=batch_size,
                                                      queue=f"labelq-v{i}")
            for variant, _ in variants:  # warm up each (model load, first batches) before any timing
                worker, env, _source = workers[variant.name]
                _enqueue(env, "s3://bench/warmup/", f"bench-warmup-{variant.name}")
            names = [e.name for e in embedded] + [v.name for v, _ in variants]
            seconds: dict[str, list[float]] = {n: [] for n in names}
            cpu: dict[str, list[dict[str, float]]] = {n: [] for n in names}
            for r in range(rounds):
                order = names[r % len(names):] + names[: r % len(names)]
                for name in order:
                    _clear_labelq(client)
                    settle()
                    emb = by_name.get(name)
                    if emb is not None:
                        source = "s3://bench/run/" if emb.source == "s3" else str(paths[0].parent)
                        extra = {"s3_endpoint_url": moto.endpoint_url, "s3_region": "us-east-1"} if emb.source == "s3" \
                            else {}
                        before = {"moto": moto.proc.cpu_seconds(), "worker": time.process_time()}
                        with _tmp_db() as db, torch_threads(None):
                            summary = run_embedded(source, settings(Path(model), db_url=db, batch_size=batch_size,
                                                                    **extra, **dict(emb.settings)),
                                                   force=True, progress=False)
                        if summary.errors or summary.images != len(paths):
                            raise RuntimeError(f"labelq run: {summary.images} images, errors {dict(summary.errors)}")
                        seconds[name].append(summary.seconds + summary.opening_seconds)
                        cpu[name].append({"moto": moto.proc.cpu_seconds() - before["moto"],  # this process: the run
                                          "worker": time.process_time() - before["worker"]})
                    else:
                        worker, env, source = workers[name]
                        before = {"moto": moto.proc.cpu_seconds(), "worker": worker.cpu_seconds()}
                        job = f"bench-{r}-{names.index(name)}"
                        _enqueue(env, source, job)
                        seconds[name].append(_job_seconds(client, job, len(paths)))
                        cpu[name].append({"moto": moto.proc.cpu_seconds() - before["moto"],
                                          "worker": worker.cpu_seconds() - before["worker"]})
                log(f"    round {r + 1}/{rounds}: " + ", ".join(f"{n} {len(paths) / seconds[n][-1]:.0f}" for n in names))
        finally:
            for worker, _, _ in workers.values():
                worker.stop()
    out: dict[str, Any] = {"images": len(paths), "rounds": rounds, "seconds": seconds, "modes": {}}
    for name in names:
        ips = sorted(len(paths) / t for t in seconds[name])
        out["modes"][name] = {"ips_median": round(ips[len(ips) // 2], 1), "ips_min": round(ips[0], 1),
                              "ips_max": round(ips[-1], 1)}
        for who in ("worker", "moto"):  # the worker's CPU, or labelq run's (this process) for an embedded mode
            per = sorted(c[who] for c in cpu[name])
            out["modes"][name][f"{who}_cpu_s_median"] = round(per[len(per) // 2], 2)
    for variant, base in variants:
        ratios = sorted(b / v for v, b in zip(seconds[variant.name], seconds[base], strict=True))
        out["modes"][variant.name].update({"vs": base, "ratio_median": round(ratios[len(ratios) // 2], 3),
                                           "ratio_min": round(ratios[0], 3), "ratio_max": round(ratios[-1], 3)})
    return out


def _job_seconds(client: Any, job: str, images: int) -> float:
    """A finished job's own clock: ``created_at`` → ``finished_at``."""
    info = {k.decode(): v.decode() for k, v in client.hgetall(f"labelq:job:{job}").items()}
    if info.get("state") != "done" or int(info.get("ok", 0)) != images:
        raise RuntimeError(f"distributed job did not finish cleanly: {info}")
    return _parse(info["finished_at"]) - _parse(info["created_at"])


def _start_worker(variant: Variant, model: str, paths: list[Path], redis: Redis, moto: Moto, *, batch_size: int,
                  queue: str | None = None) -> tuple[Proc, dict[str, str], str]:
    """A ``labelq worker`` for the variant, ready; with its environment (for ``enqueue``) and source."""
    env = dict(os.environ)
    env.update({
        "LABELQ_BROKER_URL": redis.url,
        "LABELQ_S3_ENDPOINT_URL": moto.endpoint_url,
        "LABELQ_S3_REGION": "us-east-1",
        "LABELQ_MODELS": model,
        "LABELQ_DEVICE": "cpu",
        "LABELQ_BATCH_SIZE": str(batch_size),
        "LABELQ_LOG_LEVEL": "WARNING",
        "LABELQ_LOCAL_ROOT": str(paths[0].parent),
    })
    if queue:
        env["LABELQ_QUEUE"] = queue
    env.update(dict(variant.env))
    source = "s3://bench/run/" if variant.source == "s3" else str(paths[0].parent)
    argv = [sys.executable, "-m", "labelq", "worker", "--devices", "cpu", "--loglevel", "INFO"]
    if variant.pool:  # what `labelq worker` runs, with another pool (see labelq.launcher.child_command)
        env.setdefault("LABELQ_WORKER_NAME", f"cpu@{socket.gethostname()}")
        argv = [sys.executable, "-m", "celery", "-A", variant.app, "worker", "--pool", *variant.pool,
                "-n", env["LABELQ_WORKER_NAME"], "-Q", queue or "labelq", "--loglevel", "INFO", "--without-gossip",
                "--without-mingle"]
    worker = Proc(argv, f"dist-worker-{queue or 'labelq'}", env=env)
    wait_until(lambda: b" ready" in worker.log.read_bytes(), timeout=180, what="labelq worker", alive=worker.alive)
    return worker, env, source


def _variant(variant: Variant, model: str, paths: list[Path], redis: Redis, moto: Moto, *, batch_size: int,
             repeat: int) -> dict[str, Measure]:
    worker, env, source = _start_worker(variant, model, paths, redis, moto, batch_size=batch_size)
    client = redis.client()
    try:
        _clear_labelq(client)
        _enqueue(env, "s3://bench/warmup/", "bench-warmup")
        runs_job, runs_wall, cpu, foreign = [], [], [], []

        def ours() -> float:
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            return (time.process_time() + children.ru_utime + children.ru_stime + moto.proc.cpu_seconds()
                    + redis.proc.cpu_seconds() + worker.cpu_seconds())

        i = 0
        while i < repeat or (i < 2 * repeat + 1 and foreign[runs_job.index(min(runs_job))] > QUIET["threshold"]):
            i += 1
            _clear_labelq(client)
            settle()
            before = {"moto": moto.proc.cpu_seconds(), "redis": redis.proc.cpu_seconds(),
                      "worker": worker.cpu_seconds()}
            probe = Probe(ours)
            t0 = time.perf_counter()
            _enqueue(env, source, f"bench-run-{i}")
            runs_wall.append(time.perf_counter() - t0)
            foreign.append(round(probe.foreign_cores(), 2))
            runs_job.append(_job_seconds(client, f"bench-run-{i}", len(paths)))
            cpu.append({"moto": moto.proc.cpu_seconds() - before["moto"],
                        "redis": redis.proc.cpu_seconds() - before["redis"],
                        "worker": worker.cpu_seconds() - before["worker"]})
    finally:
        worker.stop()
    params = {"batch": batch_size, "variant": variant.name, "source": variant.source, **dict(variant.env),
              **({"pool": " ".join(variant.pool), "app": variant.app} if variant.pool else {})}
    job_m = Measure(f"distributed job clock [{variant.name}]", len(paths), runs_job, params,
                    {"foreign_cores": foreign})
    wall_m = Measure(f"distributed wall [{variant.name}]", len(paths), runs_wall, params, {"foreign_cores": foreign})
    best = runs_job.index(min(runs_job))
    job_m.extra["cpu_seconds"] = {k: round(v, 2) for k, v in cpu[best].items()}
    for m in (job_m, wall_m):
        log(f"  {m.name:<44} {m.ips:8.1f} img/s  ({len(paths)} images, best of {len(m.runs_s)}: {m.best_s:.2f}s, "
            f"others used {m.best_foreign:.2f} cores)")
    log(f"    CPU seconds in the best run: {job_m.extra['cpu_seconds']}")
    return {"job": job_m, "wall": wall_m}


def _enqueue(env: dict[str, str], source: str, job: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "labelq", "enqueue", source, "--job", job, "--wait"], env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"labelq enqueue failed ({proc.returncode}): {proc.stderr[-2000:]}")


def _fetch_alone(s3: Any, keys: list[str], moto: Moto, threads: int = 16) -> dict[str, float]:
    """How fast moto serves the objects to 16 threads, and what it costs moto in CPU."""
    cpu0 = moto.proc.cpu_seconds()
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        sizes = list(pool.map(lambda k: len(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()), keys))
    seconds = time.perf_counter() - start
    cpu = moto.proc.cpu_seconds() - cpu0
    return {"images_per_s": len(keys) / seconds, "moto_cpu_ms_per_image": 1000 * cpu / len(keys),
            "mean_bytes": sum(sizes) / len(sizes), "threads": threads}
