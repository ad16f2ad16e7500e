"""Tests of wsi_ocelot.metrics: the OCELOT 2023 challenge metric and its file formats.

Expected numbers are worked out by hand in the comments. Reminder of the formulas:
P = TP/(TP+FP+1e-7), R = TP/(nGT+1e-7), F1 = 2PR/(P+R+1e-7), each rounded to 4 decimals;
mF1 = (F1_BC + F1_TC) / 2 of the rounded values.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from wsi_ocelot.errors import DatasetError, PredictionFileError
from wsi_ocelot.metrics import (
    DISTANCE_CUTOFF,
    ClassScore,
    OcelotScore,
    evaluate,
    evaluate_files,
    greedy_match,
    match_by_class,
    match_image,
    read_points_csv,
    read_points_csv_dir,
    read_points_json,
    write_points_json,
)

BC, TC = 1, 2


def P(*rows: tuple[float, float, int, float]) -> np.ndarray:
    """Prediction rows (x, y, cls, prob)."""
    return np.array(rows, dtype=float).reshape(-1, 4)


def G(*rows: tuple[float, float, int]) -> np.ndarray:
    """Ground-truth rows (x, y, cls)."""
    return np.array(rows, dtype=float).reshape(-1, 3)


# --------------------------------------------------------------------------- matching


def test_greedy_by_confidence_is_not_optimal() -> None:
    # GT A=(0,0), B=(20,0). P1=(12,0) conf .9: |P1A|=12, |P1B|=8 -> takes the nearest, B.
    # P2=(30,0) conf .8: |P2B|=10 but B is taken, |P2A|=30 > 15 -> FP.
    # Greedy: TP=1, FP=1. The optimal (Hungarian) assignment P1->A, P2->B would give TP=2.
    pred_xy = [[12, 0], [30, 0]]
    tp, fp, n_gt, pairs = match_image(pred_xy, [0.9, 0.8], [[0, 0], [20, 0]], return_pairs=True)
    assert (tp, fp, n_gt) == (1, 1, 2)
    assert pairs.tolist() == [[0, 1]]
    # Through evaluate: BC P = 1/2 -> 0.5, R = 1/2 -> 0.5, F1 = 0.5; TC empty -> 0; mF1 = 0.25.
    s = evaluate([P((12, 0, BC, 0.9), (30, 0, BC, 0.8))], [G((0, 0, BC), (20, 0, BC))])
    assert (s.bc.precision, s.bc.recall, s.bc.f1) == (0.5, 0.5, 0.5)
    assert s.mf1 == 0.25


def test_higher_confidence_is_served_first_and_ties_keep_file_order() -> None:
    # GT (0,0). Row 0 = (1,0) conf .2 (distance 1), row 1 = (10,0) conf .9 (distance 10).
    # By confidence row 1 goes first and takes the GT even though row 0 is nearer.
    assert match_image([[1, 0], [10, 0]], [0.2, 0.9], [[0, 0]], return_pairs=True)[3].tolist() == [
        [1, 0]
    ]
    # Equal confidences: stable, the row listed first (row 0) is served first.
    assert match_image([[1, 0], [10, 0]], [0.5, 0.5], [[0, 0]], return_pairs=True)[3].tolist() == [
        [0, 0]
    ]
    # rank_by="file_order" (what the published eval.py effectively does) ignores confidences.
    res = greedy_match([[1, 0], [10, 0]], [0.2, 0.9], [[0, 0]], rank_by="file_order")
    assert res.pairs.tolist() == [[0, 0]]


def test_radius_boundary_is_inclusive() -> None:
    # Exactly 15.0 px matches, 15.01 px does not.
    assert match_image([[0, 0]], [0.5], [[15.0, 0]]) == (1, 0, 1)
    assert match_image([[0, 0]], [0.5], [[15.01, 0]]) == (0, 1, 1)
    # Integer pixels as in the challenge files: (9,12) is 15 px away (3-4-5 triangle x3),
    # (11,11) is sqrt(242) = 15.56 px away.
    assert match_image([[100, 100]], [0.5], [[109, 112]]) == (1, 0, 1)
    assert match_image([[100, 100]], [0.5], [[111, 111]]) == (0, 1, 1)
    # The radius is a parameter (whole-slide scoring in level-0 px).
    assert match_image([[0, 0]], [0.5], [[20.0, 0]], radius=20.0) == (1, 0, 1)
    assert match_image([[0, 0]], [0.5], [[0, 0]], radius=0.0) == (1, 0, 1)


def test_equal_distances_first_listed_gt_wins() -> None:
    # GT g0=(0,0), g1=(20,0). P1=(10,0) conf .9 is 10 px from both -> takes g0 (listed first).
    # P2=(30,0) conf .5 is 10 px from g1 (30 from g0) -> g1 is still free -> TP. Total TP=2.
    tp, fp, _, pairs = match_image(
        [[10, 0], [30, 0]], [0.9, 0.5], [[0, 0], [20, 0]], return_pairs=True
    )
    assert (tp, fp) == (2, 0)
    assert pairs.tolist() == [[0, 0], [1, 1]]
    # Same GT listed the other way round: g0=(20,0) is now first, so P1 takes (20,0);
    # what remains is (0,0), 30 px from P2 -> FP. TP=1.
    tp, fp, _, pairs = match_image(
        [[10, 0], [30, 0]], [0.9, 0.5], [[20, 0], [0, 0]], return_pairs=True
    )
    assert (tp, fp) == (1, 1)
    assert pairs.tolist() == [[0, 0]]


def test_nearest_unmatched_gt_is_taken() -> None:
    # GT g0=(0,0), g1=(6,0). P1=(1,0) conf .9 takes g0 (1 px); P2=(0,0) conf .8: g0 taken,
    # g1 is 6 px away -> P2 takes g1. P3=(2,0) conf .7: nothing left -> FP.
    tp, fp, n_gt, pairs = match_image(
        [[1, 0], [0, 0], [2, 0]], [0.9, 0.8, 0.7], [[0, 0], [6, 0]], return_pairs=True
    )
    assert (tp, fp, n_gt) == (2, 1, 2)
    assert pairs.tolist() == [[0, 0], [1, 1]]


def test_empty_inputs() -> None:
    assert match_image(np.empty((0, 2)), [], [[0, 0]]) == (0, 0, 1)
    assert match_image([[0, 0]], [0.3], np.empty((0, 2))) == (0, 1, 0)
    assert match_image([], [], []) == (0, 0, 0)


def test_match_by_class_pairs_index_the_full_tables() -> None:
    # Row 0 is TC at (0,0), row 1 BC at (50,50); GT row 0 BC at (52,50), row 1 TC at (3,4).
    pred = P((0, 0, TC, 0.9), (50, 50, BC, 0.8))
    gt = G((52, 50, BC), (3, 4, TC))
    res = match_by_class(pred, gt)
    assert res[BC].pairs.tolist() == [[1, 0]]
    assert res[TC].pairs.tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="class"):
        match_by_class(P((0, 0, 3, 0.5)), gt)


def test_bad_matcher_arguments() -> None:
    with pytest.raises(ValueError, match="shape"):
        match_image([[0, 0, 0]], [0.5], [[0, 0]])
    with pytest.raises(ValueError, match="pred_prob"):
        match_image([[0, 0]], [0.5, 0.4], [[0, 0]])
    with pytest.raises(ValueError, match="radius"):
        match_image([[0, 0]], [0.5], [[0, 0]], radius=-1)
    with pytest.raises(ValueError, match="non-finite"):
        match_image([[np.nan, 0]], [0.5], [[0, 0]])


# --------------------------------------------------------------- reference comparison


def brute_force(pred_xy, pred_prob, gt_xy, radius):
    """The challenge's loop, written plainly: returns the list of (pred, gt) matches."""
    order = sorted(range(len(pred_xy)), key=lambda i: -np.float32(pred_prob[i]))  # stable
    free = [True] * len(gt_xy)
    pairs = []
    for i in order:
        best, best_d = None, None
        for j in range(len(gt_xy)):
            d = float(np.hypot(pred_xy[i][0] - gt_xy[j][0], pred_xy[i][1] - gt_xy[j][1]))
            if free[j] and d <= radius and (best_d is None or d < best_d):
                best, best_d = j, d
        if best is not None:
            free[best] = False
            pairs.append((i, best))
    return pairs


@pytest.mark.parametrize("seed", range(8))
def test_fast_matcher_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for trial in range(25):
        n, m = rng.integers(0, 80, size=2)
        side = int(rng.integers(20, 250))  # small sides: crowded, many ties and conflicts
        pred_xy = rng.integers(0, side, (n, 2)).astype(float)
        gt_xy = rng.integers(0, side, (m, 2)).astype(float)
        if trial % 3 == 0:
            pred_xy += rng.random((n, 2))  # non-integer (whole-slide) coordinates
            gt_xy += rng.random((m, 2))
        # Coarse probabilities give many ties in confidence.
        prob = rng.choice([0.1, 0.5, 0.9], n) if trial % 2 else rng.random(n)
        radius = float(rng.choice([15.0, 7.5, 30.0]))
        res = greedy_match(pred_xy, prob, gt_xy, radius)
        expected = brute_force(pred_xy, prob, gt_xy, radius)
        assert [tuple(p) for p in res.pairs.tolist()] == expected, (seed, trial)
        assert (res.tp, res.fp, res.n_gt) == (len(expected), n - len(expected), m)


def test_long_contested_chain_equals_brute_force() -> None:
    # Predictions 4 px right of GT points spaced 10 px on a line, confidence decreasing from
    # right to left: each prediction competes with its neighbours, a worst case for the
    # vectorised rounds (it falls back to the loop). Must still equal the plain loop.
    gt_xy = np.stack([np.arange(300) * 10.0, np.zeros(300)], axis=1)
    pred_xy = gt_xy + [4.0, 0.0]
    prob = np.linspace(0.1, 0.9, 300)
    res = greedy_match(pred_xy, prob, gt_xy, 15.0)
    assert [tuple(p) for p in res.pairs.tolist()] == brute_force(pred_xy, prob, gt_xy, 15.0)


def reference_score(preds, gts, radius=15.0):
    """Per class: sum counts over images with the brute-force loop, then the formulas."""
    out = {}
    for c in (BC, TC):
        tp = fp = ng = 0
        for p, g in zip(preds, gts, strict=True):
            pc, gc = p[p[:, 2] == c], g[g[:, 2] == c]
            k = len(brute_force(pc[:, :2], pc[:, 3], gc[:, :2], radius))
            tp, fp, ng = tp + k, fp + len(pc) - k, ng + len(gc)
        pr = tp / (tp + fp + 1e-7)
        rc = tp / (ng + 1e-7)
        out[c] = round(2 * pr * rc / (pr + rc + 1e-7), 4)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_equals_reference_on_random_images(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    preds, gts = [], []
    for _ in range(6):
        m, n = rng.integers(0, 40, size=2)
        g = np.column_stack([rng.integers(0, 120, (m, 2)), rng.integers(1, 3, m)]).astype(float)
        p = np.column_stack(
            [rng.integers(0, 120, (n, 2)), rng.integers(1, 3, n), rng.random(n)]
        ).astype(float)
        preds.append(p)
        gts.append(g)
    s = evaluate(preds, gts)
    ref = reference_score(preds, gts)
    assert (s.bc.f1, s.tc.f1) == (ref[BC], ref[TC])
    assert s.mf1 == (ref[BC] + ref[TC]) / 2


@pytest.mark.slow
def test_one_million_cells_scale() -> None:
    rng = np.random.default_rng(0)
    n = 1_000_000
    side = 12_000.0
    gt_xy = rng.random((n, 2)) * side
    pred_xy = np.concatenate(
        [gt_xy[: 9 * n // 10] + rng.normal(0, 4, (9 * n // 10, 2)), rng.random((n // 10, 2)) * side]
    )
    t0 = time.perf_counter()
    res = greedy_match(pred_xy, rng.random(n), gt_xy, 12.0)
    elapsed = time.perf_counter() - t0
    assert res.tp + res.fp == n
    assert len(np.unique(res.pairs[:, 0])) == res.tp == len(np.unique(res.pairs[:, 1]))
    d = np.hypot(*(pred_xy[res.pairs[:, 0]] - gt_xy[res.pairs[:, 1]]).T)
    assert (d <= 12.0).all()
    assert elapsed < 60


# ------------------------------------------------------------------------- scoring


def test_counts_are_pooled_over_images_not_f1_averaged() -> None:
    # Image 0: 1 BC GT, 1 BC pred on it -> TP 1. Image 1: 3 BC GT, 1 BC pred far away -> FP 1.
    # Pooled BC: TP=1, FP=1, nGT=4 -> P = 0.5, R = 0.25, F1 = 2*.125/.75 = 0.3333.
    # (The mean of per-image F1s would be (1 + 0)/2 = 0.5.)
    preds = [P((10, 10, BC, 0.9)), P((500, 500, BC, 0.9))]
    gts = [G((10, 12, BC)), G((0, 0, BC), (0, 100, BC), (100, 0, BC))]
    s = evaluate(preds, gts)
    assert (s.bc.tp, s.bc.fp, s.bc.n_gt, s.bc.fn) == (1, 1, 4, 3)
    assert (s.bc.precision, s.bc.recall, s.bc.f1) == (0.5, 0.25, 0.3333)
    assert s.tc.f1 == 0.0
    assert s.mf1 == 0.3333 / 2


def test_wrong_class_is_fp_and_fn() -> None:
    # A BC prediction exactly on a TC cell: BC FP=1 (no BC GT), TC FN=1. Everything scores 0.
    s = evaluate([P((100, 100, BC, 0.9))], [G((100, 100, TC))])
    assert s.counts() == {
        "BC": {"tp": 0, "fp": 1, "fn": 0, "n_gt": 0},
        "TC": {"tp": 0, "fp": 0, "fn": 1, "n_gt": 1},
    }
    assert s.to_dict() == {
        "mF1": 0.0,
        "BC": {"precision": 0.0, "recall": 0.0, "f1": 0.0},
        "TC": {"precision": 0.0, "recall": 0.0, "f1": 0.0},
    }


def test_empty_class_scores_zero_and_halves_mf1() -> None:
    # BC: 2 GT, 2 exact predictions -> P = 2/(2+1e-7) = 0.99999995 -> 1.0, R -> 1.0,
    # F1 = 0.9999999 -> 1.0. TC: no GT, no predictions -> 0 (not NaN). mF1 = 0.5.
    s = evaluate([P((0, 0, BC, 0.6), (50, 50, BC, 0.6))], [G((0, 0, BC), (50, 50, BC))])
    assert (s.bc.precision, s.bc.recall, s.bc.f1) == (1.0, 1.0, 1.0)
    assert (s.tc.precision, s.tc.recall, s.tc.f1) == (0.0, 0.0, 0.0)
    assert s.mf1 == 0.5


def test_rounding_to_four_decimals() -> None:
    # TP=1, FP=0, nGT=6: P = 0.9999999 -> 1.0, R = 1/6 = 0.16666... -> 0.1667,
    # F1 from the *unrounded* P and R = 2/7 = 0.285714 -> 0.2857 (from the rounded ones it
    # would be 2*0.1667/1.1667 = 0.28576 -> 0.2858).
    assert ClassScore.from_counts("BC", 1, 0, 6).f1 == 0.2857
    # TP=1, FP=2, nGT=2: P = 1/3 -> 0.3333, R = 0.5, F1 = 0.4.
    c = ClassScore.from_counts("TC", 1, 2, 2)
    assert (c.precision, c.recall, c.f1) == (0.3333, 0.5, 0.4)
    # mF1 is the mean of the rounded F1s and is not rounded again:
    # BC TP=1, FP=0, nGT=2 -> P 1.0, R 0.5, F1 = 2/3 -> 0.6667; TC F1 0.4 as above.
    # mF1 = (0.6667 + 0.4) / 2 = 0.53335.
    preds = [P((0, 0, BC, 0.9), (300, 300, TC, 0.9), (600, 600, TC, 0.8), (700, 700, TC, 0.7))]
    gts = [G((0, 0, BC), (900, 900, BC), (300, 300, TC), (10, 900, TC))]
    s = evaluate(preds, gts)
    assert (s.bc.f1, s.tc.precision, s.tc.recall, s.tc.f1) == (0.6667, 0.3333, 0.5, 0.4)
    assert s.mf1 == (0.6667 + 0.4) / 2
    table = s.format_table()
    assert table.splitlines()[2].split()[:4] == ["BC", "1.0000", "0.5000", "0.6667"]
    assert table.splitlines()[-1].split() == ["mF1", "0.53335"]


def test_evaluate_images_and_errors() -> None:
    # Mapping input: image 1 has no predictions, it still counts (its GT is FN).
    s = evaluate({0: P((0, 0, BC, 0.5))}, {0: G((0, 0, BC)), 1: G((5, 5, BC))})
    assert (s.bc.tp, s.bc.n_gt, s.num_images) == (1, 2, 2)
    with pytest.raises(ValueError, match="image_3"):
        evaluate({3: P((0, 0, BC, 0.5))}, {0: G((0, 0, BC))})
    with pytest.raises(ValueError, match="one entry per image"):
        evaluate([P((0, 0, BC, 0.5))], [G((0, 0, BC)), G()])
    with pytest.raises(ValueError, match="class"):
        evaluate([P((0, 0, 7, 0.5))], [G((0, 0, BC))])
    assert isinstance(s, OcelotScore)
    assert DISTANCE_CUTOFF == 15.0


# ------------------------------------------------------------------------------ files


def _doc(points: list, **top) -> dict:
    return {"type": "Multiple points", **top, "points": points}


def _rec(i: int, x=10, y=20, c=1, p=0.5) -> dict:
    return {"name": f"image_{i}", "point": [x, y, c], "probability": p}


def _write(tmp_path: Path, doc, name: str = "f.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_write_read_roundtrip_and_evaluate_files(tmp_path: Path) -> None:
    gts = {0: G((10, 10, BC), (40, 40, TC)), 1: G(), 2: G((7, 7, TC))}
    preds = {0: P((11, 10, BC, 0.9), (40, 43, TC, 0.25)), 2: P((900, 900, TC, 1.0))}
    gp = write_points_json(tmp_path / "gt.json", gts, kind="gt")
    pp = write_points_json(tmp_path / "pred.json", preds, kind="pred")
    gdoc = json.loads(gp.read_text())
    assert gdoc["num_images"] == 3 and gdoc["version"] == {"major": 1, "minor": 0}
    assert gdoc["points"][0] == {"name": "image_0", "point": [10, 10, 1], "probability": 1.0}
    assert "num_images" not in json.loads(pp.read_text())
    back = read_points_json(gp, kind="gt")
    assert sorted(back) == [0, 1, 2] and back[1].shape == (0, 4)
    assert read_points_json(pp)[0].tolist() == [[11, 10, 1, 0.9], [40, 43, 2, 0.25]]
    # BC: TP 1 of 1. TC: (40,43) matches (40,40) -> TP; (900,900) FP; (7,7) FN.
    # TC P = 0.5, R = 0.5, F1 = 0.5; BC F1 = 1.0 -> mF1 = 0.75.
    s = evaluate_files(pp, gp)
    assert s.to_dict() == {
        "mF1": 0.75,
        "BC": {"precision": 1.0, "recall": 1.0, "f1": 1.0},
        "TC": {"precision": 0.5, "recall": 0.5, "f1": 0.5},
    }


def test_evaluate_files_image_sets_must_agree(tmp_path: Path) -> None:
    gp = _write(tmp_path, _doc([_rec(0, p=1.0)], num_images=2), "gt.json")
    pp = _write(tmp_path, _doc([_rec(0), _rec(5)]), "pred.json")
    with pytest.raises(PredictionFileError, match=r"image_5 has predictions.*2 images") as err:
        evaluate_files(pp, gp)
    assert str(err.value).startswith(str(pp))
    pp2 = _write(tmp_path, _doc([_rec(0)], num_images=3), "pred2.json")
    with pytest.raises(PredictionFileError, match="num_images is 3"):
        evaluate_files(pp2, gp)
    # Images without points still count: num_images 2, a prediction for image_1 is fine.
    pp3 = _write(tmp_path, _doc([_rec(1)], version={"major": 1, "minor": 0}), "pred3.json")
    assert evaluate_files(pp3, gp).bc.fp == 1


BAD_RECORDS = [
    (
        {"name": "image_0", "point": [1, 2, 3], "probability": 0.5},
        "'point' must be [x, y, cls] with integer cls in {1, 2}",
    ),
    (
        {"name": "image_0", "point": [1, 2], "probability": 0.5},
        "'point' must be a list [x, y, cls]",
    ),
    ({"name": "image_0", "point": [1.0, 2, 1], "probability": 0.5}, "integer x"),
    ({"name": "image_0", "point": [1, True, 1], "probability": 0.5}, "integer y"),
    ({"name": "image_0", "point": [1, 1024, 1], "probability": 0.5}, "y = 1024 is outside 0..1023"),
    ({"name": "image_0", "point": [-1, 2, 1], "probability": 0.5}, "x = -1 is outside"),
    ({"name": "image_0", "point": [1, 2, 1]}, "missing key(s) ['probability']"),
    ({"point": [1, 2, 1], "probability": 0.5}, "missing key(s) ['name']"),
    (
        {"name": "image_0", "point": [1, 2, 1], "probability": 0.5, "x": 1},
        "unexpected key(s) ['x']",
    ),
    ({"name": "img_0", "point": [1, 2, 1], "probability": 0.5}, "'name' must be 'image_<i>'"),
    ({"name": "image_-1", "point": [1, 2, 1], "probability": 0.5}, "'name' must be 'image_<i>'"),
    ({"name": 0, "point": [1, 2, 1], "probability": 0.5}, "'name' must be 'image_<i>'"),
    (
        {"name": "image_0", "point": [1, 2, 1], "probability": 1},
        "'probability' must be a JSON float",
    ),
    (
        {"name": "image_0", "point": [1, 2, 1], "probability": 1.5},
        "'probability' must be in [0, 1]",
    ),
    (
        {"name": "image_0", "point": [1, 2, 1], "probability": -0.1},
        "'probability' must be in [0, 1]",
    ),
    (
        {"name": "image_0", "point": [1, 2, 1], "probability": "0.5"},
        "'probability' must be a JSON float",
    ),
    ([1, 2, 1], "each record must be a JSON object"),
]


@pytest.mark.parametrize(("record", "problem"), BAD_RECORDS)
def test_malformed_record_is_named(tmp_path: Path, record, problem: str) -> None:
    path = _write(tmp_path, _doc([_rec(0), _rec(0, x=5), record]))
    with pytest.raises(PredictionFileError) as err:
        read_points_json(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: points[2]: ")
    assert problem in msg
    assert ". Fix: " in msg and "\n" not in msg
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_probability_is_rejected(tmp_path: Path, token: str) -> None:
    text = json.dumps(_doc([_rec(0), _rec(0)])).replace("0.5}]", f"{token}}}]")
    path = _write(tmp_path, text)
    with pytest.raises(
        PredictionFileError, match=r"points\[1\]: 'probability' must be a finite number"
    ):
        read_points_json(path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "top level must be a JSON object"),
        (
            json.dumps({"type": "Multiple polygons", "points": []}),
            "'type' must be \"Multiple points\"",
        ),
        (json.dumps({"points": []}), "'type' must be"),
        (json.dumps({"type": "Multiple points"}), "missing 'points' list"),
        (json.dumps({"type": "Multiple points", "points": {}}), "'points' must be a list"),
        (json.dumps(_doc([], num_images=-1)), "'num_images' must be an integer >= 0"),
        (json.dumps(_doc([], num_images=2.0)), "'num_images' must be an integer >= 0"),
        (
            json.dumps(_doc([_rec(0), _rec(2)], num_images=2)),
            "points[1]: 'name' image_2 is outside num_images = 2",
        ),
    ],
)
def test_malformed_file_is_rejected(tmp_path: Path, content: str, problem: str) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(PredictionFileError) as err:
        read_points_json(path)
    assert str(err.value).startswith(str(path)) and problem in str(err.value)


def test_gt_needs_num_images_and_missing_file(tmp_path: Path) -> None:
    path = _write(tmp_path, _doc([_rec(0, p=1.0)]))
    with pytest.raises(PredictionFileError, match="no 'num_images'"):
        read_points_json(path, kind="gt")
    assert list(read_points_json(path, kind="pred")) == [0]
    with pytest.raises(PredictionFileError, match="file not found"):
        read_points_json(tmp_path / "nope.json")
    # max_xy=None lifts the 1023 bound (e.g. larger patches).
    big = _write(tmp_path, _doc([_rec(0, x=5000)]), "big.json")
    assert read_points_json(big, max_xy=None)[0][0, 0] == 5000


def test_writer_rejects_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cls"):
        write_points_json(tmp_path / "a.json", {0: P((0, 0, 3, 0.5))})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_points_json(tmp_path / "a.json", {0: P((0, 0, 1, 1.5))})
    with pytest.raises(ValueError, match="num_images"):
        write_points_json(tmp_path / "a.json", {4: G((0, 0, 1))}, kind="gt", num_images=2)


def test_read_release_csv(tmp_path: Path) -> None:
    d = tmp_path / "cell"
    d.mkdir()
    (d / "401.csv").write_text("10,20,1\n30,40,2\n")
    (d / "402.csv").write_text("")  # empty files exist in the release
    (d / "403.csv").write_text("5,6,2\n\n")
    a = read_points_csv(d / "401.csv")
    assert a.tolist() == [[10, 20, 1, 1.0], [30, 40, 2, 1.0]]
    assert read_points_csv(d / "402.csv").shape == (0, 4)
    per = read_points_csv_dir(d)
    assert sorted(per) == [0, 1, 2] and per[2].tolist() == [[5, 6, 2, 1.0]]
    # A folder of CSVs works as ground truth for evaluate_files (image_i = i-th sorted file).
    pp = _write(tmp_path, _doc([_rec(0, 10, 20, 1, 0.9), _rec(2, 5, 6, 2, 0.4)]), "pred.json")
    s = evaluate_files(pp, d)
    assert (s.bc.tp, s.tc.tp, s.tc.n_gt, s.num_images) == (1, 1, 2, 3)
    (d / "404.csv").write_text("1,2,1\n3,4\n")
    with pytest.raises(DatasetError, match="line 2: expected 'x,y,class'"):
        read_points_csv(d / "404.csv")
    (d / "404.csv").write_text("1,2,5\n")
    with pytest.raises(DatasetError, match="line 1: class '5' is not 1"):
        read_points_csv(d / "404.csv")
