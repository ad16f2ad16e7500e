"""Greedy point matching of the OCELOT 2023 challenge, pure numpy/scipy.

One call matches the predictions of **one image and one class** against that image's
ground truth of the same class, exactly as the challenge's ``_calc_scores`` does:

1. predictions are visited by descending confidence (stable: equal confidences keep the
   input order; confidences are compared at float32 precision, as the official code stores
   them in float32 arrays);
2. each prediction takes the *nearest* ground-truth point that is still unmatched and lies
   within ``radius`` (inclusive, Euclidean); on equal distances the ground-truth point listed
   first wins;
3. a prediction with no such point is a false positive.

Coordinates are whatever pixel frame the caller uses: cell-patch pixels for the challenge
(radius 15 px ≈ 3 µm at 0.2 µm/px), level-0 slide pixels for whole-slide scoring (pass the
radius in level-0 px). A whole slide can be matched as one "image".

Implementation: candidate pairs come from a KD-tree (``cKDTree.sparse_distance_matrix``);
the greedy assignment is then resolved in vectorised rounds (a prediction is final as soon as
it is the best-ranked unresolved prediction among all that can still reach its nearest free
ground-truth point), and the few contested chains left are finished by a plain loop. Memory
and time are O(N + M + E), E = number of pairs within the radius, so a slide with ~10^6
cells takes seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

log = logging.getLogger(__name__)

DISTANCE_CUTOFF: float = 15.0
"""The challenge's matching radius in cell-patch pixels (≈ 3 µm at ≈ 0.194 µm/px)."""

RankBy = Literal["probability", "file_order"]
"""How predictions are ordered before the greedy assignment.

``"probability"`` (default, the specification): descending confidence, ties in input order.
``"file_order"``: input order, ignoring the confidence. This is what the published
``ocelot23algo/evaluation/eval.py`` effectively does: it passes the *class* column
(``pred_cls[:, 2]``, constant within a class) as the confidence, so every prediction ties and
numpy's argsort keeps them in file order. Use it to reproduce leaderboard numbers exactly.
"""

_RANK_BY: tuple[str, ...] = ("probability", "file_order")


@dataclass(frozen=True)
class MatchResult:
    """Outcome of matching one set of predictions against one set of ground-truth points.

    ``pairs`` is an ``(tp, 2)`` int64 array of ``[pred_index, gt_index]`` rows (indices into the
    arrays given to the matcher), in the order the matches were made (best-ranked prediction
    first).
    """

    tp: int
    fp: int
    n_gt: int
    pairs: NDArray[np.int64] = field(repr=False)

    @property
    def fn(self) -> int:
        """Ground-truth points left unmatched (false negatives)."""
        return self.n_gt - self.tp

    @property
    def n_pred(self) -> int:
        """Number of predictions (``tp + fp``)."""
        return self.tp + self.fp


def _as_xy(points: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) holding (x, y), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds non-finite coordinates (NaN or inf)")
    return arr


def _check_radius(radius: float) -> float:
    r = float(radius)
    if not np.isfinite(r) or r < 0:
        raise ValueError(f"radius must be a finite number >= 0 (pixels), got {radius!r}")
    return r


def rank_predictions(pred_prob: ArrayLike, rank_by: RankBy = "probability") -> NDArray[np.intp]:
    """Order in which predictions are served: indices, best first.

    ``pred_prob`` has shape ``(N,)``. With ``rank_by="probability"`` the order is by descending
    confidence compared in float32 (as the official code), stable for ties.
    """
    prob = np.asarray(pred_prob, dtype=np.float64).reshape(-1)
    if rank_by == "file_order":
        return np.arange(prob.shape[0], dtype=np.intp)
    if rank_by != "probability":
        raise ValueError(f"rank_by must be one of {_RANK_BY}, got {rank_by!r}")
    if not np.isfinite(prob).all():
        raise ValueError("pred_prob holds non-finite values (NaN or inf)")
    return np.argsort(-prob.astype(np.float32), kind="stable")


def candidate_pairs(
    pred_xy: NDArray[np.float64], gt_xy: NDArray[np.float64], radius: float
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """All (prediction, ground truth) pairs with Euclidean distance ``<= radius``.

    Returns ``(pred_index, gt_index, distance)``, unordered. The KD-tree is queried with a tiny
    slack and the boundary is then decided on ``sqrt(dx² + dy²) <= radius`` in float64, so a
    point exactly ``radius`` away is always inside.
    """
    empty = (np.empty(0, np.intp), np.empty(0, np.intp), np.empty(0, np.float64))
    if pred_xy.shape[0] == 0 or gt_xy.shape[0] == 0:
        return empty
    slack = 1e-9 * max(1.0, radius)
    pred_tree = cKDTree(pred_xy)
    gt_tree = cKDTree(gt_xy)
    sdm = pred_tree.sparse_distance_matrix(gt_tree, radius + slack, output_type="ndarray")
    if sdm.shape[0] == 0:
        return empty
    pi = sdm["i"].astype(np.intp, copy=False)
    gi = sdm["j"].astype(np.intp, copy=False)
    diff = pred_xy[pi] - gt_xy[gi]
    dist = np.sqrt(diff[:, 0] * diff[:, 0] + diff[:, 1] * diff[:, 1])
    keep = dist <= radius
    return pi[keep], gi[keep], dist[keep]


def _greedy_assign(
    edge_rank: NDArray[np.intp], edge_gt: NDArray[np.intp], n_pred: int, n_gt: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Sequential greedy assignment over edges sorted by (rank, distance, gt index).

    Returns ``(ranks, gts)`` of the matches, in rank order. Vectorised rounds: the best-ranked
    unresolved prediction on each free ground-truth point that is some prediction's nearest
    free candidate can be finalised at once; a loop finishes long contested chains.
    """
    ep, eg = edge_rank, edge_gt
    match_rank: list[NDArray[np.intp]] = []
    match_gt: list[NDArray[np.intp]] = []
    resolved = np.zeros(n_pred, dtype=bool)
    taken = np.zeros(n_gt, dtype=bool)
    min_rank = np.empty(n_gt, dtype=np.intp)
    rounds = 0
    while ep.size:
        rounds += 1
        first = np.ones(ep.size, dtype=bool)
        first[1:] = ep[1:] != ep[:-1]
        best_p, best_g = ep[first], eg[first]  # each unresolved prediction's nearest free GT
        min_rank[eg] = n_pred
        np.minimum.at(min_rank, eg, ep)  # best-ranked unresolved prediction reaching each GT
        ok = min_rank[best_g] == best_p
        acc_p, acc_g = best_p[ok], best_g[ok]
        match_rank.append(acc_p)
        match_gt.append(acc_g)
        resolved[acc_p] = True
        taken[acc_g] = True
        alive = ~resolved[ep] & ~taken[eg]
        ep, eg = ep[alive], eg[alive]
        # Few finalised this round: the rest is a chain; finish it sequentially.
        if ep.size and acc_p.size * 20 < best_p.size:
            seq_p: list[int] = []
            seq_g: list[int] = []
            done_p = -1
            taken_l = taken.tolist()
            for p, g in zip(ep.tolist(), eg.tolist(), strict=True):
                if p == done_p or taken_l[g]:
                    continue
                taken_l[g] = True
                done_p = p
                seq_p.append(p)
                seq_g.append(g)
            match_rank.append(np.asarray(seq_p, dtype=np.intp))
            match_gt.append(np.asarray(seq_g, dtype=np.intp))
            log.debug("greedy matching: %d rounds, %d matched in the loop", rounds, len(seq_p))
            break
    if not match_rank:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    ranks = np.concatenate(match_rank)
    gts = np.concatenate(match_gt)
    order = np.argsort(ranks, kind="stable")
    return ranks[order], gts[order]


def greedy_match(
    pred_xy: ArrayLike,
    pred_prob: ArrayLike,
    gt_xy: ArrayLike,
    radius: float = DISTANCE_CUTOFF,
    *,
    rank_by: RankBy = "probability",
) -> MatchResult:
    """Match predictions of one image and one class to ground truth, greedily by confidence.

    Parameters
    ----------
    pred_xy:
        ``(N, 2)`` prediction coordinates ``(x, y)`` = (column, row), any pixel frame.
    pred_prob:
        ``(N,)`` confidences; only their order matters.
    gt_xy:
        ``(M, 2)`` ground-truth coordinates in the same frame; their order breaks distance ties.
    radius:
        Matching radius in the same pixels, inclusive (15 px for the challenge).
    rank_by:
        ``"probability"`` (default) or ``"file_order"``; see :data:`RankBy`.
    """
    pxy = _as_xy(pred_xy, "pred_xy")
    gxy = _as_xy(gt_xy, "gt_xy")
    r = _check_radius(radius)
    prob = np.asarray(pred_prob, dtype=np.float64).reshape(-1)
    if prob.shape[0] != pxy.shape[0]:
        raise ValueError(
            f"pred_prob has {prob.shape[0]} values but pred_xy has {pxy.shape[0]} points"
        )
    n_pred, n_gt = pxy.shape[0], gxy.shape[0]
    order = rank_predictions(prob, rank_by)
    pi, gi, dist = candidate_pairs(pxy, gxy, r)
    if pi.size == 0:
        return MatchResult(0, n_pred, n_gt, np.empty((0, 2), np.int64))
    rank = np.empty(n_pred, dtype=np.intp)
    rank[order] = np.arange(n_pred, dtype=np.intp)
    er = rank[pi]
    # Order edges by rank, then distance, then GT listed first: three stable argsorts,
    # least significant key first (≈2x faster than np.lexsort on millions of edges).
    srt = np.argsort(gi, kind="stable")
    srt = srt[np.argsort(dist[srt], kind="stable")]
    srt = srt[np.argsort(er[srt], kind="stable")]
    m_rank, m_gt = _greedy_assign(er[srt], gi[srt], n_pred, n_gt)
    pairs = np.stack([order[m_rank], m_gt], axis=1).astype(np.int64, copy=False)
    tp = int(pairs.shape[0])
    return MatchResult(tp, n_pred - tp, n_gt, pairs)


@overload
def match_image(
    pred_xy: ArrayLike,
    pred_prob: ArrayLike,
    gt_xy: ArrayLike,
    radius: float = ...,
    *,
    return_pairs: Literal[False] = ...,
    rank_by: RankBy = ...,
) -> tuple[int, int, int]: ...


@overload
def match_image(
    pred_xy: ArrayLike,
    pred_prob: ArrayLike,
    gt_xy: ArrayLike,
    radius: float = ...,
    *,
    return_pairs: Literal[True],
    rank_by: RankBy = ...,
) -> tuple[int, int, int, NDArray[np.int64]]: ...


def match_image(
    pred_xy: ArrayLike,
    pred_prob: ArrayLike,
    gt_xy: ArrayLike,
    radius: float = DISTANCE_CUTOFF,
    *,
    return_pairs: bool = False,
    rank_by: RankBy = "probability",
) -> tuple[int, int, int] | tuple[int, int, int, NDArray[np.int64]]:
    """``(tp, fp, n_gt)`` for one image and one class; see :func:`greedy_match`.

    With ``return_pairs=True`` a fourth item is the ``(tp, 2)`` array of
    ``[pred_index, gt_index]`` matches.
    """
    res = greedy_match(pred_xy, pred_prob, gt_xy, radius, rank_by=rank_by)
    if return_pairs:
        return res.tp, res.fp, res.n_gt, res.pairs
    return res.tp, res.fp, res.n_gt


def match_by_class(
    pred: ArrayLike,
    gt: ArrayLike,
    radius: float = DISTANCE_CUTOFF,
    *,
    classes: tuple[int, ...] = (1, 2),
    rank_by: RankBy = "probability",
) -> dict[int, MatchResult]:
    """Match a cell table per class (one image, or a whole slide as one image).

    ``pred`` is ``(N, 4)`` rows ``(x, y, cls, prob)``; ``gt`` is ``(M, 3)`` or ``(M, 4)`` rows
    ``(x, y, cls[, ignored])``. Rows whose class is not in ``classes`` raise ``ValueError``.
    Pairs in the results index rows of ``pred`` and ``gt`` (not the per-class subsets).
    """
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if p.size == 0:
        p = p.reshape(0, 4)
    if g.size == 0:
        g = g.reshape(0, 3)
    if p.ndim != 2 or p.shape[1] != 4:
        raise ValueError(f"pred must have shape (N, 4) = (x, y, cls, prob), got {p.shape}")
    if g.ndim != 2 or g.shape[1] not in (3, 4):
        raise ValueError(f"gt must have shape (M, 3) or (M, 4) = (x, y, cls[, p]), got {g.shape}")
    for name, arr in (("pred", p), ("gt", g)):
        bad = ~np.isin(arr[:, 2], classes)
        if bad.any():
            raise ValueError(
                f"{name} row {int(np.argmax(bad))} has class {arr[bad][0, 2]!r}; "
                f"allowed classes are {list(classes)}"
            )
    out: dict[int, MatchResult] = {}
    for c in classes:
        pidx = np.flatnonzero(p[:, 2] == c)
        gidx = np.flatnonzero(g[:, 2] == c)
        res = greedy_match(p[pidx, :2], p[pidx, 3], g[gidx, :2], radius, rank_by=rank_by)
        pairs = np.stack([pidx[res.pairs[:, 0]], gidx[res.pairs[:, 1]]], axis=1).astype(np.int64)
        out[c] = MatchResult(res.tp, res.fp, res.n_gt, pairs)
    return out
