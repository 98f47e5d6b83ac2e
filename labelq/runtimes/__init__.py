"""Inference runtimes: how a classifier's forward pass runs (``LABELQ_RUNTIME``).

* :mod:`.base`: the runtime protocol, the :class:`Backend` it returns, the export cache.
* :mod:`.torch_eager`: ``torch``, the transformers module itself (any device; the default).
* :mod:`.onnx_runtime`: ``onnx`` and ``onnx-int8``, the ONNX export on ONNX Runtime (CPU).
* :mod:`.openvino_runtime`: ``openvino``, the export as OpenVINO IR (CPU).
* :mod:`.export`: the ONNX export of a model revision, its int8 copy and the parity gate.

:func:`get_runtime` picks one by name; callers never branch on the name. Importing this package
imports neither torch nor any runtime's library.
"""

from __future__ import annotations

from ..errors import UsageError
from .base import Backend, ExportCache, Forward, ModelSource, Runtime, cache_for
from .onnx_runtime import OnnxRuntime
from .openvino_runtime import OpenVinoRuntime
from .torch_eager import TorchRuntime, resolve_device, resolve_dtype

__all__ = [
    "RUNTIMES",
    "Backend",
    "ExportCache",
    "Forward",
    "ModelSource",
    "Runtime",
    "cache_for",
    "get_runtime",
    "resolve_device",
    "resolve_dtype",
]

RUNTIMES: dict[str, Runtime] = {
    "torch": TorchRuntime(),
    "onnx": OnnxRuntime(),
    "onnx-int8": OnnxRuntime(int8=True),
    "openvino": OpenVinoRuntime(),
}


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name``; UsageError listing the names when there is none."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise UsageError(f"unknown runtime {name!r}: use one of {', '.join(RUNTIMES)}") from None
