"""JPEG decode on the model's CUDA device (nvJPEG through torchvision), resized there to the model's geometry.

``LABELQ_GPU_DECODE=true``: the decode threads only read each JPEG's header (the
same limits and errors as ever, :func:`labelq.images.open_checked`); the batch's
JPEGs are then decoded together on the device (``torchvision.io.decode_jpeg`` on a
list, EXIF orientation applied) and resized + centre-cropped with antialiased
``interpolate`` into the uint8 HxWx3 layout of the CPU fast path, so
:meth:`Classifier.stage` finds them on the device already. Other formats, CMYK
JPEGs and anything the device fails on go the CPU way, per item: a JPEG nvJPEG
rejects is decoded by Pillow, which gives it its usual record (labelled, or
``corrupt``). Runs on any torch device; the tests use the CPU's ``decode_jpeg``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

from .images import Geometry

logger = logging.getLogger(__name__)

# interpolate() modes for the geometries' filters; others (nearest, lanczos, box, hamming) stay on the CPU
_MODES = {"bilinear": "bilinear", "bicubic": "bicubic"}


def supported(geometries: Sequence[Geometry]) -> bool:
    """Whether every geometry's filter can run on the device."""
    return bool(geometries) and all(g.resample in _MODES for g in geometries)


def is_plain_jpeg(data: bytes, mode: str) -> bool:
    """A JPEG (SOI marker) in a mode nvJPEG decodes to RGB: YCbCr/RGB or greyscale, not CMYK."""
    # A JPEG cut short does not end in EOI: the CPU decodes it (and calls it corrupt), as nvJPEG may not.
    return data[:3] == b"\xff\xd8\xff" and data.rstrip(b"\0")[-2:] == b"\xff\xd9" and mode in ("RGB", "YCbCr", "L")


class DeviceJpeg:
    """Decodes batches of JPEG bytes on ``device`` and fits them to ``geometries``."""

    def __init__(self, device: Any, geometries: Sequence[Geometry]) -> None:
        if not supported(geometries):
            raise ValueError("device decode needs bilinear or bicubic geometries")
        self.device = device
        self.geometries = list(geometries)

    def decode(self, datas: Sequence[bytes]) -> list[dict[Geometry, Any] | None]:
        """Per item: {geometry: uint8 HxWx3 tensor on the device}, or None (decode it on the CPU)."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        # torchvision 0.29 deprecates its image codecs in favour of TorchCodec; these calls still work
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        images: list[Any]
        try:
            images = list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device,
                                      apply_exif_orientation=True))
        except Exception as exc:  # noqa: BLE001 - one bad JPEG fails the batched call: retry one by one
            logger.debug("batched device decode failed (%s); decoding one by one", exc)
            images = []
            for t in tensors:
                try:
                    images.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=self.device,
                                              apply_exif_orientation=True))
                except Exception:  # noqa: BLE001 - this one goes to the CPU
                    images.append(None)
        out: list[dict[Geometry, Any] | None] = []
        for im in images:
            if im is None or im.ndim != 3 or im.shape[0] != 3:
                out.append(None)
                continue
            try:
                out.append({g: fit_tensor(im, g) for g in self.geometries})
            except Exception:  # e.g. out of memory on a huge image: the CPU does it
                logger.debug("device resize failed", exc_info=True)
                out.append(None)
        return out


def fit_tensor(image: Any, geometry: Geometry) -> Any:
    """:func:`labelq.images.fit` for a uint8 3xHxW tensor: resize (antialiased), centre-crop → uint8 HxWx3."""
    import torch
    import torch.nn.functional as F

    from .images import _crop_origin

    _, height, width = image.shape
    new_w, new_h = geometry.resized_size(width, height)
    x = image.unsqueeze(0)
    if (new_w, new_h) != (width, height):
        mode = _MODES[geometry.resample]
        kwargs: dict[str, Any] = {"antialias": True, "align_corners": False}
        x = F.interpolate(x.float(), size=(new_h, new_w), mode=mode, **kwargs).round_().clamp_(0, 255)
        x = x.to(torch.uint8)
    x = x[0]
    if geometry.crop is not None:
        ch, cw = geometry.crop
        if new_w < cw or new_h < ch:  # smaller than the crop on some side: pad with zeros around it
            canvas = torch.zeros((3, max(ch, new_h), max(cw, new_w)), dtype=torch.uint8, device=x.device)
            top, left = (canvas.shape[1] - new_h) // 2, (canvas.shape[2] - new_w) // 2
            canvas[:, top:top + new_h, left:left + new_w] = x
            x, new_h, new_w = canvas, canvas.shape[1], canvas.shape[2]
        top, left = _crop_origin(geometry, new_w, new_h, cw, ch)
        x = x[:, top:top + ch, left:left + cw]
    return x.permute(1, 2, 0).contiguous()
