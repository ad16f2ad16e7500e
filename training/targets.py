"""Segmentation targets: cell points → disks, tissue label → loss target.

Cell detection is trained as segmentation (paper §5.1): a disk of fixed radius is drawn
around every annotated point and filled with its class (1 = BC, 2 = TC); 0 = no cell.
Where disks overlap, each pixel takes the class of the *nearest* centre (ties: any one of
them), so touching cells stay separated instead of the later one overwriting the earlier.

Partial labels (a pair with a ``cell_mask``: cells marked only inside annotated regions):
outside the mask the target is :data:`CELL_IGNORE`, like the tissue branch's 255, so the loss
counts those pixels neither as a cell nor as "no cell" (:func:`mask_cell_target`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

#: Tissue loss target values: 0 = BG (OCELOT 1), 1 = CA (OCELOT 2), 255 = ignored.
TISSUE_IGNORE = 255
#: Cell target value of pixels whose label is unknown (outside a pair's ``cell_mask``); the
#: cell loss ignores it (``F.cross_entropy``'s default ``ignore_index``).
CELL_IGNORE = -100


def disk_targets(points: Tensor | np.ndarray, height: int, width: int, radius: float) -> Tensor:
    """Disk segmentation target of shape ``(height, width)``, dtype long.

    ``points``: ``(N, 3)`` = (x, y, class), cell-patch pixels, x = column, y = row; centres
    are rounded to the nearest pixel and points outside the image are ignored. A pixel
    gets the class of its nearest centre when that centre is within ``radius`` px
    (Euclidean, inclusive), else 0.
    """
    if radius <= 0:
        raise ValueError(f"disk radius must be > 0 px, got {radius}")
    pts = points.detach().cpu().numpy() if isinstance(points, Tensor) else np.asarray(points)
    target = np.zeros((height, width), dtype=np.int64)
    if pts.size == 0:
        return torch.from_numpy(target)
    xs = np.rint(pts[:, 0]).astype(np.int64)
    ys = np.rint(pts[:, 1]).astype(np.int64)
    cls = pts[:, 2].astype(np.int64)
    inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    if not inside.any():
        return torch.from_numpy(target)
    seeds = np.zeros((height, width), dtype=np.int64)
    # later points win a shared pixel; two annotations on one pixel are a labelling error anyway
    seeds[ys[inside], xs[inside]] = cls[inside]
    dist, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    target = np.where(dist <= radius, seeds[iy, ix], 0)
    return torch.from_numpy(target.astype(np.int64))


def tissue_target(label: Tensor) -> Tensor:
    """OCELOT tissue label (1 = BG, 2 = CA, 255 = unknown) → long target 0 / 1 / 255.

    Any other value becomes 255 (ignored) — the dataset rejects such files earlier.
    """
    label = label.long()
    out = torch.full_like(label, TISSUE_IGNORE)
    out[label == 1] = 0
    out[label == 2] = 1
    return out


def mask_cell_target(target: Tensor, mask: Tensor | None) -> Tensor:
    """The disk target with :data:`CELL_IGNORE` wherever ``mask`` (bool, same shape) is False;
    ``target`` itself when there is no mask (labelled everywhere)."""
    if mask is None:
        return target
    if mask.shape != target.shape:
        raise ValueError(
            f"cell mask {tuple(mask.shape)} and cell target {tuple(target.shape)} differ in shape"
        )
    return target.masked_fill(~mask.bool(), CELL_IGNORE)
