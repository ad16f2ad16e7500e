"""How far a runtime's outputs are from fp32 torch's: cells (F1 of one point set against the
other, same class, within a few pixels) and the tissue map (differences on the 0-255 scale the
map is stored in, and agreement on the cancer-area side of 128)."""

from __future__ import annotations

import numpy as np

from wsi_ocelot.constants import CANCER_AREA_UINT8
from wsi_ocelot.metrics.matching import greedy_match

__all__ = ["cells_agreement", "tissue_agreement"]


def cells_agreement(
    reference: np.ndarray, other: np.ndarray, radius: float
) -> dict[str, float | int]:
    """F1 of ``other``'s cells against ``reference``'s: (N, ≥3) arrays of x, y, class[, prob],
    matched per class within ``radius`` (same pixel frame). 1.0 when both are empty."""
    tp = fp = fn = 0
    for cls in np.union1d(reference[:, 2], other[:, 2]) if len(reference) or len(other) else []:
        r, o = reference[reference[:, 2] == cls], other[other[:, 2] == cls]
        prob = o[:, 3] if o.shape[1] > 3 else np.ones(len(o))
        m = greedy_match(o[:, :2], prob, r[:, :2], radius)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    f1 = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return {
        "cells_f1": round(f1, 5),
        "cells_reference": int(len(reference)),
        "cells_other": int(len(other)),
    }


def tissue_agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Two cancer-area probability maps (any shape, [0, 1] floats or 0-255 uint8) on the
    stored 0-255 scale: max and mean absolute difference, and the share of pixels on the same
    side of the cancer-area threshold (128)."""

    def u8(a: np.ndarray) -> np.ndarray:
        return (
            a.astype(np.int16)
            if a.dtype == np.uint8
            else np.rint(np.clip(a, 0, 1) * 255).astype(np.int16)
        )

    a, b = u8(reference), u8(other)
    if a.size == 0:
        return {"tissue_max_abs": 0.0, "tissue_mean_abs": 0.0, "ca_agreement": 1.0}
    d = np.abs(a - b)
    return {
        "tissue_max_abs": float(d.max()),
        "tissue_mean_abs": round(float(d.mean()), 4),
        "ca_agreement": round(
            float(((a >= CANCER_AREA_UINT8) == (b >= CANCER_AREA_UINT8)).mean()), 6
        ),
    }
