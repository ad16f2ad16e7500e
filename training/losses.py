"""Losses: cell cross-entropy (+ optional soft Dice) on disk targets, tissue CE ignoring 255.

Both cross-entropies are means over the *labelled* pixels, computed as sum / max(count, 1)
so that a batch whose tissue mask is entirely unknown (255) contributes 0, never NaN
(``F.cross_entropy(..., reduction="mean")`` divides by zero there). The cell target is
:data:`~training.targets.CELL_IGNORE` outside a pair's cell mask (partial labels): those pixels
count in neither the cross-entropy nor the soft Dice, so what the model predicts there does
not change the loss at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from training.targets import CELL_IGNORE, TISSUE_IGNORE, tissue_target
from wsi_ocelot.errors import ConfigError


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms. ``cell_class_weights``: CE weights for (none, BC, TC)."""

    dice_weight: float = 0.0
    tissue_weight: float = 1.0
    cell_class_weights: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.dice_weight < 0 or self.tissue_weight < 0:
            raise ConfigError(
                None,
                f"loss weights must be >= 0, got dice_weight {self.dice_weight}, tissue_weight {self.tissue_weight}",
                "use e.g. dice_weight: 0.0, tissue_weight: 1.0",
            )
        if self.cell_class_weights is not None:
            w = tuple(float(v) for v in self.cell_class_weights)
            if len(w) != 3 or any(v < 0 for v in w) or not any(v > 0 for v in w):
                raise ConfigError(
                    None,
                    f"loss.cell_class_weights must be 3 non-negative numbers (none, BC, TC), got {self.cell_class_weights}",
                    "use e.g. [1.0, 1.0, 1.0] or null",
                )
            object.__setattr__(self, "cell_class_weights", w)


def masked_ce(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = TISSUE_IGNORE,
    weight: Tensor | None = None,
) -> Tensor:
    """Mean CE over pixels whose target is not ``ignore_index``; 0 (with grad) when there are none.

    ``logits`` ``(B, C, H, W)``; ``target`` long ``(B, H, W)``. With class weights the mean
    is weighted (as in ``F.cross_entropy``).
    """
    logits = logits.float()
    loss = F.cross_entropy(
        logits, target, weight=weight, ignore_index=ignore_index, reduction="sum"
    )
    valid = target != ignore_index
    if weight is not None:
        denom = weight.to(logits.device)[target.clamp(0, logits.shape[1] - 1)][valid].sum()
    else:
        denom = valid.sum().to(logits.dtype)
    return loss / denom.clamp_min(1.0)


def soft_dice(
    logits: Tensor,
    target: Tensor,
    classes: tuple[int, ...] = (1, 2),
    eps: float = 1.0,
    *,
    ignore_index: int = CELL_IGNORE,
) -> Tensor:
    """1 − mean soft Dice over ``classes`` (softmax probabilities), summed over the batch;
    pixels whose target is ``ignore_index`` are left out."""
    probs = logits.float().softmax(dim=1)
    valid = target != ignore_index
    losses = []
    for c in classes:
        p = probs[:, c].masked_fill(~valid, 0.0)
        t = (target == c).to(p.dtype)
        inter = (p * t).sum()
        losses.append(1.0 - (2.0 * inter + eps) / (p.sum() + t.sum() + eps))
    return torch.stack(losses).mean()


def cell_loss(logits: Tensor, target: Tensor, cfg: LossConfig) -> Tensor:
    """Cell branch loss on disk targets ``(B, H, W)`` with values 0 / 1 / 2, or
    :data:`~training.targets.CELL_IGNORE` where the labels are unknown (ignored)."""
    weight = (
        None
        if cfg.cell_class_weights is None
        else torch.tensor(cfg.cell_class_weights, dtype=torch.float32, device=logits.device)
    )
    loss = masked_ce(logits, target, ignore_index=CELL_IGNORE, weight=weight)
    if cfg.dice_weight > 0:
        loss = loss + cfg.dice_weight * soft_dice(logits, target)
    return loss


def tissue_loss(logits: Tensor, label: Tensor) -> Tensor:
    """Tissue CE. ``label`` is the OCELOT map (1 = BG, 2 = CA, 255 = unknown), ``(B, Ht, Wt)``.

    Logits of another size are resized (bilinear) to the label's size first.
    """
    if logits.shape[-2:] != label.shape[-2:]:
        logits = F.interpolate(
            logits.float(), size=label.shape[-2:], mode="bilinear", align_corners=False
        )
    return masked_ce(logits, tissue_target(label), ignore_index=TISSUE_IGNORE)


def total_loss(
    outputs: dict[str, Tensor | None], batch: dict[str, Tensor], cfg: LossConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """``cell + tissue_weight · tissue`` (the tissue term only when the model returns tissue logits).

    Returns the loss and its parts as detached tensors (no device sync; log them lazily).
    """
    cell_logits = outputs["cell_logits"]
    if cell_logits is None:
        raise RuntimeError("the model returned no cell logits")
    lc = cell_loss(cell_logits, batch["cell_target"], cfg)
    parts = {"cell_loss": lc.detach()}
    loss = lc
    tissue_logits = outputs.get("tissue_logits")
    if tissue_logits is not None and cfg.tissue_weight > 0:
        lt = tissue_loss(tissue_logits, batch["tissue_label"])
        parts["tissue_loss"] = lt.detach()
        loss = loss + cfg.tissue_weight * lt
    parts["loss"] = loss.detach()
    return loss, parts
