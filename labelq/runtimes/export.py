"""Exports shared by the runtimes: the ONNX file of a model revision, and its int8 copy behind a parity gate.

The ONNX file is made once per model revision with torch's dynamo exporter (``torch.onnx.export``,
dynamic batch axis, fp32, weights inside the file) and published under its final name only when
complete, so concurrent workers never read half an export. The int8 copy (ONNX Runtime dynamic
quantization) is used only when it agrees with fp32 on a calibration set; the gate's verdict is
kept beside the export, per calibration set and thresholds, so it is measured once.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Settings
from .base import INPUT, OPSET, OUTPUT, ModelSource, replace_atomically

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INT8_FILE = "model-int8.onnx"


def onnx_export(source: ModelSource) -> tuple[Path, bool]:
    """The model's fp32 ONNX file, exported now unless cached: (path, exported now)."""
    folder = source.cache.folder("onnx", source.revision)
    final = folder / ONNX_FILE
    if final.is_file():
        logger.debug("reusing the ONNX export %s", final)
        return final, False
    import torch

    model = source.model()
    wrapper = _logits_only(model).eval().float().cpu()
    c, h, w = source.input_shape
    example = torch.zeros((2, c, h, w), dtype=torch.float32)
    tmp = folder / f".{ONNX_FILE}.{os.getpid()}.tmp"
    start = time.perf_counter()
    # The exporter prints its progress to stdout, which is the CLI's: keep it for a failure's message.
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                wrapper, (example,), str(tmp), input_names=[INPUT], output_names=[OUTPUT], opset_version=OPSET,
                dynamo=True, external_data=False, verbose=False,
                dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch", min=1, max=65536)}},
            )
    except Exception as exc:  # noqa: BLE001 (the exporter fails in many types; each becomes one line)
        tmp.unlink(missing_ok=True)
        from ..errors import UsageError

        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot export model {source.name!r} to ONNX ({first}); use LABELQ_RUNTIME=torch") from None
    replace_atomically(tmp, final)
    logger.info("exported %s to ONNX in %.1fs: %s", source.name, time.perf_counter() - start, final)
    return final, True


def _logits_only(model: Any) -> Any:
    """``model(pixel_values=x).logits`` as a module with one positional input (what the exporter traces)."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values: Any) -> Any:
            return self.inner(pixel_values=pixel_values).logits

    return LogitsOnly(model)


# ---------------------------------------------------------------- int8


def session(path: Path, threads: int) -> Any:
    """An ONNX Runtime session on the CPU with ``threads`` intra-op threads (decode needs the other cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])



@dataclass(frozen=True)
class Gate:
    """The int8 parity verdict on a calibration set."""

    images: int
    agreement: float  # share of images whose top-1 label is the same as fp32's
    mean_delta: float  # mean |int8 score - fp32 score| of fp32's top-1 label
    min_agreement: float
    max_mean_delta: float
    reason: str = ""  # why there was no verdict (no calibration set), else ""

    @property
    def passed(self) -> bool:
        return not self.reason and self.agreement >= self.min_agreement and self.mean_delta <= self.max_mean_delta

    def line(self, name: str) -> str:
        if self.reason:
            return f"int8 for {name}: {self.reason}; running fp32"
        verdict = "passed, running int8" if self.passed else "failed, running fp32"
        return (f"int8 parity gate for {name} on {self.images} calibration images: top-1 agreement "
                f"{self.agreement:.1%} (need >= {self.min_agreement:.1%}), mean |delta score| {self.mean_delta:.4f} "
                f"(need <= {self.max_mean_delta}): {verdict}")


def int8_export(fp32: Path) -> Path:
    """The dynamically quantized copy of an fp32 export (int8 weights, activations quantized per batch)."""
    final = fp32.parent / INT8_FILE
    if final.is_file():
        return final
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = fp32.parent / f".{INT8_FILE}.{os.getpid()}.tmp"
    start = time.perf_counter()
    # MatMul only: the transformer blocks and classifier heads, where dynamic quantization pays on a CPU
    # (ONNX Runtime's ConvInteger is slower than its fp32 convolutions).
    logging.disable(logging.WARNING)  # the quantizer logs every node it skips, and advice, on the root logger
    try:
        quantize_dynamic(fp32, tmp, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    finally:
        logging.disable(logging.NOTSET)
    replace_atomically(tmp, final)
    logger.info("quantized %s to int8 in %.1fs", fp32, time.perf_counter() - start)
    return final


def parity_gate(source: ModelSource, fp32: Path, int8: Path, settings: Settings, threads: int) -> Gate:
    """Measure (or read back) the int8 verdict for this export, calibration set and thresholds."""
    lo, hi = settings.int8_min_agreement, settings.int8_max_mean_delta
    batch = source.calibration() if source.calibration is not None else None
    if batch is None:
        return Gate(0, 0.0, 1.0, lo, hi, reason="no calibration set (set LABELQ_INT8_CALIBRATION to a folder of "
                    "typical images)")
    if len(batch) == 0:
        return Gate(0, 0.0, 1.0, lo, hi, reason=f"no readable images in {settings.int8_calibration}")
    digest = _array_digest(batch)
    kept = fp32.parent / f"gate-{digest}-{settings.int8_min_agreement}-{settings.int8_max_mean_delta}.json"
    if kept.is_file():
        with contextlib.suppress(OSError, ValueError, TypeError):
            return Gate(**json.loads(kept.read_text(encoding="utf-8")))
    reference = _softmax(_run_in_batches(session(fp32, threads), batch))
    quantized = _softmax(_run_in_batches(session(int8, threads), batch))
    top = reference.argmax(axis=1)
    rows = np.arange(len(top))
    gate = Gate(
        images=len(batch),
        agreement=float((quantized.argmax(axis=1) == top).mean()),
        mean_delta=float(np.abs(quantized[rows, top] - reference[rows, top]).mean()),
        min_agreement=lo,
        max_mean_delta=hi,
    )
    with contextlib.suppress(OSError):
        tmp = kept.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(gate.__dict__), encoding="utf-8")
        replace_atomically(tmp, kept)
    return gate


def _run_in_batches(sess: Any, batch: np.ndarray, size: int = 16) -> np.ndarray:
    return np.concatenate([sess.run([OUTPUT], {INPUT: batch[i : i + size]})[0] for i in range(0, len(batch), size)])


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _array_digest(batch: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(batch).tobytes()).hexdigest()[:16]
