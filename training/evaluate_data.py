"""Run a model on an OCELOT-layout split and score it with the OCELOT challenge metric.

Scoring a checkpoint on a split is :func:`wsi_ocelot.evaluation.evaluate_dataset` (also
``wsi-ocelot evaluate --data``); :func:`predict` and :func:`score` here are the training
loop's validation, shared with :func:`training.train.evaluate`.

Scores are computed in the model-input pixel frame, with the matching radius scaled by the
same factor as the images (radius 15 px at the release's ≈0.194 µm/px ≈ 3 µm). A checkpoint
trained on resized tiles (``tile_mode: resize``) records its coarser ``cell_mpp``; the split
is then resized to that resolution before inference, so the model sees what it was trained on.

Pairs with a cell mask (partial labels) are scored within it: :func:`predict` keeps each
image's mask and :func:`score` hands them to the metric, which drops predictions (and ground
truth) outside them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from training.augment import apply_jitter, apply_stain
from training.losses import LossConfig, total_loss
from wsi_ocelot.config import PeakConfig
from wsi_ocelot.inference.peaks import find_peaks
from wsi_ocelot.metrics import DISTANCE_CUTOFF, evaluate
from wsi_ocelot.model.precision import autocast

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Per image: predicted ``(N, 4)`` (x, y, class, prob) and ground-truth ``(M, 3)`` points,
    and the cell mask (bool ``(H, W)``, model-input px) of a partially labelled pair, else None."""

    preds: list[np.ndarray] = field(default_factory=list)
    gts: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray | None] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    organs: list[str | None] = field(default_factory=list)
    loss: float | None = None


def forward(
    model: nn.Module, batch: dict[str, Any], device: torch.device
) -> dict[str, Tensor | None]:
    """The model's training forward on a collated batch (moves the tensors to ``device``)."""
    cell = batch["cell"].to(device, non_blocking=True)
    tissue = batch["tissue"].to(device, non_blocking=True)
    if cell.dtype == torch.uint8:  # OcelotDataset(device_augment=True): convert here
        cell = cell.float().div_(255.0)
        tissue = tissue.float().div_(255.0)
    cf = int(getattr(getattr(model, "config", None), "context_factor", 4))
    stain = batch["stain"].to(device, non_blocking=True) if "stain" in batch else None
    if (
        stain is not None
    ):  # HED → colour jitter → blur and noise, as training.augment.random_augment
        cell, tissue = apply_stain(cell, tissue, stain, phase="hed", context_factor=cf)
    if "jitter" in batch:
        cell, tissue = apply_jitter(cell, tissue, batch["jitter"].to(device, non_blocking=True))
    if stain is not None:
        cell, tissue = apply_stain(cell, tissue, stain, phase="optics", context_factor=cf)
    offset = batch["offset"].to(device, non_blocking=True)
    label = (
        batch["tissue_label"].to(device, non_blocking=True)
        if getattr(model, "needs_tissue_label", False)
        else None
    )
    if device.type == "cuda":
        cell = cell.contiguous(memory_format=torch.channels_last)
        tissue = tissue.contiguous(memory_format=torch.channels_last)
    return model(cell, tissue, offset, tissue_label=label)


@torch.inference_mode()
def predict(
    model: nn.Module,
    loader: DataLoader[Any],
    device: torch.device,
    peaks: PeakConfig,
    *,
    amp_dtype: torch.dtype | None = None,
    loss_cfg: LossConfig | None = None,
) -> Predictions:
    """Cell points for every image of ``loader`` (model in eval mode; restored afterwards).

    With ``loss_cfg`` the mean loss over batches is computed too.
    """
    was_training = model.training
    model.eval()
    out = Predictions()
    losses: list[Tensor] = []
    try:
        for batch in loader:
            with autocast(device, amp_dtype):
                outputs = forward(model, batch, device)
            cell_logits = outputs["cell_logits"]
            if cell_logits is None:
                raise RuntimeError("the model returned no cell logits")
            if loss_cfg is not None:
                targets = {
                    "cell_target": batch["cell_target"].to(device),
                    "tissue_label": batch["tissue_label"].to(device),
                }
                loss, _ = total_loss(outputs, targets, loss_cfg)
                losses.append(loss.detach().float())
            points = find_peaks(cell_logits.float().softmax(dim=1), peaks)
            masks = batch.get("cell_mask")
            for k, (p, gt, id_, organ) in enumerate(
                zip(points, batch["points"], batch["id"], batch["organ"], strict=True)
            ):
                out.preds.append(p.detach().cpu().double().numpy())
                out.gts.append(gt.detach().cpu().double().numpy())
                out.masks.append(None if masks is None else masks[k].cpu().numpy().astype(bool))
                out.ids.append(id_)
                out.organs.append(organ)
    finally:
        model.train(was_training)
    if losses:
        out.loss = float(torch.stack(losses).mean())
    return out


def _masks(pred: Predictions, idx: list[int] | None = None) -> list[np.ndarray | None] | None:
    if not any(m is not None for m in pred.masks):
        return None
    return list(pred.masks) if idx is None else [pred.masks[i] for i in idx]


def score(pred: Predictions, radius: float = DISTANCE_CUTOFF) -> dict[str, Any]:
    """OCELOT score of all images: ``{"mF1", "BC": {...}, "TC": {...}}`` (within the masks of
    partially labelled pairs)."""
    return evaluate(pred.preds, pred.gts, radius, masks=_masks(pred)).to_dict()


def score_by_organ(pred: Predictions, radius: float = DISTANCE_CUTOFF) -> dict[str, dict[str, Any]]:
    """One score per organ (images without an organ in the metadata are left out)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, organ in enumerate(pred.organs):
        if organ is not None:
            groups[organ].append(i)
    return {
        organ: evaluate(
            [pred.preds[i] for i in idx],
            [pred.gts[i] for i in idx],
            radius,
            masks=_masks(pred, idx),
        ).to_dict()
        for organ, idx in sorted(groups.items())
    }
