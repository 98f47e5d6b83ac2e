"""The images and models every mode of one run shares, generated once and cached.

Photos are distinct textured JPEGs (quality 90) made with the same recipe as
:func:`labelq.testing.make_photos` (``texture(rng([seed, index]), detail=1.5)``), one
seed per size, so no two files in a run hold the same content. They are written
once into ``bench/out/cache/photos/WxH/all`` (in parallel, one process per core)
and a run of ``n`` images gets a folder of hard links to the first ``n`` of them,
which a folder SOURCE can list as is. Models are random-init, in the layouts of
the default hub models (:func:`labelq.testing.build_timm`, :func:`build_vit`).
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .common import CACHE, ROOT, cores, log

SIZES: dict[str, tuple[int, int]] = {
    "320x240": (320, 240),
    "640x480": (640, 480),
    "1920x1080": (1920, 1080),
    "4000x3000": (4000, 3000),
}
MODELS = {
    "mobilenetv3": "MobileNetV3-small (timm/mobilenetv3_small_100.lamb_in1k layout, random init)",
    "vit": "ViT-B/16 (Falconsai/nsfw_image_detection layout, random init)",
}
REAL_PHOTOS = ROOT / "examples" / "photos"


def _seed(size: tuple[int, int]) -> int:
    return size[0] * 10_000 + size[1]


def _make_one(path: str, size: tuple[int, int], index: int) -> None:
    import numpy as np
    from PIL import Image

    from labelq.testing import texture

    rng = np.random.default_rng([_seed(size), index])
    tmp = Path(path + ".part")
    Image.fromarray(texture(rng, size, detail=1.5), "RGB").save(tmp, "JPEG", quality=90)
    tmp.rename(path)


def photos(size_name: str, n: int) -> Path:
    """A folder holding exactly ``n`` distinct JPEGs of the named size (made on first use)."""
    size = SIZES[size_name]
    base = CACHE / "photos" / size_name
    every = base / "all"
    every.mkdir(parents=True, exist_ok=True)
    paths = [every / f"photo_{i:06d}.jpg" for i in range(n)]
    missing = [(i, p) for i, p in enumerate(paths) if not p.exists()]
    if missing:
        log(f"generating {len(missing)} {size_name} photos (cached in {every})")
        with ProcessPoolExecutor(max(1, cores())) as pool:
            for f in [pool.submit(_make_one, str(p), size, i) for i, p in missing]:
                f.result()
    folder = base / f"n{n}"
    folder.mkdir(exist_ok=True)
    for p in paths:
        link = folder / p.name
        if not link.exists():
            os.link(p, link)
    return folder


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def model(name: str) -> Path:
    """The folder of a random-init model (built on first use)."""
    from labelq.testing import build_timm, build_vit

    if name not in MODELS:
        raise SystemExit(f"unknown model {name!r}: use one of {', '.join(MODELS)}")
    folder = CACHE / "models" / name
    if not (folder / "config.json").exists():
        log(f"building {MODELS[name]} in {folder}")
        if name == "vit":
            build_vit(folder, tiny=False)
        else:
            build_timm(folder)
    return folder


def tiny_vit() -> Path:
    """A 2-layer ViT with the Falconsai processor (enough for pixel comparisons)."""
    from labelq.testing import build_vit

    folder = CACHE / "models" / "vit-tiny"
    if not (folder / "config.json").exists():
        build_vit(folder, tiny=True)
    return folder


def real_photos() -> list[Path]:
    return sorted(p for p in REAL_PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
