"""The peer: Ray Data batch inference against ``labelq run``, wall and CPU per image, in one run.

Ray is an optional bench dependency (``pip install -e '.[bench]'``); without it the
contender is skipped with a message. Each contender runs in a fresh process on the
same JPEGs and the same random-init model; the bench samples the CPU of that
process and all its descendants (Ray's GCS, raylet and workers) from ``/proc``
(bench/proctree.py). Two clocks per contender:

* **whole process**: from starting the command to its exit (interpreter, imports,
  ``ray.init``, model load, the work, shutdown);
* **after start-up**: from the moment the model is loaded and ready to the last
  result (labelq: ``run_embedded``'s own clock, which starts after the model
  load; Ray: the earliest time any predictor actor finished loading its model,
  stamped inside the actor, to the last batch reaching the driver). Ray's read and
  preprocessing tasks may start before that moment, which counts in Ray's favour.

CPU seconds per image are the tree's CPU over the same window divided by the images.

Ray contenders, configured as Ray's batch-inference docs show for CPUs:

* ``ray docs``: ``read_images(mode="RGB")`` → ``map_batches(preprocess)`` (the model's
  own ``AutoImageProcessor``, stateless tasks) → ``map_batches(Predictor, concurrency=N,
  batch_size=B)``, an actor class that loads the model once and predicts batches;
  ``iter_batches`` to the driver. ``ray.init(num_cpus=cores)``.
* ``ray + labelq decode``: ``read_binary_files`` → the actor decodes with labelq's fast
  path (JPEG draft + resize) and predicts with ``Classifier.predict``: Ray's
  orchestration with labelq's decode, to separate the two.

``python -m bench ray [--images N] [--actors 1,2]`` runs this alone; the full
``python -m bench`` runs it as step ``ray``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import ROOT, busy_seconds, cores, log, settle
from .proctree import TreeCPU


def available() -> str | None:
    """Ray's version, or None when Ray Data is not installed."""
    try:
        import importlib.metadata

        import ray.data  # noqa: F401

        return importlib.metadata.version("ray")
    except Exception:  # noqa: BLE001 - any import failure means: no contender
        return None


# ---------------------------------------------------------------------- the contenders' processes


def _ray_main(args: argparse.Namespace) -> None:
    """Runs in the contender's own process: the whole Ray Data job, timestamps to stdout as JSON."""
    t_start = float(os.environ.get("BENCH_T0", time.time()))
    paths = Path(args.paths_file).read_text().split("\n")
    import numpy as np
    import ray

    # address="local": always a fresh single-node cluster, never one a killed run left behind
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    t_init = time.time()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    model, batch = args.model, args.batch

    class Predictor:
        """Loads the model once per actor; predicts one batch per call (Ray's actor-predictor pattern)."""

        def __init__(self) -> None:
            import torch

            torch.set_num_threads(args.torch_threads)
            if args.variant == "docs":
                from transformers import AutoModelForImageClassification

                self.model = AutoModelForImageClassification.from_pretrained(model).eval()
            else:
                from labelq.config import Settings
                from labelq.images import Limits

                s = Settings(models=[model], device="cpu", torch_threads=args.torch_threads)  # type: ignore[call-arg]
                from labelq.models import load_classifier

                self.clf = load_classifier(model, s)
                self.limits = Limits(s.max_bytes, s.max_pixels, frozenset(s.formats))
            self.ready = time.time()

        def __call__(self, rows: dict[str, Any]) -> dict[str, Any]:
            import torch

            if args.variant == "docs":
                with torch.inference_mode():
                    logits = self.model(pixel_values=torch.from_numpy(rows["pixel_values"])).logits
                    probs = torch.softmax(logits.float(), dim=-1)
                    score, index = probs.max(dim=-1)
                labels = [self.model.config.id2label[int(i)] for i in index]
                scores = score.numpy()
            else:
                from labelq.images import decode, fit

                geometry = self.clf.geometry
                assert geometry is not None, "the bench model has a fast path"
                pixels = np.stack([fit(decode(bytes(b), self.limits, draft=[geometry]), geometry)
                                   for b in rows["bytes"]])
                preds = self.clf.predict(pixels)
                labels, scores = [p.label for p in preds], np.array([p.score for p in preds])
            n = len(labels)
            return {"label": np.array(labels), "score": scores, "t_ready": np.full(n, self.ready)}

    if args.variant == "docs":
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(model)

        def preprocess(rows: dict[str, Any]) -> dict[str, Any]:
            out = processor(images=list(rows["image"]), return_tensors="pt")
            return {"pixel_values": out["pixel_values"].numpy()}

        ds = ray.data.read_images(paths, mode="RGB").map_batches(preprocess, batch_size=batch)
    else:
        ds = ray.data.read_binary_files(paths)
    ds = ds.map_batches(Predictor, batch_size=batch, concurrency=args.actors, num_cpus=args.actor_cpus)
    t_built = time.time()
    n, ready = 0, float("inf")
    for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
        n += len(out["label"])
        ready = min(ready, float(out["t_ready"].min()))
    t_end = time.time()
    ray.shutdown()
    print(json.dumps({"images": n, "t_start": t_start, "t_init": t_init, "t_built": t_built, "t_ready": ready,
                      "t_end": t_end, "t_exit": time.time()}))


def _labelq_main(args: argparse.Namespace) -> None:
    """``labelq run`` in-process (run_embedded, as the CLI calls it); its clock's window to stdout."""
    paths = Path(args.paths_file).read_text().split("\n")
    from labelq.config import load_settings
    from labelq.embedded import run_embedded

    with tempfile.TemporaryDirectory(prefix="labelq-bench-") as tmp:
        s = load_settings(models=[args.model], device="cpu", batch_size=args.batch, db_url=f"sqlite:///{tmp}/l.db")
        summary = run_embedded(str(Path(paths[0]).parent), s, force=True, progress=False)
        t_end = time.time()
    print(json.dumps({"images": summary.images, "t_ready": t_end - summary.seconds, "t_end": t_end,
                      "errors": dict(summary.errors)}))


# ---------------------------------------------------------------------- measuring them


def _measure(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 600) -> dict[str, Any]:
    """Run one contender process under the tree sampler; both clocks and both CPU figures."""
    settle()
    busy0 = busy_seconds()
    t0 = time.time()
    full_env = dict(os.environ, BENCH_T0=repr(t0), **(env or {}))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=ROOT)
    tree = TreeCPU(proc.pid).start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        tree.kill()
        proc.communicate()
        raise RuntimeError(f"{' '.join(cmd[3:5])} did not finish in {timeout:.0f}s (killed)") from None
    finally:
        t_exit = time.time()
        tree.stop()
    others = max(0.0, (busy_seconds() - busy0) - tree.total) / max(t_exit - t0, 1e-6)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} failed ({proc.returncode}): {out[-300:]} {err[-1500:]}")
    return {"stdout": out, "t0": t0, "t_exit": t_exit, "tree": tree, "others": round(others, 2)}


def _row(name: str, images: int, whole_s: float, whole_cpu: float, run_s: float | None, run_cpu: float | None,
         **extra: Any) -> dict[str, Any]:
    row = {"name": name, "images": images, "whole_s": round(whole_s, 3), "whole_ips": round(images / whole_s, 2),
           "whole_cpu_ms_per_image": round(1000 * whole_cpu / images, 2), **extra}
    if run_s is not None and run_cpu is not None:
        row.update({"run_s": round(run_s, 3), "run_ips": round(images / run_s, 2),
                    "run_cpu_ms_per_image": round(1000 * run_cpu / images, 2)})
    log(f"  {name:<40} whole {row['whole_ips']:7.1f} img/s {row['whole_cpu_ms_per_image']:7.1f} CPU ms/img"
        + (f" | after start-up {row['run_ips']:7.1f} img/s {row['run_cpu_ms_per_image']:7.1f} CPU ms/img"
           if "run_ips" in row else "") + f" (others used {extra.get('others_cores')} cores)")
    return row


def labelq_rows(model: Path, folder: Path, paths_file: Path, batch: int) -> list[dict[str, Any]]:
    """``labelq run`` as the CLI (whole process) and as run_embedded in a fresh process (after start-up)."""
    with tempfile.TemporaryDirectory(prefix="labelq-bench-") as tmp:
        cli = _measure([sys.executable, "-m", "labelq", "run", str(folder), "--model", str(model), "--device", "cpu",
                        "--batch-size", str(batch), "--db", f"sqlite:///{tmp}/l.db", "--force", "--quiet"],
                       env={"COLUMNS": "300"})  # rich wraps the summary line at the default 80
    found = re.search(r"labelled (\d+) images\b.*? in ([\d.]+)s: ([\d.]+) images/s", cli["stdout"], re.S)
    if found is None:
        raise RuntimeError(f"labelq run printed no summary: {cli['stdout'][-500:]}")
    images = int(found.group(1))
    emb = _measure([sys.executable, "-m", "bench.raydata", "labelq", "--paths-file", str(paths_file),
                    "--model", str(model), "--batch", str(batch)])
    info = json.loads(emb["stdout"].strip().splitlines()[-1])
    if info["errors"]:
        raise RuntimeError(f"labelq run produced errors: {info['errors']}")
    tree = emb["tree"]
    return [_row("labelq run", images, cli["t_exit"] - cli["t0"], cli["tree"].total, info["t_end"] - info["t_ready"],
                 tree.at(info["t_end"]) - tree.at(info["t_ready"]), cli_own_ips=float(found.group(3)),
                 others_cores=[cli["others"], emb["others"]])]


def ray_row(model: Path, paths_file: Path, batch: int, *, variant: str, actors: int) -> dict[str, Any]:
    n = cores()
    # Ray's CPU recipe: predictor actors with a CPU reservation each (num_cpus), torch threads 1 per actor. At
    # least one CPU is left unreserved for the read (and preprocess) tasks: with every CPU reserved by actors Ray
    # Data never schedules a read task and the job hangs (seen with 2 actors x 1 CPU on 2 cores).
    actor_cpus = min(1.0, max(n - 1, 1) / actors) if n > 1 else 0.5
    cmd = [sys.executable, "-m", "bench.raydata", "ray", "--paths-file", str(paths_file), "--model", str(model),
           "--batch", str(batch), "--variant", variant, "--actors", str(actors), "--actor-cpus", str(actor_cpus),
           "--torch-threads", "1", "--cpus", str(n)]
    m = _measure(cmd, env={"RAY_DEDUP_LOGS": "0", "RAY_USAGE_STATS_ENABLED": "0"})
    info = json.loads(m["stdout"].strip().splitlines()[-1])
    tree = m["tree"]
    name = f"ray data ({'docs' if variant == 'docs' else 'labelq decode'}), {actors} actor{'s' if actors > 1 else ''}"
    return _row(name, info["images"], m["t_exit"] - m["t0"], tree.total, info["t_end"] - info["t_ready"],
                tree.at(info["t_end"]) - tree.at(info["t_ready"]), variant=variant, actors=actors, actor_cpus=actor_cpus,
                ray_init_s=round(info["t_init"] - info["t_start"], 2), others_cores=m["others"],
                # from the start of execution (actors starting, model loads, reads): no head start for the reads
                exec_s=round(info["t_end"] - info["t_built"], 3),
                exec_ips=round(info["images"] / (info["t_end"] - info["t_built"]), 2),
                exec_cpu_ms_per_image=round(1000 * (tree.at(info["t_end"]) - tree.at(info["t_built"]))
                                            / info["images"], 2))


def run(model: Path, folder: Path, *, batch: int, actors: tuple[int, ...] = (1, 2),
        variants: tuple[str, ...] = ("docs", "labelq")) -> dict[str, Any]:
    """Every contender once on the JPEGs in ``folder``; ratios of labelq over the best Ray row."""
    version = available()
    if version is None:
        log("ray data: not installed, contender skipped (pip install -e '.[bench]')")
        return {"skipped": "ray not installed"}
    from .data import files

    paths = files(folder)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="bench-ray-", delete=False) as f:
        f.write("\n".join(str(p) for p in paths))
        paths_file = Path(f.name)
    try:
        log(f"ray data {version} vs labelq run, {len(paths)} JPEGs from {folder.name}, batch {batch}:")
        rows = labelq_rows(model, folder, paths_file, batch)
        for variant in variants:
            for a in actors:
                try:
                    rows.append(ray_row(model, paths_file, batch, variant=variant, actors=a))
                except Exception as exc:  # noqa: BLE001 - a configuration Ray cannot run is reported
                    log(f"  ray data {variant}, {a} actors: failed: {exc}"[:2000])
                    rows.append({"name": f"ray data ({variant}), {a} actors", "error": str(exc)[:1000]})
    finally:
        paths_file.unlink(missing_ok=True)
    q = rows[0]
    ratios: dict[str, Any] = {}
    for variant in variants:
        ok = [r for r in rows[1:] if r.get("variant") == variant and "error" not in r]
        if not ok:
            continue
        best = max(ok, key=lambda r: r["run_ips"])  # Ray's best configuration, by its after-start-up rate
        ratios[variant] = {
            "ray_row": best["name"],
            "wall_whole": round(q["whole_ips"] / best["whole_ips"], 2),
            "wall_after_startup": round(q["run_ips"] / best["run_ips"], 2),
            "cpu_whole": round(best["whole_cpu_ms_per_image"] / q["whole_cpu_ms_per_image"], 2),
            "cpu_after_startup": round(best["run_cpu_ms_per_image"] / q["run_cpu_ms_per_image"], 2),
        }
        log(f"  => labelq vs best {best['name']}: wall x{ratios[variant]['wall_whole']} whole / "
            f"x{ratios[variant]['wall_after_startup']} after start-up; CPU per image x{ratios[variant]['cpu_whole']} "
            f"whole / x{ratios[variant]['cpu_after_startup']} after start-up")
    return {"ray": version, "images": len(paths), "batch": batch, "rows": rows, "ratios": ratios}


def table(res: dict[str, Any]) -> str:
    if "skipped" in res:
        return f"ray data: {res['skipped']}"
    lines = ["| contender | whole img/s | whole CPU ms/img | after start-up img/s | after start-up CPU ms/img | others |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['name']} | failed | | | |")
        else:
            lines.append(f"| {r['name']} | {r['whole_ips']:.1f} | {r['whole_cpu_ms_per_image']:.1f} | "
                         f"{r.get('run_ips', 0):.1f} | {r.get('run_cpu_ms_per_image', 0):.1f} | {r.get('others_cores')} |")
    for q in res["ratios"].values():
        lines.append(f"\nlabelq ÷ {q['ray_row']}: wall ×{q['wall_whole']} (whole) ×{q['wall_after_startup']} "
                     f"(after start-up); Ray's CPU per image ÷ labelq's ×{q['cpu_whole']} (whole) "
                     f"×{q['cpu_after_startup']} (after start-up)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.raydata", description="one contender process (internal)")
    parser.add_argument("which", choices=("ray", "labelq"))
    parser.add_argument("--paths-file", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--variant", choices=("docs", "labelq"), default="docs")
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--actor-cpus", type=float, default=1)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=cores())
    args = parser.parse_args(argv)
    if args.which == "ray":
        _ray_main(args)
    else:
        _labelq_main(args)


if __name__ == "__main__":
    from .common import offline_env

    offline_env()
    main()
