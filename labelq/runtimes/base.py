"""What a runtime gives a classifier, and where exported models are cached.

A classifier (:class:`labelq.models.Classifier`) owns everything that does not depend on how the
forward pass runs: preprocessing derived from the model's processor config, normalisation,
labels, the revision, batching and top-k. A runtime owns the rest: it turns a
:class:`ModelSource` into a :class:`Backend`, whose ``forward`` maps a normalised float batch
(NCHW, on the backend's device) to logits. Runtimes that run something other than the torch
module export it once per model revision into an :class:`ExportCache` and reuse it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..config import Settings
from ..errors import UsageError

logger = logging.getLogger(__name__)

# Bump when what an export holds changes (exporter, opset, input/output names): old exports are then rebuilt.
EXPORT_FORMAT = 1
OPSET = 18
INPUT, OUTPUT = "pixel_values", "logits"


class Forward(Protocol):
    def __call__(self, pixel_values: Any) -> Any:
        """A normalised float batch (torch tensor, NCHW, on the backend's device) → logits (torch tensor)."""
        ...


@dataclass
class Backend:
    """A loaded forward pass and what the classifier must feed it."""

    forward: Forward
    device: Any  # torch.device the inputs go to
    dtype: Any  # torch dtype of the inputs
    channels_last: bool = False
    model: Any = None  # the torch module when one was loaded (None for a cached export)
    described: str = ""  # for the load log line: "onnxruntime fp32, cached export", ...


@dataclass
class ModelSource:
    """A model a runtime can run: its files, its revision, and its torch module on demand."""

    name: str  # as the user named it
    revision: str | None  # the folder's content hash or the hub commit (what records carry)
    cache: ExportCache
    input_shape: tuple[int, int, int]  # (3, H, W) of one normalised input
    load_model: Callable[[], Any]  # the transformers module, loaded (eval mode) when called
    calibration: Callable[[], Any] | None = None  # a normalised float batch for the int8 parity gate, or None
    _model: Any = field(default=None, repr=False)

    def model(self) -> Any:
        """The torch module, loaded on first use."""
        if self._model is None:
            self._model = self.load_model()
        return self._model


class Runtime(Protocol):
    """One way to run a classifier's forward pass (LABELQ_RUNTIME); one module per runtime."""

    name: str

    def load(self, source: ModelSource, settings: Settings) -> Backend:
        """The backend for ``source``; UsageError with one line when it cannot run here."""
        ...


class ExportCache:
    """The folder a model's exports live in: beside the model, else labelq's cache folder.

    Beside the model is ``.labelq/`` inside a model folder (hidden, so the folder's content hash,
    its revision, ignores it), or ``labelq/`` in the hub cache's folder of the repo. When that cannot
    be written (a read-only mount, another user's cache), ``LABELQ_CACHE_DIR``/``models/NAME`` is used.
    Each export sits in a sub-folder named by the runtime, the revision and :data:`EXPORT_FORMAT`.
    """

    def __init__(self, beside: Path | None, fallback: Path) -> None:
        self.beside = beside
        self.fallback = fallback

    def folder(self, kind: str, revision: str | None) -> Path:
        """Where ``kind`` (``onnx``, ``openvino``) exports of ``revision`` are, found or made."""
        leaf = f"{kind}-{_safe(revision or 'unknown')}-v{EXPORT_FORMAT}"
        for root in (self.beside, self.fallback):
            if root is None:
                continue
            path = root / leaf
            if path.is_dir() and any(path.iterdir()):
                return path  # an export made earlier (maybe by another user) is reused wherever it is
        for root in (self.beside, self.fallback):
            if root is None:
                continue
            path = root / leaf
            if _writable(path):
                return path
            logger.info("cannot write exports to %s; trying labelq's cache folder", root)
        raise OSError(f"no writable folder for model exports (tried {self.beside} and {self.fallback}); "
                      "set LABELQ_CACHE_DIR to a writable folder")


def cache_for(name: str, folder: Path | None, settings: Settings) -> ExportCache:
    """The export cache of a model: ``folder`` for a local model, the hub cache's repo folder for a hub id."""
    fallback = settings.cache_dir / "models" / _safe(name)
    if folder is not None:
        return ExportCache(folder / ".labelq", fallback)
    try:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(name, "config.json")
    except (ImportError, ValueError):
        config = None
    beside = Path(config).parents[2] / "labelq" if isinstance(config, str) else None
    return ExportCache(beside, fallback)


def cpu_only(runtime: str, settings: Settings) -> Any:
    """The CPU device, for runtimes that run there only; UsageError when another device or dtype is asked for."""
    import torch

    if settings.device not in ("auto", "cpu"):
        raise UsageError(f"LABELQ_RUNTIME={runtime} runs on the CPU, not {settings.device}: use --device cpu, "
                         "or LABELQ_RUNTIME=torch on a GPU")
    if settings.dtype not in ("auto", "float32"):
        raise UsageError(f"LABELQ_RUNTIME={runtime} runs in float32, not {settings.dtype}: leave LABELQ_DTYPE unset")
    return torch.device("cpu")


def require(module: str, extra: str, runtime: str) -> None:
    """UsageError naming the extra to install when ``module`` is missing (checked before any export)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"LABELQ_RUNTIME={runtime} needs the {module} package: pip install 'labelq[{extra}]'")


def replace_atomically(tmp: Path, final: Path) -> None:
    """Publish a finished file under its final name (other processes never see half an export)."""
    os.replace(tmp, final)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:120] or "model"


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False
