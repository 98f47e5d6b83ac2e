"""Classifiers: load by hub id or local folder, derive preprocessing, predict batches.

Any ``AutoModelForImageClassification`` repo works, timm hub repos included
(through transformers' TimmWrapper). Preprocessing comes from the model's own
processor config. Two paths:

* fast (default where the geometry can be derived): Pillow decodes (JPEG in draft
  mode) and resizes to the model's geometry as uint8; rescale and mean/std run
  batched on the model's device.
* exact: the model's own ``AutoImageProcessor`` on each decoded image; used when a
  processor does something we cannot express as a :class:`Geometry`, or when
  ``LABELQ_FAST_DECODE=false``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import Settings
from .errors import UsageError
from .hub import check_model as check_model
from .hub import folder_revision as folder_revision  # re-exported: revisions are the hub module's (no numpy)
from .hub import resolve_revision as resolve_revision
from .images import Geometry
from .runtimes import ModelSource, Runtime, cache_for, get_runtime
from .runtimes import resolve_device as resolve_device  # re-exported: callers and tests use labelq.models'
from .runtimes import resolve_dtype as resolve_dtype

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str
    score: float
    top_k: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Normalise:
    """pixel' = pixel * scale, then (pixel' - mean) / std, per channel."""

    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _resample_name(value: Any) -> str | None:
    """A processor's resample (PIL int, enum, or torchvision mode) → our filter name."""
    if value is None:
        return "bilinear"
    name = getattr(value, "name", None) or getattr(value, "value", None) or value
    if isinstance(name, int):
        return {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}.get(name)
    name = str(name).lower().rsplit(".", 1)[-1]
    return name if name in ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming") else None


def _size_get(size: Any, key: str) -> Any:
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def derive_preprocessing(processor: Any) -> tuple[Geometry, Normalise] | None:
    """Geometry and normalisation a processor applies, or None when it does more than we can express."""
    data_config = getattr(processor, "data_config", None)
    if data_config is not None:  # timm (TimmWrapperImageProcessor)
        return _derive_timm(data_config)
    if type(processor).__name__.replace("Pil", "").replace("Fast", "") not in _HF_SIMPLE:
        return None
    if not getattr(processor, "do_resize", True):
        return None
    size = getattr(processor, "size", None)
    height, width, shortest = _size_get(size, "height"), _size_get(size, "width"), _size_get(size, "shortest_edge")
    resample = _resample_name(getattr(processor, "resample", None))
    if resample is None:
        return None
    crop = None
    if getattr(processor, "do_center_crop", False):
        cs = getattr(processor, "crop_size", None)
        ch, cw = _size_get(cs, "height"), _size_get(cs, "width")
        if not (ch and cw):
            return None
        crop = (int(ch), int(cw))
    if height and width:
        geometry = Geometry((int(height), int(width)), None, crop, resample)
    elif shortest and crop is not None:
        geometry = Geometry(None, int(shortest), crop, resample)
    else:
        return None
    scale = float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0
    if getattr(processor, "do_normalize", True):
        mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if len(mean) != 3 or len(std) != 3:
        return None
    return geometry, Normalise(scale, mean, std)  # type: ignore[arg-type]


# Processors whose whole pipeline is resize (+ centre crop) → rescale → normalise.
_HF_SIMPLE = {
    "ViTImageProcessor",
    "DeiTImageProcessor",
    "BeitImageProcessor",
    "BitImageProcessor",
    "CLIPImageProcessor",
    "SiglipImageProcessor",
    "Dinov2ImageProcessor",
    "EfficientNetImageProcessor",
    "MobileViTImageProcessor",
    "SwinImageProcessor",
    "RegNetImageProcessor",
    "ResNetImageProcessor",
    "ViTHybridImageProcessor",
    "LevitImageProcessor",
}


def _derive_timm(cfg: dict[str, Any]) -> tuple[Geometry, Normalise] | None:
    """timm's eval transform: Resize(floor(size / crop_pct)) short side, CenterCrop(size), ToTensor, Normalize."""
    _, h, w = cfg["input_size"]
    if cfg.get("crop_mode", "center") not in (None, "center") or h != w:
        return None
    resample = _resample_name(cfg.get("interpolation", "bilinear"))
    if resample is None:
        return None
    crop_pct = cfg.get("crop_pct") or 0.875
    scale_size = math.floor(h / crop_pct)
    geometry = Geometry(None, scale_size, (h, w), resample, crop_round=True)
    return geometry, Normalise(1 / 255, tuple(cfg["mean"]), tuple(cfg["std"]))  # type: ignore[arg-type]


CALIBRATION_IMAGES = 64  # images of LABELQ_INT8_CALIBRATION the int8 parity gate uses (the first by name)


class Classifier:
    """One loaded model with its preprocessing, run by one runtime, ready to predict batches.

    Preprocessing, normalisation, labels and top-k are the classifier's (from the model's own
    configs); the forward pass is the runtime's (:mod:`labelq.runtimes`, ``LABELQ_RUNTIME``).
    """

    def __init__(self, name: str, processor: Any, labels: list[str], settings: Settings, *, runtime: Runtime,
                 load_model: Any, revision: str | None = None, folder: Path | None = None) -> None:
        import torch

        self.name = name
        self.processor = processor
        self.labels = labels
        self.revision = revision
        self.top_k = settings.top_k
        derived = derive_preprocessing(processor) if settings.fast_decode else None
        self.geometry: Geometry | None = derived[0] if derived else None
        self._norm = derived[1] if derived else None
        c_h_w = self._chw()
        source = ModelSource(
            name, revision, cache_for(name, folder, settings), c_h_w, load_model,
            calibration=(lambda: self._calibration_batch(settings)) if settings.int8_calibration else None,
        )
        backend = runtime.load(source, settings)
        self.runtime = runtime.name
        self.described = backend.described
        self.device, self.dtype, self.channels_last = backend.device, backend.dtype, backend.channels_last
        self.model = backend.model  # the torch module when the runtime loaded one
        self._forward = backend.forward
        if self._norm is not None:
            norm = self._norm
            mean = torch.tensor(norm.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
            std = torch.tensor(norm.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
            self._mul = (norm.scale / std).contiguous()
            self._add = (-mean / std).contiguous()

    def _chw(self) -> tuple[int, int, int]:
        """(3, H, W) of one normalised input."""
        if self.geometry is not None:
            h, w = self.geometry.out_size
            return (3, h, w)
        shape = self.input_shape()
        return (int(shape[0]), int(shape[1]), int(shape[2]))

    def _calibration_batch(self, settings: Settings) -> np.ndarray:
        """The int8 gate's calibration set: the first images of LABELQ_INT8_CALIBRATION, normalised (N, 3, H, W)."""
        from .errors import LabelqError
        from .images import Limits, decode

        folder = settings.int8_calibration
        assert folder is not None
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in settings.suffixes and p.is_file()) \
            if folder.is_dir() else []
        limits = Limits(settings.max_bytes, settings.max_pixels, frozenset(settings.formats))
        inputs = []
        for path in files:
            try:
                inputs.append(self.prepare(decode(path.read_bytes(), limits)))
            except (OSError, LabelqError) as exc:
                logger.info("calibration image %s skipped: %s", path, exc)
            if len(inputs) == CALIBRATION_IMAGES:
                break
        if not inputs:
            return np.zeros((0, *self._chw()), dtype=np.float32)
        batch = np.stack(inputs)
        if batch.dtype != np.uint8:
            return batch.astype(np.float32, copy=False)
        assert self._norm is not None
        mul = (self._norm.scale / np.asarray(self._norm.std, dtype=np.float32)).reshape(1, 3, 1, 1)
        add = (-np.asarray(self._norm.mean, dtype=np.float32) / np.asarray(self._norm.std, dtype=np.float32))
        return (batch.transpose(0, 3, 1, 2).astype(np.float32) * mul + add.reshape(1, 3, 1, 1)).astype(np.float32)

    @property
    def view(self) -> Geometry | str:
        """What this model needs from a decoded image; models with equal views share one."""
        return self.geometry if self.geometry is not None else f"exact:{self.name}"

    def prepare(self, image: Any) -> np.ndarray:
        """A decoded RGB PIL image → this model's input: uint8 HWC (fast) or float32 CHW (exact)."""
        from .images import fit

        if self.geometry is not None:
            return fit(image, self.geometry)
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"][0]
        return pixels.numpy().astype(np.float32, copy=False)

    def predict(self, batch: Any) -> list[Prediction]:
        """Predict a stacked batch from :meth:`prepare`; one device→host copy."""
        return self.collect(self.launch(self.stage(batch)))

    # Two pinned host buffers and a copy stream per classifier on CUDA (made on first use).
    _copy_stream: Any = None
    _pinned: list[Any] | None = None
    _pinned_done: list[Any] | None = None
    _pinned_next: int = 0

    def stage(self, batch: Any) -> tuple[Any, Any]:
        """Start moving a stacked batch (numpy, or a tensor) to the device: (tensor, ready event or None).

        On CUDA the batch is copied into one of two reused pinned host buffers and sent on a
        separate copy stream, so that the next batch's host→device copy overlaps this batch's
        forward pass (the engine stages batch k+1 before it collects batch k). A batch that is
        already on the device (JPEGs decoded on the GPU) is used as it is.
        """
        import torch

        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
        if self.device.type != "cuda":
            return x.to(self.device), None
        if x.device.type == "cuda":
            return x, None
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
            self._pinned, self._pinned_done = [None, None], [None, None]
        assert self._pinned is not None and self._pinned_done is not None
        i = self._pinned_next
        self._pinned_next ^= 1
        buf, done = self._pinned[i], self._pinned_done[i]
        if buf is None or buf.shape != x.shape or buf.dtype != x.dtype:
            buf = self._pinned[i] = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        elif done is not None:
            done.synchronize()  # the copy that last read this buffer has finished
        buf.copy_(x)
        with torch.cuda.stream(self._copy_stream):
            on_device = buf.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        self._pinned_done[i] = ready
        return on_device, ready

    def launch(self, staged: tuple[Any, Any]) -> Any:
        """Queue normalisation, the forward pass, softmax and top-k for a staged batch (async on CUDA)."""
        import torch

        x, ready = staged
        with torch.inference_mode():
            if ready is not None:
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(ready)
                x.record_stream(stream)  # allocated on the copy stream, used on this one
            if x.dtype == torch.uint8:
                x = x.permute(0, 3, 1, 2).float().mul_(self._mul).add_(self._add)  # NHWC → NCHW view
            x = x.to(self.dtype)
            x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()
            logits = self._forward(x)
            probs = torch.softmax(logits.float(), dim=-1)
            k = min(self.top_k, probs.shape[-1])
            top = torch.topk(probs, k, dim=-1)
            return torch.stack([top.values, top.indices.float()], dim=0)

    def collect(self, launched: Any) -> list[Prediction]:
        """Wait for a launched batch and build its predictions (the one device→host copy)."""
        packed = launched.cpu().numpy()
        out = []
        for scores, indices in zip(packed[0], packed[1], strict=True):
            top_k = [{"label": self.labels[int(i)], "score": float(s)} for s, i in zip(scores, indices, strict=True)]
            out.append(Prediction(self.labels[int(indices[0])], float(scores[0]), top_k))
        return out

    def input_shape(self) -> tuple[int, ...]:
        if self.geometry is not None:
            h, w = self.geometry.out_size
            return (h, w, 3)
        from PIL import Image

        return self.prepare(Image.new("RGB", (256, 256))).shape

    seconds_per_image: float = 0.0  # measured by warmup(): steady-state model time per image

    def warmup(self, batch_size: int) -> float:
        """Run batches of zeros (kernels, allocator, compile); returns seconds of the first.

        The second batch's time per image is kept as ``seconds_per_image``.
        """
        dtype = np.uint8 if self.geometry is not None else np.float32
        batch = np.zeros((batch_size, *self.input_shape()), dtype=dtype)
        start = time.perf_counter()
        self.predict(batch)
        first = time.perf_counter() - start
        start = time.perf_counter()
        self.predict(batch)
        self.seconds_per_image = (time.perf_counter() - start) / batch_size
        return first


def _labels(config: Any) -> list[str]:
    """Label names by class index, from a model config's id2label (``LABEL_i`` where it names none)."""
    id2label = getattr(config, "id2label", None) or {}
    n = getattr(config, "num_labels", None)
    n = int(n) if n else len(id2label)
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(n)]


def load_classifier(name: str, settings: Settings) -> Classifier:
    """Load a classifier by hub id or local folder; UsageError when it cannot be had."""
    from .hub import resolve

    # Resolve first (no torch): a missing folder or an unreachable hub is one line that says what to do,
    # and a cached model loads from disk without the hub's retries when the hub cannot be reached.
    resolved = resolve(name)
    hub_kwargs: dict[str, Any] = {"local_files_only": True} if resolved.offline else {}
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    runtime = get_runtime(settings.runtime)
    start = time.perf_counter()
    try:
        # The config and processor only: a runtime with a cached export never loads the torch weights.
        config = transformers.AutoConfig.from_pretrained(resolved.load_from, **hub_kwargs)
        processor = transformers.AutoImageProcessor.from_pretrained(resolved.load_from, **hub_kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"cannot load model {name!r}: {_first_line(exc)}") from None

    def load_model() -> Any:
        try:
            model = transformers.AutoModelForImageClassification.from_pretrained(resolved.load_from, **hub_kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"cannot load model {name!r}: {_first_line(exc)}") from None
        return model.eval()

    clf = Classifier(name, processor, _labels(config), settings, runtime=runtime, load_model=load_model,
                     revision=_loaded_revision(name, config), folder=resolved.folder)
    logger.info(
        "loaded %s on %s (%s, %s path) in %.1fs",
        name,
        clf.device,
        clf.described,
        "fast" if clf.geometry else "exact",
        time.perf_counter() - start,
    )
    return clf


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# ---------------------------------------------------------------- revisions


def _loaded_revision(name: str, config: Any) -> str | None:
    """What a loaded model's records name as its revision: the folder hash, else the hub commit."""
    if Path(name).is_dir():
        return folder_revision(Path(name))
    return getattr(config, "_commit_hash", None) or resolve_revision(name)
