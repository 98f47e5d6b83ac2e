"""``LABELQ_RUNTIME=onnx`` and ``onnx-int8``: the model's ONNX export on ONNX Runtime's CPU provider.

fp32 gives the torch model's scores (within 1e-4). ``onnx-int8`` (or ``LABELQ_INT8=true``) runs the
dynamically quantized export only when the parity gate on the calibration set passes; otherwise fp32,
with one warning line saying why. CPU only: the inputs stay on the host.
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import Settings
from .base import INPUT, OUTPUT, Backend, ModelSource, cpu_only, require
from .export import int8_export, onnx_export, parity_gate, session

logger = logging.getLogger(__name__)


class OnnxRuntime:
    def __init__(self, *, int8: bool = False) -> None:
        self.int8 = int8
        self.name = "onnx-int8" if int8 else "onnx"

    def load(self, source: ModelSource, settings: Settings) -> Backend:
        import torch

        device = cpu_only(self.name, settings)
        require("onnxruntime", "onnx", self.name)
        path, exported = onnx_export(source)
        described = "onnxruntime fp32"
        if self.int8:
            int8 = int8_export(path)
            gate = parity_gate(source, path, int8, settings, settings.torch_threads)
            if gate.passed:
                logger.info(gate.line(source.name))
                path, described = int8, "onnxruntime int8"
            else:
                logger.warning(gate.line(source.name))
        sess = session(path, settings.torch_threads)

        def forward(pixel_values: Any) -> Any:
            x = pixel_values.numpy() if pixel_values.dtype == torch.float32 else pixel_values.float().numpy()
            return torch.from_numpy(sess.run([OUTPUT], {INPUT: x})[0])

        how = "exported now" if exported else "cached export"
        return Backend(forward, device, torch.float32, described=f"{described}, {how}")
