"""The OCELOT 2023 challenge score: per-class precision, recall, F1 and their mean (mF1).

Per image and class the predictions are matched greedily (see
:mod:`wsi_ocelot.metrics.matching`); TP, FP and ground-truth counts are **summed over all
images** per class, then (as ``ocelot23algo/evaluation/eval.py``)::

    precision = TP / (TP + FP + 1e-7)
    recall    = TP / (nGT + 1e-7)
    f1        = 2 · precision · recall / (precision + recall + 1e-7)

each rounded to 4 decimals (F1 from the unrounded precision and recall), and
``mF1 = (F1_BC + F1_TC) / 2`` of the rounded F1s. A class without ground truth and without
predictions scores 0.

Partial labels: an image may come with a mask of where its cells are completely marked
(``masks``; a dataset cut from annotated regions). Points whose pixel lies outside the mask are
dropped before matching, predictions and ground truth alike (the ground truth should have none
there), so a model is neither rewarded nor punished for cells in unlabelled parts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from wsi_ocelot.metrics.matching import DISTANCE_CUTOFF, RankBy, match_by_class

log = logging.getLogger(__name__)

CLASS_NAMES: dict[int, str] = {1: "BC", 2: "TC"}
"""Cell classes of the challenge: 1 = background cell, 2 = tumour cell."""

_EPS = 1e-7

PerImage = Mapping[int, ArrayLike] | Sequence[ArrayLike]
"""Points per image: a mapping image index → array, or a sequence indexed by image."""


@dataclass(frozen=True)
class ClassScore:
    """Score of one class, pooled over all images."""

    name: str
    tp: int
    fp: int
    n_gt: int
    precision: float
    recall: float
    f1: float

    @property
    def fn(self) -> int:
        """Ground-truth cells not matched."""
        return self.n_gt - self.tp

    @classmethod
    def from_counts(cls, name: str, tp: int, fp: int, n_gt: int) -> ClassScore:
        """Apply the official formulas (with the 1e-7 terms and rounding) to counts."""
        tp, fp, n_gt = int(tp), int(fp), int(n_gt)  # Python ints/floats: Python's round()
        precision = tp / (tp + fp + _EPS)
        recall = tp / (n_gt + _EPS)
        f1 = 2 * precision * recall / (precision + recall + _EPS)
        return cls(name, tp, fp, n_gt, round(precision, 4), round(recall, 4), round(f1, 4))


@dataclass(frozen=True)
class OcelotScore:
    """Challenge score: one :class:`ClassScore` per class and their mean F1."""

    bc: ClassScore
    tc: ClassScore
    mf1: float
    num_images: int
    radius: float = DISTANCE_CUTOFF

    @property
    def classes(self) -> dict[str, ClassScore]:
        """``{"BC": ..., "TC": ...}``."""
        return {"BC": self.bc, "TC": self.tc}

    def to_dict(self) -> dict[str, object]:
        """``{"mF1": m, "BC": {"precision", "recall", "f1"}, "TC": {...}}`` (JSON-ready)."""
        out: dict[str, object] = {"mF1": self.mf1}
        for name, s in self.classes.items():
            out[name] = {"precision": s.precision, "recall": s.recall, "f1": s.f1}
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"BC": {"tp", "fp", "fn", "n_gt"}, "TC": {...}}``."""
        return {
            name: {"tp": s.tp, "fp": s.fp, "fn": s.fn, "n_gt": s.n_gt}
            for name, s in self.classes.items()
        }

    def format_table(self) -> str:
        """A plain-text report (fixed-width table, one line per class, then mF1)."""
        lines = [
            f"OCELOT cell detection: {self.num_images} image(s), match radius {self.radius:g} px",
            f"{'class':<6}{'precision':>10}{'recall':>9}{'F1':>9}"
            f"{'TP':>9}{'FP':>9}{'FN':>9}{'GT':>9}",
        ]
        for name, s in self.classes.items():
            lines.append(
                f"{name:<6}{s.precision:>10.4f}{s.recall:>9.4f}{s.f1:>9.4f}"
                f"{s.tp:>9d}{s.fp:>9d}{s.fn:>9d}{s.n_gt:>9d}"
            )
        # mF1 is the mean of two 4-decimal values: 5 decimals show it exactly.
        lines.append(f"{'mF1':<6}{self.mf1:>10.5f}")
        return "\n".join(lines)


def _as_mapping(data: PerImage, what: str) -> dict[int, ArrayLike]:
    if isinstance(data, Mapping):
        out: dict[int, ArrayLike] = {}
        for k, v in data.items():
            if isinstance(k, bool) or not isinstance(k, int | np.integer) or int(k) < 0:
                raise ValueError(f"{what}: image keys must be integers >= 0, got {k!r}")
            out[int(k)] = v
        return out
    return dict(enumerate(data))


def _points(arr: ArrayLike, ncols: tuple[int, ...], what: str) -> NDArray[np.float64]:
    a = np.asarray(arr, dtype=np.float64)
    if a.size == 0:
        return np.empty((0, 4), dtype=np.float64)
    if a.ndim != 2 or a.shape[1] not in ncols:
        raise ValueError(
            f"{what}: expected shape (N, {' or '.join(map(str, ncols))}), got {a.shape}"
        )
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: holds NaN or inf")
    if a.shape[1] == 3:
        a = np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)
    return a


def points_in_mask(points: ArrayLike, mask: ArrayLike) -> NDArray[np.bool_]:
    """Which of ``points`` (rows ``(x, y, ...)``, x = column, y = row, in the mask's pixels)
    lie in ``mask`` (bool ``(H, W)``): the pixel nearest to the point is True. Points outside
    the mask's bounds are outside."""
    pts = np.asarray(points, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask: expected a 2-D (H, W) array, got shape {m.shape}")
    if pts.size == 0:
        return np.zeros(0, dtype=bool)
    xs = np.rint(pts[:, 0]).astype(np.int64)
    ys = np.rint(pts[:, 1]).astype(np.int64)
    inside = (xs >= 0) & (xs < m.shape[1]) & (ys >= 0) & (ys < m.shape[0])
    out = np.zeros(len(pts), dtype=bool)
    out[inside] = m[ys[inside], xs[inside]]
    return out


def evaluate(
    preds: PerImage,
    gts: PerImage,
    radius: float = DISTANCE_CUTOFF,
    *,
    rank_by: RankBy = "probability",
    masks: Mapping[int, ArrayLike | None] | Sequence[ArrayLike | None] | None = None,
) -> OcelotScore:
    """Score predictions against ground truth the way the OCELOT 2023 challenge does.

    Parameters
    ----------
    preds:
        Per image, ``(N, 4)`` rows ``(x, y, cls, prob)`` in cell-patch pixels (or any frame
        shared with ``gts``). A mapping may leave out images without predictions; a sequence
        must have one entry per ground-truth image.
    gts:
        Per image, ``(M, 3)`` or ``(M, 4)`` rows ``(x, y, cls[, prob])``. Its images define the
        image set: every image counts, even one with no cells.
    radius:
        Matching radius, inclusive, in the same pixels (15 for the challenge).
    rank_by:
        ``"probability"`` (the specification) or ``"file_order"`` (what the published
        ``eval.py`` effectively does; see :data:`wsi_ocelot.metrics.matching.RankBy`).
    masks:
        Optional, per image (keyed or ordered like ``gts``): a bool ``(H, W)`` array in the
        points' pixels, True where every cell is marked, or None (labelled everywhere).
        Predictions and ground-truth points outside an image's mask are dropped before
        matching (:func:`points_in_mask`). None: every image is labelled everywhere.

    Raises
    ------
    ValueError
        Predictions for an image the ground truth does not have, a class other than 1 or 2,
        or malformed arrays.
    """
    gt_map = _as_mapping(gts, "gts")
    pred_map = _as_mapping(preds, "preds")
    if (
        not isinstance(preds, Mapping)
        and not isinstance(gts, Mapping)
        and len(pred_map) != len(gt_map)
    ):
        raise ValueError(
            f"preds has {len(pred_map)} images but gts has {len(gt_map)}; give one entry per image"
        )
    extra = sorted(set(pred_map) - set(gt_map))
    if extra:
        raise ValueError(
            f"predictions for image_{extra[0]} ({len(extra)} image(s) in all) but the ground "
            f"truth has no such image; ground-truth images: {len(gt_map)}"
        )
    mask_map = {} if masks is None else _as_mapping(masks, "masks")  # type: ignore[arg-type]
    extra = sorted(set(mask_map) - set(gt_map))
    if extra:
        raise ValueError(
            f"a mask for image_{extra[0]} but the ground truth has no such image; ground-truth images: {len(gt_map)}"
        )
    totals = {c: [0, 0, 0] for c in CLASS_NAMES}
    dropped_gt = 0
    for img in sorted(gt_map):
        g = _points(gt_map[img], (3, 4), f"gts[{img}]")
        p = _points(pred_map.get(img, ()), (4,), f"preds[{img}]")
        mask = mask_map.get(img)
        if mask is not None:
            keep_g = points_in_mask(g, mask)
            dropped_gt += int((~keep_g).sum())
            g, p = g[keep_g], p[points_in_mask(p, mask)]
        try:
            res = match_by_class(p, g, radius, classes=tuple(CLASS_NAMES), rank_by=rank_by)
        except ValueError as err:
            raise ValueError(f"image {img}: {err}") from err
        for c, r in res.items():
            totals[c][0] += r.tp
            totals[c][1] += r.fp
            totals[c][2] += r.n_gt
    bc = ClassScore.from_counts("BC", *totals[1])
    tc = ClassScore.from_counts("TC", *totals[2])
    mf1 = sum([bc.f1, tc.f1]) / len(CLASS_NAMES)
    score = OcelotScore(bc=bc, tc=tc, mf1=mf1, num_images=len(gt_map), radius=float(radius))
    if dropped_gt:
        log.debug("%d ground-truth point(s) outside their image's mask left out", dropped_gt)
    log.debug("OCELOT mF1 %.4f (BC F1 %.4f, TC F1 %.4f)", mf1, bc.f1, tc.f1)
    return score
