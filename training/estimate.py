"""How long will a study take? A few timed training steps and validation batches on the
chosen device, scaled up to every run of :mod:`training.reproduce` before it starts.

The timing uses the run's own config (model, tile size, batch, AMP, loaders) with random
encoder weights (an ImageNet download is not part of a step) and no report; the first step
and batch are warm-up and not counted. The estimate leaves out what does not scale with steps
(start-up, checkpoint writes), so it is a lower bound of the order of the real time.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepTiming:
    """Seconds per optimizer step and per validation batch, with the sizes they scale with."""

    device: str
    step_s: float
    val_batch_s: float
    train_pairs: int
    val_pairs: int
    batch_size: int
    timed_steps: int

    def run_s(self, cfg: Any, test_pairs: int = 0) -> float:
        """Seconds for one run of ``cfg`` (training, validation every ``eval_every`` epochs,
        test scoring of ``test_pairs``)."""
        per_epoch = max(1, self.train_pairs // cfg.batch_size)
        steps = (
            cfg.epochs * per_epoch
            if cfg.max_steps is None
            else min(cfg.max_steps, cfg.epochs * per_epoch)
        )
        epochs = math.ceil(steps / per_epoch)
        evals = epochs // cfg.eval_every + (1 if epochs % cfg.eval_every else 0)
        val_batches = math.ceil(self.val_pairs / cfg.batch_size) if self.val_pairs else 0
        test_batches = math.ceil(test_pairs / cfg.batch_size)
        return steps * self.step_s + (evals * val_batches + test_batches) * self.val_batch_s


def time_steps(cfg: Any, n: int = 3) -> StepTiming:
    """Time ``n`` training steps (after one warm-up step) and ``n`` validation batches of ``cfg``."""
    from training.evaluate_data import forward
    from training.losses import total_loss
    from training.train import _datasets, _loader, _model, resolve_amp
    from wsi_ocelot.model.device import resolve_device
    from wsi_ocelot.model.precision import autocast

    cfg = dataclasses.replace(cfg, encoder_weights="none")
    device = resolve_device(cfg.device)
    amp_dtype, _ = resolve_amp(cfg.amp, device)
    train_ds, val_ds = _datasets(cfg)
    model, _ = _model(cfg, train_ds, val_ds, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    model.train()
    times = []
    loader = iter(_loader(train_ds, cfg, device, shuffle=True))
    for _ in range(n + 1):
        try:
            batch = next(loader)
        except StopIteration:  # fewer batches than n + 1 in the split: start it again
            loader = iter(_loader(train_ds, cfg, device, shuffle=True))
            batch = next(loader)
        sync()
        t0 = time.perf_counter()
        with autocast(device, amp_dtype):
            out = forward(model, batch, device)
        loss, _ = total_loss(
            out,
            {
                "cell_target": batch["cell_target"].to(device),
                "tissue_label": batch["tissue_label"].to(device),
            },
            cfg.loss,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        times.append(time.perf_counter() - t0)
    step_s = sum(times[1:]) / max(1, len(times) - 1)
    val_s = 0.0
    if val_ds is not None:
        model.eval()
        vt = []
        with torch.inference_mode():
            for batch in itertools.islice(_loader(val_ds, cfg, device, shuffle=False), n + 1):
                sync()
                t0 = time.perf_counter()
                with autocast(device, amp_dtype):
                    forward(model, batch, device)
                sync()
                vt.append(time.perf_counter() - t0)
        val_s = sum(vt[1:]) / max(1, len(vt) - 1) if len(vt) > 1 else (vt[0] if vt else 0.0)
    return StepTiming(
        device=str(device),
        step_s=step_s,
        val_batch_s=val_s,
        train_pairs=len(train_ds),
        val_pairs=len(val_ds) if val_ds is not None else 0,
        batch_size=cfg.batch_size,
        timed_steps=max(1, len(times) - 1),
    )


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
