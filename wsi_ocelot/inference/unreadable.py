"""Tiles a slide would not give: corrupt image data that failed twice, or a batch whose reader
process died on it (``tiling/dataset.py``). Each costs only itself: no detections from it, its
core left out of the tissue area, a warning naming the slide and the level-0 region, and a
count in ``purity.json``, the manifest, ``summary.csv`` and the report. A slide fails only when
more than the allowed fraction of a pass's tiles is unreadable (docs/architecture.md, *Faults*).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsi_ocelot.constants import DEFAULT_MAX_UNREADABLE
from wsi_ocelot.errors import SlideFormatError
from wsi_ocelot.slide.mask import TissueMask

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_UNREADABLE", "UnreadableTiles"]


class UnreadableTiles:
    """The unreadable tiles of one slide's run, per pass (``cell`` / ``tissue``).

    ``totals`` are the tiles each pass reads; ``max_fraction`` the share of them that may be
    unreadable: :meth:`add` raises :class:`SlideFormatError` (one line) as soon as a pass
    passes it. Cell tiles' cores (level-0 ``x0, y0, x1, y1``) are marked out of the tissue
    mask, so :meth:`tissue_pixels` counts only tissue whose cells were looked for."""

    def __init__(
        self, slide_path: str | Path, mask: TissueMask, totals: dict[str, int], max_fraction: float
    ):
        self.path = slide_path
        self.mask = mask
        self.totals = dict(totals)
        self.max_fraction = float(max_fraction)
        self.counts = dict.fromkeys(self.totals, 0)
        self._excluded: np.ndarray = np.zeros(mask.mask.shape, bool)

    @property
    def n(self) -> int:
        """Unreadable tiles over all passes."""
        return sum(self.counts.values())

    def add(
        self, kind: str, boxes: np.ndarray, errors: Sequence[str], cores: np.ndarray | None = None
    ) -> None:
        """Count the tiles ``boxes`` (level-0 ``x, y, w, h``) of pass ``kind`` as unreadable,
        with their reasons; ``cores`` (cell tiles) leave the tissue area."""
        boxes = np.asarray(boxes).reshape(-1, 4)
        for b, err in zip(boxes, errors, strict=True):
            log.warning(
                "%s: the %s tile at level-0 x=%d, y=%d, %d×%d px is unreadable (%s); it gives no detections "
                "and its area is left out of the tissue area",
                self.path,
                kind,
                b[0],
                b[1],
                b[2],
                b[3],
                err,
            )
        if cores is not None:
            d = self.mask.downsample
            H, W = self._excluded.shape
            for x0, y0, x1, y1 in np.asarray(cores).reshape(-1, 4):
                r0, c0 = max(0, math.floor(y0 / d)), max(0, math.floor(x0 / d))
                r1, c1 = min(H, math.ceil(y1 / d)), min(W, math.ceil(x1 / d))
                self._excluded[r0:r1, c0:c1] = True
        self.counts[kind] = self.counts.get(kind, 0) + len(boxes)
        total = self.totals.get(kind, 0)
        if total and self.counts[kind] > self.max_fraction * total:
            first = errors[0] if len(errors) else ""
            raise SlideFormatError(
                self.path,
                f"{self.counts[kind]} of its {total} {kind} tiles are unreadable ({first}), more than the allowed "
                f"{self.max_fraction:.0%}",
                "re-export or re-scan the slide; or accept it with a larger --max-unreadable (a fraction, e.g. 0.2)",
            )

    def tissue_pixels(self) -> int:
        """Tissue-mask pixels outside the unreadable cell tiles' cores."""
        return int((self.mask.mask & ~self._excluded).sum())
