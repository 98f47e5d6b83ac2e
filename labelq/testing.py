"""Helpers for tests, benchmarks and docs: tiny random models and image corpora.

Nothing here reaches a model hub. The models are random-init copies of the
default models' architectures, written in the same on-disk layout as their hub
repos, so the real loading code (``AutoModelForImageClassification`` and
``AutoImageProcessor`` on a folder) is what tests exercise:

- :func:`build_vit` mirrors ``Falconsai/nsfw_image_detection`` (ViT, labels
  ``normal``/``nsfw``, ``preprocessor_config.json`` beside the weights);
- :func:`build_timm` mirrors ``timm/mobilenetv3_small_100.lamb_in1k`` (a timm
  ``config.json`` with ``pretrained_cfg`` and ``model.safetensors``, which
  transformers loads as ``TimmWrapperForImageClassification``).

:func:`make_corpus` writes one file per image format, mode and failure labelq
must handle, with the outcome each must produce; :func:`make_photos` writes
large textured JPEGs for benchmarks. torch, transformers and timm are imported
inside the functions that need them, so importing this module is cheap.

Why this ships in the package rather than under tests/: the tiny models must stay
in the on-disk layouts that :mod:`labelq.models` loads, so they change together
and are type-checked together; tests/ and bench/ both build their models and
corpora with it; and an installed labelq can make an offline model to smoke-test
a deployment (``python -c "from labelq.testing import build_vit; build_vit('m')"``)
without a hub or a checkout. It is a leaf: nothing in labelq imports it (a
``lint-imports`` contract in pyproject.toml), so it never becomes part of a run.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, UnidentifiedImageError

logger = logging.getLogger(__name__)

VIT_LABELS = {0: "normal", 1: "nsfw"}
VIT_TINY: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
VIT_BASE: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}
# preprocessor_config.json of Falconsai/nsfw_image_detection, key for key.
VIT_PROCESSOR: dict[str, Any] = {
    "do_resize": True,
    "size": {"height": 224, "width": 224},
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}

TIMM_ARCH = "mobilenetv3_small_100"
TIMM_TAG = "lamb_in1k"
# Keys of timm's pretrained_cfg that its hub export drops (download sources) or moves to the root.
_TIMM_CFG_DROP = {"url", "file", "hf_hub_id", "hf_hub_filename", "source", "architecture", "state_dict"}

# Side of the decompression-bomb PNG: 144 Mpx declared in a file of ~18 KB.
BOMB_SIDE = 12_000
# A max_pixels under which every corpus expectation holds: the largest valid image
# (1920x1080) fits, and the bomb is more than twice over it.
CORPUS_MAX_PIXELS = 10_000_000


# ---------------------------------------------------------------- models


def build_vit(path: str | Path, *, tiny: bool = True, seed: int = 0) -> Path:
    """Write a random-init ViT classifier laid out like ``Falconsai/nsfw_image_detection``.

    ``tiny=True`` gives a 2-layer, 32-wide ViT at 224 px with 16 px patches (about
    0.2 MB, built in well under a second); ``tiny=False`` the real ViT-B/16 geometry
    (86 M parameters, ~350 MB on disk) for benchmarks. Weights depend only on ``seed``.
    Returns ``path``.
    """
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = ViTConfig(
        image_size=224,
        patch_size=16,
        num_channels=3,
        qkv_bias=True,
        id2label=dict(VIT_LABELS),
        label2id={name: idx for idx, name in VIT_LABELS.items()},
        problem_type="single_label_classification",
        **(VIT_TINY if tiny else VIT_BASE),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTForImageClassification(config)
    model.save_pretrained(path)
    ViTImageProcessor(**VIT_PROCESSOR).save_pretrained(path)
    logger.debug("wrote a %s ViT to %s", "tiny" if tiny else "base", path)
    return path


def timm_label_names(num_classes: int) -> list[str]:
    """Readable class names: ImageNet-1k's descriptions for 1000 classes, else ``class_N``.

    For 1000 classes these are the names transformers gives a real timm ImageNet
    repo (note that ``crane`` occurs twice, so its ``label2id`` is ``None``).
    """
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo("imagenet-1k")
        descriptions = info.label_descriptions(as_dict=True)
        return [descriptions[synset] for synset in info.label_names()]
    return [f"class_{i}" for i in range(num_classes)]


def timm_hub_config(model: Any, arch: str, tag: str | None, num_classes: int) -> dict[str, Any]:
    """The ``config.json`` a timm hub repo carries for ``model``.

    ``pretrained_cfg`` is timm's own for ``arch.tag`` (input size, interpolation,
    crop, mean/std), minus download sources. No ``model_args`` key: timm's
    ``save_for_hf`` writes ``num_classes`` there too, which transformers then
    passes twice to ``timm.create_model``.
    """
    from timm.models import get_pretrained_cfg

    if tag is None and arch == TIMM_ARCH:
        tag = TIMM_TAG
    try:
        source = get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)
    except RuntimeError:  # a tag this arch lacks: its default config
        source = None
    cfg = source.to_dict() if source is not None else dict(model.pretrained_cfg)
    pretrained_cfg = {
        k: v for k, v in cfg.items() if k not in _TIMM_CFG_DROP and (v is not None or k in ("pool_size",))
    }
    pretrained_cfg = json.loads(json.dumps(pretrained_cfg))  # tuples -> lists, as on the hub
    pretrained_cfg["num_classes"] = num_classes
    return {
        "architecture": arch,
        "num_classes": num_classes,
        "num_features": int(model.num_features),
        "pretrained_cfg": pretrained_cfg,
        "label_names": timm_label_names(num_classes),
    }


def build_timm(
    path: str | Path, *, arch: str = TIMM_ARCH, num_classes: int = 1000, tag: str | None = None, seed: int = 0
) -> Path:
    """Write a random-init timm classifier in the hub layout of ``timm/<arch>.<tag>``.

    The folder holds ``config.json`` (see :func:`timm_hub_config`) and
    ``model.safetensors`` with timm's own state-dict keys, and loads offline with
    ``AutoModelForImageClassification`` (as ``TimmWrapperForImageClassification``,
    ``id2label`` from ``label_names``) and ``AutoImageProcessor`` (as
    ``TimmWrapperImageProcessor``). ``tag`` picks timm's pretrained config
    (default: ``lamb_in1k`` for the default arch, else the arch's default tag). Returns ``path``.
    """
    import timm
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    config = timm_hub_config(model, arch, tag, num_classes)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    logger.debug("wrote timm %s (%d classes) to %s", arch, num_classes, path)
    return path


# ---------------------------------------------------------------- pixels


def texture(rng: np.random.Generator, size: tuple[int, int], *, detail: float = 1.0) -> np.ndarray:
    """An RGB ``uint8`` array of ``size`` (width, height): smooth colour fields, shapes, grain.

    Several octaves of upsampled random grids give gradients and blotches, a few
    random ellipses and rectangles give edges, and Gaussian grain (scaled by
    ``detail``) gives JPEG something realistic to chew on. Cheap at 1080p.
    """
    width, height = size
    canvas = np.zeros((height, width, 3), dtype=np.float32)
    for octave, weight in ((2, 0.55), (6, 0.3), (24, 0.15 * detail)):
        gw, gh = max(2, min(width, octave * 2)), max(2, min(height, octave))
        grid = rng.integers(0, 256, (gh, gw, 3), dtype=np.uint8)
        layer = Image.fromarray(grid, "RGB").resize((width, height), Image.Resampling.BICUBIC)
        canvas += weight * np.asarray(layer, dtype=np.float32)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        x0, x1 = sorted(rng.integers(0, max(width, 2), 2).tolist())
        y0, y1 = sorted(rng.integers(0, max(height, 2), 2).tolist())
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    if min(width, height) >= 8:
        image = image.filter(ImageFilter.GaussianBlur(radius=1.2))
    pixels = np.asarray(image, dtype=np.int16)
    grain = rng.normal(0.0, 5.0 * detail, (height, width, 1)).astype(np.int16)
    return np.clip(pixels + grain, 0, 255).astype(np.uint8)


def _rgb(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(texture(rng, size), "RGB")


def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid 1-bit PNG declaring ``side`` x ``side`` pixels, all black, in a few KB.

    Written row by row through zlib, so making it costs no big buffer.
    """
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte 0 + packed bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def _unidentifiable(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)):
            return False
    except UnidentifiedImageError:
        return True


def _random_bytes(rng: np.random.Generator, size: int = 4096) -> bytes:
    """Random bytes that no Pillow plugin recognises (some formats, TGA, have no magic)."""
    for _ in range(100):
        data = rng.bytes(size)
        if _unidentifiable(data):
            return data
    raise RuntimeError("could not draw random bytes that Pillow fails to identify")


# ---------------------------------------------------------------- corpus


def _valid_images(rng: np.random.Generator) -> dict[str, bytes]:
    """Every decodable format and mode labelq accepts, each file with its own content."""

    def rgb(w: int = 320, h: int = 240) -> Image.Image:
        return _rgb(rng, (w, h))

    gray16 = Image.fromarray(np.asarray(rgb().convert("L"), dtype=np.uint16) * 257)
    palette = rgb().quantize(colors=64)
    rotated = Image.Exif()
    rotated[0x0112] = 6  # Orientation: rotate 90 CW to display
    frames = [rgb(160, 120).quantize(colors=128) for _ in range(3)]
    return {
        "baseline.jpg": _encode(rgb(640, 480), "JPEG", quality=90),
        "progressive.jpg": _encode(rgb(), "JPEG", quality=85, progressive=True),
        "rgb.png": _encode(rgb(), "PNG"),
        "rgba.png": _encode(Image.merge("RGBA", (*rgb().split(), rgb().convert("L"))), "PNG"),
        "gray16.png": _encode(gray16, "PNG"),
        "palette_transparent.png": _encode(palette, "PNG", transparency=0),
        "gray_alpha.png": _encode(Image.merge("LA", (rgb().convert("L"), rgb().convert("L"))), "PNG"),
        "bilevel.png": _encode(rgb().convert("1"), "PNG"),
        "gray.jpg": _encode(rgb().convert("L"), "JPEG", quality=90),
        "cmyk.jpg": _encode(rgb().convert("CMYK"), "JPEG", quality=90),
        "photo.webp": _encode(rgb(), "WEBP", quality=80),
        "photo.tiff": _encode(rgb(), "TIFF", compression="tiff_lzw"),
        "photo.bmp": _encode(rgb(), "BMP"),
        "animated.gif": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "exif_rotated.jpg": _encode(rgb(640, 480), "JPEG", quality=90, exif=rotated),
        "one_pixel.png": _encode(rgb(1, 1), "PNG"),
        "wide_4000x10.png": _encode(rgb(4000, 10), "PNG"),
        "full_hd.jpg": _encode(rgb(1920, 1080), "JPEG", quality=90),
    }


def _broken_files(rng: np.random.Generator) -> dict[str, tuple[bytes, str]]:
    """Files that must each become an error record, with the error kind they must produce."""
    whole = _encode(_rgb(rng, (640, 480)), "JPEG", quality=90)
    html = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"
    return {
        "empty.jpg": (b"", "not_an_image"),
        "random_bytes.jpg": (_random_bytes(rng), "not_an_image"),
        "html_page.png": (html, "not_an_image"),
        "truncated.jpg": (whole[: int(len(whole) * 0.4)], "corrupt"),
        "ppm_content.jpg": (_encode(_rgb(rng, (64, 48)), "PPM"), "unsupported"),
        "bomb.png": (bomb_png(), "decompression_bomb"),
    }


@dataclass(frozen=True)
class Corpus:
    """A folder written by :func:`make_corpus` and its ``{filename: expected}``."""

    folder: Path
    expected: dict[str, str]

    @property
    def valid(self) -> list[str]:
        """Names of the files that must be labelled."""
        return sorted(name for name, outcome in self.expected.items() if outcome == "ok")

    @property
    def broken(self) -> dict[str, str]:
        """``{filename: error_kind}`` of the files that must become error records."""
        return {name: outcome for name, outcome in sorted(self.expected.items()) if outcome != "ok"}


def make_corpus(folder: str | Path, *, seed: int = 0) -> dict[str, str]:
    """Write the test corpus into ``folder``; return ``{filename: expected}``.

    ``expected`` is ``"ok"`` for the 18 valid images (every accepted format and
    mode, EXIF rotation, 1x1, 4000x10, 1920x1080) and an error kind for the 6
    broken files: ``not_an_image`` (empty, random bytes, HTML named .png),
    ``corrupt`` (a JPEG cut at 40 %), ``unsupported`` (PPM named .jpg) and
    ``decompression_bomb`` (a 12000x12000 PNG of ~18 KB). The expectations hold
    for settings whose ``max_pixels`` is at least 1920x1080 and under half of
    12000x12000: :data:`CORPUS_MAX_PIXELS` is one such value (the default of
    100 M px is not). Deterministic for a given ``seed``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = {name: (data, "ok") for name, data in _valid_images(rng).items()}
    files.update(_broken_files(rng))
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    logger.debug("wrote %d corpus files to %s", len(files), folder)
    return {name: expected for name, (_, expected) in files.items()}


def make_photos(folder: str | Path, n: int, size: tuple[int, int] = (1920, 1080), seed: int = 0) -> list[Path]:
    """Write ``n`` distinct textured JPEGs (quality 90) of ``size`` for benchmarks; return their paths.

    Each is a few hundred KB at 1080p, about what a camera photo downscaled to
    that size weighs, and takes a few tens of milliseconds to make.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(n):
        rng = np.random.default_rng([seed, index])
        path = folder / f"photo_{index:06d}.jpg"
        Image.fromarray(texture(rng, size, detail=1.5), "RGB").save(path, "JPEG", quality=90)
        paths.append(path)
    return paths
