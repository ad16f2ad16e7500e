"""Synthetic slide generator: determinism, OpenSlide compatibility, ground truth on the
rendered nuclei, the paper's Table-3 cell–tissue relationship, MPP independence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from scipy.spatial import cKDTree

from wsi_ocelot.errors import DatasetError
from wsi_ocelot.slide import open_slide, tissue_mask
from wsi_ocelot.synthetic import (
    SyntheticParams,
    build_tissue_model,
    make_synthetic_slide,
    read_ground_truth,
    render_um,
    write_synthetic_slide,
)
from wsi_ocelot.synthetic.layout import LYMPHOCYTE, TUMOUR, TUMOUR_SMALL


def _od(img: np.ndarray) -> np.ndarray:
    """Optical density summed over RGB (dark = high)."""
    return -np.log(np.clip(img.astype(np.float64), 1, 255) / 255.0).sum(axis=-1)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("syn") / "slide.tiff"
    return write_synthetic_slide(out, mpp=0.25, size=(1536, 1536), seed=3)


def _files(s) -> list[bytes]:
    return [Path(p).read_bytes() for p in (s.tiff_path, s.cells_path, s.tissue_path)]


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a = write_synthetic_slide(tmp_path / "a.tiff", size=(1024, 1024), seed=1)
    b = write_synthetic_slide(tmp_path / "b.tiff", size=(1024, 1024), seed=1)
    c = write_synthetic_slide(tmp_path / "c.tiff", size=(1024, 1024), seed=2)
    assert _files(a) == _files(b)
    fa, fc = _files(a), _files(c)
    assert all(x != y for x, y in zip(fa, fc, strict=True))


@pytest.mark.parametrize("mpp", [0.25, 0.5])
def test_openslide_reads_mpp(tmp_path: Path, mpp: float) -> None:
    s = write_synthetic_slide(tmp_path / "s", mpp=mpp, size=(1024, 768), seed=0)
    assert s.tiff_path.name == "s.tiff"
    import openslide

    with openslide.OpenSlide(str(s.tiff_path)) as osr:
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(mpp, rel=1e-3)
        assert osr.dimensions == (1024, 768)
        assert osr.level_count >= 2
    sl = open_slide(s.tiff_path)
    assert sl.mpp == pytest.approx(mpp, rel=1e-3)


def test_ground_truth_roundtrip_and_geojson(written) -> None:
    cells, ca = read_ground_truth(written.tiff_path)
    np.testing.assert_allclose(cells, written.cells, atol=0.006)
    assert set(np.unique(cells[:, 2])) == {1.0, 2.0}
    assert (
        shapely.equals_exact(
            shapely.normalize(ca), shapely.normalize(written.cancer_area), tolerance=0.02
        )
        or abs(ca.area - written.cancer_area.area) < 1e-3 * ca.area
    )
    data = json.loads(Path(written.tissue_path).read_text())
    assert data["type"] == "FeatureCollection" and data["features"]
    for f in data["features"]:
        g = shapely.geometry.shape(f["geometry"])
        assert g.geom_type in ("Polygon", "MultiPolygon") and g.is_valid and g.area > 0
        assert f["properties"]["classification"]["name"] == "Tumor"
        assert f["properties"]["objectType"] == "annotation"
    assert written.cancer_area.within(written.tissue.buffer(1.0))


def test_read_ground_truth_missing_sidecar(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        read_ground_truth(tmp_path / "nothing.tiff")


def test_ground_truth_sits_on_dark_nuclei(written) -> None:
    sl = open_slide(written.tiff_path)
    W, H = written.size
    img = sl.read_box((0, 0, W, H), (W, H))
    od = _od(img)
    c = written.cells
    gt = od[np.clip(c[:, 1].astype(int), 0, H - 1), np.clip(c[:, 0].astype(int), 0, W - 1)]
    # tissue pixels away from every nucleus = stroma / cytoplasm background
    yy, xx = np.mgrid[0:H:4, 0:W:4]
    d, _ = cKDTree(c[:, :2]).query(np.column_stack([xx.ravel() + 0.5, yy.ravel() + 0.5]))
    in_tissue = shapely.contains_xy(written.tissue, xx.ravel() + 0.5, yy.ravel() + 0.5)
    bg = od[yy.ravel(), xx.ravel()][in_tissue & (d > 12 / 0.25)]
    assert np.median(gt) > np.median(bg) + 0.8
    assert np.mean(gt > np.percentile(bg, 90)) > 0.9


def test_darkness_centroid_matches_ground_truth() -> None:
    s = make_synthetic_slide(mpp=0.25, size=(3072, 3072), seed=5)
    m = s.model
    cells = m.cells
    nn, _ = cKDTree(cells.xy).query(cells.xy, k=2)
    gap = nn[:, 1] - 1.3 * cells.a - 9.0  # room to the nearest neighbour's nucleus
    iso = np.flatnonzero(gap > 0.5)
    hv, ev = m.stain.h_vec * m.stain.h_gain, m.stain.e_vec * m.stain.e_gain
    unmix = np.linalg.pinv(np.stack([hv, ev], axis=1))  # (2, 3): OD → (H, E)
    rng = np.random.default_rng(0)
    pick = rng.choice(iso, size=min(40, iso.size), replace=False)
    mpp = 0.2
    errs = []
    for i in pick:
        cx, cy = cells.xy[i]
        r = float(cells.a[i]) * 1.2 + 0.5
        half = int(np.ceil(r / mpp)) + 4
        x0, y0 = cx - half * mpp, cy - half * mpp
        img = render_um(m, x0, y0, 2 * half, 2 * half, mpp).astype(np.float64)
        od = (-np.log(np.clip(img, 1, 255) / 255.0) - m.stain.glass_od) @ unmix[0]  # haematoxylin
        X, Y = np.meshgrid(
            x0 + (np.arange(2 * half) + 0.5) * mpp, y0 + (np.arange(2 * half) + 0.5) * mpp
        )
        dist = np.hypot(X - cx, Y - cy)
        base = np.median(od[(dist > r) & (dist < r + 1.5)])
        w = np.clip(od - base, 0, None) * (dist <= r)
        assert od[half, half] > base or w.sum() > 0, "no nucleus at the ground-truth point"
        errs.append(np.hypot((w * X).sum() / w.sum() - cx, (w * Y).sum() / w.sum() - cy))
    assert len(errs) >= 25
    assert np.median(errs) < 0.4 and np.max(errs) < 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_table3_relationship(seed: int) -> None:
    s = make_synthetic_slide(mpp=0.5, size=(2048, 2048), seed=seed)
    st = s.stats
    assert 0.88 <= st.tc_in_ca_fraction <= 0.97
    assert 0.78 <= st.bc_outside_ca_fraction <= 0.92
    assert 0.28 <= st.tc_fraction <= 0.42
    assert 0.30 <= st.ca_fraction <= 0.50
    # density close to OCELOT's ~170 cells per 205 × 205 µm
    per_patch = st.n_cells / (st.tissue_area_mm2 * 1e6) * 205**2
    assert 110 < per_patch < 260
    table = st.format_table()
    assert "TC" in table and "BC" in table and "%" in table


def test_small_tumour_cells_mimic_lymphocytes_but_sit_in_ca() -> None:
    m = build_tissue_model(1024, 1024, seed=0)
    c = m.cells
    small, lym = c.kind == TUMOUR_SMALL, c.kind == LYMPHOCYTE
    assert small.sum() > 50 and lym.sum() > 50
    for attr in ("a", "dark"):
        v1, v2 = getattr(c, attr)[small], getattr(c, attr)[lym]
        assert abs(v1.mean() - v2.mean()) < 0.1 * v2.mean()
    assert np.all(c.cls[small] == 2) and np.all(c.cls[lym] == 1)
    inca = shapely.contains_xy(m.cancer_area, c.xy[:, 0], c.xy[:, 1])
    assert inca[small].mean() > 0.9
    assert c.a[c.kind == TUMOUR].mean() > 1.4 * c.a[lym].mean()


def test_same_um_region_agrees_across_mpp() -> None:
    m = build_tissue_model(512, 512, seed=4)
    x, y = m.cancer_area.representative_point().coords[0]
    x0, y0 = max(0.0, x - 64), max(0.0, y - 64)
    fine = render_um(m, x0, y0, 512, 512, 0.25).astype(np.float64)
    coarse = render_um(m, x0, y0, 256, 256, 0.5).astype(np.float64)
    down = fine.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
    assert np.abs(down - coarse).mean() < 8.0
    assert np.corrcoef(down.ravel(), coarse.ravel())[0, 1] > 0.9


def test_render_independent_of_band_split() -> None:
    m = build_tissue_model(300, 300, seed=6)
    whole = render_um(m, 0, 0, 600, 600, 0.5).astype(int)
    top = render_um(m, 0, 0, 600, 256, 0.5).astype(int)
    bottom = render_um(m, 0, 128, 600, 344, 0.5).astype(int)
    assert np.abs(np.concatenate([top, bottom]) - whole).max() <= 2


def test_in_memory_box_queries(written) -> None:
    box = (300, 400, 512, 512)
    sub = written.cells_in_box(box)
    assert len(sub) > 0
    assert np.all((sub[:, 0] >= 300) & (sub[:, 0] < 812) & (sub[:, 1] >= 400) & (sub[:, 1] < 912))
    ca = written.cancer_area_in_box(box)
    assert ca.is_empty or ca.within(shapely.box(300, 400, 812, 912).buffer(1e-6))
    img = written.render(box, out_mpp=1.0)
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    sl = open_slide(written.tiff_path)
    ref = sl.read_box(box, (512, 512)).astype(float)
    mine = written.render(box).astype(float)
    assert np.abs(ref - mine).mean() < 6.0  # JPEG vs direct render


def test_empty_slide_has_no_tissue(tmp_path: Path, written) -> None:
    e = write_synthetic_slide(tmp_path / "empty.tiff", size=(1024, 1024), seed=0, empty=True)
    assert len(e.cells) == 0 and e.cancer_area.is_empty
    cells, ca = read_ground_truth(e.tiff_path)
    assert cells.shape == (0, 3) and ca.is_empty
    assert tissue_mask(open_slide(e.tiff_path), mpp=4.0).fraction < 0.01
    true_frac = written.tissue.area / (written.size[0] * written.size[1])
    found = tissue_mask(open_slide(written.tiff_path), mpp=4.0).fraction
    assert 0.8 * true_frac < found < 1.25 * true_frac


def test_params_validation() -> None:
    with pytest.raises(ValueError, match="tc_in_ca"):
        SyntheticParams(tc_in_ca=1.5)
    with pytest.raises(ValueError, match="mpp"):
        make_synthetic_slide(mpp=0.0)
