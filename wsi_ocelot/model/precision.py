"""The one precision policy: which autocast a forward pass runs under.

Inference (the slide engine, dataset evaluation) runs in bf16 under autocast on CUDA and in
float32 on the CPU; training picks its dtype (``training/train.py``: bf16 where the GPU
supports it, else fp16 with a gradient scaler). Everything enters autocast through here.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast", "inference_autocast"]


def autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[object]:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def inference_autocast(
    device: torch.device, amp: bool = True
) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA when ``amp``; a no-op on the CPU (float32)."""
    return autocast(device, torch.bfloat16 if amp and device.type == "cuda" else None)
