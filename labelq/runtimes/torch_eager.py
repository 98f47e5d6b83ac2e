"""``LABELQ_RUNTIME=torch`` (the default): the transformers module itself, on any device torch has.

Device and dtype come from the settings (``auto``: CUDA > MPS > CPU; bf16/fp16 on GPUs, fp32 on the
CPU); convolutional models run channels_last; ``LABELQ_COMPILE`` wraps the module in torch.compile.
"""

from __future__ import annotations

from typing import Any

from ..config import Settings
from ..errors import UsageError
from .base import Backend, ModelSource


def resolve_device(spec: str) -> Any:
    """auto → cuda > mps > cpu; an explicit device must exist."""
    import torch

    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {spec} asked for, but CUDA is not available here (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"device {spec} asked for, but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def resolve_dtype(spec: str, device: Any) -> Any:
    """auto: bf16 on GPUs that have it (else fp16), fp32 elsewhere."""
    import torch

    if spec == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[spec]


class TorchRuntime:
    name = "torch"

    def load(self, source: ModelSource, settings: Settings) -> Backend:
        import torch

        device = resolve_device(settings.device)
        if device.type == "cpu":
            # Decode threads share the cores: torch's default of one thread per core oversubscribes them.
            torch.set_num_threads(settings.torch_threads)
        dtype = resolve_dtype(settings.dtype, device)
        model = source.model()
        model.to(device=device, dtype=dtype)
        channels_last = settings.channels_last and _is_convolutional(model)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        runnable = torch.compile(model) if settings.compile else model

        def forward(pixel_values: Any) -> Any:
            return runnable(pixel_values=pixel_values).logits

        return Backend(forward, device, dtype, channels_last, model, f"torch {str(dtype).replace('torch.', '')}")


def _is_convolutional(model: Any) -> bool:
    import torch

    convs = sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return convs > 2  # a ViT has one (the patch embedding)
