"""``python -m bench peers``: labelq against what users run instead, both seed models, one run (docs/benchmarks.md).

On the same distinct 1080p JPEGs and the same random-init model, each contender runs once in a
fresh process on the CPU, and the bench samples the CPU of that process tree (bench/proctree.py):

* ``labelq run`` (``run_embedded`` as the CLI calls it, default settings);
* ``transformers pipeline("image-classification")`` over the file paths, ``batch_size=B``;
* Ray Data, as its batch-inference docs show (bench/raydata.py: ``read_images`` → the model's
  processor → a predictor actor class);
* Daft with its class UDF (its API for stateful batch inference): ``from_glob_path`` →
  ``download()`` of each file's bytes → a ``@daft.cls`` class that loads the model once (in this
  process, ``use_process=False``) and a ``@daft.method.batch`` method that decodes the bytes with the
  model's processor and predicts a batch;
* naive Celery: one task per image, prefork defaults (bench/naive_celery.py; after start-up only);
* on ViT-B/16 only, ``labelq run`` with each inference runtime (``LABELQ_RUNTIME``): torch, onnx,
  openvino, onnx-int8. Exports are made before the clock starts (once per model revision, as a
  user's first load makes them) and their time is reported apart.

Two clocks per contender: **after start-up** (from the model ready to the last result: the rate a
long job runs at) and **whole process** (interpreter, imports, model load, the work, exit). Ratios
are labelq's rate over the peer's, in the same run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import QUIET, cores, log, machine

PEERS = ("pipeline", "ray", "daft", "naive")
RUNTIMES = ("torch", "onnx", "openvino", "onnx-int8")


# ---------------------------------------------------------------------- the contenders' processes


def _labelq_main(args: argparse.Namespace) -> dict[str, Any]:
    from labelq.config import load_settings
    from labelq.embedded import run_embedded

    folder = Path(Path(args.paths_file).read_text().split("\n")[0]).parent
    with tempfile.TemporaryDirectory(prefix="labelq-bench-") as tmp:
        s = load_settings(models=[args.model], device="cpu", batch_size=args.batch, db_url=f"sqlite:///{tmp}/l.db",
                          runtime=args.runtime, int8_calibration=args.calibration or None)
        summary = run_embedded(str(folder), s, force=True, progress=False)
        t_end = time.time()
    if summary.errors:
        raise SystemExit(f"labelq run produced errors: {dict(summary.errors)}")
    return {"images": summary.images, "t_ready": t_end - summary.seconds, "t_end": t_end}


def _pipeline_main(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import pipeline

    paths = Path(args.paths_file).read_text().split("\n")
    pipe = pipeline("image-classification", model=args.model, device="cpu")
    t_ready = time.time()
    with torch.inference_mode():
        out = pipe(paths, batch_size=args.batch)
    return {"images": len(out), "t_ready": t_ready, "t_end": time.time()}


def _daft_main(args: argparse.Namespace) -> dict[str, Any]:
    import daft
    from daft import col

    model, folder = args.model, Path(Path(args.paths_file).read_text().split("\n")[0]).parent
    # Daft may run a copy of the class (pickled): the instance stamps its ready time in a file.
    ready_file = str(Path(args.paths_file).with_suffix(".ready"))

    @daft.cls(max_concurrency=1, use_process=False)
    class Classify:
        """Loads the model once; classifies a batch of encoded images (Daft's class-UDF pattern)."""

        def __init__(self) -> None:
            from transformers import AutoImageProcessor, AutoModelForImageClassification

            self.processor = AutoImageProcessor.from_pretrained(model)
            self.model = AutoModelForImageClassification.from_pretrained(model).eval()
            with open(ready_file, "a", encoding="utf-8") as f:
                f.write(f"{time.time()}\n")

        @daft.method.batch(return_dtype=daft.DataType.string(), batch_size=args.batch)
        def __call__(self, data: Any) -> list[str]:
            import torch
            from PIL import Image

            images = [Image.open(io.BytesIO(b)).convert("RGB") for b in data.to_pylist()]
            with torch.inference_mode():
                logits = self.model(**self.processor(images=images, return_tensors="pt")).logits
            return [self.model.config.id2label[int(i)] for i in logits.argmax(-1)]

    df = daft.from_glob_path(str(folder / "*.jpg")).with_column("bytes", col("path").download())
    out = df.with_column("label", Classify()(col("bytes"))).select("path", "label").to_pydict()
    t_end = time.time()
    ready = min(float(line) for line in Path(ready_file).read_text(encoding="utf-8").split())
    Path(ready_file).unlink()
    return {"images": len(out["label"]), "t_ready": ready, "t_end": t_end}


MAINS = {"labelq": _labelq_main, "pipeline": _pipeline_main, "daft": _daft_main}


# ---------------------------------------------------------------------- measuring them


def _process_row(name: str, which: str, model: Path, paths_file: Path, batch: int, **extra: Any) -> dict[str, Any]:
    from .raydata import _measure, _row

    cmd = [sys.executable, "-m", "bench.peers", "one", which, "--paths-file", str(paths_file), "--model", str(model),
           "--batch", str(batch), *[f"--{k.replace('_', '-')}={v}" for k, v in extra.items()]]
    m = _measure(cmd, env={"RAY_USAGE_STATS_ENABLED": "0", "DAFT_PROGRESS_BAR": "0"}, timeout=900)
    info = json.loads(m["stdout"].strip().splitlines()[-1])
    tree = m["tree"]
    return _row(name, info["images"], m["t_exit"] - m["t0"], tree.total, info["t_end"] - info["t_ready"],
                tree.at(info["t_end"]) - tree.at(info["t_ready"]), others_cores=m["others"], **extra)


def _guarded(name: str, make: Any) -> dict[str, Any]:
    try:
        return make()  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001 - a contender that cannot run here is reported, the run goes on
        log(f"  {name}: failed: {exc}"[:1500])
        return {"name": name, "error": str(exc)[:1000]}


def _exports(model: Path, calibration: Path) -> dict[str, float]:
    """Make each runtime's export before the clock (as a user's first load does); seconds each."""
    from labelq.config import Settings
    from labelq.models import load_classifier

    spent = {}
    for runtime in RUNTIMES[1:]:
        start = time.perf_counter()
        load_classifier(str(model), Settings(device="cpu", runtime=runtime, int8_calibration=calibration))
        spent[runtime] = round(time.perf_counter() - start, 1)
        log(f"  first load with LABELQ_RUNTIME={runtime} (export, gate): {spent[runtime]}s")
    return spent


def run_model(name: str, images: int, batch: int, *, runtimes: bool) -> dict[str, Any]:
    from . import data, naive_celery, raydata

    model = data.model(name)
    folder = data.photos("1920x1080", images)
    paths = data.files(folder)
    res: dict[str, Any] = {"model": data.MODELS[name], "images": len(paths), "batch": batch, "rows": []}
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="bench-peers-", delete=False) as f:
        f.write("\n".join(str(p) for p in paths))
        paths_file = Path(f.name)
    rows = res["rows"]
    try:
        log(f"{data.MODELS[name]}: {len(paths)} 1080p JPEGs, batch {batch}")
        calibration = data.photos("640x480", 32)
        if runtimes:
            res["first_load_s"] = _exports(model, calibration)
        for runtime in RUNTIMES if runtimes else RUNTIMES[:1]:
            label = "labelq run" if runtime == "torch" else f"labelq run, LABELQ_RUNTIME={runtime}"
            extra = {"runtime": runtime, **({"calibration": str(calibration)} if runtime == "onnx-int8" else {})}
            rows.append(_guarded(label, lambda label=label, extra=extra: _process_row(
                label, "labelq", model, paths_file, batch, **extra)))
        rows.append(_guarded("transformers pipeline", lambda: _process_row(
            "transformers pipeline", "pipeline", model, paths_file, batch)))
        if raydata.available():
            rows.append(_guarded("Ray Data", lambda: {**raydata.ray_row(model, paths_file, batch, variant="docs",
                                                                         actors=1), "name": "Ray Data"}))
        else:
            rows.append({"name": "Ray Data", "error": "not installed (pip install -e '.[bench]')"})
        rows.append(_guarded("Daft", lambda: _process_row("Daft", "daft", model, paths_file, batch)))

        def naive() -> dict[str, Any]:
            m = naive_celery.measure(str(model), [str(p) for p in paths[: max(8, len(paths) // 2)]], repeat=1)
            return {"name": "naive Celery", "images": m.images, "run_ips": round(m.ips, 2)}

        rows.append(_guarded("naive Celery", naive))
    finally:
        paths_file.unlink(missing_ok=True)
    ours = next((r for r in rows if r["name"] == "labelq run" and "error" not in r), None)
    for r in rows:
        if ours is not None and "error" not in r and r is not ours:
            r["labelq_vs_run"] = round(ours["run_ips"] / r["run_ips"], 2)
            if "whole_ips" in r:
                r["labelq_vs_whole"] = round(ours["whole_ips"] / r["whole_ips"], 2)
    pipe = next((r for r in rows if r["name"] == "transformers pipeline" and "error" not in r), None)
    for r in rows:
        if pipe is not None and "error" not in r and r["name"].startswith("labelq run"):
            r["vs_pipeline_run"] = round(r["run_ips"] / pipe["run_ips"], 2)
            r["vs_pipeline_whole"] = round(r["whole_ips"] / pipe["whole_ips"], 2)
    return res


def table(res: dict[str, Any]) -> str:
    lines = ["| contender | after start-up img/s | whole process img/s | CPU ms/img (whole) | labelq ÷ it |",
             "|---|---:|---:|---:|---:|"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error'][:80]} | | | |")
            continue
        ratio = f"×{r['labelq_vs_run']}" if "labelq_vs_run" in r else ""
        if "vs_pipeline_run" in r and r["name"] != "labelq run":  # a runtime row: against the pipeline
            ratio = f"×{r['vs_pipeline_run']} the pipeline"
        whole = f"{r['whole_ips']:.2f}" if "whole_ips" in r else "–"
        cpu = f"{r['whole_cpu_ms_per_image']:.0f}" if "whole_cpu_ms_per_image" in r else "–"
        lines.append(f"| {r['name']} | {r['run_ips']:.2f} | {whole} | {cpu} | {ratio} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from .common import OUT, write_json

    QUIET["wait_s"] = 0.0  # a shared machine is never quiet: ratios within the run are what count
    started = time.perf_counter()
    info = machine()
    log(f"bench peers: {cores()} cores ({info['cpu']}), torch {info['torch']}, load average {info['load_avg_1m']}")
    res: dict[str, Any] = {"command": "python -m bench " + " ".join(sys.argv[1:]), "machine": info, "models": {}}
    plan = {"mobilenetv3": (args.images_mobilenet, False), "vit": (args.images_vit, True)}
    for name in args.models.split(","):
        images, runtimes = plan[name]
        res["models"][name] = run_model(name, images, args.batch, runtimes=runtimes)
    res["machine"]["load_avg_1m_end"] = machine()["load_avg_1m"]
    res["seconds"] = round(time.perf_counter() - started, 1)
    write_json(OUT / "bench-peers.json", res)
    for r in res["models"].values():
        print(f"\n{r['model']}, {r['images']} 1080p JPEGs, batch {r['batch']}:")
        print(table(r))
        if r.get("first_load_s"):
            print("first load (export once per model revision, int8 gate): "
                  + ", ".join(f"{k} {v}s" for k, v in r["first_load_s"].items()))
    print(f"\nwrote {OUT / 'bench-peers.json'} in {res['seconds']:.0f}s")
    return res


def add_parser(sub: Any) -> None:
    p = sub.add_parser("peers", help="labelq vs the pipeline, Ray Data, Daft and naive Celery on both models, "
                       "and the inference runtimes on ViT-B (the users' page)")
    p.add_argument("--models", default="mobilenetv3,vit")
    p.add_argument("--images-mobilenet", type=int, default=256, help="1080p JPEGs for MobileNetV3")
    p.add_argument("--images-vit", type=int, default=64, help="1080p JPEGs for ViT-B/16")
    p.add_argument("--batch", type=int, default=32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description="one contender process (internal)")
    parser.add_argument("one", choices=("one",))
    parser.add_argument("which", choices=tuple(MAINS))
    parser.add_argument("--paths-file", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runtime", default="torch")
    parser.add_argument("--calibration", default="")
    args = parser.parse_args(argv)
    os.environ.setdefault("DAFT_PROGRESS_BAR", "0")
    print(json.dumps(MAINS[args.which](args)))


if __name__ == "__main__":
    from .common import offline_env

    offline_env()
    main()
