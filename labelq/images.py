"""Decode image bytes into RGB, with limits, and resize fast to a model's geometry.

Pure functions: bytes in, a PIL image or a uint8 HxWx3 array out, or a typed error.
Pillow releases the GIL while decoding and resizing, so these run well in threads.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import Corrupt, DecompressionBomb, NotAnImage, TooLarge, Unsupported

logger = logging.getLogger(__name__)

# Pillow's own bomb guard is replaced by ours (limits come from settings, per call).
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True, slots=True)
class Limits:
    """Input limits: bytes of an object, pixels of an image, Pillow formats accepted."""

    max_bytes: int
    max_pixels: int
    formats: frozenset[str]


@dataclass(frozen=True, slots=True)
class Geometry:
    """How a model wants its pixels laid out before normalisation.

    ``resize`` is the (height, width) to resize to, or ``shortest`` the short side
    to scale to keeping the aspect ratio (the long side truncated, as transformers
    and torchvision do); then a centre crop to ``crop`` (height, width) if set.
    ``crop_round``: torchvision rounds the crop offset, transformers floors it.
    Models with equal geometries share one decode.
    """

    resize: tuple[int, int] | None
    shortest: int | None
    crop: tuple[int, int] | None
    resample: str
    crop_round: bool = False

    @property
    def out_size(self) -> tuple[int, int]:
        """(height, width) of the array this geometry produces."""
        if self.crop is not None:
            return self.crop
        if self.resize is not None:
            return self.resize
        raise ValueError("a shortest-edge geometry needs a crop to have a fixed output size")

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, before cropping."""
        if self.resize is not None:
            return self.resize[1], self.resize[0]
        assert self.shortest is not None
        s = self.shortest
        if width <= height:
            return s, int(s * height / width)
        return int(s * width / height), s


def decode(data: bytes, limits: Limits, *, draft: Sequence[Geometry] = ()) -> Image.Image:
    """Bytes → an oriented RGB image (first frame of animations).

    ``draft``: geometries the image is for; a JPEG then decodes at a reduced scale
    (1/2, 1/4, 1/8 in the DCT domain) as long as it stays at least as large as each
    geometry's resize step needs, which is most of the speed of the fast path.
    Raises TooLarge, NotAnImage, Unsupported, DecompressionBomb or Corrupt.
    """
    im = open_checked(data, limits)
    fmt = (im.format or "").upper()
    width, height = im.size
    try:
        if draft and fmt in ("JPEG", "MPO"):
            _draft(im, draft)
        im.load()  # first frame only; animations stay on frame 0
        im = _orient(im)
        return to_rgb(im)
    except (TooLarge, DecompressionBomb):
        raise
    except Image.DecompressionBombError as exc:
        raise DecompressionBomb(str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct_error()) as exc:
        raise Corrupt(f"{fmt} data is damaged: {exc}") from None
    except MemoryError:
        raise TooLarge(f"{width}x{height} image does not fit in memory") from None


def open_checked(data: bytes, limits: Limits) -> Image.Image:
    """Read only the header and apply every limit: an opened, not yet decoded image.

    What :func:`decode` does before it decodes, so a decoder elsewhere (the GPU's) raises the
    same errors. Raises TooLarge, NotAnImage, Unsupported, DecompressionBomb or Corrupt.
    """
    if len(data) > limits.max_bytes:
        raise TooLarge(f"object is {len(data)} bytes, over the limit of {limits.max_bytes} (LABELQ_MAX_BYTES)")
    if not data:
        raise NotAnImage("empty object (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise NotAnImage(f"not a recognised image ({_sniff(data)})") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on garbage headers
        raise Corrupt(f"cannot read image header: {type(exc).__name__}: {exc}") from None
    fmt = (im.format or "").upper()
    if fmt not in limits.formats:
        raise Unsupported(f"image format {fmt or 'unknown'} is not accepted (accepted: {', '.join(sorted(limits.formats))})")
    width, height = im.size
    pixels = width * height
    if pixels > 2 * limits.max_pixels:
        raise DecompressionBomb(
            f"{width}x{height} = {pixels} pixels is over twice the limit of {limits.max_pixels} (LABELQ_MAX_PIXELS)"
        )
    if pixels > limits.max_pixels:
        raise TooLarge(f"{width}x{height} = {pixels} pixels is over the limit of {limits.max_pixels} (LABELQ_MAX_PIXELS)")
    if width < 1 or height < 1:
        raise Corrupt(f"image has no pixels ({width}x{height})")
    if fmt in ("JPEG", "MPO"):
        check_jpeg_data(data, im)
    return im


def struct_error() -> type[Exception]:
    import struct

    return struct.error


def _draft(im: Image.Image, geometries: Sequence[Geometry]) -> None:
    """Ask the JPEG decoder for the smallest DCT scale every geometry can still use.

    Sizes are worked out on the displayed (EXIF-rotated) image; a 90/270 degree
    rotation swaps the axes of the request back to the stored ones.
    """
    w, h = im.size
    rotated = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    if rotated:
        w, h = h, w
    sizes = [g.resized_size(w, h) for g in geometries]
    want_w, want_h = max(s[0] for s in sizes), max(s[1] for s in sizes)
    if rotated:
        want_w, want_h = want_h, want_w
    im.draft("RGB" if im.mode in ("RGB", "YCbCr") else None, (want_w, want_h))


def _orient(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation in place: no copy of the pixels when there is none to apply
    (``exif_transpose`` without ``in_place`` copies every image, 300 MB for a 10000x10000 RGB one)."""
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:  # a broken EXIF block must not lose the image
        logger.debug("ignoring unreadable EXIF orientation", exc_info=True)
    return im


# libjpeg fills the blocks after a premature end of the data with grey and only warns (Pillow drops the
# warning), so a JPEG cut short and closed with an EOI marker decodes "fine". Every block costs at least
# 2 bits in a sequential Huffman scan (a DC code and an AC code, each at least 1 bit) and 1 bit in the
# first DC scan of a progressive one: entropy-coded data shorter than that cannot hold the image.
_SOF_SEQUENTIAL = (0xC0, 0xC1)  # baseline, extended (Huffman)
_SOF_PROGRESSIVE = (0xC2,)
_NO_LENGTH = {0x01, *range(0xD0, 0xDA)}  # TEM, RSTn, SOI, EOI: markers without a length field


def check_jpeg_data(data: bytes, im: Image.Image) -> None:
    """Corrupt when a JPEG's entropy-coded data is too short for the blocks its header declares.

    A cheap structural check (marker lengths only, no decoding): the file that claims 10000x10000
    and holds a few kilobytes is ``corrupt``, never a grey image labelled ``ok``.
    """
    sof, pos, end = None, 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return  # not the marker layout we know: leave it to the decoder
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # SOS: the entropy-coded data follows its header
            if sof is None:
                return
            scan = _entropy_bytes(data, pos + 2 + length)
            blocks = _blocks(sof, im)
            need = blocks // 4 if sof[0] in _SOF_SEQUENTIAL else blocks // 8
            if scan < need:
                raise Corrupt(f"JPEG data is truncated: {im.width}x{im.height} needs at least {need} bytes of "
                              f"image data, the file holds {scan}")
            return
        if marker in _SOF_SEQUENTIAL + _SOF_PROGRESSIVE:
            sof = (marker, data[pos + 4:pos + 2 + length])
        elif 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return  # lossless or arithmetic coding: no simple lower bound
        pos += 2 + length


def _entropy_bytes(data: bytes, start: int) -> int:
    """Bytes from ``start`` to the end of the file, less a trailing EOI marker (and padding after it)."""
    tail = data.rstrip(b"\0")
    if tail.endswith(b"\xff\xd9"):
        tail = tail[:-2]
    return max(0, len(tail) - start)


def _blocks(sof: tuple[int, bytes], im: Image.Image) -> int:
    """8x8 blocks of every component of a frame (its SOF segment's body), as libjpeg counts them."""
    body = sof[1]
    if len(body) < 6:
        return 0
    height, width, n = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big"), body[5]
    comps = [(body[6 + 3 * i + 1] >> 4, body[6 + 3 * i + 1] & 15) for i in range(n) if 6 + 3 * i + 2 <= len(body)]
    if not comps or not width or not height:
        return 0
    hmax, vmax = max(h for h, _ in comps) or 1, max(v for _, v in comps) or 1
    total = 0
    for h, v in comps:
        cw = -(-width * h // hmax)
        ch = -(-height * v // vmax)
        total += -(-cw // 8) * -(-ch // 8)
    return total


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB; transparency is composited over white."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
        if mode == "RGB":
            return im
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        # paste through its own alpha onto white: the same pixels as alpha_composite + convert, one RGB
        # image made instead of three full-size copies
        rgba = im if mode == "RGBA" else im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba)
        return background
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        if mode == "F":
            peak = max(float(arr.max()), 1.0)
        arr8 = np.clip(arr * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "looks like HTML"
    if head.startswith(b"<?xml") or head.startswith(b"<svg"):
        return "looks like XML/SVG"
    if head.startswith(b"%pdf"):
        return "looks like a PDF"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "looks like text"
    return f"starts with {data[:8].hex()}"


def fit(im: Image.Image, geometry: Geometry) -> np.ndarray:
    """Resize and centre-crop an RGB image to the geometry: a uint8 (H, W, 3) array.

    With a crop, only the part of the source that survives the crop is resampled
    (Pillow's ``box``), which gives the same pixels as resize-then-crop without
    building the full intermediate: a 2000x1 image under a shortest-edge-256
    geometry would otherwise need a 512000x256 one.
    """
    width, height = im.size
    new_w, new_h = geometry.resized_size(width, height)
    resample = _RESAMPLE[geometry.resample]
    if geometry.crop is None:
        if (new_w, new_h) != (width, height):
            im = im.resize((new_w, new_h), resample=resample)
        return np.asarray(im, dtype=np.uint8)
    ch, cw = geometry.crop
    if new_w >= cw and new_h >= ch:
        top, left = _crop_origin(geometry, new_w, new_h, cw, ch)
        if (new_w, new_h) == (width, height):
            return np.asarray(im.crop((left, top, left + cw, top + ch)), dtype=np.uint8)
        sx, sy = width / new_w, height / new_h
        box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
        return np.asarray(im.resize((cw, ch), resample=resample, box=box), dtype=np.uint8)
    # Smaller than the crop on some side (tiny images): resize, pad with zeros, crop.
    if (new_w, new_h) != (width, height):
        im = im.resize((new_w, new_h), resample=resample)
    canvas = Image.new("RGB", (max(cw, new_w), max(ch, new_h)))
    canvas.paste(im, ((canvas.width - new_w) // 2, (canvas.height - new_h) // 2))
    top, left = _crop_origin(geometry, canvas.width, canvas.height, cw, ch)
    return np.asarray(canvas.crop((left, top, left + cw, top + ch)), dtype=np.uint8)


def _crop_origin(geometry: Geometry, width: int, height: int, cw: int, ch: int) -> tuple[int, int]:
    """(top, left) of a centre crop: torchvision rounds, transformers floors."""
    if geometry.crop_round:
        return int(round((height - ch) / 2.0)), int(round((width - cw) / 2.0))
    return (height - ch) // 2, (width - cw) // 2


def decode_fit(data: bytes, limits: Limits, geometries: Sequence[Geometry], *, fast: bool = True) -> list[np.ndarray]:
    """Decode once and fit to each geometry (models sharing a decode)."""
    im = decode(data, limits, draft=geometries if fast else ())
    return [fit(im, g) for g in geometries]
