"""Pixel-exact alignment between a cell patch and its tissue (context) patch.

Both patches are square fields of view; the tissue patch covers the normalised box
[0, 1]² (pixel *edges*, x = column, y = row) and the cell patch the box of side
``1 / context_factor`` centred on ``offset = (cx, cy)`` (OCELOT: 0.125 or 0.625 per axis;
the slide engine: 0.5). Sampling uses ``grid_sample(align_corners=False)``: output pixel
``j`` of ``n`` reads the tissue map at ``x = cx - 1/(2f) + (j + 0.5) / (n f)``, so the crop
is exact to a fraction of a pixel for any offset, per sample, batched. Outside the tissue
patch the map is zero-padded (or border-replicated).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["crop_tissue", "place_in_tissue", "resize_map", "tissue_label_onehot"]


def _as_size(size: int | tuple[int, int] | torch.Size) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def _grid_dtype(device: torch.device) -> torch.dtype:
    """float64 sampling grids, so pixel centres are hit exactly (MPS has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _check_offset(offset: Tensor, batch: int) -> None:
    if offset.ndim != 2 or offset.shape != (batch, 2):
        raise ValueError(
            f"offset must have shape ({batch}, 2) holding (x, y) per sample, got {tuple(offset.shape)}"
        )


def crop_tissue(
    probs: Tensor,
    offset: Tensor,
    context_factor: float,
    out_size: int | tuple[int, int] | torch.Size | None = None,
    *,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> Tensor:
    """Crop the cell patch's region out of a tissue map and resize it.

    Parameters
    ----------
    probs
        (B, C, Ht, Wt) tissue probabilities (or any feature map) over the tissue patch.
    offset
        (B, 2) the cell patch centre (x, y) relative to the tissue patch, in [0, 1].
    context_factor
        the tissue patch's field of view / the cell patch's (OCELOT: 4).
    out_size
        (h, w) or an int for the output; ``None`` = the region's native size in
        tissue-map pixels, ``round(Ht / f) × round(Wt / f)`` (no resampling loss).
    mode
        ``"bilinear"`` (probabilities, features) or ``"nearest"`` (labels).
    padding_mode
        ``"zeros"`` or ``"border"`` for the part of the region outside the map.

    Returns
    -------
        (B, C, h, w) the region, aligned to the cell patch's pixels.
    """
    if probs.ndim != 4:
        raise ValueError(f"probs must be (B, C, H, W), got shape {tuple(probs.shape)}")
    b, _, ht, wt = probs.shape
    _check_offset(offset, b)
    f = float(context_factor)
    size = (
        (max(1, round(ht / f)), max(1, round(wt / f))) if out_size is None else _as_size(out_size)
    )
    gdt = _grid_dtype(probs.device)
    off = offset.to(device=probs.device, dtype=gdt)
    theta = torch.zeros(b, 2, 3, device=probs.device, dtype=gdt)
    theta[:, 0, 0] = 1.0 / f
    theta[:, 1, 1] = 1.0 / f
    theta[:, :, 2] = 2.0 * off - 1.0
    grid = F.affine_grid(theta, [b, 1, size[0], size[1]], align_corners=False)
    src = probs if probs.dtype in (torch.float32, torch.float64) else probs.float()
    out = F.grid_sample(
        src, grid.to(src.dtype), mode=mode, padding_mode=padding_mode, align_corners=False
    )
    return out.to(probs.dtype)


def place_in_tissue(
    cell_map: Tensor,
    offset: Tensor,
    context_factor: float,
    tissue_size: tuple[int, int] | torch.Size,
) -> Tensor:
    """Downsample a cell-patch map and zero-pad it into the cell region of a tissue-sized map.

    The inverse of :func:`crop_tissue` (paper Fig. 5b): the cell map is area-averaged to the
    region's native size in tissue-map pixels, then placed with sub-pixel accuracy.

    Parameters
    ----------
    cell_map
        (B, C, h, w) a map over the cell patch.
    offset
        (B, 2) cell patch centre (x, y) relative to the tissue patch.
    context_factor
        tissue field of view / cell field of view.
    tissue_size
        (Ht, Wt) of the output.

    Returns
    -------
        (B, C, Ht, Wt), zero outside the cell region.
    """
    if cell_map.ndim != 4:
        raise ValueError(f"cell_map must be (B, C, H, W), got shape {tuple(cell_map.shape)}")
    b = cell_map.shape[0]
    _check_offset(offset, b)
    ht, wt = _as_size(tissue_size)
    f = float(context_factor)
    region = (max(1, round(ht / f)), max(1, round(wt / f)))
    small = (
        F.adaptive_avg_pool2d(cell_map, region)
        if tuple(cell_map.shape[-2:]) != region
        else cell_map
    )
    gdt = _grid_dtype(cell_map.device)
    off = offset.to(device=cell_map.device, dtype=gdt)
    theta = torch.zeros(b, 2, 3, device=cell_map.device, dtype=gdt)
    theta[:, 0, 0] = f
    theta[:, 1, 1] = f
    theta[:, :, 2] = f * (1.0 - 2.0 * off)
    grid = F.affine_grid(theta, [b, 1, ht, wt], align_corners=False)
    src = small if small.dtype in (torch.float32, torch.float64) else small.float()
    out = F.grid_sample(
        src, grid.to(src.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.to(cell_map.dtype)


def resize_map(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Resize (B, C, h, w) to (B, C, *size): bilinear, anti-aliased when shrinking."""
    size = _as_size(size)
    if tuple(x.shape[-2:]) == size:
        return x
    src = x if x.dtype in (torch.float32, torch.float64) else x.float()
    out = F.interpolate(src, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.to(x.dtype)


def tissue_label_onehot(label: Tensor, classes: int) -> Tensor:
    """OCELOT tissue labels (B, H, W) (1 = BG, 2 = CA, ..., 255 = unknown) → (B, classes, H, W) float.

    Label ``k`` in ``1..classes`` becomes channel ``k - 1``; anything else (unknown) is all zeros.
    """
    if label.ndim != 3:
        raise ValueError(f"tissue_label must be (B, H, W), got shape {tuple(label.shape)}")
    ids = torch.arange(1, classes + 1, device=label.device, dtype=label.dtype).view(
        1, classes, 1, 1
    )
    return (label.unsqueeze(1) == ids).float()
