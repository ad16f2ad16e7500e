"""The slide engine end to end with a tiny model on small tiles: every output written,
formats valid, Zarr and GeoJSON agree, cells reported once, atomic result folders."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from conftest import import_extra
from helpers import cpu_run_options, run_cli
from shapely.geometry import shape

from wsi_ocelot.config import GeometryConfig
from wsi_ocelot.inference.engine import EngineConfig, SlideRunner, slide_id_for

GEO = GeometryConfig(tile_size=256, cell_margin=16, tissue_margin=32)


@pytest.fixture(scope="module")
def run_out(tiny_ckpt, synth_025, tmp_path_factory):
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("engine")
    runner = SlideRunner(
        tiny_ckpt,
        EngineConfig(device="cpu", batch_size=4, workers=0, progress=False, cells_table="parquet"),
    )
    res = runner.run(synth_025, out)
    return res, out / slide_id_for(synth_025)


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
def test_all_outputs_written(run_out):
    res, d = run_out
    assert {p.name for p in d.iterdir()} == {
        "predictions.zarr",
        "tissue.ome.zarr",
        "cells.geojson",
        "cells.parquet",
        "tissue.geojson",
        "purity.json",
        "overview.png",
    }
    assert not [p for p in d.parent.iterdir() if p.name.startswith(".")], (
        "no partial folders left behind"
    )
    assert res.mode == "two-pass" and res.n_cells > 0


def test_geojson_valid_and_matches_zarr(run_out):
    import zarr

    _, d = run_out
    cells = json.loads((d / "cells.geojson").read_text())
    assert cells["type"] == "FeatureCollection"
    for f in cells["features"]:
        assert f["properties"]["objectType"] == "detection"
        assert f["properties"]["classification"]["name"] in ("Tumor", "Background cell")
        assert len(f["properties"]["classification"]["color"]) == 3
        assert shape(f["geometry"]).is_valid
    tissue = json.loads((d / "tissue.geojson").read_text())
    for f in tissue["features"]:
        assert (
            f["properties"]["objectType"] == "annotation"
            and "color" in f["properties"]["classification"]
        )
        assert shape(f["geometry"]).is_valid and shape(f["geometry"]).area > 0
    g = zarr.open_group(str(d / "predictions.zarr"), mode="r")
    x, y, cls, prob = (np.asarray(g["cells"][k][:]) for k in ("x", "y", "class", "prob"))
    assert len(x) == len(cells["features"])
    gx = np.array([f["geometry"]["coordinates"][0] for f in cells["features"]])
    gy = np.array([f["geometry"]["coordinates"][1] for f in cells["features"]])
    assert np.allclose(gx, x, atol=0.01) and np.allclose(gy, y, atol=0.01)
    names = np.array([f["properties"]["classification"]["name"] for f in cells["features"]])
    assert np.array_equal(names == "Tumor", cls == 2)
    assert np.allclose(
        [f["properties"]["measurements"]["probability"] for f in cells["features"]], prob, atol=1e-4
    )
    # the tissue map: OME-NGFF 0.4 on Zarr v2 beside the store, placed on the slide
    t = zarr.open_group(str(d / "tissue.ome.zarr"), mode="r")
    ms = t.attrs["multiscales"][0]
    assert (
        t.metadata.zarr_format == 2 and ms["version"] == "0.4" and ms["datasets"][0]["path"] == "0"
    )
    d0 = t.attrs["wsi_ocelot"]["level0_downsample"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx(
        [d0 * 0.25] * 2
    )
    assert g.attrs["slide"]["mpp"] == pytest.approx(0.25) and g.attrs["run"]["ngff"] == "0.4"


def test_purity_json(run_out):
    res, d = run_out
    p = json.loads((d / "purity.json").read_text())
    assert p["n_cells"] == res.n_cells == p["n_tc"] + p["n_bc"]
    assert p["purity"] == pytest.approx(p["n_tc"] / p["n_cells"])
    assert p["tissue_area_mm2"] > 0 and p["mode"] == "two-pass"
    assert set(p["runtime_s"]) >= {
        "read",
        "tissue pass",
        "cell pass",
        "post-processing",
        "write",
        "total",
    }


def test_no_cell_reported_twice(run_out):
    import zarr

    _, d = run_out
    g = zarr.open_group(str(d / "predictions.zarr"), mode="r")
    xy = np.stack([g["cells"]["x"][:], g["cells"]["y"][:]], 1)
    assert len(np.unique(np.round(xy, 2), axis=0)) == len(xy)


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
def test_per_tile_path_and_agreement(tiny_ckpt, synth_025, run_out, tmp_path):
    from wsi_ocelot.metrics import match_by_class

    res2, d2 = run_out
    runner = SlideRunner(
        tiny_ckpt,
        EngineConfig(device="cpu", batch_size=4, workers=0, progress=False, per_tile=True),
    )
    res = runner.run(synth_025, tmp_path)
    assert res.mode == "per-tile"
    import zarr

    def table(d):
        g = zarr.open_group(str(d / "predictions.zarr"), mode="r")
        return np.stack(
            [g["cells"]["x"][:], g["cells"]["y"][:], g["cells"]["class"][:], g["cells"]["prob"][:]],
            1,
        )

    a, b = table(tmp_path / slide_id_for(synth_025)), table(d2)
    # same model, same cell tiles: the detections mostly coincide even untrained
    m = match_by_class(a, b[:, :3], radius=3.0 / 0.25)
    tp = sum(r.tp for r in m.values())
    assert tp / max(len(a), len(b)) > 0.8


def test_empty_slide_zero_cells_null_purity(tiny_ckpt, synth_empty, tmp_path):
    runner = SlideRunner(
        tiny_ckpt, EngineConfig(device="cpu", batch_size=4, workers=0, progress=False)
    )
    res = runner.run(synth_empty, tmp_path)
    p = json.loads((res.out_dir / "purity.json").read_text())
    assert (
        res.n_cells == 0
        and p["purity"] is None
        and p["purity_reason"] == "no tissue found on the slide"
    )
    assert json.loads((res.out_dir / "cells.geojson").read_text())["features"] == []


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
def test_gzip_and_rerun_replaces_atomically(tiny_ckpt, synth_small, tmp_path):
    runner = SlideRunner(
        tiny_ckpt,
        EngineConfig(device="cpu", batch_size=4, workers=0, progress=False, geojson_gzip=True),
    )
    res = runner.run(synth_small, tmp_path)
    assert res.n_cells > 0
    with gzip.open(res.out_dir / "cells.geojson.gz", "rt") as fh:
        gj = json.load(fh)
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == res.n_cells
    res2 = runner.run(synth_small, tmp_path)
    assert res2.out_dir == res.out_dir and sorted(p.name for p in tmp_path.iterdir()) == [
        res.out_dir.name
    ]


def test_failure_leaves_no_folder(tiny_ckpt, tmp_path, monkeypatch):
    from wsi_ocelot.errors import MppError
    from wsi_ocelot.synthetic.tiff import write_pyramidal_tiff

    p = tmp_path / "nompp.tiff"
    write_pyramidal_tiff(p, np.full((300, 300, 3), 200, np.uint8), None)
    runner = SlideRunner(tiny_ckpt, EngineConfig(device="cpu", workers=0, progress=False))
    with pytest.raises(MppError):
        runner.run(p, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_cli_run_bad_slide_continues(tiny_ckpt, synth_small, tmp_path):
    (tmp_path / "broken.svs").write_text("not a slide")
    proc = run_cli(
        "run",
        str(tmp_path / "broken.svs"),
        str(synth_small),
        *cpu_run_options(tmp_path / "o", tiny_ckpt),
    )
    assert proc.returncode == 2, (
        proc.stderr
    )  # an input that is not a slide: reported, not run, the rest goes on
    assert "broken.svs: not a slide format" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "o" / "synth_small" / "purity.json").is_file()
    assert not (tmp_path / "o" / "broken").exists()


def test_border_buffer_reports_a_cell_on_a_core_border_once():
    from wsi_ocelot.inference.borders import BorderBuffer

    buf = BorderBuffer(radius=12.0)  # 3 µm at 0.25 µm/px
    core_a, core_b = np.array([0, 0, 100, 100]), np.array([100, 0, 200, 100])
    # tile A: a cell at its right border (x 98), one well inside, two close ones of its own near the border
    a = np.array([[98.0, 50, 2, 0.9], [50, 50, 1, 0.8], [97, 10, 1, 0.6], [97, 18, 1, 0.7]])
    # tile B: the same border cell placed on its side (x 103, weaker), and a cell 20 px away from it
    b = np.array([[103.0, 51, 2, 0.7], [105, 75, 1, 0.9]])
    now_a, _ = buf.split(a, np.array([True, False, False, False]), core_a)
    now_b, _ = buf.split(b, np.array([True, False]), core_b)
    assert (
        now_a.tolist() == [[50, 50, 1, 0.8]] and len(now_b) == 0
    )  # only far-from-border points go out at once
    held, inside, dropped = buf.resolve()
    assert dropped == 1
    kept = sorted(map(tuple, held.tolist()))
    assert (103.0, 51.0, 2.0, 0.7) not in kept and (
        98.0,
        50.0,
        2.0,
        0.9,
    ) in kept  # the stronger of the pair stays
    assert (97.0, 10.0, 1.0, 0.6) in kept and (
        97.0,
        18.0,
        1.0,
        0.7,
    ) in kept  # close points of one tile are two cells
    assert (105.0, 75.0, 1.0, 0.9) in kept and len(kept) == 4
    assert inside.sum() == 1


def test_a_cell_both_tiles_place_on_the_others_side_is_kept_once():
    """Tile A puts a border cell 0.5 px into B's core, B puts it 0.5 px into A's: with strict
    cores neither keeps it; reaching 3 µm across the border both do and the buffer keeps one."""
    from wsi_ocelot.inference.borders import BorderBuffer, in_core, reach_cores

    cores = np.array([[0, 0, 100, 100], [100, 0, 200, 100]])
    a = np.array([[100.5, 50, 2, 0.8]])
    b = np.array([[99.5, 50, 2, 0.9]])
    strict = reach_cores(cores, 0.0, 200, 100)
    assert not in_core(a, strict[0]).any() and not in_core(b, strict[1]).any()  # lost
    wide = reach_cores(cores, 12.0, 200, 100)
    assert wide[0].tolist() == [0, 0, 112, 100] and wide[1].tolist() == [
        88,
        0,
        200,
        100,
    ]  # not past the slide's edges
    buf = BorderBuffer(radius=12.0)
    for p, core, reach in ((a, cores[0], wide[0]), (b, cores[1], wide[1])):
        now, _ = buf.split(
            p[in_core(p, reach)], None, core
        )  # kept within the reach, held by the true core's border
        assert len(now) == 0
    held, _, dropped = buf.resolve()
    assert dropped == 1 and held.tolist() == [[99.5, 50, 2, 0.9]]


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
def test_writer_thread_gives_the_same_outputs_as_writing_inline(
    tiny_ckpt, synth_025, run_out, tmp_path
):
    res, d = run_out
    inline = SlideRunner(
        tiny_ckpt,
        EngineConfig(
            device="cpu", batch_size=4, workers=0, progress=False, background_writer=False
        ),
    )
    d2 = inline.run(synth_025, tmp_path).out_dir
    assert (d / "cells.geojson").read_bytes() == (d2 / "cells.geojson").read_bytes()
    a, b = (json.loads((x / "purity.json").read_text()) for x in (d, d2))
    a.pop("runtime_s"), b.pop("runtime_s")
    assert a == b


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
def test_writer_error_fails_the_slide_and_leaves_no_folder(
    tiny_ckpt, synth_025, tmp_path, monkeypatch
):
    from wsi_ocelot.inference.slide_run import SlideRun

    def broken(self, *args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SlideRun, "_emit", broken)
    runner = SlideRunner(
        tiny_ckpt, EngineConfig(device="cpu", batch_size=4, workers=0, progress=False)
    )
    with pytest.raises(OSError, match="No space left"):
        runner.run(synth_025, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_background_writer_runs_in_order_and_bounds_its_queue():
    import threading

    from wsi_ocelot.inference.background import BackgroundWriter

    gate, done = threading.Event(), []
    with BackgroundWriter(depth=2) as w:
        w.submit(gate.wait)
        w.submit(done.append, 1)
        w.submit(done.append, 2)  # the queue holds 2: this one waits until the first job starts
        t = threading.Thread(target=w.submit, args=(done.append, 3))
        t.start()
        t.join(0.2)
        assert t.is_alive() and done == []  # bounded: the fourth job waits for room
        gate.set()
        t.join(5)
    assert done == [1, 2, 3]
    w = BackgroundWriter(depth=2)
    w.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        w.close()


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"workers": -1}, "workers must be >= 0"),
        ({"reader": "pil"}, "unknown reader 'pil'"),
        ({"border_reach_um": 9.0}, "border_reach_um must be in"),
    ],
)
def test_engine_config_errors_are_one_line(kw, match):
    from wsi_ocelot.errors import ConfigError

    with pytest.raises(ConfigError, match=match) as err:
        EngineConfig(**kw)
    assert "\n" not in str(err.value)


def test_defaults_fit_the_machine():
    from wsi_ocelot.inference.predictor import default_batch_size

    cfg = EngineConfig().resolved(torch.device("cpu"))
    assert cfg.batch_size == default_batch_size(torch.device("cpu")) == 8 and cfg.workers >= 1
    assert EngineConfig(batch_size=3, workers=0).resolved(torch.device("cpu")).workers == 0


def test_unit_float_gives_the_values_of_float_div_255():
    """The host's one-pass uint8 → [0, 1] conversion: bit for bit ``x.float().div_(255)``, on a
    strided view as well (a channel slice of a batch)."""
    from wsi_ocelot.inference.predictor import unit_float

    x = torch.randint(0, 256, (2, 4, 33, 17), dtype=torch.uint8)
    for t in (x, x[:, 1:], x.permute(0, 1, 3, 2)):
        got = unit_float(t)
        assert got.dtype == np.float32 and np.array_equal(got, t.float().div_(255.0).numpy())


def test_read_cells_equals_the_zarr_columns_and_the_geojson(run_out):
    import zarr

    from wsi_ocelot import read_cells

    _, d = run_out
    cells = read_cells(d)
    g = zarr.open_group(str(d / "predictions.zarr"), mode="r")
    assert np.array_equal(cells["x"].to_numpy(), g["cells"]["x"][:]) and np.array_equal(
        cells["prob"].to_numpy(), g["cells"]["prob"][:]
    )
    assert (
        np.allclose(cells["x_um"], cells["x"].astype(float) * 0.25)
        and cells["class_id"].isin([1, 2]).all()
    )
    feats = json.loads((d / "cells.geojson").read_text())["features"]
    assert len(feats) == len(cells)
    assert [f["properties"]["classification"]["name"] for f in feats] == cells["class_name"].astype(
        str
    ).tolist()
    purity = json.loads((d / "purity.json").read_text())
    assert int(cells["in_cancer_area"].sum()) == purity["n_cells_in_cancer_area"]
    # cells.parquet, streamed by the engine beside the GeoJSON: the same rows, in the same order
    import pandas as pd

    table = pd.read_parquet(d / "cells.parquet")
    assert list(table.columns) == list(cells.columns) and len(table) == len(cells) > 0
    pd.testing.assert_frame_equal(table, cells, check_dtype=False, check_categorical=False)
    gx = np.array([f["geometry"]["coordinates"][0] for f in feats])
    assert np.allclose(gx, table["x"], atol=0.01)  # no bounds offset on this slide


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
def test_ngff_05_and_csv_table_read_back_the_same(tiny_ckpt, synth_025, run_out, tmp_path):
    """The other output options: NGFF 0.5 on Zarr v3 and cells.csv; everything that reads the map
    (read_cells, the cancer-area flags, purity) gives what the default run gives."""
    import pandas as pd
    import zarr

    from wsi_ocelot import read_cells

    _, d04 = run_out
    runner = SlideRunner(
        tiny_ckpt,
        EngineConfig(
            device="cpu", batch_size=4, workers=0, progress=False, ngff="0.5", cells_table="csv"
        ),
    )
    res = runner.run(synth_025, tmp_path)
    t = zarr.open_group(str(res.out_dir / "tissue.ome.zarr"), mode="r")
    assert t.metadata.zarr_format == 3 and t.attrs["ome"]["version"] == "0.5"
    m04 = zarr.open_group(str(d04 / "tissue.ome.zarr"), mode="r")
    np.testing.assert_array_equal(t["0"][:], m04["0"][:])
    cells, cells04 = read_cells(res.out_dir), read_cells(d04)
    pd.testing.assert_frame_equal(cells, cells04)
    table = pd.read_csv(res.out_dir / "cells.csv")
    assert len(table) == len(cells) and (table["in_cancer_area"] == cells["in_cancer_area"]).all()
    np.testing.assert_array_equal(table["x"].to_numpy(np.float32), cells["x"].to_numpy())
    assert json.loads((res.out_dir / "purity.json").read_text())["n_cells_in_cancer_area"] == int(
        cells["in_cancer_area"].sum()
    )


def test_export_spatialdata_of_an_engine_result(run_out, tmp_path):
    sd = import_extra("spatialdata", "spatialdata")
    from wsi_ocelot import export_spatialdata, read_cells

    _, d = run_out
    path = export_spatialdata(d, tmp_path / "slide.zarr")
    sdata = sd.read_zarr(path)
    pts, cells = sdata.points["cells"].compute(), read_cells(d)
    assert len(pts) == len(cells) > 0
    np.testing.assert_array_equal(pts["x"].to_numpy(np.float32), cells["x"].to_numpy())
    np.testing.assert_array_equal(pts["y"].to_numpy(np.float32), cells["y"].to_numpy())
    assert (
        pts["class_name"].astype(str).to_numpy() == cells["class_name"].astype(str).to_numpy()
    ).all()
    n_polys = len(json.loads((d / "tissue.geojson").read_text())["features"])
    assert len(sdata.shapes["cancer_area"]) == n_polys
