"""Run a model on an OCELOT-layout split and score it with the OCELOT challenge metric.

:func:`evaluate_checkpoint` is the library entry point (the CLI wiring lives in
``wsi_ocelot.cli``); :func:`predict` and :func:`score` are shared with
:func:`training.train.evaluate`.

Scores are computed in the model-input pixel frame, with the matching radius scaled by the
same factor as the images (radius 15 px at the release's ≈0.194 µm/px ≈ 3 µm). A checkpoint
trained on resized tiles (``tile_mode: resize``) records its coarser ``cell_mpp``; the split
is then resized to that resolution before inference, so the model sees what it was trained on.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from training.data import OcelotDataset, collate
from training.losses import LossConfig, total_loss
from wsi_ocelot.inference.peaks import PeakConfig, find_peaks
from wsi_ocelot.metrics import DISTANCE_CUTOFF, evaluate

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Per image: predicted ``(N, 4)`` (x, y, class, prob) and ground-truth ``(M, 3)`` points."""

    preds: list[np.ndarray] = field(default_factory=list)
    gts: list[np.ndarray] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    organs: list[str | None] = field(default_factory=list)
    loss: float | None = None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def forward(model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Tensor | None]:
    """The model's training forward on a collated batch (moves the tensors to ``device``)."""
    cell = batch["cell"].to(device, non_blocking=True)
    tissue = batch["tissue"].to(device, non_blocking=True)
    offset = batch["offset"].to(device, non_blocking=True)
    label = batch["tissue_label"].to(device, non_blocking=True) if getattr(model, "needs_tissue_label", False) else None
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
                targets = {"cell_target": batch["cell_target"].to(device), "tissue_label": batch["tissue_label"].to(device)}
                loss, _ = total_loss(outputs, targets, loss_cfg)
                losses.append(loss.detach().float())
            points = find_peaks(cell_logits.float().softmax(dim=1), peaks)
            for p, gt, id_, organ in zip(points, batch["points"], batch["id"], batch["organ"], strict=True):
                out.preds.append(p.detach().cpu().double().numpy())
                out.gts.append(gt.detach().cpu().double().numpy())
                out.ids.append(id_)
                out.organs.append(organ)
    finally:
        model.train(was_training)
    if losses:
        out.loss = float(torch.stack(losses).mean())
    return out


def score(pred: Predictions, radius: float = DISTANCE_CUTOFF) -> dict[str, Any]:
    """OCELOT score of all images: ``{"mF1", "BC": {...}, "TC": {...}}``."""
    return evaluate(pred.preds, pred.gts, radius).to_dict()


def score_by_organ(pred: Predictions, radius: float = DISTANCE_CUTOFF) -> dict[str, dict[str, Any]]:
    """One score per organ (images without an organ in the metadata are left out)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, organ in enumerate(pred.organs):
        if organ is not None:
            groups[organ].append(i)
    return {organ: evaluate([pred.preds[i] for i in idx], [pred.gts[i] for i in idx], radius).to_dict() for organ, idx in sorted(groups.items())}


def _resize_for(model_multiple: int, image_size: int, data_mpp: float | None, ckpt_mpp: float) -> int | None:
    """The tile size that brings the data to the checkpoint's cell MPP, or None (use as is)."""
    if data_mpp is None or abs(data_mpp / ckpt_mpp - 1.0) <= 0.05:
        return None
    size = image_size * data_mpp / ckpt_mpp
    size = max(model_multiple, int(round(size / model_multiple)) * model_multiple)
    return min(size, image_size)


def evaluate_checkpoint(
    ckpt_path: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    split: str,
    device: str = "cpu",
    batch_size: int = 4,
    *,
    workers: int = 0,
) -> dict[str, Any]:
    """Score a checkpoint on one split of an OCELOT-layout dataset, overall and per organ.

    Returns ``{"overall": score_dict, "per_organ": {organ: score_dict}, "num_images": N}``
    with ``score_dict = {"mF1", "BC": {"precision", "recall", "f1"}, "TC": {...}}``;
    ``per_organ`` is empty when the metadata has no ``organ``. Images are used whole (no
    tiles) at the checkpoint's recorded ``cell_mpp`` (resized if the data's ``resized_mpp``
    differs by more than 5 %).

    Raises:
        CheckpointError: the checkpoint cannot be loaded.
        DatasetError: the split is missing or malformed.
    """
    from wsi_ocelot.model import load_model

    dev = torch.device(device)
    model, info = load_model(ckpt_path, dev)
    probe = OcelotDataset(data_root, split)
    mpp = probe.mpp()
    multiple = int(getattr(getattr(model, "cell", None), "input_multiple", 32))
    tile = _resize_for(multiple, probe.image_size, mpp[0] if mpp else None, info.geometry.cell_mpp)
    ds = OcelotDataset(data_root, split, tile_size=tile, tile_mode="resize") if tile else probe
    if tile:
        log.info("resizing %s images from %d to %d px to match the checkpoint's cell MPP %.3f", split, ds.image_size, tile, info.geometry.cell_mpp)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate, pin_memory=dev.type == "cuda")
    pred = predict(model, loader, dev, info.peaks)
    radius = DISTANCE_CUTOFF * ds.scale
    result = {"overall": score(pred, radius), "per_organ": score_by_organ(pred, radius), "num_images": len(pred.preds)}
    log.info("%s on %s/%s: mF1 %.4f over %d images", os.fspath(ckpt_path), os.fspath(data_root), split, result["overall"]["mF1"], result["num_images"])
    return result
