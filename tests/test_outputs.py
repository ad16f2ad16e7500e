"""Output writers: QuPath GeoJSON (cells, cancer area), raster → polygons, predictions.zarr,
overview.png."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import shapely
import zarr
from conftest import import_extra
from PIL import Image

from wsi_ocelot.errors import PredictionFileError, WsiOcelotError
from wsi_ocelot.outputs import (
    CELL_CLASSES,
    CellsGeoJSONWriter,
    OutputWriteError,
    PredictionStore,
    open_predictions,
    polygons_from_map,
    write_overview,
    write_tissue_geojson,
)
from wsi_ocelot.purity import purity_grid


def _cells(n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return (
        rng.uniform(0, 5000, n),
        rng.uniform(0, 4000, n),
        rng.integers(1, 3, n),
        rng.uniform(0, 1, n),
    )


def _check_qupath_features(doc: dict, object_type: str) -> None:
    assert doc["type"] == "FeatureCollection"
    for f in doc["features"]:
        assert f["type"] == "Feature"
        props = f["properties"]
        assert props["objectType"] == object_type
        cl = props["classification"]
        assert isinstance(cl["name"], str) and cl["name"]
        assert len(cl["color"]) == 3 and all(
            isinstance(v, int) and 0 <= v <= 255 for v in cl["color"]
        )
        geom = shapely.geometry.shape(f["geometry"])
        assert geom.is_valid, shapely.is_valid_reason(geom)
        # QuPath snaps to 0.01 px: snapping again must change nothing
        snapped = shapely.set_precision(geom, 0.01)
        assert (
            snapped.is_valid and snapped.equals(geom) and snapped.area == pytest.approx(geom.area)
        )


# -- cells GeoJSON ----------------------------------------------------------------------------


def test_cells_geojson_roundtrip_batches_and_origin(tmp_path: Path) -> None:
    x, y, c, p = _cells(1000)
    path = tmp_path / "cells.geojson"
    with CellsGeoJSONWriter(path, origin=(100.0, 50.0)) as w:
        for s in range(0, 1000, 137):  # uneven batches
            w.write(x[s : s + 137], y[s : s + 137], c[s : s + 137], p[s : s + 137])
        w.write([], [], [], [])
    assert w.count == 1000
    doc = json.loads(path.read_text())
    _check_qupath_features(doc, "detection")
    feats = doc["features"]
    assert len(feats) == 1000
    xy = np.array([f["geometry"]["coordinates"] for f in feats])
    np.testing.assert_allclose(xy[:, 0], np.round(x - 100.0, 2), atol=1e-9)
    np.testing.assert_allclose(xy[:, 1], np.round(y - 50.0, 2), atol=1e-9)
    names = [f["properties"]["classification"]["name"] for f in feats]
    assert names == [CELL_CLASSES[int(k)][0] for k in c]
    assert {"Tumor", "Background cell"} == set(names)
    probs = np.array([f["properties"]["measurements"]["probability"] for f in feats])
    np.testing.assert_allclose(probs, p, atol=5e-5)
    assert all(f["geometry"]["type"] == "Point" for f in feats)
    assert not list(tmp_path.glob(".*part"))


def test_cells_geojson_is_deterministic_and_gzip_readable(tmp_path: Path) -> None:
    x, y, c, p = _cells(300, seed=1)
    outs = []
    for name, gz in (
        ("a.geojson", False),
        ("b.geojson", False),
        ("a.geojson.gz", True),
        ("b.geojson.gz", True),
    ):
        with CellsGeoJSONWriter(tmp_path / name, gzip=gz) as w:
            w.write(x, y, c, p)
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1] and outs[2] == outs[3]
    assert gzip.decompress(outs[2]) == outs[0]
    doc = json.loads(gzip.decompress(outs[2]))
    assert len(doc["features"]) == 300


def test_cells_geojson_empty_and_negative_zero(tmp_path: Path) -> None:
    path = tmp_path / "empty.geojson"
    with CellsGeoJSONWriter(path):
        pass
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}
    path2 = tmp_path / "z.geojson"
    with CellsGeoJSONWriter(path2, origin=(10.0, 10.0)) as w:
        w.write([10.001], [9.999], [2], [1.0])
    assert "-0.00" not in path2.read_text()


def test_cells_geojson_exception_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "cells.geojson"
    with pytest.raises(RuntimeError), CellsGeoJSONWriter(path) as w:
        w.write(*_cells(10))
        raise RuntimeError("engine crashed")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"cls": [3]}, "1 \\(BC\\) or 2"),
        ({"prob": [1.5]}, "\\[0, 1\\]"),
        ({"x": [np.nan]}, "finite"),
        ({"y": [1.0, 2.0]}, "same length"),
    ],
)
def test_cells_geojson_rejects_bad_batches(tmp_path: Path, bad: dict, match: str) -> None:
    cols = {"x": [1.0], "y": [1.0], "cls": [1], "prob": [0.5]} | bad
    with CellsGeoJSONWriter(tmp_path / "c.geojson") as w, pytest.raises(ValueError, match=match):
        w.write(cols["x"], cols["y"], cols["cls"], cols["prob"])


def test_output_folder_missing_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(OutputWriteError) as info:
        CellsGeoJSONWriter(tmp_path / "nope" / "cells.geojson")
    assert isinstance(info.value, WsiOcelotError) and isinstance(info.value, OSError)
    assert "\n" not in str(info.value) and "Fix:" in str(info.value)


# -- tissue GeoJSON -----------------------------------------------------------------------------


def test_tissue_geojson_repairs_or_drops_invalid_polygons(tmp_path: Path) -> None:
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    repeated = shapely.Polygon([(20, 0), (30, 0), (30, 0), (30, 10), (20, 10), (20, 10), (20, 0)])
    sliver = shapely.Polygon(
        [(0, 50), (100, 50), (100, 50.001), (0, 50.0005)]
    )  # collapses at 0.01 px
    two_points = shapely.Polygon([(0, 0), (1, 1), (0, 0), (1, 1)])
    with_hole = shapely.Polygon(
        [(100, 100), (200, 100), (200, 200), (100, 200)],
        [[(120, 120), (180, 120), (180, 180), (120, 180)]],
    )
    multi = shapely.MultiPolygon(
        [shapely.box(300, 300, 310.004, 310.006), shapely.box(400, 400, 410, 410)]
    )
    path = tmp_path / "tissue.geojson"
    write_tissue_geojson(
        path, [bowtie, repeated, sliver, two_points, with_hole, multi], origin=(0.0, 0.0)
    )
    doc = json.loads(path.read_text())
    _check_qupath_features(doc, "annotation")
    geoms = [shapely.geometry.shape(f["geometry"]) for f in doc["features"]]
    assert all(g.geom_type == "Polygon" for g in geoms)
    # bow-tie → two triangles, repeated → one square, sliver and 2-point ring dropped, hole kept
    assert len(geoms) == 2 + 1 + 1 + 2
    assert sum(g.area for g in geoms[:2]) == pytest.approx(50.0)
    assert geoms[3].area == pytest.approx(100 * 100 - 60 * 60) and len(geoms[3].interiors) == 1
    for f in doc["features"]:
        for ring in f["geometry"]["coordinates"]:
            assert ring[0] == ring[-1] and len({tuple(p) for p in ring}) >= 3
            assert all(round(v, 2) == v for pt in ring for v in pt)
    assert doc["features"][0]["properties"]["name"] == "Cancer area"


def test_tissue_geojson_origin_empty_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "tissue.geojson"
    write_tissue_geojson(path, shapely.box(1000, 2000, 1010, 2020), origin=(1000, 2000))
    g = shapely.geometry.shape(json.loads(path.read_text())["features"][0]["geometry"])
    assert g.bounds == (0.0, 0.0, 10.0, 20.0)
    for empty in (None, shapely.MultiPolygon(), shapely.Polygon()):
        write_tissue_geojson(path, empty)
        assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}
    gz = tmp_path / "tissue.geojson.gz"
    write_tissue_geojson(gz, shapely.box(0, 0, 5, 5), gzip=True)
    assert len(json.loads(gzip.decompress(gz.read_bytes()))["features"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tissue.geojson", "tissue.geojson.gz"]


# -- raster → polygons --------------------------------------------------------------------------


def test_polygons_from_map_square_with_hole_and_two_blobs() -> None:
    m = np.zeros((40, 60), dtype=np.float32)
    m[5:25, 5:25] = 0.9  # 20×20 square
    m[10:15, 12:18] = 0.1  # 5×6 hole
    m[30:35, 40:50] = 0.7  # second blob 5×10
    g = polygons_from_map(m, threshold=0.5, scale=4.0, origin=(100.0, 200.0))
    assert g.is_valid and g.geom_type == "MultiPolygon" and len(g.geoms) == 2
    assert g.area == pytest.approx((400 - 30 + 50) * 16)
    big = max(g.geoms, key=lambda p: p.area)
    assert len(big.interiors) == 1
    assert big.bounds == (100 + 5 * 4, 200 + 5 * 4, 100 + 25 * 4, 200 + 25 * 4)
    assert shapely.Polygon(big.interiors[0]).area == pytest.approx(30 * 16)
    # min_area drops the small blob; uint8 maps are read as prob × 255
    g2 = polygons_from_map((m * 255).astype(np.uint8), min_area=60 * 16, scale=4.0)
    assert len(g2.geoms) == 1
    assert polygons_from_map(np.zeros((5, 5))).is_empty


def test_polygons_from_map_corner_touching_and_nested() -> None:
    m = np.array([[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 1], [0, 0, 1, 1]], dtype=bool)
    g = polygons_from_map(m)
    assert g.is_valid and g.area == m.sum() and len(g.geoms) == 2
    ring = np.zeros((9, 9), dtype=bool)
    ring[1:8, 1:8] = True
    ring[2:7, 2:7] = False
    ring[4, 4] = True  # island in the lake
    g = polygons_from_map(ring)
    assert g.is_valid and g.area == ring.sum() and len(g.geoms) == 2


def test_polygons_from_map_random_matches_pixel_union() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(5)
    for _ in range(60):
        m = rng.random(tuple(rng.integers(1, 25, 2))) < rng.uniform(0.2, 0.8)
        g = polygons_from_map(m)
        if not m.any():
            assert g.is_empty
            continue
        r, c = np.nonzero(m)
        ref = shapely.unary_union(shapely.box(c, r, c + 1, r + 1))
        assert g.is_valid, shapely.is_valid_reason(g)
        assert g.area == m.sum() and g.equals(ref)
        assert len(g.geoms) == ndimage.label(m)[1]


def test_polygons_from_map_simplify_stays_valid() -> None:
    yy, xx = np.mgrid[0:200, 0:200]
    disk = ((yy - 100) ** 2 + (xx - 100) ** 2) < 80**2
    g = polygons_from_map(disk, simplify=1.0)
    assert g.is_valid
    assert g.area == pytest.approx(disk.sum(), rel=0.02)
    assert len(shapely.get_coordinates(g)) < len(shapely.get_coordinates(polygons_from_map(disk)))


def test_polygons_from_map_feeds_valid_tissue_geojson(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    m = rng.random((60, 60)) < 0.5
    g = polygons_from_map(m, scale=3.3, origin=(0.123, 7.777))
    path = tmp_path / "tissue.geojson"
    write_tissue_geojson(path, g, origin=(0.123, 7.777))
    doc = json.loads(path.read_text())
    _check_qupath_features(doc, "annotation")
    total = sum(shapely.geometry.shape(f["geometry"]).area for f in doc["features"])
    assert total == pytest.approx(m.sum() * 3.3**2, rel=1e-3)


# -- predictions.zarr ---------------------------------------------------------------------------


def test_prediction_store_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    path = tmp_path / "predictions.zarr"
    parts = []
    with PredictionStore(path, cell_chunk=256) as store:
        store.set_attrs({"slide": tmp_path / "s.svs", "mpp": np.float64(0.25), "size": (100, 200)})
        store.create_tissue_map(301, 257, mpp=0.8, chunk=64, level0_downsample=3.2)
        for i in range(120):
            n = int(rng.integers(0, 20))
            batch = (
                rng.uniform(0, 1e5, n),
                rng.uniform(0, 1e5, n),
                rng.integers(1, 3, n),
                rng.random(n),
            )
            parts.append(batch)
            store.append_cells(*batch)
            if i == 50:
                store.flush()  # a partial chunk in the middle must not break later appends
        prob = rng.random((301, 257)).astype(np.float32)
        for y0 in range(0, 301, 100):
            for x0 in range(0, 257, 100):
                store.write_tissue_block(y0, x0, prob[y0 : y0 + 100, x0 : x0 + 100])
        store.write_tissue_block(300, 250, np.full((10, 10), 255, np.uint8))  # cropped at the edge

    g = zarr.open_group(path, mode="r")
    assert g.metadata.zarr_format == 3
    want = [np.concatenate([p[k] for p in parts]) for k in range(4)]
    np.testing.assert_array_equal(g["cells/x"][:], want[0].astype(np.float32))
    np.testing.assert_array_equal(g["cells/y"][:], want[1].astype(np.float32))
    np.testing.assert_array_equal(g["cells/class"][:], want[2].astype(np.uint8))
    np.testing.assert_array_equal(g["cells/prob"][:], want[3].astype(np.float32))
    assert g["cells/x"].dtype == np.float32 and g["cells/class"].dtype == np.uint8
    assert g["cells"].attrs["count"] == want[0].size
    assert (
        g.attrs["mpp"] == 0.25
        and g.attrs["size"] == [100, 200]
        and g.attrs["slide"].endswith("s.svs")
    )

    assert "tissue" not in g  # the map is an OME-Zarr image of its own beside the store
    t = zarr.open_group(tmp_path / "tissue.ome.zarr", mode="r")
    assert t.metadata.zarr_format == 2  # NGFF 0.4 on Zarr v2 by default
    t0 = t["0"][:]
    expect = np.rint(prob * 255).astype(np.uint8)
    expect[300, 250:257] = 255
    np.testing.assert_array_equal(t0, expect)
    t1 = t["1"][:]
    assert t1.shape == (151, 129)
    assert int(t1[0, 0]) == (int(t0[:2, :2].astype(int).sum()) + 2) // 4
    ms = t.attrs["multiscales"][0]
    assert ms["version"] == "0.4" and ms["name"] == "cancer_area_probability"
    assert ms["axes"] == [
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1"]
    assert ms["datasets"][0]["coordinateTransformations"][0] == {
        "type": "scale",
        "scale": [0.8, 0.8],
    }
    assert ms["datasets"][1]["coordinateTransformations"][0] == {
        "type": "scale",
        "scale": [1.6, 1.6],
    }

    store = open_predictions(path)
    assert store.n_cells == want[0].size and store.tissue_mpp == 0.8
    batches = list(store.iter_cells(batch_size=500))
    np.testing.assert_array_equal(
        np.concatenate([b["x"] for b in batches]), want[0].astype(np.float32)
    )
    np.testing.assert_array_equal(store.read_tissue(10, 20, 30, 45), expect[10:20, 30:45])
    np.testing.assert_allclose(
        store.read_tissue(0, 5, 0, 5, as_float=True), prob[:5, :5], atol=0.5 / 255 + 1e-6
    )
    with pytest.raises(ValueError, match="read-only"):
        store.append_cells([1.0], [1.0], [1], [0.5])


def test_prediction_store_append_mode_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "predictions.zarr"
    with PredictionStore(path, cell_chunk=8) as s:
        s.append_cells(np.arange(5.0), np.arange(5.0), np.ones(5, int), np.full(5, 0.5))
    with PredictionStore(path, mode="a") as s:
        assert s.n_cells == 5
        s.append_cells(np.arange(5.0, 12.0), np.arange(7.0), np.full(7, 2), np.full(7, 0.9))
    cells = open_predictions(path).cells()
    np.testing.assert_array_equal(cells["x"], np.arange(12.0, dtype=np.float32))
    with pytest.raises(ValueError, match="1 \\(BC\\) or 2"):
        PredictionStore(tmp_path / "p2.zarr").append_cells([1.0], [1.0], [0], [0.5])
    with pytest.raises(PredictionFileError):
        open_predictions(tmp_path / "missing.zarr")
    (tmp_path / "notzarr").mkdir()
    with pytest.raises(PredictionFileError, match="Fix:"):
        open_predictions(tmp_path / "notzarr")
    with pytest.raises(PredictionFileError):
        open_predictions(path).tissue(0)


# -- overview.png -------------------------------------------------------------------------------


def test_write_overview(tmp_path: Path) -> None:
    h, w, ds = 120, 160, 16.0
    thumb = np.full((h, w, 3), 235, np.uint8)
    thumb[20:100, 30:130] = (190, 120, 180)
    ca = shapely.box(50 * ds, 40 * ds, 100 * ds, 80 * ds)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(30 * ds, 130 * ds, 3000), rng.uniform(20 * ds, 100 * ds, 3000)
    cls = np.where(shapely.contains_xy(ca, x, y), 2, 1)
    _, _, pur = purity_grid(x, y, cls, w * ds, h * ds, 10 * ds)
    path = tmp_path / "overview.png"
    write_overview(
        path, thumb, ds, ca_geometry=ca, purity=pur, purity_cell_size=10 * ds, cells=(x, y, cls)
    )
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] > h and img.shape[1] >= 2 * w
    # the outline is green on the left panel's CA border
    assert tuple(img[40, 75]) == (0, 200, 0)
    # the heat map is red inside CA (purity 1) and blue outside (purity 0) on the right panel
    r_in = img[60, w + 8 + 75]
    r_out = img[30, w + 8 + 35]
    assert r_in[0] > r_in[2] and r_out[2] > r_out[0]
    write_overview(tmp_path / "plain.png", thumb, ds)
    assert Image.open(tmp_path / "plain.png").size == (w, h + 34)
    with pytest.raises(ValueError, match="purity_cell_size"):
        write_overview(tmp_path / "bad.png", thumb, ds, purity=pur)
    assert not (tmp_path / "bad.png").exists()


# -- tissue.ome.zarr: OME-NGFF 0.4 (Zarr v2) and 0.5 (Zarr v3) ------------------------------------


def _write_map(path: Path, ngff: str) -> np.ndarray:
    from wsi_ocelot.outputs import TissueMapStore

    rng = np.random.default_rng(5)
    prob = rng.random((203, 150)).astype(np.float32)
    tm = TissueMapStore.create(
        path, 203, 150, 0.8, slide_mpp=0.25, level0_downsample=3.2, ngff=ngff, chunk=64
    )
    tm.write_block(0, 0, prob)
    tm.build_pyramid()
    return np.rint(prob * 255).astype(np.uint8)


def test_tissue_map_ngff04_validates_and_opens_with_ome_zarr_py(tmp_path: Path) -> None:
    import ome_zarr_models  # the dev extra
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v04 import Image

    path = tmp_path / "tissue.ome.zarr"
    expect = _write_map(path, "0.4")
    group = zarr.open_group(path, mode="r")
    assert (
        group.metadata.zarr_format == 2
        and (path / ".zattrs").is_file()
        and (path / "0" / ".zarray").is_file()
    )
    assert (
        json.loads((path / "0" / ".zarray").read_text())["dimension_separator"] == "/"
    )  # NGFF 0.4 requires it
    assert (
        json.loads((path / "0" / ".zarray").read_text())["compressor"]["id"] == "blosc"
    )  # Bio-Formats decodes it
    Image.from_zarr(group)  # the maintained validator accepts it as 0.4
    assert type(ome_zarr_models.open_ome_zarr(group)).__module__.startswith("ome_zarr_models.v04")

    nodes = list(Reader(parse_url(str(path)))())
    image = nodes[0]
    assert [d.shape for d in image.data] == [(203, 150), (102, 75)]
    np.testing.assert_array_equal(np.asarray(image.data[0]), expect)
    cts = image.metadata["coordinateTransformations"]
    assert [c[0]["scale"] for c in cts] == [[0.8, 0.8], [1.6, 1.6]]
    # placement: each map pixel's centre sits where the slide level-0 px it covers have theirs,
    # with the slide shown at scale = its µm/px (level-0 px j centred at j · 0.25 µm)
    for k, c in enumerate(cts):
        (sy, sx), (ty, tx) = c[0]["scale"], c[1]["translation"]
        d = 3.2 * 2**k  # level-0 px per map px of level k
        for idx in (0, 7):
            first, last = idx * d, (idx + 1) * d - 1  # the level-0 px the map px covers (centres)
            assert idx * sx + tx == pytest.approx((first + last) / 2 * 0.25)
            assert idx * sy + ty == pytest.approx((first + last) / 2 * 0.25)
    assert [a["unit"] for a in image.metadata["axes"]] == ["micrometer", "micrometer"]
    meta = group.attrs["wsi_ocelot"]
    assert (
        meta["level0_downsample"] == 3.2
        and meta["level0_offset"] == [0.0, 0.0]
        and meta["slide_mpp"] == 0.25
    )


def test_tissue_map_ngff05_validates_as_05(tmp_path: Path) -> None:
    import ome_zarr_models  # the dev extra
    from ome_zarr_models.v05 import Image

    path = tmp_path / "tissue.ome.zarr"
    expect = _write_map(path, "0.5")
    group = zarr.open_group(path, mode="r")
    assert group.metadata.zarr_format == 3 and group.attrs["ome"]["version"] == "0.5"
    assert "version" not in group.attrs["ome"]["multiscales"][0]  # 0.5 keeps it in "ome"
    Image.from_zarr(group)
    assert type(ome_zarr_models.open_ome_zarr(group)).__module__.startswith("ome_zarr_models.v05")
    assert group["0"].metadata.dimension_names == ("y", "x")
    np.testing.assert_array_equal(group["0"][:], expect)


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_prediction_store_reads_the_map_in_either_version(tmp_path: Path, ngff: str) -> None:
    with PredictionStore(tmp_path / "predictions.zarr") as store:
        store.create_tissue_map(
            50, 40, mpp=0.8, chunk=16, level0_downsample=3.2, slide_mpp=0.25, ngff=ngff
        )
        store.write_tissue_block(0, 0, np.full((50, 40), 200, np.uint8))
    store = open_predictions(tmp_path / "predictions.zarr")
    assert store.tissue_mpp == 0.8 and store.tissue_map.ngff_version == ngff
    assert store.tissue_map.level0_downsample() == 3.2 and store.tissue(1).shape == (25, 20)
    assert int(store.read_tissue(0, 2, 0, 2).min()) == 200


def test_prediction_store_reads_a_map_inside_an_older_store(tmp_path: Path) -> None:
    """Results written before the map had its own folder: predictions.zarr/tissue, NGFF 0.5."""
    from wsi_ocelot.outputs import ngff_multiscales

    path = tmp_path / "predictions.zarr"
    with PredictionStore(path) as store:
        store.append_cells([10.0], [20.0], [2], [0.9])
    g = zarr.open_group(path, mode="r+")
    t = g.create_group("tissue")
    t.create_array("0", shape=(8, 8), dtype=np.uint8, chunks=(8, 8), fill_value=0)[:] = 255
    t.attrs.update(
        {
            "ome": {"version": "0.5", "multiscales": [ngff_multiscales(0.8, 1, version="0.5")]},
            "wsi_ocelot": {"mpp": 0.8, "level0_downsample": 3.2},
        }
    )
    store = open_predictions(path)
    assert store.tissue_mpp == 0.8 and store.tissue_map.ngff_version == "0.5"
    assert int(store.read_tissue(0, 8, 0, 8).min()) == 255


@pytest.mark.parametrize(
    "cache_bytes", [64 << 20, 3 * 2 * 32 * 32]
)  # roomy, and three chunks (evicts all the time)
def test_tissue_map_chunk_cache_stores_what_was_written(tmp_path: Path, cache_bytes: int) -> None:
    """Unaligned, overlapping blocks through the write-back chunk cache read back exactly as
    written into a plain array, before and after the handle is closed and the map reopened;
    a write after a read (chunks already stored) keeps the stored pixels."""
    from wsi_ocelot.outputs import TissueMapStore

    rng = np.random.default_rng(3)
    ref = np.zeros((150, 203), np.uint8)
    tm = TissueMapStore.create(tmp_path / "t.ome.zarr", *ref.shape, 0.8, ngff="0.4", chunk=32)
    tm._cache_bytes = cache_bytes
    for k in range(60):
        y0, x0 = int(rng.integers(0, 150)), int(rng.integers(0, 203))
        h, w = int(rng.integers(1, 70)), int(rng.integers(1, 70))
        block = rng.integers(0, 256, (h, w), dtype=np.uint8)
        tm.write_block(y0, x0, block)
        ref[y0 : y0 + h, x0 : x0 + w] = block[: 150 - y0, : 203 - x0]
        if k == 30:  # a read in between stores every cached chunk; later writes read them back
            np.testing.assert_array_equal(tm.read(0, 150, 0, 203), ref)
    probs = rng.random((40, 50))
    tm.write_block(100, 160, probs)  # floats: stored as round(p × 255), cropped at the edge
    ref[100:140, 160:203] = np.rint(probs[:, :43] * 255).astype(np.uint8)
    np.testing.assert_array_equal(tm.read(0, 150, 0, 203), ref)
    assert not tm.written(0, 1, 0, 1) or ref[:32, :32].any()
    tm.build_pyramid()
    again = TissueMapStore.open(tmp_path / "t.ome.zarr", mode="r+")
    np.testing.assert_array_equal(again.read(0, 150, 0, 203), ref)
    again.write_block(
        5, 7, np.full((3, 4), 9, np.uint8)
    )  # an opened map: chunks read back before writing
    again.flush()
    ref[5:8, 7:11] = 9
    np.testing.assert_array_equal(
        TissueMapStore.open(tmp_path / "t.ome.zarr").read(0, 150, 0, 203), ref
    )


def test_tissue_map_errors(tmp_path: Path) -> None:
    from wsi_ocelot.outputs import TissueMapStore

    with pytest.raises(ValueError, match="0.4, 0.5"):
        TissueMapStore.create(tmp_path / "t.ome.zarr", 4, 4, 0.8, ngff="0.6")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(PredictionFileError, match="Fix:"):
        TissueMapStore.open(tmp_path / "empty.zarr")


# -- cells.parquet / cells.csv ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cells.parquet", "cells.csv"])
def test_cells_table_writer_streams_every_row(tmp_path: Path, name: str) -> None:
    import pandas as pd

    from wsi_ocelot.outputs import CELL_TABLE_COLUMNS, CellsTableWriter

    x, y, cls, prob = _cells(2500, seed=4)
    inside = np.random.default_rng(4).random(2500) > 0.6
    with CellsTableWriter(tmp_path / name, mpp=0.25, row_group=1000) as w:
        for s in range(0, 2500, 333):
            w.write(
                x[s : s + 333],
                y[s : s + 333],
                cls[s : s + 333],
                prob[s : s + 333],
                inside[s : s + 333],
            )
        assert not (tmp_path / name).exists()  # appears only when complete
    assert w.count == 2500
    df = (
        pd.read_parquet(tmp_path / name)
        if name.endswith("parquet")
        else pd.read_csv(tmp_path / name)
    )
    assert tuple(df.columns) == CELL_TABLE_COLUMNS and len(df) == 2500
    np.testing.assert_array_equal(df["x"].to_numpy(np.float32), x.astype(np.float32))
    np.testing.assert_array_equal(df["prob"].to_numpy(np.float32), prob.astype(np.float32))
    np.testing.assert_allclose(df["x_um"], x.astype(np.float32).astype(np.float64) * 0.25)
    np.testing.assert_array_equal(df["class_id"], cls)
    assert (df["class_name"].astype(str) == np.where(cls == 2, "Tumor", "Background cell")).all()
    np.testing.assert_array_equal(df["in_cancer_area"].to_numpy(bool), inside)
    if name.endswith("parquet"):
        import pyarrow.parquet as pq

        assert (
            pq.ParquetFile(tmp_path / name).metadata.num_row_groups == 3
        )  # streamed in row groups


def test_cells_table_writer_errors_leave_nothing(tmp_path: Path) -> None:
    from wsi_ocelot.outputs import CellsTableWriter

    with pytest.raises(ValueError, match="parquet, csv"):
        CellsTableWriter(tmp_path / "cells.xlsx", mpp=0.25)
    with pytest.raises(OutputWriteError, match="Fix:"):
        CellsTableWriter(tmp_path / "missing" / "cells.parquet", mpp=0.25)
    with pytest.raises(RuntimeError), CellsTableWriter(tmp_path / "cells.parquet", mpp=0.25) as w:
        w.write([1.0], [2.0], [1], [0.5])
        raise RuntimeError("the slide failed")
    assert list(tmp_path.iterdir()) == []


# -- SpatialData export (optional extra) -----------------------------------------------------------


def _result_folder(root: Path) -> tuple[Path, tuple[np.ndarray, ...], shapely.Polygon]:
    """A slide result as the engine leaves it: cells in predictions.zarr, the map, tissue.geojson
    in QuPath's frame (bounds offset (100, 50) subtracted)."""
    folder = root / "slide-01"
    folder.mkdir()
    x, y, cls, prob = _cells(500, seed=9)
    with PredictionStore(folder / "predictions.zarr") as store:
        store.set_attrs(
            {
                "slide": {"path": "s.mrxs", "mpp": 0.25, "bounds": [100, 50, 5000, 4000]},
                "run": {"qupath_crop": True},
            }
        )
        store.create_tissue_map(1250, 1563, 0.8, level0_downsample=3.2, slide_mpp=0.25)
        store.write_tissue_block(
            0, 0, np.ones((600, 800), np.float32)
        )  # cancer area: level-0 [0, 2560) × [0, 1920)
        store.append_cells(x, y, cls, prob)
    ca = shapely.box(0, 0, 2560, 1920)
    write_tissue_geojson(folder / "tissue.geojson", ca, origin=(100, 50))
    return folder, (x, y, cls, prob), ca


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_export_spatialdata_without_the_extra_is_a_one_line_error(
    tmp_path: Path, monkeypatch
) -> None:
    import subprocess
    import sys

    from wsi_ocelot.errors import MissingExtraError
    from wsi_ocelot.outputs import export_spatialdata

    folder, _, _ = _result_folder(tmp_path)
    monkeypatch.setitem(sys.modules, "spatialdata", None)  # as if not installed
    with pytest.raises(MissingExtraError) as err:
        export_spatialdata(folder)
    msg = str(err.value)
    assert "\n" not in msg and 'pip install "wsi-ocelot[spatialdata]"' in msg
    # the command line: one line on stderr, exit code 2, no traceback
    code = (
        "import sys; sys.modules['spatialdata'] = None; from wsi_ocelot.cli import main; "
        f"raise SystemExit(main(['export-spatialdata', {str(folder)!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "wsi-ocelot[spatialdata]" in lines[0]


def test_export_spatialdata_opens_with_read_zarr_and_matches_the_cells(tmp_path: Path) -> None:
    sd = import_extra("spatialdata", "spatialdata")
    from spatialdata.transformations import get_transformation

    from wsi_ocelot.outputs import export_spatialdata, read_cells

    folder, (x, y, cls, prob), ca = _result_folder(tmp_path)
    path = export_spatialdata(folder)
    assert path == folder / "spatialdata.zarr"
    sdata = sd.read_zarr(path)
    pts = sdata.points["cells"].compute()
    cells = read_cells(folder)
    assert len(pts) == len(cells) == 500
    np.testing.assert_array_equal(pts["x"].to_numpy(np.float32), x.astype(np.float32))
    np.testing.assert_array_equal(pts["y"].to_numpy(np.float32), y.astype(np.float32))
    np.testing.assert_allclose(pts["prob"].to_numpy(np.float32), prob.astype(np.float32))
    assert (
        pts["class_name"].astype(str).to_numpy() == cells["class_name"].astype(str).to_numpy()
    ).all()
    np.testing.assert_array_equal(
        pts["in_cancer_area"].to_numpy(bool), cells["in_cancer_area"].to_numpy(bool)
    )
    assert cells["in_cancer_area"].any() and not cells["in_cancer_area"].all()
    shapes = sdata.shapes["cancer_area"]
    assert len(shapes) == 1 and shapes.geometry.iloc[0].equals(
        ca
    )  # back in level-0 px (bounds offset added)
    for element in (sdata.points["cells"], shapes, sdata.images["cancer_area_probability"]):
        assert set(get_transformation(element, get_all=True)) == {"global", "micrometer"}
    # the tissue map on the slide: map px (r, c) covers level-0 [c·3.2, (c+1)·3.2); a cell's flag is the map there
    image = sdata.images["cancer_area_probability"]
    arr = np.asarray(
        image["scale0"]["image"].values if hasattr(image, "children") else image.values
    )[0]
    assert arr.shape == (1250, 1563)
    assert get_transformation(image, "global").to_affine_matrix(("x", "y"), ("x", "y"))[
        0, 0
    ] == pytest.approx(3.2)
    r = np.clip(np.floor(y.astype(np.float32) / 3.2).astype(int), 0, 1249)
    c = np.clip(np.floor(x.astype(np.float32) / 3.2).astype(int), 0, 1562)
    np.testing.assert_array_equal(arr[r, c] >= 128, pts["in_cancer_area"].to_numpy(bool))
    with pytest.raises(OutputWriteError, match="--overwrite"):
        export_spatialdata(folder)
    export_spatialdata(folder, overwrite=True)
