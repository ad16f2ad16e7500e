"""Cell probability map → cell points, on the model's device.

Follows the OCELOT challenge's reference post-processing (docs/formats.md §1):
foreground = 1 − P(no cell), optionally Gaussian-blurred (σ = 3 px); local maxima at least
``min_distance`` px apart (Chebyshev) with foreground > ``threshold``; a peak is dropped
where P(no cell) ≥ the larger cell-class probability; class = argmax(BC, TC) (1 or 2),
confidence = that probability. Equal maxima closer than ``min_distance`` (plateaus) keep
only the first in raster order, as ``skimage.feature.peak_local_max`` does.

Everything runs batched on the device: the blur as fused multiply-adds of shifted views,
the window maximum separably by doubling, the plateau check and the greedy tie resolution
sparse over the candidates (sorted keys). The host sees one flag (any plateau?, then one
per greedy round where there are plateaus) and the per-image split of the final (N, 4)
point tensors. Given a tile's core, only the core and a small halo are computed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from wsi_ocelot.config import PeakConfig

__all__ = ["PeakConfig", "find_peaks", "gaussian_blur"]


def gaussian_blur(x: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Separable Gaussian blur of (B, H, W) with reflect-101 borders (OpenCV's default).

    Kernel radius ``ceil(truncate * sigma)``, clipped so the reflection fits the image.
    Computed as fused multiply-adds of shifted views (no cuDNN convolution, which may run in
    TF32), so CPU and GPU agree to float32 rounding and peaks do not depend on the device.
    """
    weights = _gauss_weights(sigma, truncate, x.shape[-2], x.shape[-1])
    if weights is None:
        return x
    return _blur_region(x, weights, (0, 0, x.shape[-1], x.shape[-2]))


def _gauss_weights(sigma: float, truncate: float, h: int, w: int) -> list[float] | None:
    """Normalised 1-D Gaussian taps as host floats, or None when there is nothing to blur."""
    if sigma <= 0:
        return None
    radius = max(1, math.ceil(truncate * sigma))
    radius = min(radius, h - 1, w - 1)
    if radius < 1:
        return None
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).tolist()  # host scalars: no device transfer


def _fma_pass(p: Tensor, dim: int, n: int, weights: list[float]) -> Tensor:
    """Sum of ``weights[i] * p.narrow(dim, i, n)``, accumulated in place (one fused
    multiply-add per tap, no temporaries)."""
    acc = p.narrow(dim, 0, n) * weights[0]
    for i in range(1, len(weights)):
        acc.add_(p.narrow(dim, i, n), alpha=weights[i])
    return acc


def _blur_region(
    x: Tensor, weights: list[float], region: tuple[int, int, int, int], *, one_minus: bool = False
) -> Tensor:
    """The blur of the whole (B, H, W) image (reflect-101 at the image borders), evaluated
    on ``region`` = (x0, y0, x1, y1) only; of ``1 − x`` when ``one_minus`` (taken over the
    pixels read only). Each region side must lie on the image border or at least the kernel
    radius inside it (see :func:`_snap`), so the result equals the full-image blur there
    exactly."""
    r = (len(weights) - 1) // 2
    h, w = x.shape[-2:]
    x0, y0, x1, y1 = region
    sx0, sx1 = (x0 - r if x0 > 0 else 0), (x1 + r if x1 < w else w)
    sy0, sy1 = (y0 - r if y0 > 0 else 0), (y1 + r if y1 < h else h)
    src = x[:, sy0:sy1, sx0:sx1].unsqueeze(1)
    if one_minus:
        src = 1.0 - src
    pad_x = (r if x0 == 0 else 0, r if x1 == w else 0)
    if any(pad_x):
        src = F.pad(src, (*pad_x, 0, 0), mode="reflect")
    y = _fma_pass(src, 3, x1 - x0, weights)
    pad_y = (r if y0 == 0 else 0, r if y1 == h else 0)
    if any(pad_y):
        y = F.pad(y, (0, 0, *pad_y), mode="reflect")
    return _fma_pass(y, 2, y1 - y0, weights).squeeze(1)


def _snap(lo: int, hi: int, n: int, r: int) -> tuple[int, int]:
    """Clamp ``[lo, hi)`` to ``[0, n)``, moving a side onto the border when it would lie
    closer to it than ``r`` px."""
    lo = 0 if lo < r else min(lo, n - 1)
    hi = n if hi > n - r else max(hi, lo + 1)
    return lo, hi


def _running_max(p: Tensor, dim: int, k: int) -> Tensor:
    """Sliding maximum of width ``k`` along ``dim`` (output length ``len - k + 1``), by
    doubling: about log2(k) + 1 elementwise maxima instead of k − 1."""
    cur, width = p, 1
    while 2 * width <= k:
        n = cur.shape[dim] - width
        cur = torch.maximum(cur.narrow(dim, 0, n), cur.narrow(dim, width, n))
        width *= 2
    if width < k:
        s = k - width
        n = cur.shape[dim] - s
        cur = torch.maximum(cur.narrow(dim, 0, n), cur.narrow(dim, s, n))
    return cur


def _max_window(x: Tensor, d: int) -> Tensor:
    """Max over the (2d+1)² window, borders ignored (as ``mode='nearest'``). (B, H, W) → (B, H, W).
    Exactly ``max_pool2d(kernel 2d+1, stride 1, padding d)``, computed separably."""
    p = F.pad(x.unsqueeze(1), (d, d, d, d), value=-math.inf).squeeze(1)
    return _running_max(_running_max(p, 2, 2 * d + 1), 1, 2 * d + 1)


def _resolve_ties_sparse(bi: Tensor, yi: Tensor, xi: Tensor, h: int, w: int, d: int) -> Tensor:
    """Keep a subset of candidates (image, row, column; raster order) no two of which are
    within ``d`` px (Chebyshev): equal maxima in each other's window (a plateau) keep the
    first in raster order, greedily, as in skimage.

    Parallel greedy rounds: a candidate is kept when no still-undecided earlier candidate
    lies in its window, and then suppresses the undecided ones in its window; repeat. This
    gives exactly the sequential greedy result. Runs over a neighbour table (M, (2d+1)²)
    built with sorted-key range searches. Returns (M,) bool."""
    m = len(bi)
    dev = bi.device
    k = 2 * d + 1
    key = (bi * h + yi) * w + xi
    lo_x = (xi - d).clamp(min=0)
    hi_x = (xi + d).clamp(max=w - 1)
    step = torch.arange(k, device=dev)
    cols = []
    for dy in range(-d, d + 1):
        base = (bi * h + yi + dy) * w
        lo = torch.searchsorted(key, base + lo_x)
        hi = torch.searchsorted(key, base + hi_x, right=True)
        idx = lo[:, None] + step[None, :]
        ok = (idx < hi[:, None]) & ((yi + dy >= 0) & (yi + dy < h))[:, None]
        cols.append(torch.where(ok, idx, -1))
    nb = torch.cat(cols, dim=1)  # (M, k²) neighbour indices (self included), -1 = none
    me = torch.arange(m, device=dev)[:, None]
    valid = (nb >= 0) & (nb != me)
    earlier = valid & (nb < me)
    nb = nb.clamp(min=0)
    kept = torch.zeros(m, dtype=torch.bool, device=dev)
    undecided = torch.ones(m, dtype=torch.bool, device=dev)
    while True:
        new = undecided & ~(undecided[nb] & earlier).any(dim=1)
        kept |= new
        undecided &= ~new & ~(new[nb] & valid).any(dim=1)
        if not bool(undecided.any()):
            return kept


def _conflicted(bi: Tensor, yi: Tensor, xi: Tensor, h: int, w: int, d: int) -> Tensor:
    """For candidates in raster order (image, row, column), whether another candidate of the
    same image lies within ``d`` px (Chebyshev): a plateau that needs tie resolution.
    Sparse: a sorted-key range count per window row (searchsorted), no dense map."""
    key = (bi * h + yi) * w + xi  # ascending: nonzero() yields raster order
    lo_x = (xi - d).clamp_(min=0)
    hi_x = (xi + d).clamp_(max=w - 1)
    count = torch.zeros_like(key)
    for dy in range(-d, d + 1):
        yy = yi + dy
        base = (bi * h + yy) * w
        n = torch.searchsorted(key, base + hi_x, right=True) - torch.searchsorted(key, base + lo_x)
        count += torch.where((yy >= 0) & (yy < h), n, 0)
    return count > 1  # the candidate itself counts once


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


def _candidates(
    bg: Tensor,
    weights: list[float] | None,
    region: tuple[int, int, int, int],
    d: int,
    threshold: float,
) -> Tensor:
    """(B, h, w) bool over ``region``: foreground (1 − bg, blurred) equal to its window
    maximum and above ``threshold``."""
    x0, y0, x1, y1 = region
    if weights is None:
        fg = 1.0 - bg[:, y0:y1, x0:x1]
    else:
        fg = _blur_region(bg, weights, region, one_minus=True)
    return (fg == _max_window(fg, d)) & (fg > threshold)


def find_peaks(
    cell_probs: Tensor,
    cfg: PeakConfig | None = None,
    core: tuple[float, float, float, float] | None = None,
    *,
    per_image: bool | None = None,
) -> list[Tensor]:
    """Cell points from softmax cell probabilities.

    Parameters
    ----------
    cell_probs
        (B, C >= 3, H, W) probabilities; channel 0 = no cell, 1 = BC, 2 = TC.
    cfg
        peak parameters (defaults: the OCELOT reference).
    core
        optional ``(x0, y0, x1, y1)`` in prob-map px; keep only peaks with
        ``x0 <= x < x1`` and ``y0 <= y < y1`` (a tile's own core, so that cores tile
        the slide without double counting). Only the core and a halo of
        ``blur radius + 4 * min_distance`` px around it are then computed (the blur,
        the window maxima and the candidates there are exactly those of the whole
        map); the one approximation is a chain of three or more exactly equal maxima
        (a plateau) running from outside the halo into the core.
    per_image
        compute the maps one image at a time on one thread (the CPU's way) or the
        whole batch at once (the device's way); None chooses by device. Same results.

    Returns
    -------
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
    d = cfg.min_distance
    weights = _gauss_weights(cfg.sigma, cfg.truncate, h, w)
    r = 0 if weights is None else (len(weights) - 1) // 2

    # the region computed: the whole map, or the core with its halo
    if core is None:
        rx0, ry0, rx1, ry1 = 0, 0, w, h
    else:
        halo = r + 4 * d
        rx0, rx1 = _snap(math.floor(core[0]) - halo, math.ceil(core[2]) + halo, w, r)
        ry0, ry1 = _snap(math.floor(core[1]) - halo, math.ceil(core[3]) + halo, h, r)
    region = (rx0, ry0, rx1, ry1)
    if per_image if per_image is not None else probs.device.type == "cpu":
        # one image at a time, so its maps stay in the CPU caches (2-3x faster), on one
        # thread: cache-sized elementwise ops gain little from more, and on a busy machine
        # each parallel region can stall on a descheduled thread (measured: a 4 MB copy
        # 0.2 ms on one thread, 8 ms on two of a loaded 2-core machine)
        with _one_thread():
            cand = torch.cat(
                [
                    _candidates(probs[i : i + 1, 0], weights, region, d, cfg.threshold)
                    for i in range(b)
                ]
            )
    else:
        cand = _candidates(probs[:, 0], weights, region, d, cfg.threshold)
    rh, rw = cand.shape[-2:]
    bi, yi, xi = cand.nonzero(as_tuple=True)
    if len(bi) > 1:
        conf = _conflicted(bi, yi, xi, rh, rw, d)
        if bool(conf.any()):  # plateaus: resolve them greedily, on the conflicting candidates only
            won = _resolve_ties_sparse(bi[conf], yi[conf], xi[conf], rh, rw, d)
            keep = ~conf
            keep[conf] = won
            bi, yi, xi = bi[keep], yi[keep], xi[keep]
    yi, xi = yi + ry0, xi + rx0  # map px
    if core is not None:
        x0, y0, x1, y1 = core
        inside = (xi >= x0) & (xi < x1) & (yi >= y0) & (yi < y1)
        bi, yi, xi = bi[inside], yi[inside], xi[inside]
    bg = probs[bi, 0, yi, xi]
    p_bc, p_tc = probs[bi, 1, yi, xi], probs[bi, 2, yi, xi]
    cls_prob = torch.maximum(p_bc, p_tc)
    cls = torch.where(p_tc > p_bc, 2.0, 1.0)  # ties → BC, like numpy argmax
    if cfg.drop_background:
        keep = bg < cls_prob
        bi, yi, xi, cls, cls_prob = bi[keep], yi[keep], xi[keep], cls[keep], cls_prob[keep]

    pts = torch.stack([xi.float(), yi.float(), cls.float(), cls_prob.float()], dim=1)
    counts = torch.bincount(bi, minlength=b).tolist()
    return list(torch.split(pts, counts, dim=0))
