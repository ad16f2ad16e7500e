"""Purity on hand-worked cell tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely

from wsi_ocelot.purity import PurityResult, compute_purity, inside_geometry, inside_map, purity_grid

# 6 cells: 4 inside the CA box [0, 100)², 2 outside; inside: 3 TC + 1 BC; outside: 0 TC + 2 BC
X = np.array([10.0, 20.0, 30.0, 40.0, 150.0, 160.0])
Y = np.array([10.0, 20.0, 30.0, 40.0, 150.0, 160.0])
C = np.array([2, 2, 2, 1, 1, 1])
CA = shapely.box(0, 0, 100, 100)


def test_hand_worked_with_geometry() -> None:
    r = compute_purity(X, Y, C, ca_geometry=CA, tissue_area_um2=2.5e6, mpp=0.5)
    assert (r.n_cells, r.n_tc, r.n_bc) == (6, 3, 3)
    assert r.purity == pytest.approx(0.5) and r.purity_reason is None
    assert (r.n_cells_in_cancer_area, r.n_tc_in_cancer_area, r.n_bc_in_cancer_area) == (4, 3, 1)
    assert r.purity_in_cancer_area == pytest.approx(0.75) and r.purity_in_cancer_area_reason is None
    assert r.tissue_area_mm2 == pytest.approx(2.5)
    assert r.cancer_area_mm2 == pytest.approx(100 * 100 * 0.25 / 1e6)  # px² × mpp² → µm² → mm²
    assert r.mpp == 0.5
    d = r.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert list(d)[:4] == ["n_cells", "n_tc", "n_bc", "purity"]
    with pytest.raises(AttributeError):
        r.purity = 1.0  # type: ignore[misc]


def test_same_result_from_map_and_from_membership() -> None:
    m = np.zeros((20, 20), dtype=np.uint8)
    m[:10, :10] = 200  # 10 px × scale 10 = the same [0, 100)² box
    inside = inside_map(X, Y, m, scale=10.0)
    np.testing.assert_array_equal(inside, inside_geometry(X, Y, CA))
    r = compute_purity(X, Y, C, ca_inside=inside, ca_area_um2=2500.0, mpp=0.5)
    assert r.purity_in_cancer_area == pytest.approx(0.75) and r.cancer_area_mm2 == pytest.approx(
        0.0025
    )


def test_inside_map_threshold_origin_and_bounds() -> None:
    m = np.array([[0.2, 0.5], [0.9, 0.49]], dtype=np.float32)
    x = np.array([5.0, 15.0, 5.0, 15.0, -1.0, 25.0, 5.0])
    y = np.array([5.0, 5.0, 15.0, 15.0, 5.0, 5.0, 25.0])
    np.testing.assert_array_equal(
        inside_map(x, y, m, 10.0), [False, True, True, False, False, False, False]
    )
    np.testing.assert_array_equal(
        inside_map(x + 100, y + 50, m, 10.0, origin=(100, 50)),
        [False, True, True, False, False, False, False],
    )
    np.testing.assert_array_equal(inside_map(x, y, m, 10.0, threshold=0.1)[:4], [True] * 4)


def test_no_cells() -> None:
    r = compute_purity([], [], [], ca_geometry=CA, mpp=0.5)
    assert r.n_cells == 0 and r.purity is None and r.purity_reason == "no cells detected"
    assert r.purity_in_cancer_area is None and r.purity_in_cancer_area_reason == "no cells detected"
    assert r.n_cells_in_cancer_area == 0


def test_no_cancer_area() -> None:
    r = compute_purity(X, Y, C)
    assert r.purity == pytest.approx(0.5)
    assert r.purity_in_cancer_area is None and r.n_cells_in_cancer_area is None
    assert r.purity_in_cancer_area_reason == "no cancer-area prediction given"
    r = compute_purity(X, Y, C, ca_geometry=shapely.MultiPolygon(), mpp=0.5)
    assert (
        r.purity_in_cancer_area is None and r.purity_in_cancer_area_reason == "no cancer area found"
    )
    assert r.n_cells_in_cancer_area == 0 and r.cancer_area_mm2 == 0.0
    r = compute_purity(X, Y, C, ca_geometry=shapely.box(500, 500, 600, 600))
    assert r.purity_in_cancer_area_reason == "no cells inside the cancer area"


def test_only_tumour_cells_and_bad_input() -> None:
    r = compute_purity([1.0, 2.0], [1.0, 2.0], [2, 2])
    assert r.purity == 1.0
    with pytest.raises(ValueError, match="1 \\(BC\\) or 2"):
        compute_purity([1.0], [1.0], [0])
    with pytest.raises(ValueError, match="not both"):
        compute_purity(X, Y, C, ca_geometry=CA, ca_inside=np.ones(6, bool))
    with pytest.raises(ValueError, match="one entry per cell"):
        compute_purity(X, Y, C, ca_inside=np.ones(5, bool))
    assert isinstance(compute_purity(X, Y, C), PurityResult)


def test_purity_grid() -> None:
    tc, bc, p = purity_grid(X, Y, C, width=200, height=170, cell_size_px=100)
    assert tc.shape == bc.shape == p.shape == (2, 2)
    np.testing.assert_array_equal(tc, [[3, 0], [0, 0]])
    np.testing.assert_array_equal(bc, [[1, 0], [0, 2]])
    assert p[0, 0] == pytest.approx(0.75) and p[1, 1] == 0.0
    assert np.isnan(p[0, 1]) and np.isnan(p[1, 0])
    tc, bc, _ = purity_grid([-5.0, 250.0], [5.0, 5.0], [2, 2], 200, 170, 100)  # outside: ignored
    assert tc.sum() == 0 and bc.sum() == 0
    with pytest.raises(ValueError):
        purity_grid(X, Y, C, 200, 170, 0)
