"""The OCELOT 2023 challenge metric and its file formats.

- :func:`evaluate` / :func:`evaluate_files`: the challenge score (mF1 over BC and TC);
  ``evaluate(..., masks=...)`` scores partially labelled images within their masks
  (:func:`points_in_mask`).
- :func:`match_image`, :func:`greedy_match`, :func:`match_by_class`: the greedy matcher, also
  for whole slides (any pixel frame, radius in the same pixels).
- :func:`read_points_json`, :func:`write_points_json`, :func:`read_points_csv`,
  :func:`read_points_csv_dir`: the challenge JSON and the release CSV annotations.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from wsi_ocelot.errors import PredictionFileError
from wsi_ocelot.metrics.io import (
    MAX_XY,
    read_points_csv,
    read_points_csv_dir,
    read_points_json,
    read_points_json_ex,
    write_points_json,
)
from wsi_ocelot.metrics.matching import (
    DISTANCE_CUTOFF,
    MatchResult,
    RankBy,
    greedy_match,
    match_by_class,
    match_image,
)
from wsi_ocelot.metrics.ocelot import CLASS_NAMES, ClassScore, OcelotScore, evaluate, points_in_mask

log = logging.getLogger(__name__)

__all__ = [
    "CLASS_NAMES",
    "DISTANCE_CUTOFF",
    "MAX_XY",
    "ClassScore",
    "MatchResult",
    "OcelotScore",
    "RankBy",
    "evaluate",
    "evaluate_files",
    "greedy_match",
    "match_by_class",
    "match_image",
    "points_in_mask",
    "read_points_csv",
    "read_points_csv_dir",
    "read_points_json",
    "read_points_json_ex",
    "write_points_json",
]


def evaluate_files(
    pred_path: str | os.PathLike[str],
    gt_path: str | os.PathLike[str],
    radius: float = DISTANCE_CUTOFF,
    *,
    rank_by: RankBy = "probability",
) -> OcelotScore:
    """Score a challenge prediction file against ground truth.

    ``gt_path`` is a challenge ground-truth JSON (with ``num_images``) or a folder of release
    CSVs (``annotations/<split>/cell``, image ``i`` = ``i``-th file in sorted order).

    Raises
    ------
    PredictionFileError
        Either file is malformed, the prediction file names an image the ground truth does not
        have, or the two files disagree on ``num_images``.
    """
    gp = Path(gt_path)
    gts = read_points_csv_dir(gp) if gp.is_dir() else read_points_json(gp, kind="gt")
    preds, pred_n = read_points_json_ex(pred_path, kind="pred")
    n = len(gts)
    if pred_n is not None and pred_n != n:
        raise PredictionFileError(
            pred_path,
            f"num_images is {pred_n} but the ground truth {gp} has {n}",
            "score the prediction file against the ground truth of the same image set",
        )
    extra = sorted(set(preds) - set(gts))
    if extra:
        have = f"{n} images (image_0..image_{n - 1})" if n else "no images"
        raise PredictionFileError(
            pred_path,
            f"image_{extra[0]} has predictions but the ground truth {gp} has {have}",
            "score the prediction file against the ground truth of the same image set",
        )
    return evaluate(preds, gts, radius, rank_by=rank_by)
