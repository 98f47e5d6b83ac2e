"""``LABELQ_RUNTIME=openvino``: the model's ONNX export converted once to OpenVINO IR, run on its CPU plugin.

The IR keeps fp32 weights (no fp16 compression) and the plugin runs at f32 precision (no bf16 on CPUs
that have it), so scores are the torch model's within 1e-4.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ..config import Settings
from .base import Backend, ModelSource, cpu_only, replace_atomically, require
from .export import onnx_export

logger = logging.getLogger(__name__)

IR_FILE = "model.xml"


class OpenVinoRuntime:
    name = "openvino"

    def load(self, source: ModelSource, settings: Settings) -> Backend:
        import torch

        device = cpu_only(self.name, settings)
        require("openvino", "openvino", self.name)
        import openvino as ov

        folder = source.cache.folder("openvino", source.revision)
        xml = folder / IR_FILE
        exported = not xml.is_file()
        if exported:
            onnx, _ = onnx_export(source)
            start = time.perf_counter()
            tmp = folder / f".model.{os.getpid()}.tmp.xml"
            ov.save_model(ov.convert_model(str(onnx)), str(tmp), compress_to_fp16=False)
            replace_atomically(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))  # weights first, then the graph
            replace_atomically(tmp, xml)
            logger.info("converted %s to OpenVINO IR in %.1fs: %s", source.name, time.perf_counter() - start, xml)
        compiled = ov.Core().compile_model(str(xml), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": settings.torch_threads,
            "PERFORMANCE_HINT": "LATENCY",
        })
        request = compiled.create_infer_request()

        def forward(pixel_values: Any) -> Any:
            x = pixel_values if pixel_values.dtype == torch.float32 else pixel_values.float()
            out = request.infer({0: x.numpy()})
            return torch.from_numpy(next(iter(out.values())).copy())

        how = "converted now" if exported else "cached export"
        return Backend(forward, device, torch.float32, described=f"openvino fp32, {how}")
