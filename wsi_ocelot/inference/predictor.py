"""The predictor: batches in, probabilities out, on the model's device.

Holds the model, the device and the precision policy (bf16 autocast and channels-last
on CUDA; on the CPU fp32, or bf16 autocast where asked), or a loaded runtime backend
(OpenVINO, ONNX Runtime: ``inference/runtimes/``) that runs the two graphs instead of torch,
and retries a batch in halves when the GPU runs out of memory.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wsi_ocelot.inference.runtimes.backends import Backend
from wsi_ocelot.inference.runtimes.graphs import resize_to_injection
from wsi_ocelot.model.precision import autocast, inference_autocast
from wsi_ocelot.model.variants import OcelotModel

log = logging.getLogger(__name__)


def default_batch_size(device: torch.device) -> int:
    """Tiles per batch for ``device``: 8 on the CPU (the batch only amortises the Python
    overhead there); on CUDA a power of two from the device's memory, 4 to 32 (about 1 GiB
    per 1024² tile under bf16 leaves room for the model, the peaks and the tissue crops; a
    batch that still runs out of memory is halved by :func:`with_oom_retry`)."""
    if device.type != "cuda":
        return 8
    total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    return int(min(32, max(4, 2 ** math.floor(math.log2(max(1.0, total_gib / 2))))))


def unit_float(x: Tensor) -> np.ndarray:
    """uint8 pixels on the host → float32 in [0, 1], in one pass (the same values as
    ``x.float().div_(255)``, measured 2.8× faster on a batch of 8 1024² tiles on 2 cores)."""
    return np.divide(x.numpy(), np.float32(255.0), dtype=np.float32)


@dataclass
class Predictor:
    """Runs the two halves of an injection model (or the whole per-tile forward).

    Inputs are uint8 ``(B, 3, H, W)`` tensors on the host; they are moved to the device,
    scaled to [0, 1] and, on CUDA, cast under bf16 autocast in channels-last layout.
    Outputs are float32 probabilities on the device. With a ``backend`` the two-pass calls
    run in it (on the CPU; the tissue crop is resized to the injection point here, in torch);
    ``cpu_bf16`` runs the cell graph in torch on the CPU under bf16 autocast (the tissue graph
    in fp32)."""

    model: OcelotModel
    device: torch.device
    amp: bool = True
    channels_last: bool = True
    backend: Backend | None = None
    cpu_bf16: bool = False

    def __post_init__(self) -> None:
        self.model.eval().to(self.device)
        self._cuda = self.device.type == "cuda"
        if self._cuda and self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _prep(self, x: Tensor) -> Tensor:
        if self.device.type == "cpu" and x.device.type == "cpu":
            return torch.from_numpy(unit_float(x))
        x = x.to(self.device, non_blocking=True).float().div_(255.0)
        if self._cuda and self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _ctx(self, tissue: bool = False) -> contextlib.AbstractContextManager:
        if self.cpu_bf16 and not self._cuda:
            # reduced precision on the CPU is the cell graph's; the tissue graph stays fp32
            # (docs/runtimes.md: its map is thresholded for the cancer area)
            return contextlib.nullcontext() if tissue else autocast(self.device, torch.bfloat16)
        return inference_autocast(self.device, self.amp)

    @torch.inference_mode()
    def tissue_probs(self, tissue: Tensor) -> Tensor:
        """(B, 3, T, T) uint8 → (B, 2, T, T) float32 tissue probabilities (BG, CA)."""
        if self.backend is not None:
            return torch.from_numpy(self.backend.tissue(unit_float(tissue)))
        with self._ctx(tissue=True):
            return self.model.tissue_probs(self._prep(tissue)).float()

    @torch.inference_mode()
    def cell_probs(self, cell: Tensor, tissue_crop: Tensor | None) -> Tensor:
        """(B, 3, T, T) uint8 + (B, 2, h, w) float crop → (B, 3, T, T) float32 cell probabilities."""
        if self.backend is not None:
            inj = (
                None
                if tissue_crop is None
                else resize_to_injection(self.model, tissue_crop, cell.shape[-1])
            )
            return torch.from_numpy(self.backend.cell(unit_float(cell), inj))
        crop = None if tissue_crop is None else tissue_crop.to(self.device, non_blocking=True)
        with self._ctx():
            return self.model.cell_logits_from_tissue(self._prep(cell), crop).float().softmax(dim=1)

    @torch.inference_mode()
    def per_tile(
        self, cell: Tensor, context: Tensor, offset: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """The paper's path: each cell tile with its own context →
        ((B, 3, T, T) cell probabilities, (B, 2, T, T) tissue probabilities or None)."""
        with self._ctx():
            out = self.model(self._prep(cell), self._prep(context), offset.to(self.device))
        tissue = out.get("tissue_logits")
        return out["cell_logits"].float().softmax(
            dim=1
        ), None if tissue is None else tissue.float().softmax(dim=1)


def with_oom_retry(fn: Callable[..., Any], *tensors: Tensor | None, min_batch: int = 1) -> Any:
    """Call ``fn(*tensors)``; on CUDA out-of-memory, split the batch in halves and retry
    (recursively down to ``min_batch``), concatenating the results along dim 0."""
    try:
        return fn(*tensors)
    except torch.OutOfMemoryError:
        b = next(t.shape[0] for t in tensors if t is not None)
        if b <= min_batch:
            raise
        torch.cuda.empty_cache()
        half = b // 2
        log.warning("CUDA out of memory on a batch of %d; retrying as %d + %d", b, half, b - half)
        parts = [
            with_oom_retry(fn, *[None if t is None else t[s] for t in tensors], min_batch=min_batch)
            for s in (slice(0, half), slice(half, b))
        ]
        if isinstance(parts[0], tuple):
            return tuple(
                None if parts[0][i] is None else torch.cat([p[i] for p in parts])
                for i in range(len(parts[0]))
            )
        return torch.cat(parts)
