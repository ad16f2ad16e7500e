"""Cell probability map → cell points, on the model's device.

Follows the OCELOT challenge's reference post-processing (FORMATS.md §2):
foreground = 1 − P(no cell), optionally Gaussian-blurred (σ = 3 px); local maxima at least
``min_distance`` px apart (Chebyshev) with foreground > ``threshold``; a peak is dropped
where P(no cell) ≥ the larger cell-class probability; class = argmax(BC, TC) (1 or 2),
confidence = that probability. Equal maxima closer than ``min_distance`` (plateaus) keep
only the first in raster order, as ``skimage.feature.peak_local_max`` does.

Everything runs batched with max-pool non-maximum suppression; the only host transfer is
the per-image split of the final (N, 4) point tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from wsi_ocelot.errors import ConfigError

__all__ = ["PeakConfig", "find_peaks", "gaussian_blur"]

_MAX_TIE_ROUNDS = (
    64  # plateau resolution rounds; one round resolves every plateau shorter than the window
)


@dataclass(frozen=True)
class PeakConfig:
    """Peak detection parameters, in probability-map pixels (the cell tile's pixels).

    Attributes:
        min_distance: peaks closer than this (Chebyshev, px) are merged; the NMS window is
            ``2 * min_distance + 1``. Reference: 3.
        threshold: keep maxima whose (blurred) foreground is strictly above this. Reference: 0.
        sigma: Gaussian blur of the foreground before peak finding, px; 0 = no blur. Reference: 3.
        truncate: the blur kernel's radius in sigmas (OpenCV's default kernel: 4).
        drop_background: drop peaks where P(no cell) >= the larger cell-class probability.
    """

    min_distance: int = 3
    threshold: float = 0.0
    sigma: float = 3.0
    truncate: float = 4.0
    drop_background: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.min_distance, int) or self.min_distance < 1:
            raise ConfigError(
                None,
                f"peaks.min_distance must be an integer >= 1, got {self.min_distance!r}",
                "use 3 (px, OCELOT reference)",
            )
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(
                None,
                f"peaks.threshold must be in [0, 1), got {self.threshold}",
                "use 0.0 (OCELOT reference) or a small probability",
            )
        if self.sigma < 0 or self.truncate <= 0:
            raise ConfigError(
                None,
                f"peaks.sigma must be >= 0 and truncate > 0, got {self.sigma}, {self.truncate}",
                "use sigma 3.0 (0 disables the blur) and truncate 4.0",
            )


def gaussian_blur(x: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Separable Gaussian blur of (B, H, W) with reflect-101 borders (OpenCV's default).

    Kernel radius ``ceil(truncate * sigma)``, clipped so the reflection fits the image.
    Computed as a weighted sum of shifted views (not a cuDNN convolution, which may run in
    TF32), so the result is bit-identical on CPU and GPU and peaks do not depend on the device.
    """
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(truncate * sigma))
    radius = min(radius, x.shape[-2] - 1, x.shape[-1] - 1)
    if radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    weights = (k / k.sum()).tolist()  # host scalars: no device transfer
    y = x.unsqueeze(1)
    for dim, pad in ((3, (radius, radius, 0, 0)), (2, (0, 0, radius, radius))):
        padded = F.pad(y, pad, mode="reflect")
        n = y.shape[dim]
        acc = padded.narrow(dim, 0, n) * weights[0]
        for i in range(1, 2 * radius + 1):
            acc = acc + padded.narrow(dim, i, n) * weights[i]
        y = acc
    return y.squeeze(1)


def _max_window(x: Tensor, d: int) -> Tensor:
    """Max over the (2d+1)² window, borders ignored (as ``mode='nearest'``). (B, H, W) → (B, H, W)."""
    return F.max_pool2d(x.unsqueeze(1), kernel_size=2 * d + 1, stride=1, padding=d).squeeze(1)


def _resolve_ties(cand: Tensor, d: int) -> Tensor:
    """Keep a subset of candidates no two of which are within ``d`` px (Chebyshev).

    Candidates within each other's window are equal maxima (a plateau); the one first in
    raster order wins, greedily, as in skimage. Parallel greedy: a candidate is kept when it
    has the highest priority among the still-undecided candidates in its window; its window
    is then suppressed; repeat. This gives exactly the sequential greedy result.

    Args:
        cand: (B, H, W) bool.

    Returns:
        (B, H, W) bool.
    """
    b, h, w = cand.shape
    # priority: earlier raster index = higher. float64 is exact for any realistic tile size.
    prio = (
        -torch.arange(h * w, device=cand.device, dtype=torch.float64).view(1, h, w).expand(b, h, w)
    )
    neg_inf = torch.tensor(-math.inf, device=cand.device, dtype=torch.float64)
    kept = torch.zeros_like(cand)
    undecided = cand.clone()
    for _ in range(_MAX_TIE_ROUNDS):
        p = torch.where(undecided, prio, neg_inf)
        new = undecided & (p == _max_window(p, d))
        kept |= new
        blocked = _max_window(new.to(torch.float32), d) > 0
        undecided &= ~blocked
        if not bool(undecided.any()):
            break
    return kept


def find_peaks(
    cell_probs: Tensor,
    cfg: PeakConfig | None = None,
    core: tuple[float, float, float, float] | None = None,
) -> list[Tensor]:
    """Cell points from softmax cell probabilities.

    Args:
        cell_probs: (B, C >= 3, H, W) probabilities; channel 0 = no cell, 1 = BC, 2 = TC.
        cfg: peak parameters (defaults: the OCELOT reference).
        core: optional ``(x0, y0, x1, y1)`` in prob-map px; keep only peaks with
            ``x0 <= x < x1`` and ``y0 <= y < y1`` (a tile's own core, so that cores tile
            the slide without double counting).

    Returns:
        One float32 tensor (N_i, 4) per image, on the input's device, rows
        ``(x, y, class, probability)``: x = column, y = row in prob-map px, class 1 (BC) or
        2 (TC), in raster order.
    """
    cfg = cfg or PeakConfig()
    if cell_probs.ndim != 4 or cell_probs.shape[1] < 3:
        raise ValueError(
            f"cell_probs must be (B, C>=3, H, W) softmax probabilities, got shape {tuple(cell_probs.shape)}"
        )
    probs = cell_probs if cell_probs.dtype == torch.float64 else cell_probs.float()
    b, _, h, w = probs.shape
    bg = probs[:, 0]
    cls_prob, cls_idx = probs[:, 1:3].max(dim=1)  # ties → BC, like numpy argmax
    fg = gaussian_blur(1.0 - bg, cfg.sigma, cfg.truncate)

    d = cfg.min_distance
    cand = (fg == _max_window(fg, d)) & (fg > cfg.threshold)
    peaks = _resolve_ties(cand, d)
    if cfg.drop_background:
        peaks &= bg < cls_prob
    if core is not None:
        x0, y0, x1, y1 = core
        xs = torch.arange(w, device=probs.device)
        ys = torch.arange(h, device=probs.device)
        inside = ((ys >= y0) & (ys < y1)).view(1, h, 1) & ((xs >= x0) & (xs < x1)).view(1, 1, w)
        peaks &= inside

    bi, yi, xi = peaks.nonzero(as_tuple=True)
    pts = torch.stack(
        [xi.float(), yi.float(), (cls_idx[bi, yi, xi] + 1).float(), cls_prob[bi, yi, xi].float()],
        dim=1,
    )
    counts = torch.bincount(bi, minlength=b).tolist()
    return list(torch.split(pts, counts, dim=0))
