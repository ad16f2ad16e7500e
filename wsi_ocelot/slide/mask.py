"""Tissue (foreground) mask on a thumbnail.

Otsu threshold on HSV saturation (tissue is stained, glass is not), with guards for the
usual artefacts: near-white glass, black scan borders and dark debris (value too low),
and pen marks (strongly saturated hues outside the H&E pink/purple range). Morphological
closing and opening, then small components and holes removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict, Unpack

import numpy as np
from scipy import ndimage as ndi

if TYPE_CHECKING:
    from wsi_ocelot.slide._slide import Slide

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TissueMask:
    """Boolean mask ``(H, W)``; pixel ``(r, c)`` covers level-0 px
    ``[c * downsample, (c + 1) * downsample) × [r * downsample, (r + 1) * downsample)``."""

    mask: np.ndarray
    downsample: float

    @property
    def fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def fraction_in(self, box: tuple[float, float, float, float]) -> float:
        """Tissue fraction inside the level-0 box ``(x, y, w, h)`` (0 outside the slide)."""
        x, y, w, h = box
        d = self.downsample
        c0, r0 = int(np.floor(x / d)), int(np.floor(y / d))
        c1, r1 = int(np.ceil((x + w) / d)), int(np.ceil((y + h) / d))
        area = max(1, (c1 - c0) * (r1 - r0))
        H, W = self.mask.shape
        sub = self.mask[max(r0, 0) : min(r1, H), max(c0, 0) : min(c1, W)]
        return float(sub.sum()) / area

    def touches(self, box: tuple[float, float, float, float], min_fraction: float = 0.0) -> bool:
        """Whether the level-0 box holds tissue (more than ``min_fraction`` of its area)."""
        f = self.fraction_in(box)
        return f > min_fraction if min_fraction > 0 else f > 0


def _rgb_to_hsv(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rgb = img.astype(np.float32) / 255.0
    mx = rgb.max(axis=2)
    mn = rgb.min(axis=2)
    delta = mx - mn
    s = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(delta, 1e-6)
    h = (
        np.where(
            mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)
        )
        * 60.0
    )
    h = np.where(delta > 0, h, 0.0)
    return h, s, mx


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample in [0, 1]."""
    if values.size == 0:
        return 1.0
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between))])


def tissue_mask_from_image(
    img: np.ndarray,
    downsample: float,
    *,
    min_saturation: float = 0.07,
    min_value: float = 0.20,
    min_area_px: int = 16,
) -> TissueMask:
    """Tissue mask of an RGB thumbnail ``(H, W, 3)`` uint8 whose pixels are
    ``downsample`` level-0 px wide."""
    h, s, v = _rgb_to_hsv(img)
    candidate = (v > min_value) & (v < 0.97)  # not black border/debris, not bright glass
    sample = s[candidate]
    thr = otsu_threshold(sample) if sample.size else 1.0
    # Otsu separates glass from stain when both are present; on an all-tissue thumbnail
    # the histogram is unimodal, so never let the threshold rise above a stained level.
    thr = float(np.clip(thr, min_saturation, 0.25))
    stained = candidate & (s >= thr)
    # Pen marks: strongly saturated green/blue/cyan (H&E is pink → purple: hue > 260 or < 30).
    pen = (s > 0.35) & (h > 70) & (h < 250)
    mask = stained & ~pen
    mask = ndi.binary_closing(mask, structure=np.ones((3, 3)), iterations=2)
    mask = ndi.binary_opening(mask, structure=np.ones((3, 3)), iterations=1)
    mask = ndi.binary_fill_holes(mask)
    labels, n = ndi.label(mask)
    if n:
        sizes = ndi.sum(mask, labels, index=np.arange(1, n + 1))
        keep = np.zeros(n + 1, dtype=bool)
        keep[1:] = sizes >= min_area_px
        mask = keep[labels]
    log.debug(
        "tissue mask: saturation threshold %.3f, tissue fraction %.3f",
        thr,
        mask.mean() if mask.size else 0,
    )
    return TissueMask(mask=mask.astype(bool), downsample=float(downsample))


class TissueMaskOptions(TypedDict, total=False):
    """The keyword options of :func:`tissue_mask_from_image` that :func:`tissue_mask` passes on."""

    min_saturation: float
    min_value: float
    min_area_px: int


def tissue_mask(slide: Slide, mpp: float = 8.0, **kwargs: Unpack[TissueMaskOptions]) -> TissueMask:
    """Tissue mask of a :class:`~wsi_ocelot.slide.Slide` from a thumbnail at ~``mpp`` µm/px."""
    img, ds = slide.thumbnail(mpp=mpp)
    return tissue_mask_from_image(img, ds, **kwargs)
