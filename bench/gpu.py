"""``python -m bench gpu``: ViT-B/16 and MobileNetV3-small end to end vs the bare model, bf16, on CUDA.

One short script for a machine with a CUDA device (it skips cleanly, exit 0,
where there is none). Per model, on 1920x1080 JPEGs: the bare model on ready
bf16 tensors on the device, ``Classifier.predict`` on uint8 batches (H→D copy from
pinned memory, normalise on device), labelq's decode on all cores, ``labelq run``
(embedded engine, ``--device cuda --dtype bfloat16``) and the transformers
pipeline on the same device in bf16. ``--allow-cpu`` runs the same code on a CPU
(for checking the script, not for figures).
"""

from __future__ import annotations

import time
from typing import Any

from . import data
from .common import Measure, cores, limit_ips, log, machine
from .modes import bare, classifier, decode_alone, labelq_run, model_alone

BATCH = {"mobilenetv3": 256, "vit": 64}


def run(*, quick: bool, allow_cpu: bool, repeat: int, n: int | None = None) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available() and not allow_cpu:
        log("bench gpu: no CUDA device here: skipped (run it on a machine with one, or pass --allow-cpu to test it)")
        return {"skipped": "no CUDA device"}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    count = n or (64 if quick else 1024)
    start = time.perf_counter()
    folder = data.photos("1920x1080", count)
    paths = data.files(folder)
    log(f"bench gpu on {device} ({machine()['cuda'] or 'CPU'}): {count} 1920x1080 JPEGs, photos ready in "
        f"{time.perf_counter() - start:.0f}s")
    out: dict[str, Any] = {"machine": machine(), "device": device, "images": count, "models": {}}
    for name in ("mobilenetv3", "vit"):
        batch = BATCH[name] if device == "cuda" else 8
        model = data.model(name)
        log(f"{name} (batch {batch}, bfloat16):")
        clf = classifier(model, device=device, dtype="bfloat16", batch_size=batch)
        rows: dict[str, Measure] = {
            "bare": bare(clf, batch, repeat=repeat, target_s=2.0),
            "model_alone": model_alone(clf, batch, repeat=repeat, target_s=2.0),
            "decode_alone": decode_alone(clf, paths, cores(), repeat=repeat),
        }
        del clf
        rows["labelq_run"] = labelq_run(model, folder, repeat=repeat, device=device, dtype="bfloat16",
                                        batch_size=batch)
        rows["pipeline"] = _pipeline(model, paths, batch, device, repeat)
        if device == "cuda":
            torch.cuda.empty_cache()
        limit = limit_ips(rows["decode_alone"].ips, rows["model_alone"].ips) if device == "cpu" else min(
            rows["decode_alone"].ips, rows["model_alone"].ips)
        summary: dict[str, float | None] = {k: round(m.ips, 1) for k, m in rows.items()}
        summary["limit"] = round(limit, 1)
        summary["labelq_vs_bare"] = round(rows["labelq_run"].ips / rows["bare"].ips, 3)
        summary["labelq_vs_limit"] = round(rows["labelq_run"].ips / limit, 3) if limit else None
        summary["labelq_vs_pipeline"] = round(rows["labelq_run"].ips / rows["pipeline"].ips, 2)
        out["models"][name] = {"batch": batch, "summary": summary, "measures": {k: m.to_dict() for k, m in rows.items()}}
        q, b, p = rows["labelq_run"].ips, rows["bare"].ips, rows["pipeline"].ips
        log(f"  => {name}: labelq {q:.0f} img/s = {100 * q / b:.0f}% of bare {b:.0f}, "
            f"{100 * q / limit if limit else 0:.0f}% of the decode/model limit {limit:.0f}, {q / p:.1f}x the pipeline")
    return out


def _pipeline(model: Any, paths: list[Any], batch: int, device: str, repeat: int) -> Measure:
    import torch
    from transformers import pipeline

    from .common import timed

    pipe = pipeline("image-classification", model=str(model), device=device, dtype=torch.bfloat16)
    names = [str(p) for p in paths]
    m = timed("transformers pipeline (bf16)", len(names), lambda: pipe(names, batch_size=batch), repeat=repeat,
              warmup=lambda: pipe(names[:batch], batch_size=batch), batch=batch)
    return m
