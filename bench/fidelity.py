"""Correctness of the fast path: its pixels against the model's own processor, in 0–255 levels.

For each image: the *exact* pixels are the model's ``AutoImageProcessor`` output on
the fully decoded image, de-normalised back to levels (``(x * std + mean) / scale``);
the *fast* pixels are what labelq's engine feeds the model with ``fast_decode=True``
(:func:`labelq.images.decode` with JPEG draft, then :meth:`Classifier.prepare`).
Also reported: the same resize without draft decoding, which splits the error into
the part draft decoding adds and the part the resize itself makes. Random weights
make top-1 agreement meaningless, so the gate is pixels: the fast path stays the
default where its mean |Δ| is at most 1 level.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import log

GATE_MEAN_LEVELS = 1.0
MARGINS = (2,)  # prototype: JPEG draft to at least MARGIN x the resize step's size


def decode_with_margin(data: bytes, geometry: Any, margin: int) -> Any:
    """PROTOTYPE (not labelq code): draft to ``margin`` x what the geometry's resize needs, then resize.

    labelq's ``_draft`` asks for 1x: the DCT scaling then does most of the
    downscale (a box-like filter) and the model's filter only the rest. At 2x the
    model's own filter does at least half of it, for a somewhat larger decode.
    """
    import io

    from PIL import Image, ImageOps

    im: Image.Image = Image.open(io.BytesIO(data))
    w, h = im.size
    rotated = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    if rotated:
        w, h = h, w
    want_w, want_h = geometry.resized_size(w, h)
    want_w, want_h = want_w * margin, want_h * margin
    if rotated:
        want_w, want_h = want_h, want_w
    if im.format in ("JPEG", "MPO"):
        im.draft("RGB" if im.mode in ("RGB", "YCbCr") else None, (want_w, want_h))
    im.load()
    im = ImageOps.exif_transpose(im) or im
    return im.convert("RGB") if im.mode != "RGB" else im


def exact_levels(clf: Any, image: Any, norm: Any) -> np.ndarray:
    """The processor's pixels for a decoded RGB image, as float HWC levels 0–255."""
    pixels = clf.processor(images=image, return_tensors="pt")["pixel_values"][0].double().numpy()
    mean = np.asarray(norm.mean, dtype=np.float64).reshape(3, 1, 1)
    std = np.asarray(norm.std, dtype=np.float64).reshape(3, 1, 1)
    levels = (pixels * std + mean) / norm.scale
    return levels.transpose(1, 2, 0)


def compare(clf: Any, paths: list[Path]) -> dict[str, Any]:
    """Mean and max |Δ| over all pixels of all images, fast vs exact, with and without draft."""
    from labelq.images import Limits, decode, fit
    from labelq.models import derive_preprocessing

    derived = derive_preprocessing(clf.processor)
    if derived is None or clf.geometry is None:
        return {"fast_path": False, "note": "no fast path for this processor: the engine uses the exact one"}
    geometry, norm = derived
    limits = Limits(50 * 2**20, 200_000_000, frozenset({"JPEG", "MPO", "PNG", "WEBP"}))
    rows: list[dict[str, Any]] = []
    cpu: dict[str, float] = {"fast": 0.0, **{f"margin{k}": 0.0 for k in MARGINS}}
    for path in paths:
        data = path.read_bytes()
        full = decode(data, limits)
        exact = exact_levels(clf, full, norm)
        t = time.thread_time()
        fast = clf.prepare(decode(data, limits, draft=[geometry])).astype(np.float64)
        cpu["fast"] += time.thread_time() - t
        margin_rows: dict[str, float] = {"cpu_ms_fast": 1000 * (time.thread_time() - t)}
        for k in MARGINS:
            t = time.thread_time()
            wide = fit(decode_with_margin(data, geometry, k), geometry).astype(np.float64)
            cpu[f"margin{k}"] += time.thread_time() - t
            margin_rows[f"cpu_ms_margin{k}"] = 1000 * (time.thread_time() - t)
            margin_rows[f"mean_margin{k}"] = float(np.abs(wide - exact).mean())
        nodraft = fit(full, geometry).astype(np.float64)
        if fast.shape != exact.shape:
            raise AssertionError(f"{path.name}: fast path shape {fast.shape} != processor's {exact.shape}")
        d_fast, d_nodraft = np.abs(fast - exact), np.abs(nodraft - exact)
        rows.append({"image": path.name, "size": f"{full.width}x{full.height}",
                     "mean": float(d_fast.mean()), "max": float(d_fast.max()),
                     "p99": float(np.percentile(d_fast, 99)),
                     "mean_no_draft": float(d_nodraft.mean()), "max_no_draft": float(d_nodraft.max()),
                     **margin_rows})
    out: dict[str, Any] = {
        "fast_path": True,
        "geometry": {"resize": geometry.resize, "shortest": geometry.shortest, "crop": geometry.crop,
                     "resample": geometry.resample},
        "images": len(rows),
        "mean": float(np.mean([r["mean"] for r in rows])),
        "max": float(max(r["max"] for r in rows)),
        "worst_image_mean": float(max(r["mean"] for r in rows)),
        "mean_no_draft": float(np.mean([r["mean_no_draft"] for r in rows])),
        "max_no_draft": float(max(r["max_no_draft"] for r in rows)),
        "decode_cpu_ms_per_image": {k: round(1000 * v / len(rows), 2) for k, v in cpu.items()},
        **{f"mean_margin{k}": float(np.mean([r[f"mean_margin{k}"] for r in rows])) for k in MARGINS},
        **{f"worst_image_mean_margin{k}": float(max(r[f"mean_margin{k}"] for r in rows)) for k in MARGINS},
        "per_image": rows,
    }
    out["gate_ok"] = out["mean"] <= GATE_MEAN_LEVELS
    return out


def run(models: dict[str, Path], real: list[Path], generated: list[Path]) -> dict[str, Any]:
    from .modes import classifier

    results: dict[str, Any] = {}
    for name, folder in models.items():
        clf = classifier(folder, fast_decode=True)
        results[name] = {}
        for label, paths in (("real", real), ("generated", generated)):
            r = compare(clf, paths)
            results[name][label] = r
            if r.get("fast_path"):
                log(f"  fidelity {name:<12} {label:<9} {r['images']:3d} images: mean |Δ| {r['mean']:.3f} "
                    f"max {r['max']:.0f} levels, worst image {r['worst_image_mean']:.2f} (no draft: mean "
                    f"{r['mean_no_draft']:.3f}; draft 2x prototype: mean {r['mean_margin2']:.3f}, worst image "
                    f"{r['worst_image_mean_margin2']:.2f}) gate {'ok' if r['gate_ok'] else 'FAILED'}; decode CPU ms/img "
                    f"{r['decode_cpu_ms_per_image']}")
            else:
                log(f"  fidelity {name}: {r['note']}")
    return results
