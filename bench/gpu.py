"""``python -m bench gpu``: ViT-B/16 and MobileNetV3-small end to end vs the bare model, bf16, on CUDA.

One short script for a machine with a CUDA device (it skips cleanly, exit 0,
where there is none). Per model, on 1920x1080 JPEGs: the bare model on ready
bf16 tensors on the device, ``Classifier.predict`` on uint8 batches (H→D copy from
pinned memory, normalise on device), labelq's decode on all cores, ``labelq run``
(embedded engine, ``--device cuda --dtype bfloat16``) and the transformers
pipeline on the same device in bf16. Issue 14's GPU-host feed is run too:
``labelq run`` with ``decode_processes`` = cores (decode fan-out, shared-memory
batches; pinned buffers and the copy stream are on by default on CUDA) and with
``gpu_decode`` (nvJPEG), plus the fidelity of nvJPEG + interpolate against the
model's processor. ``--allow-cpu`` runs the same code on a CPU (for checking the
script, not for figures).
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
        # issue 14's GPU-host feed: decode in processes (shared-memory batches), and JPEG decode on the device
        rows["labelq_run_decode_processes"] = labelq_run(
            model, folder, repeat=repeat, device=device, dtype="bfloat16", batch_size=batch,
            decode_processes=cores(), name=f"labelq run, decode_processes={cores()}")
        rows["labelq_run_gpu_decode"] = labelq_run(
            model, folder, repeat=repeat, device=device, dtype="bfloat16", batch_size=batch, gpu_decode=True,
            name="labelq run, gpu_decode")
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
        if device == "cuda":
            out["models"][name]["gpu_decode_fidelity"] = device_decode_fidelity(model, paths[:16])
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


def device_decode_fidelity(model: Any, paths: list[Any]) -> dict[str, Any]:
    """Mean |delta| in levels of labelq.gpudecode (nvJPEG + interpolate) against the model's own processor."""
    import numpy as np
    import torch

    from labelq.gpudecode import DeviceJpeg, supported
    from labelq.images import Limits, decode
    from labelq.models import derive_preprocessing

    from .fidelity import GATE_MEAN_LEVELS, exact_levels
    from .modes import classifier

    clf = classifier(model)
    derived = derive_preprocessing(clf.processor)
    if derived is None or not supported([derived[0]]):
        return {"skipped": "no device-decodable fast path for this model"}
    geometry, norm = derived
    dj = DeviceJpeg(torch.device("cuda"), [geometry])
    datas = [p.read_bytes() for p in paths]
    limits = Limits(50 << 20, 200_000_000, frozenset({"JPEG"}))
    deltas = []
    for blob, out in zip(datas, dj.decode(datas), strict=True):
        if out is None:
            return {"error": "nvJPEG failed on a bench JPEG"}
        exact = exact_levels(clf, decode(blob, limits), norm)
        deltas.append(float(np.abs(out[geometry].cpu().numpy().astype(np.float64) - exact).mean()))
    res = {"images": len(deltas), "mean": float(np.mean(deltas)), "worst_image_mean": float(max(deltas))}
    res["gate_ok"] = res["mean"] <= GATE_MEAN_LEVELS
    log(f"  gpu_decode fidelity vs the processor: mean |delta| {res['mean']:.3f} levels, worst image "
        f"{res['worst_image_mean']:.3f} ({'ok' if res['gate_ok'] else 'FAILED'})")
    return res
