"""``python -m bench decoders``: "fewer bytes decoded" JPEG decoders for the fast path, through the fidelity gate.

labelq's fast path decodes a JPEG with Pillow in draft mode (libjpeg-turbo's DCT
scaling to 1/2, 1/4 or 1/8) and resizes the result to the model's geometry
(:func:`labelq.images.decode` with ``draft``, then :func:`labelq.images.fit`).
This mode puts other decoders in its place, one image at a time on ONE thread,
and measures for each decoder, image set and model:

* wall-clock and CPU time (``time.process_time``: every thread of the process,
  so a library's own worker threads count) per image of decode + resize + crop
  to the model's uint8 HxWx3 input; the median of ``repeat`` rounds over the
  set, after a warm-up pass (within a round each image goes through every
  decoder in turn, so a drift of the machine's speed, or others' work on it,
  spreads over all of them);
* pixel fidelity as :mod:`bench.fidelity` defines it: mean and max |Δ| in 0–255
  levels against the model's own processor on the fully decoded image, the
  mean taken over each image's mean; the gate: mean |Δ| at most 1 level.

Every candidate first runs :func:`labelq.images.open_checked` (Pillow reads the
header and applies labelq's limits) and reads the EXIF orientation, as labelq
would have to before handing the bytes to another decoder (the GPU decode does
the same); the Pillow candidates do it inside ``decode``. The generated JPEGs have
no EXIF orientation, nor do the example photos, so the rotation branches are
not exercised by the timed sets (the table's last line gives what the check alone costs).

Candidates (``CANDIDATES``; those whose package is missing are reported as such):

* ``pillow-full``: full decode, then labelq's resize (``fast_decode=False`` geometry);
* ``pillow-draft``: labelq's default: draft decode, then the same resize;
* ``simplejpeg``: ``decode_jpeg(min_width=, min_height=)`` at the resize step's
  size (turbojpeg picks the smallest of ALL its M/8 scales that is at least
  that large, e.g. 7/8: not only 1/2, 1/4, 1/8 like Pillow), ``Image.fromarray``,
  labelq's resize; ``simplejpeg-fast``: the same with ``fastdct`` and
  ``fastupsample``; ``simplejpeg-pow2``: the minimum size of Pillow's own
  power-of-two scale, so the same DCT scale and pixels as Pillow draft (the
  decoder's own speed alone);
* ``pyvips-shrink+fit``: libvips ``jpegload`` with ``shrink`` = Pillow's scale
  (libvips floors the shrunk size where libjpeg rounds up), then labelq's resize;
* ``pyvips-shrink+resize``: the same load, then libvips ``resize`` with the
  model's kernel (``linear``/``cubic``, ``gap=0``: no box pre-shrink) and a
  centre crop, all in libvips;
* ``pyvips-thumbnail``: ``thumbnail_buffer`` to the resize step's size
  (``size="force"``: the geometry's own aspect), then a centre crop: libvips
  chooses the shrink-on-load and resizes with its own kernel (lanczos3), which is
  not the model's.

libvips runs with ``concurrency_set(1)`` and its operation cache off (a repeated
``thumbnail_buffer`` on the same bytes would otherwise be a cache hit).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .common import QUIET, Probe, log, settle
from .fidelity import GATE_MEAN_LEVELS, exact_levels

SETS = ("1920x1080", "4000x3000", "real")
ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _header(data: bytes, limits: Any) -> tuple[int, int, int]:
    """labelq's header check; (width, height) as displayed, and the EXIF orientation."""
    from labelq.images import open_checked

    im = open_checked(data, limits)
    orientation = im.getexif().get(0x0112, 1)
    w, h = im.size
    return (h, w, orientation) if orientation in ROTATED else (w, h, orientation)


def _orient(im: Any, orientation: int) -> Any:
    """Apply an EXIF orientation to a PIL image decoded without it (what ``ImageOps.exif_transpose`` does)."""
    from PIL import Image

    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return im.transpose(method) if method is not None else im


def _stored(want: tuple[int, int], orientation: int) -> tuple[int, int]:
    """A displayed (width, height) as the stored image's (a 90/270 degree orientation swaps them)."""
    return (want[1], want[0]) if orientation in ROTATED else want


def _pillow_scale(size: tuple[int, int], want: tuple[int, int]) -> int:
    """The DCT scale Pillow's ``draft`` picks for a stored size and a wanted size: 8, 4, 2 or 1."""
    scale = min(size[0] // max(1, want[0]), size[1] // max(1, want[1]))
    return next(s for s in (8, 4, 2, 1) if scale >= s)


def _rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    return arr[:, :, :3]


Fit = Callable[[bytes], np.ndarray]


def _pillow(limits: Any, geometry: Any, *, draft: bool) -> Fit:
    from labelq.images import decode, fit

    geometries = [geometry] if draft else []
    return lambda data: fit(decode(data, limits, draft=geometries), geometry)


def _simplejpeg(limits: Any, geometry: Any, *, fast: bool = False, pow2: bool = False) -> Fit:
    import simplejpeg
    from PIL import Image

    from labelq.images import fit

    def one(data: bytes) -> np.ndarray:
        w, h, orientation = _header(data, limits)
        want = geometry.resized_size(w, h)
        sw, sh = _stored((w, h), orientation)
        mw, mh = _stored(want, orientation)
        if pow2:  # the minimum size of Pillow's scale: turbojpeg then picks exactly that scale
            k = _pillow_scale((sw, sh), (mw, mh))
            mw, mh = -(-sw // k), -(-sh // k)
        arr = simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_width=mw, min_height=mh, fastdct=fast, fastupsample=fast
        )
        return fit(_orient(Image.fromarray(arr, "RGB"), orientation), geometry)

    return one


def _vips_load(data: bytes, limits: Any, geometry: Any) -> Any:
    import pyvips

    w, h, orientation = _header(data, limits)
    k = _pillow_scale(_stored((w, h), orientation), _stored(geometry.resized_size(w, h), orientation))
    im = pyvips.Image.jpegload_buffer(data, shrink=k, access="sequential")
    im = im.autorot()
    if im.interpretation not in ("srgb", "b-w"):
        im = im.colourspace("srgb")
    return im


def _vips_crop(im: Any, geometry: Any) -> np.ndarray:
    from labelq.images import _crop_origin

    if geometry.crop is not None:
        ch, cw = geometry.crop
        if im.width >= cw and im.height >= ch:
            top, left = _crop_origin(geometry, im.width, im.height, cw, ch)
            im = im.extract_area(left, top, cw, ch)
    return _rgb(im.numpy())


def _vips_shrink_fit(limits: Any, geometry: Any) -> Fit:
    from PIL import Image

    from labelq.images import fit

    return lambda data: fit(Image.fromarray(_rgb(_vips_load(data, limits, geometry).numpy()), "RGB"), geometry)


def _vips_shrink_resize(limits: Any, geometry: Any) -> Fit:
    kernel = {"bilinear": "linear", "bicubic": "cubic", "lanczos": "lanczos3", "nearest": "nearest"}[geometry.resample]

    def one(data: bytes) -> np.ndarray:
        im = _vips_load(data, limits, geometry)
        new_w, new_h = geometry.resized_size(im.width, im.height)
        if (new_w, new_h) != (im.width, im.height):
            im = im.resize(new_w / im.width, vscale=new_h / im.height, kernel=kernel, gap=0.0)
        return _vips_crop(im, geometry)

    return one


def _vips_thumbnail(limits: Any, geometry: Any) -> Fit:
    import pyvips

    def one(data: bytes) -> np.ndarray:
        w, h, _ = _header(data, limits)
        new_w, new_h = geometry.resized_size(w, h)
        im = pyvips.Image.thumbnail_buffer(data, new_w, height=new_h, size="force")
        return _vips_crop(im, geometry)

    return one


# name -> (package it needs, how it decodes, factory(limits, geometry) -> bytes -> uint8 HxWx3)
CANDIDATES: dict[str, tuple[str | None, str, Callable[[Any, Any], Fit]]] = {
    "pillow-full": (None, "Pillow full decode + labelq fit", lambda lim, g: _pillow(lim, g, draft=False)),
    "pillow-draft": (None, "Pillow draft (labelq default) + labelq fit", lambda lim, g: _pillow(lim, g, draft=True)),
    "simplejpeg": ("simplejpeg", "turbojpeg M/8 scale >= resize size + labelq fit", _simplejpeg),
    "simplejpeg-fast": (
        "simplejpeg",
        "as simplejpeg, fastdct + fastupsample",
        lambda lim, g: _simplejpeg(lim, g, fast=True),
    ),
    "simplejpeg-pow2": (
        "simplejpeg",
        "turbojpeg at Pillow's 1/2^k scale + labelq fit",
        lambda lim, g: _simplejpeg(lim, g, pow2=True),
    ),
    "pyvips-shrink+fit": ("pyvips", "libvips jpegload shrink=Pillow's scale + labelq fit", _vips_shrink_fit),
    "pyvips-shrink+resize": (
        "pyvips",
        "libvips shrink-on-load + vips resize (model's kernel) + crop",
        _vips_shrink_resize,
    ),
    "pyvips-thumbnail": ("pyvips", "libvips thumbnail_buffer (lanczos3) + crop", _vips_thumbnail),
}


def available() -> tuple[dict[str, str], dict[str, str]]:
    """(versions of the decoders' libraries, {package: why it is missing})."""
    import PIL
    from PIL import features

    versions = {"pillow": PIL.__version__, "pillow_libjpeg_turbo": str(features.version("libjpeg_turbo"))}
    missing: dict[str, str] = {}
    try:
        import simplejpeg

        versions["simplejpeg"] = simplejpeg.__version__
    except ImportError as exc:
        missing["simplejpeg"] = f"not installed here: {exc}"
    try:
        import pyvips

        pyvips.cache_set_max(0)  # no operation cache: the same bytes again must be decoded again
        pyvips.concurrency_set(1)  # one thread, like the others
        versions["pyvips"] = pyvips.__version__
        versions["libvips"] = ".".join(str(pyvips.version(i)) for i in range(3))
    except (ImportError, OSError) as exc:  # pyvips raises OSError where it finds no libvips
        missing["pyvips"] = f"not installable/loadable here: {exc}"
    return versions, missing


def _passes(fns: dict[str, Fit], datas: list[bytes], repeat: int) -> dict[str, dict[str, Any]]:
    """``repeat`` rounds; in each, every image through every decoder in turn: per round, each decoder's seconds.

    Interleaving per image (the decoders' order rotated each time) puts every
    decoder's calls next to the others' in time, so a machine whose speed drifts,
    or that others share, disturbs them alike. The machine is waited on
    (:func:`settle`, at most 3 s) before each round; the CPU others used during
    the round is recorded with it.
    """
    names = list(fns)
    rounds: list[dict[str, Any]] = []
    per_image: dict[str, list[list[float]]] = {name: [[] for _ in datas] for name in names}
    for i in range(repeat):
        wait = QUIET["wait_s"]
        QUIET["wait_s"] = min(wait, 3.0)  # briefly: rounds x sets x models add up
        try:
            settle()
        finally:
            QUIET["wait_s"] = wait
        probe = Probe()
        wall = dict.fromkeys(names, 0.0)
        cpu = dict.fromkeys(names, 0.0)
        for j, data in enumerate(datas):
            k = (i + j) % len(names)
            for name in names[k:] + names[:k]:
                c0, t0 = time.process_time(), time.perf_counter()
                fns[name](data)
                dt = time.perf_counter() - t0
                wall[name] += dt
                cpu[name] += time.process_time() - c0
                per_image[name][j].append(dt)
        rounds.append({"wall_s": wall, "cpu_s": cpu, "foreign_cores": round(probe.foreign_cores(), 2)})
    n = len(datas)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        walls = [r["wall_s"][name] for r in rounds]
        cpus = [r["cpu_s"][name] for r in rounds]
        out[name] = {
            "wall_ms": round(1000 * statistics.median(walls) / n, 3),
            "cpu_ms": round(1000 * statistics.median(cpus) / n, 3),
            "wall_ms_best": round(1000 * min(walls) / n, 3),
            # each image's median over the rounds, averaged: less sensitive to one disturbed call
            "wall_ms_image_medians": round(1000 * float(np.mean([statistics.median(t) for t in per_image[name]])), 3),
            "foreign_cores_max": max(r["foreign_cores"] for r in rounds),
            "runs": [
                {"wall_s": round(w, 5), "cpu_s": round(c, 5), "foreign_cores": r["foreign_cores"]}
                for w, c, r in zip(walls, cpus, rounds, strict=True)
            ],
        }
    return out


def _header_cost(datas: list[bytes], limits: Any, repeat: int) -> float:
    """ms per image of labelq's header check plus the EXIF read (the part every candidate repeats)."""
    for data in datas[:2]:  # warm-up: the first call imports and registers Pillow's plugins
        _header(data, limits)
    times = []
    for _ in range(repeat):
        c0 = time.process_time()
        for data in datas:
            _header(data, limits)
        times.append(time.process_time() - c0)
    return round(1000 * statistics.median(times) / len(datas), 3)


def run(models: dict[str, Path], sets: dict[str, list[Path]], *, repeat: int) -> dict[str, Any]:
    from labelq.images import Limits, decode
    from labelq.models import derive_preprocessing

    from .modes import classifier

    versions, missing = available()
    for package, why in missing.items():
        log(f"  {package}: {why}")
    limits = Limits(50 * 2**20, 200_000_000, frozenset({"JPEG", "MPO"}))
    rows: list[dict[str, Any]] = []
    header_ms: dict[str, float] = {}
    for set_name, paths in sets.items():
        datas = [p.read_bytes() for p in paths]
        header_ms[set_name] = _header_cost(datas, limits, repeat)
        full = [decode(d, limits) for d in datas]
        sizes = sorted({f"{im.width}x{im.height}" for im in full})
        for model_name, folder in models.items():
            clf = classifier(folder, fast_decode=True)
            derived = derive_preprocessing(clf.processor)
            assert derived is not None, f"{model_name} has a fast path"
            geometry, norm = derived
            exact = [exact_levels(clf, im, norm) for im in full]
            fns = {
                name: make(limits, geometry)
                for name, (package, _, make) in CANDIDATES.items()
                if package not in missing
            }
            fidelity: dict[str, dict[str, Any]] = {}
            for name, fn in fns.items():  # the warm-up pass, which also gives the pixels
                means, maxes = [], []
                for data, ref in zip(datas, exact, strict=True):
                    got = fn(data)
                    if got.shape != ref.shape:
                        raise AssertionError(f"{name}: shape {got.shape} != the processor's {ref.shape}")
                    delta = np.abs(got.astype(np.float64) - ref)
                    means.append(float(delta.mean()))
                    maxes.append(float(delta.max()))
                fidelity[name] = {
                    "mean": float(np.mean(means)),
                    "max": max(maxes),
                    "worst_image_mean": max(means),
                    "per_image_mean": [round(m, 4) for m in means],
                }
            timing = _passes(fns, datas, repeat)
            base = timing["pillow-draft"]
            for name, (package, desc, _) in CANDIDATES.items():
                row: dict[str, Any] = {
                    "decoder": name,
                    "how": desc,
                    "set": set_name,
                    "images": len(datas),
                    "image_sizes": sizes,
                    "model": model_name,
                    "geometry": {
                        "resize": geometry.resize,
                        "shortest": geometry.shortest,
                        "crop": geometry.crop,
                        "resample": geometry.resample,
                    },
                }
                if package in missing:
                    row["skipped"] = missing[package]
                    rows.append(row)
                    continue
                t, f = timing[name], fidelity[name]
                row.update(
                    {
                        **{
                            k: t[k]
                            for k in ("wall_ms", "cpu_ms", "wall_ms_best", "wall_ms_image_medians", "foreign_cores_max")
                        },
                        "vs_pillow_draft_wall": round(t["wall_ms"] / base["wall_ms"], 3),
                        "vs_pillow_draft_cpu": round(t["cpu_ms"] / base["cpu_ms"], 3),
                        "mean_delta": round(f["mean"], 4),
                        "max_delta": round(f["max"], 1),
                        "worst_image_mean_delta": round(f["worst_image_mean"], 4),
                        "gate_ok": f["mean"] <= GATE_MEAN_LEVELS,
                        "per_image_mean_delta": f["per_image_mean"],
                        "runs": t["runs"],
                    }
                )
                rows.append(row)
                log(
                    f"  {set_name:<9} {model_name:<11} {name:<20} {t['wall_ms']:8.2f} ms wall {t['cpu_ms']:8.2f} ms "
                    f"CPU  (× {row['vs_pillow_draft_wall']:.2f} of draft)  mean |Δ| {f['mean']:.3f} max "
                    f"{f['max']:.0f}  gate {'ok' if row['gate_ok'] else 'FAILED'}"
                )
    return {
        "versions": versions,
        "missing": missing,
        "repeat": repeat,
        "gate_mean_levels": GATE_MEAN_LEVELS,
        "header_check_cpu_ms": header_ms,
        "sets": {k: [p.name for p in v] for k, v in sets.items()},
        "rows": rows,
    }


def table(res: dict[str, Any]) -> str:
    lines = [
        "| decoder | images | model | ms/img wall | CPU ms/img | × draft (wall) | mean |Δ| | max |Δ| | gate |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        label = r["set"] if r["set"] != "real" else f"real ({r['images']})"
        if "skipped" in r:
            lines.append(f"| {r['decoder']} | {label} | {r['model']} | – | – | – | – | – | {r['skipped']} |")
            continue
        lines.append(
            f"| {r['decoder']} | {label} | {r['model']} | {r['wall_ms']:.2f} | {r['cpu_ms']:.2f} | "
            f"{r['vs_pillow_draft_wall']:.2f} | {r['mean_delta']:.3f} | {r['max_delta']:.0f} | "
            f"{'ok' if r['gate_ok'] else 'FAILED'} |"
        )
    header = ", ".join(f"{k} {v:.2f} ms" for k, v in res["header_check_cpu_ms"].items())
    lines.append(f"\nheader check + EXIF read alone (in every row): {header} CPU per image")
    return "\n".join(lines)
