"""``python -m bench``: labelq's throughput against what users would run instead, in one run.

Commands (``python -m bench --help``):

* ``python -m bench peers``: the users' page (docs/benchmarks.md): labelq run against the
  transformers pipeline, Ray Data, Daft and naive Celery on both seed models, and the inference
  runtimes (torch, onnx, openvino, onnx-int8) on ViT-B/16; each contender once, in its own process.

* ``python -m bench [--model mobilenetv3|vit] [--quick]``: on the same generated
  JPEGs (640x480, 1920x1080, 4000x3000; distinct content) and the same model:
  (a) the bare model on ready tensors, (b) transformers' pipeline, (c) naive
  Celery (one task per image), (d) ``labelq run``, (e) the distributed path (Redis
  + moto S3 + ``labelq worker`` + ``labelq enqueue --wait``); decode-alone and
  model-alone rates and the limit they set together; fast-path pixel fidelity;
  the levers. Prints the table, writes ``bench/out/bench-MODEL.json`` and the plot
  ``docs/bench.png``.
* ``python -m bench scale``: N = 1, 4, 16, 32 Celery workers against one Redis with
  a SIMULATED model (fixed sleep per batch): efficiency and Redis round trips per image.
* ``python -m bench sinks``: records/s into PostgreSQL (COPY vs multi-row INSERT) and Parquet
  (local folder, moto S3) from N concurrent writer processes, and the skip check's rate.
* ``python -m bench gpu``: ViT-B/16 and MobileNetV3-small end to end vs the bare
  model in bf16 on a CUDA device; skips cleanly without one.
* ``python -m bench ray``: Ray Data batch inference (the peer) vs ``labelq run``, whole
  process and after start-up, wall and CPU per image (needs the ``bench`` extra; also
  step ``ray`` of the full run).
* ``python -m bench decode``: per-core decode scaling, threads vs decode processes.
* ``python -m bench decoders``: other JPEG decoders (simplejpeg, pyvips) in place of
  Pillow's draft decode: ms per image on one thread and pixel fidelity against the
  models' processors (the fast-path gate), 1080p, 12 MP and the example photos.
* ``python -m bench review``: the review queue at a million pending items: page times
  (first page, filtered pages, a page by cursor deep in the queue) on a private Redis.
* ``python -m bench lake``: a 10 M-record Delta table built by the workers' write path (chunk files
  committed in batches): commits per minute, file count and a DuckDB ``GROUP BY label`` before and after
  ``labelq compact``.
* ``python -m bench s3``: object clients (boto3 as labelq sets it up, obstore) against
  moto over HTTP: GETs/s and CPU per GET.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from .common import DOCS, OUT, QUIET, cores, limit_ips, log, machine, offline_env, write_json

PLANS: dict[tuple[str, bool], dict[str, Any]] = {
    # (model, quick) -> images per size; batch sweep {batch: (images for labelq, images for the pipeline)}
    # (the first images of the main size's set: slow points get fewer); naive Celery images
    ("mobilenetv3", False): {"counts": {"640x480": 256, "1920x1080": 256, "4000x3000": 48},
                             "batches": {1: (64, 64), 8: (128, 64), 64: (256, 128)}, "naive": 64},
    ("mobilenetv3", True): {"counts": {"640x480": 32, "1920x1080": 64, "4000x3000": 8}, "batches": {8: (64, 32)},
                            "naive": 32},
    ("vit", False): {"counts": {"640x480": 16, "1920x1080": 32, "4000x3000": 8}, "batches": {8: (32, 16)},
                     "naive": 16, "repeat": 2, "short": True},
    ("vit", True): {"counts": {"640x480": 8, "1920x1080": 16, "4000x3000": 4}, "batches": {8: (16, 8)}, "naive": 8,
                    "short": True},
}
STEPS = ("fidelity", "sizes", "batches", "naive", "distributed", "ray", "levers")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    for p in (parser, sub.add_parser("all", help="every mode on the same images and model (the default)")):
        p.add_argument("--model", choices=("mobilenetv3", "vit"), default="mobilenetv3")
        p.add_argument("--quick", action="store_true", help="fewer images and settings (about 2 minutes)")
        p.add_argument("--repeat", type=int, default=None, help="runs per measurement, best kept (default 3, quick 1)")
        p.add_argument("--batch", type=int, default=32, help="batch size of the main table (labelq's default)")
        p.add_argument("--skip", default="", help=f"comma-separated steps to skip: {', '.join(STEPS)}")
        p.add_argument("--no-plot", action="store_true", help="do not write docs/bench.png")
        p.add_argument("--no-wait", action="store_true",
                       help="do not wait (up to 20 s) for a quiet machine before each measurement")
    sc = sub.add_parser("scale", help="N workers against one Redis, SIMULATED model")
    sc.add_argument("--workers", default="1,4,16,32", help="worker counts")
    sc.add_argument("--batch-seconds", type=float, default=0.2, help="simulated model time per batch")
    sc.add_argument("--batch-size", type=int, default=32)
    sc.add_argument("--chunk-size", type=int, default=None, help="default: labelq's (LABELQ_CHUNK_SIZE default)")
    sc.add_argument("--images-per-worker", type=int, default=2560,
                    help="work per worker and run (2560 = 16 s at the defaults)")
    sc.add_argument("--quick", action="store_true", help="N = 1, 4 and 640 images per worker")
    sc.add_argument("--no-proposals", action="store_true",
                    help="skip the extra rows at the largest N (the other chunk size of 64/256; prototype: one write "
                         "per chunk)")
    rp = sub.add_parser("ray", help="Ray Data batch inference vs labelq run: wall and CPU per image (needs the bench "
                                    "extra)")
    rp.add_argument("--model", choices=("mobilenetv3", "vit"), default="mobilenetv3")
    rp.add_argument("--size", default="1920x1080", help="640x480, 1920x1080 or 4000x3000")
    rp.add_argument("--images", type=int, default=256)
    rp.add_argument("--batch", type=int, default=32)
    rp.add_argument("--actors", default="1,2", help="Ray predictor actors to try (its best is compared)")
    rp.add_argument("--variants", default="docs,labelq", help="docs: Ray's own recipe; labelq: Ray with labelq's decode")
    dp = sub.add_parser("decode", help="per-core decode scaling: threads vs processes (labelq.feed), 1080p")
    dp.add_argument("--images", type=int, default=128)
    dp.add_argument("--workers", default="1,2", help="decode threads / processes to try")
    dp.add_argument("--repeat", type=int, default=3)
    tp = sub.add_parser("throughput", help="distributed vs labelq run on the same objects (folder and moto S3), "
                        "chunks in flight 2 vs 1, 1080p")
    tp.add_argument("--model", choices=("mobilenetv3", "vit"), default="mobilenetv3")
    tp.add_argument("--images", type=int, default=1024)
    tp.add_argument("--batch", type=int, default=32)
    tp.add_argument("--repeat", type=int, default=5, help="interleaved rounds")
    sp = sub.add_parser("small", help="whole `enqueue --wait` vs `labelq run`'s labelling time, one warm worker: "
                        "600 1080p objects and 10,000 small ones (chunk plan, --wait on events)")
    sp.add_argument("--model", choices=("mobilenetv3", "vit"), default="mobilenetv3")
    sp.add_argument("--batch", type=int, default=32)
    sp.add_argument("--small", type=int, default=600, help="objects of the first set (1920x1080, distinct)")
    sp.add_argument("--large", type=int, default=10_000, help="objects of the second set (0: none)")
    sp.add_argument("--large-size", default="320x240", help="image size of the second set")
    sp.add_argument("--large-files", type=int, default=1000, help="distinct files of the second set (repeated "
                    "under other keys up to --large objects)")
    sp.add_argument("--rounds", type=int, default=3, help="alternated rounds of the first set")
    sp.add_argument("--large-rounds", type=int, default=2, help="alternated rounds of the second set")
    sp.add_argument("--before", type=Path, default=None, help="another checkout (e.g. the main branch) whose code "
                    "runs the 'before' worker and enqueue, for a comparison in the same run")
    sp.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine before each run")
    jp = sub.add_parser("decoders", help="JPEG decoders (Pillow full/draft, simplejpeg, pyvips) on one thread: "
                        "ms/img and fidelity vs the models' processors")
    jp.add_argument("--images", type=int, default=None,
                    help="1920x1080 JPEGs; 4000x3000 get half as many (default 16, quick 4)")
    jp.add_argument("--repeat", type=int, default=None, help="timed rounds per decoder, median kept (default 7, quick 2)")
    jp.add_argument("--quick", action="store_true", help="fewer images and rounds")
    op = sub.add_parser("s3", help="object clients against moto over HTTP: GETs/s and CPU per GET")
    op.add_argument("--images", type=int, default=64)
    op.add_argument("--repeat", type=int, default=3)
    gp = sub.add_parser("gpu", help="ViT-B and MobileNetV3 end to end vs bare model, bf16, on CUDA")
    gp.add_argument("--quick", action="store_true")
    gp.add_argument("--repeat", type=int, default=2)
    gp.add_argument("--images", type=int, default=None, help="1080p JPEGs (default 1024, quick 64)")
    gp.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no CUDA (to test the script)")
    sk = sub.add_parser("sinks", help="records/s into PostgreSQL and Parquet from N writers")
    sk.add_argument("--workers", default="1,2,4,8", help="writer process counts")
    sk.add_argument("--per-worker", type=int, default=20_000, help="records each writer writes per run")
    sk.add_argument("--quick", action="store_true", help="N = 1, 2 and 4 000 records per writer")
    from . import lake as lake_bench
    from . import listing as listing_bench
    from . import peers
    from . import quality as quality_bench
    from . import review as review_bench

    listing_bench.add_parser(sub)
    review_bench.add_parser(sub)
    quality_bench.add_parser(sub)
    lake_bench.add_parser(sub)
    peers.add_parser(sub)
    args = parser.parse_args(argv)
    offline_env()
    if getattr(args, "no_wait", False):
        QUIET["wait_s"] = 0.0
    if args.command == "scale":
        return _scale(args)
    if args.command == "gpu":
        return _gpu(args)
    if args.command == "sinks":
        from . import sinks

        ns = [1, 2] if args.quick else [int(n) for n in args.workers.split(",")]
        res = sinks.run(workers=ns, per_worker=4_000 if args.quick else args.per_worker, quick=args.quick)
        print(sinks.table(res))
        print(f"wrote {OUT / 'sinks.json'}")
        return 0
    if args.command == "peers":
        peers.run(args)
        return 0
    if args.command == "listing":
        return listing_bench.run(args)
    if args.command == "review":
        return review_bench.run(args)
    if args.command == "quality":
        return quality_bench.run(args)
    if args.command == "lake":
        return lake_bench.run(args)
    if args.command == "ray":
        return _ray(args)
    if args.command == "decode":
        return _decode(args)
    if args.command == "decoders":
        return _decoders(args)
    if args.command == "s3":
        return _s3(args)
    if args.command == "throughput":
        return _throughput(args)
    if args.command == "small":
        return _small(args)
    return _all(args)


def _scale(args: argparse.Namespace) -> int:
    from . import scale

    ns = [1, 4] if args.quick else [int(n) for n in args.workers.split(",")]
    per_worker = 640 if args.quick else args.images_per_worker
    from labelq.config import load_settings

    chunk = args.chunk_size or load_settings(models=["x"]).chunk_size
    chunks = max(1, round(per_worker / chunk))
    log(f"scale SIMULATION: workers {ns}, {args.batch_seconds}s per batch of {args.batch_size} (no model), "
        f"{chunks} chunks of {chunk} per worker")
    common = {"batch_s": args.batch_seconds, "batch_size": args.batch_size, "chunks_per_worker": chunks}
    # at the largest N: the other of 64 (labelq's first default) and 256 (its default since the bench measured both)
    other = () if args.no_proposals else tuple(sorted({64, 256} - {chunk}))
    res = scale.run(ns, chunk_size=chunk, more_chunk_sizes=other, **common)
    res["machine"] = machine()
    res["command"] = "python -m bench " + " ".join(sys.argv[1:])
    res["proposals"] = []
    if not args.no_proposals:
        log(f"PROTOTYPE at N={max(ns)}: one job-book write per chunk, pipelined with the ZREM (bench/scale_worker.py)")
        res["proposals"].append(scale.run([max(ns)], chunk_size=chunk, more_chunk_sizes=other,
                                          variant="one-write", **common))
    write_json(OUT / "scale.json", res)
    print("| task body | chunk | workers | ideal img/s | measured img/s | efficiency | round trips/img | commands/img "
          "| Redis CPU µs/img |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in [res, *res["proposals"]]:
        for r in run["rows"]:
            print(f"| {run['variant']} | {r['chunk_size']} | {r['workers']} | {r['ideal_images_per_s']:.0f} | "
                  f"{r['images_per_s']:.0f} | {100 * r['efficiency']:.1f}% | {r['round_trips_per_image']:.3f} | "
                  f"{r['commands_per_image']:.2f} | {r['redis_cpu_us_per_image']:.0f} |")
    print(f"wrote {OUT / 'scale.json'}")
    return 0


def _gpu(args: argparse.Namespace) -> int:
    from . import gpu

    res = gpu.run(quick=args.quick, allow_cpu=args.allow_cpu, repeat=args.repeat, n=args.images)
    if "skipped" in res:
        return 0
    write_json(OUT / "gpu.json", res)
    print(f"wrote {OUT / 'gpu.json'}")
    return 0


def _ray(args: argparse.Namespace) -> int:
    from . import data, raydata

    res = raydata.run(data.model(args.model), data.photos(args.size, args.images), batch=args.batch,
                      actors=tuple(int(a) for a in args.actors.split(",")),
                      variants=tuple(v.strip() for v in args.variants.split(",")))
    res.update({"machine": machine(), "command": "python -m bench " + " ".join(sys.argv[1:]), "size": args.size,
                "model": args.model})
    print(raydata.table(res))
    if "skipped" not in res:
        write_json(OUT / f"ray-{args.model}.json", res)
        print(f"wrote {OUT / f'ray-{args.model}.json'}")
    return 0


def _decode(args: argparse.Namespace) -> int:
    from . import data, decodescale

    res = decodescale.run(data.model("mobilenetv3"), data.files(data.photos("1920x1080", args.images)),
                          [int(w) for w in args.workers.split(",")], repeat=args.repeat)
    res.update({"machine": machine(), "command": "python -m bench " + " ".join(sys.argv[1:])})
    print(decodescale.table(res))
    write_json(OUT / "decode-scaling.json", res)
    print(f"wrote {OUT / 'decode-scaling.json'}")
    return 0


def _throughput(args: argparse.Namespace) -> int:
    """Issue 14's first target in one run: the distributed path against `labelq run` on the same objects.

    Interleaved rounds (distributed.paired): every mode once per round, ratios taken within a round.
    """
    from . import data, distributed

    paths = data.files(data.photos("1920x1080", args.images))
    v, e = distributed.Variant, distributed.Embedded
    one = (("LABELQ_CHUNKS_IN_FLIGHT", "1"),)
    obstore = (("LABELQ_S3_CLIENT", "obstore"),)
    embedded = (e("labelq run, moto S3"), e("labelq run, moto S3, obstore", settings=(("s3_client", "obstore"),)),
                e("labelq run, local folder", source="local"))
    variants = ((distributed.DEFAULT, "labelq run, moto S3"), (v("chunks_in_flight=1", one), "labelq run, moto S3"),
                (v("s3_client=obstore", obstore), "labelq run, moto S3, obstore"),
                (v("local folder", source="local"), "labelq run, local folder"),
                (v("chunks_in_flight=1, local folder", one, source="local"), "labelq run, local folder"))
    log(f"throughput: {args.images} images 1920x1080, {args.model}, batch {args.batch}, {cores()} cores, "
        f"{args.repeat} interleaved rounds")
    got = distributed.paired(str(data.model(args.model)), paths, batch_size=args.batch, rounds=args.repeat,
                             embedded=embedded, variants=variants)
    res: dict[str, Any] = {"machine": machine(), "command": "python -m bench " + " ".join(sys.argv[1:]),
                           "model": args.model, "batch": args.batch, **got}
    print("\n| mode | img/s, median (min–max) | × its `labelq run`, median of rounds (min–max) "
          "| labelq CPU s (worker or run) | moto CPU s |")
    print("|---|---:|---:|---:|---:|")
    for name, m in got["modes"].items():
        ratio = f"{m['ratio_median']:.2f} ({m['ratio_min']:.2f}–{m['ratio_max']:.2f}) vs {m['vs']}" if "vs" in m else ""
        print(f"| {name} | {m['ips_median']:.1f} ({m['ips_min']:.0f}–{m['ips_max']:.0f}) | {ratio} | "
              f"{m['worker_cpu_s_median']} | {m['moto_cpu_s_median']} |")
    write_json(OUT / f"throughput-{args.model}.json", res)
    print(f"wrote {OUT / f'throughput-{args.model}.json'}")
    return 0


def _small(args: argparse.Namespace) -> int:
    """Short jobs on one warm worker: whole `enqueue --wait` against `labelq run`'s labelling time (bench/small.py)."""
    from . import data, small

    sets = {"1080p": (data.files(data.photos("1920x1080", args.small)), args.small)}
    if args.large:
        sets[args.large_size] = (data.files(data.photos(args.large_size, args.large_files)), args.large)
    rounds = {"1080p": args.rounds, args.large_size: args.large_rounds}
    log(f"small: {', '.join(f'{n} objects {k}' for k, (_, n) in sets.items())}, {args.model}, batch {args.batch}, "
        f"{cores()} cores, load average {os.getloadavg()[0]:.2f}" + (f", before: {args.before}" if args.before else ""))
    res = small.run(str(data.model(args.model)), sets, rounds=rounds, batch_size=args.batch, before=args.before)
    res.update({"machine": machine(), "command": "python -m bench " + " ".join(sys.argv[1:]), "model": args.model})
    print(small.table(res))
    write_json(OUT / f"small-{args.model}.json", res)
    print(f"wrote {OUT / f'small-{args.model}.json'}")
    return 0


def _decoders(args: argparse.Namespace) -> int:
    from . import data, decoders

    n = args.images or (4 if args.quick else 16)
    repeat = args.repeat or (2 if args.quick else 7)
    started = time.perf_counter()
    sets = {"1920x1080": data.files(data.photos("1920x1080", n)),
            "4000x3000": data.files(data.photos("4000x3000", max(1, n // 2))),
            "real": [p for p in data.real_photos() if p.suffix.lower() in (".jpg", ".jpeg")]}
    log(f"decoders: {', '.join(f'{k} {len(v)}' for k, v in sets.items())} JPEGs, one thread, {repeat} rounds")
    res = decoders.run({"mobilenetv3": data.model("mobilenetv3"), "vit-tiny": data.tiny_vit()}, sets, repeat=repeat)
    res.update({"machine": machine(), "command": "python -m bench " + " ".join(sys.argv[1:]),
                "seconds": round(time.perf_counter() - started, 1)})
    print(decoders.table(res))
    name = f"decoders{'-quick' if args.quick else ''}.json"
    write_json(OUT / name, res)
    print(f"wrote {OUT / name} in {res['seconds']:.0f}s")
    return 0


def _s3(args: argparse.Namespace) -> int:
    from . import data, objclient

    res = objclient.run(data.files(data.photos("1920x1080", args.images)), repeat=args.repeat)
    res.update({"machine": machine(), "command": "python -m bench " + " ".join(sys.argv[1:])})
    print(objclient.table(res))
    write_json(OUT / "s3-clients.json", res)
    print(f"wrote {OUT / 's3-clients.json'}")
    return 0


def _all(args: argparse.Namespace) -> int:
    from . import data, fidelity, levers, modes, report

    started = time.perf_counter()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(STEPS)
    if unknown:
        raise SystemExit(f"unknown --skip step(s) {', '.join(sorted(unknown))}: use {', '.join(STEPS)}")
    plan = PLANS[(args.model, args.quick)]
    repeat = args.repeat or plan.get("repeat") or (1 if args.quick else 3)
    short = plan.get("short", False)  # ViT-B on a CPU: fewer prototype variants and levers
    batch = args.batch
    batches = sorted(set(plan["batches"]) | {batch})
    sweep = plan["batches"]
    n_cores = cores()
    info = machine()
    log(f"bench: {data.MODELS[args.model]}, batch {batch}, {n_cores} cores ({info['cpu']}), torch {info['torch']}, "
        f"load average {info['load_avg_1m']}")
    model = data.model(args.model)
    folders = {size: data.photos(size, n) for size, n in plan["counts"].items()}
    prepared = time.perf_counter() - started
    main_size = report.MAIN_SIZE
    main_paths = data.files(folders[main_size])
    res: dict[str, Any] = {
        "command": "python -m bench " + " ".join(sys.argv[1:]), "machine": info, "model": args.model,
        "model_desc": data.MODELS[args.model], "batch": batch, "batches": batches, "repeat": repeat,
        "sizes": list(plan["counts"]), "counts": plan["counts"], "limit": {},
        "measures": {k: {} for k in ("bare", "model_alone", "decode_fast", "decode_exact", "pipeline", "labelq_run",
                                     "labelq_run_before", "labelq_cli", "labelq_batch", "pipeline_batch")},
        "details": {}, "sweep_counts": {str(b): v for b, v in plan["batches"].items()},
    }
    m, details = res["measures"], res["details"]

    def keep(group: str, key: str, measure: Any) -> None:
        m[group][key] = round(measure.ips, 2)
        details.setdefault(group, {})[key] = measure.to_dict()

    if "fidelity" not in skip:
        log("fast-path fidelity (pixels vs the model's own processor):")
        generated = [p for f in folders.values() for p in data.files(f)[:4]]
        res["fidelity"] = fidelity.run({"mobilenetv3": data.model("mobilenetv3"), "vit": data.tiny_vit()},
                                       data.real_photos(), generated)

    log("model (ready batches):")
    clf = modes.classifier(model, batch_size=batch)
    for b in batches:
        keep("bare", str(b), modes.bare(clf, b, repeat=repeat))
        keep("model_alone", str(b), modes.model_alone(clf, b, repeat=repeat))

    if "sizes" not in skip:
        exact = modes.classifier(model, fast_decode=False)
        for size, folder in folders.items():
            log(f"{size} ({plan['counts'][size]} JPEGs):")
            paths = data.files(folder)
            keep("decode_fast", size, modes.decode_alone(clf, paths, n_cores, repeat=repeat))
            if size == main_size:
                keep("decode_exact", size, modes.decode_alone(exact, paths, n_cores, repeat=repeat))
                details["decode_fast_1_thread"] = modes.decode_alone(clf, paths, 1, repeat=repeat).to_dict()
            # The machine's speed drifts over minutes: the model is measured again next to labelq's runs,
            # before and after them, and the faster figure sets the limit (the stricter one for labelq).
            before = modes.model_alone(clf, batch, repeat=repeat)
            keep("labelq_run", size, modes.labelq_run(model, folder, repeat=repeat, batch_size=batch))
            keep("labelq_run_before", size, modes.labelq_run(model, folder, repeat=repeat, batch_size=batch,
                                                             torch_threads=n_cores,
                                                             name=f"labelq run, torch_threads={n_cores}"))
            after = modes.model_alone(clf, batch, repeat=repeat)
            details.setdefault("model_alone_near", {})[size] = [before.to_dict(), after.to_dict()]
            model_ips = max(before.ips, after.ips)
            res.setdefault("limit_inputs", {})[size] = {"decode": m["decode_fast"][size], "model": round(model_ips, 2)}
            res["limit"][size] = round(limit_ips(m["decode_fast"][size], model_ips), 2)
            log(f"  {'decode + model limit':<34} {res['limit'][size]:8.1f} img/s  (1 / (1/decode + 1/model), "
                f"model {model_ips:.0f} img/s)")
            keep("pipeline", size, modes.pipeline(model, paths, batch, repeat=repeat))
            if size == main_size:
                all_threads = {"LABELQ_TORCH_THREADS": str(n_cores)}
                cli = (("default", None), (f"LABELQ_TORCH_THREADS={n_cores}", all_threads),
                       (f"LABELQ_TORCH_THREADS={n_cores} OMP_WAIT_POLICY=PASSIVE",
                        {**all_threads, "OMP_WAIT_POLICY": "PASSIVE"}))
                for key, env in cli[:2] if short else cli:
                    keep("labelq_cli", key, modes.labelq_cli(model, folder, repeat=repeat, batch=batch, env=env,
                                                             name=f"labelq run CLI [{key}]"))
        del exact
    del clf

    if "batches" not in skip:
        log(f"batch sweep on {main_size}:")
        for b in batches:
            if b == batch and main_size in m["labelq_run"]:
                m["labelq_batch"][str(b)] = m["labelq_run"][main_size]
                m["pipeline_batch"][str(b)] = m["pipeline"][main_size]
                continue
            n_labelq, n_pipe = sweep.get(b, (plan["counts"][main_size],) * 2)
            keep("labelq_batch", str(b), modes.labelq_run(model, data.photos(main_size, n_labelq), repeat=repeat,
                                                          batch_size=b))
            keep("pipeline_batch", str(b), modes.pipeline(model, main_paths[:n_pipe], b, repeat=1))

    if "naive" not in skip:
        from . import naive_celery

        log("naive Celery (1 task per image, prefork defaults):")
        measure = naive_celery.measure(str(model), [str(p) for p in main_paths[: plan["naive"]]], repeat=1)
        m["naive"] = round(measure.ips, 2)
        details["naive"] = measure.to_dict()

    if "distributed" not in skip:
        from . import distributed

        log("distributed (redis-server + moto S3 + labelq worker --devices cpu + labelq enqueue --wait):")
        variant = distributed.Variant
        variants = [distributed.DEFAULT]
        all_cores = (("LABELQ_TORCH_THREADS", str(n_cores)),)
        if short:
            variants.append(variant(f"torch_threads={n_cores}", all_cores))
        elif not args.quick:
            small = (("LABELQ_CHUNK_SIZE", "64"),)
            # bench.proto_worker: chunks through one long-lived pipeline (the live Batcher), two tasks in flight
            piped = (*small, ("LABELQ_MAX_BATCH_SIZE", str(batch)), ("LABELQ_BATCH_TIMEOUT", "1.0"))
            variants += [
                variant(f"chunk_size=64, torch_threads={n_cores}", (*small, *all_cores)),
                variant("local folder (no S3)", source="local"),
                variant("chunk_size=64, local folder (no S3)", small, source="local"),
                variant("PROTO pipelined chunks, chunk_size=64, local folder (no S3)", piped, source="local",
                        pool=("threads", "--concurrency", "2"), app="bench.proto_worker"),
            ]
        dist = distributed.measure(str(model), main_paths, batch_size=batch, repeat=repeat, variants=tuple(variants))
        res["distributed"] = {}
        for name, pair in dist.items():
            res["distributed"][name] = {"job": round(pair["job"].ips, 2), "wall": round(pair["wall"].ips, 2)}
            details.setdefault("distributed", {})[name] = {k: v.to_dict() for k, v in pair.items()}
        m["distributed_job"] = res["distributed"]["defaults"]["job"]
        m["distributed_wall"] = res["distributed"]["defaults"]["wall"]

    if "ray" not in skip:
        from . import raydata

        res["ray"] = raydata.run(model, folders[main_size], batch=batch, actors=(1,) if args.quick else (1, 2))

    if "levers" not in skip:
        log(f"levers (steady-state engine on {main_size}, one setting toggled at a time):")
        res["levers"] = levers.run(args.model, model, folders[main_size], repeat=repeat, quick=args.quick or short,
                                   cores=n_cores, batch_size=batch)

    res["seconds"] = {"total": round(time.perf_counter() - started, 1), "data_and_models": round(prepared, 1)}
    res["machine"]["load_avg_1m_end"] = machine()["load_avg_1m"]
    res["targets"] = report.targets(res) if "sizes" not in skip else []
    name = f"bench-{args.model}{'-quick' if args.quick else ''}"
    write_json(OUT / f"{name}.json", res)
    print()
    if "sizes" not in skip:
        print(report.table(res))
        print()
        print(report.by_size_table(res))
        print()
    if "batches" not in skip:
        print(report.by_batch_table(res))
        print()
    if res.get("ray"):
        from . import raydata

        print("Ray Data (issue 14):")
        print(raydata.table(res["ray"]))
        print()
    if res["targets"]:
        print("targets (issue 5):")
        print(report.targets_text(res["targets"]))
    if res.get("levers"):
        print("\nlevers (steady-state engine, 1080p):")
        for row in res["levers"]:
            if "error" in row:
                print(f"  {row['lever']}={row['value']}: failed: {row['error']}")
            else:
                vs = f"× {row['vs_defaults']:.2f} of defaults" if row.get("vs_defaults") else ""
                print(f"  {row['lever'] + '=' + str(row['value']):<42} {row['images_per_s']:8.1f} img/s  {vs}")
    print(f"\nwrote {OUT / (name + '.json')}", end="")
    if not args.no_plot and "sizes" not in skip and "batches" not in skip:
        # docs/bench.png is the default run's; other models and --quick plot next to their JSON.
        plot_path = DOCS / "bench.png" if args.model == "mobilenetv3" and not args.quick else OUT / f"{name}.png"
        report.plot(res, plot_path)
        print(f" and {plot_path}", end="")
    print(f" in {res['seconds']['total']:.0f}s ({res['seconds']['data_and_models']:.0f}s of it making data/models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
