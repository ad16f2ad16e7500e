"""Faults inside a readable slide and on the output disk (issue 14): a corrupt stored tile costs
only the tiles over it (counted, warned, left out of the tissue area), a slide fails above the
allowed fraction, a reader process that dies is replaced, and a full disk fails the slide
cleanly and stops the batch, which a rerun then finishes."""

from __future__ import annotations

import errno
import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import report_rows
from helpers import die_in_readers

from wsi_ocelot.config import GeometryConfig
from wsi_ocelot.errors import SlideFormatError
from wsi_ocelot.inference.engine import EngineConfig, SlideRunner

GEO = GeometryConfig(tile_size=256, cell_margin=16, tissue_margin=32)
MPP = 0.25


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, object]:
    """A clean synthetic slide and a copy with one corrupt level-0 JPEG tile in its tissue."""
    from wsi_ocelot.synthetic import write_synthetic_slide
    from wsi_ocelot.synthetic.tiff import corrupt_tile

    root = tmp_path_factory.mktemp("faults")
    clean = root / "clean.tiff"
    write_synthetic_slide(clean, mpp=MPP, size=(1024, 1024), seed=41)
    bad = root / "bad_tile.tiff"
    shutil.copy(clean, bad)
    box = corrupt_tile(bad, 512, 512)
    return {"clean": clean, "bad": bad, "box": box}


def _runner(tiny_ckpt, **kw) -> SlideRunner:
    torch.set_num_threads(2)
    return SlideRunner(
        tiny_ckpt,
        EngineConfig(
            device="cpu", batch_size=4, workers=kw.pop("workers", 0), progress=False, **kw
        ),
    )


def _cells(folder: Path) -> np.ndarray:
    from wsi_ocelot.outputs import open_predictions

    with open_predictions(folder / "predictions.zarr") as store:
        c = store.cells()
    arr = np.stack([c["x"], c["y"], c["class"], c["prob"]], axis=1).astype(np.float64)
    return arr[np.lexsort((arr[:, 1], arr[:, 0]))]


@pytest.fixture(scope="module")
def clean_run(tiny_ckpt, slides, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean_out")
    res = _runner(tiny_ckpt).run(slides["clean"], out, slide_id="s")
    return res, _cells(res.out_dir)


def test_openslide_really_fails_on_the_corrupt_tile(slides):
    import openslide

    x, y, w, h = slides["box"]
    with openslide.OpenSlide(str(slides["bad"])) as s:
        with pytest.raises(openslide.OpenSlideError):
            s.read_region((x, y), 0, (w, h))


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
@pytest.mark.parametrize("reader", ["openslide", "tifffile"])
def test_corrupt_tile_costs_only_its_tiles(tiny_ckpt, slides, clean_run, tmp_path, caplog, reader):
    clean, clean_cells = clean_run
    with caplog.at_level(logging.WARNING, logger="wsi_ocelot"):
        res = _runner(tiny_ckpt, reader=reader, max_unreadable=1.0).run(
            slides["bad"], tmp_path, slide_id="s"
        )
    rec = json.loads((res.out_dir / "purity.json").read_text())
    n_bad = rec["n_unreadable_tiles"]
    assert 0 < n_bad < rec["n_cell_tiles"]
    assert rec["n_unreadable_tiles"] == res.record.n_unreadable_tiles
    # a warning per unreadable tile names the slide and the level-0 region
    warns = [
        r.getMessage()
        for r in caplog.records
        if "unreadable" in r.getMessage() and r.levelno == logging.WARNING
    ]
    assert len(warns) == n_bad and all(str(slides["bad"]) in m and "level-0 x=" in m for m in warns)
    # the unreadable tiles' area is out of the tissue area
    assert rec["tissue_area_mm2"] < clean.record.purity.tissue_area_mm2
    # no detections inside the corrupt stored tile; cells away from it are the clean run's
    bad_cells = _cells(res.out_dir)
    x, y, w, h = slides["box"]
    inside = (
        (bad_cells[:, 0] >= x)
        & (bad_cells[:, 0] < x + w)
        & (bad_cells[:, 1] >= y)
        & (bad_cells[:, 1] < y + h)
    )
    assert not inside.any()
    # tiles over the stored tile reach up to one cell-tile box beyond it; neighbours keep cells a reach further
    far = GEO.tile_size * GEO.cell_mpp / MPP + 2 * 3.0 / MPP

    def away(c):
        return (
            (c[:, 0] < x - far)
            | (c[:, 0] >= x + w + far)
            | (c[:, 1] < y - far)
            | (c[:, 1] >= y + h + far)
        )

    assert len(clean_cells[away(clean_cells)]) > 0
    np.testing.assert_array_equal(bad_cells[away(bad_cells)], clean_cells[away(clean_cells)])


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
def test_too_many_unreadable_tiles_fail_the_slide_in_one_line(tiny_ckpt, slides, tmp_path):
    with pytest.raises(SlideFormatError) as exc:
        _runner(tiny_ckpt, max_unreadable=0.0).run(slides["bad"], tmp_path, slide_id="s")
    msg = exc.value.one_line()
    assert (
        "\n" not in msg
        and str(slides["bad"]) in msg
        and "unreadable" in msg
        and "--max-unreadable" in msg
    )
    assert not any(tmp_path.iterdir())  # no folder, no half-written one


def test_max_unreadable_is_checked(tiny_ckpt):
    from wsi_ocelot.errors import ConfigError

    with pytest.raises(ConfigError, match="max_unreadable"):
        EngineConfig(max_unreadable=1.5)


def _die_on(monkeypatch, marker_dir: Path, item: int | None, times: int) -> None:
    """Make reader processes (not this process) exit abruptly when they read ``item`` (None:
    any item) of a cell pass, the first ``times`` times (markers in ``marker_dir`` count across
    processes)."""
    from wsi_ocelot.tiling import dataset as ds

    die_in_readers(
        monkeypatch,
        ds.BlockBatches,
        lambda batches, i: (
            (item is None or i == item)
            and batches.tile_size == GEO.tile_size
            and len(batches.boxes) > 20
        ),
        times=times,
        marker_dir=marker_dir,
        code=1,
    )


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
def test_a_reader_process_that_dies_is_replaced(
    tiny_ckpt, slides, clean_run, tmp_path, monkeypatch
):
    clean, clean_cells = clean_run
    _die_on(monkeypatch, tmp_path, item=2, times=1)
    res = _runner(tiny_ckpt, workers=1).run(slides["clean"], tmp_path / "out", slide_id="s")
    assert (tmp_path / "death-0").exists()  # a reader did die
    assert res.record.n_unreadable_tiles == 0
    np.testing.assert_array_equal(_cells(res.out_dir), clean_cells)


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
def test_a_batch_that_kills_every_reader_is_counted_unreadable(
    tiny_ckpt, slides, clean_run, tmp_path, monkeypatch
):
    clean, _ = clean_run
    _die_on(monkeypatch, tmp_path, item=2, times=50)  # every reader that touches batch 2 dies
    res = _runner(tiny_ckpt, workers=1, max_unreadable=1.0).run(
        slides["clean"], tmp_path / "out", slide_id="s"
    )
    assert (
        0 < res.record.n_unreadable_tiles <= 4
    )  # the batch (of at most four tiles) no reader could read
    assert res.record.purity.tissue_area_mm2 < clean.record.purity.tissue_area_mm2


def test_too_many_reader_deaths_fail_the_slide_in_one_line(
    tiny_ckpt, slides, tmp_path, monkeypatch
):
    import multiprocessing as mp

    from wsi_ocelot.tiling.dataset import MAX_READER_DEATHS

    _die_on(monkeypatch, tmp_path / "markers", item=None, times=10_000)  # every reader dies
    (tmp_path / "markers").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SlideFormatError) as exc:
        _runner(tiny_ckpt, workers=1, max_unreadable=1.0).run(slides["clean"], out, slide_id="s")
    msg = exc.value.one_line()
    assert "\n" not in msg and str(slides["clean"]) in msg
    assert f"tile-reading processes died {MAX_READER_DEATHS + 1} times" in msg
    assert not any(out.iterdir())  # no folder, no half-written one
    assert mp.active_children() == []  # no reader left running


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
def test_unreadable_counts_reach_manifest_summary_and_report(tiny_ckpt, slides, tmp_path):
    import csv

    from wsi_ocelot.cohort import CohortConfig, collect_jobs, run_cohort

    engine = EngineConfig(device="cpu", batch_size=4, workers=0, progress=False, max_unreadable=1.0)
    res = run_cohort(
        collect_jobs([str(slides["bad"])]),
        tmp_path,
        CohortConfig(model=str(tiny_ckpt), engine=engine, threads=2),
    )
    assert res.exit_code == 0
    n = json.loads((tmp_path / "bad_tile" / "purity.json").read_text())["n_unreadable_tiles"]
    assert n > 0
    assert (
        json.loads((tmp_path / "manifest.json").read_text())["slides"]["bad_tile"][
            "n_unreadable_tiles"
        ]
        == n
    )
    row = next(csv.DictReader((tmp_path / "summary.csv").open(encoding="utf-8")))
    assert int(row["n_unreadable_tiles"]) == n
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert ">unreadable<" in html and report_rows(html)[0]["n_unreadable_tiles"] == n


# -- a full disk ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_slides(tmp_path_factory) -> list[Path]:
    from wsi_ocelot.synthetic import write_synthetic_slide

    root = tmp_path_factory.mktemp("small")
    paths = []
    for i in range(4):
        write_synthetic_slide(root / f"s_{i}.tiff", mpp=MPP, size=(512, 512), seed=51 + i)
        paths.append(root / f"s_{i}.tiff")
    return paths


def _batch(tiny_ckpt, slides, out):
    from wsi_ocelot.cohort import CohortConfig, collect_jobs, run_cohort

    engine = EngineConfig(device="cpu", batch_size=4, workers=0, progress=False)
    return run_cohort(
        collect_jobs([str(p) for p in slides]),
        out,
        CohortConfig(model=str(tiny_ckpt), engine=engine, threads=2),
    )


def _check_stopped(res, out: Path, failed: str, pending: list[str]) -> None:
    assert res.exit_code == 1 and res.failed == [failed] and res.pending == pending
    slides = json.loads((out / "manifest.json").read_text())["slides"]  # valid JSON
    err = slides[failed]["error"]
    assert (
        slides[failed]["status"] == "failed"
        and "\n" not in err
        and str(out) in err
        and "no space left on device" in err.lower()
        and "Fix:" in err
    )
    assert {sid: slides[sid]["status"] for sid in pending} == dict.fromkeys(pending, "pending")
    assert str(out) in res.stopped and "pending" in res.stopped
    # no half-written folder, no folder for a slide that was not attempted
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.is_dir()]
    assert not any((out / sid).exists() for sid in [failed, *pending])


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
def test_full_disk_fails_the_slide_stops_the_batch_and_a_rerun_finishes(
    tiny_ckpt, small_slides, tmp_path, monkeypatch
):
    from wsi_ocelot.atomic import write_json
    from wsi_ocelot.inference import engine

    def full(path, obj, **kw):
        if ".s_1.partial" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write_json(path, obj, **kw)

    monkeypatch.setattr(engine, "write_json", full)
    out = tmp_path / "out"
    res = _batch(tiny_ckpt, small_slides, out)
    assert res.done == ["s_0"]
    _check_stopped(res, out, "s_1", ["s_2", "s_3"])
    monkeypatch.undo()  # space freed
    before = (out / "s_0" / "purity.json").stat().st_mtime_ns
    res = _batch(tiny_ckpt, small_slides, out)
    assert res.exit_code == 0 and res.skipped == ["s_0"] and res.done == ["s_1", "s_2", "s_3"]
    assert (out / "s_0" / "purity.json").stat().st_mtime_ns == before
    slides = json.loads((out / "manifest.json").read_text())["slides"]
    assert {v["status"] for v in slides.values()} == {"done"}


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    try:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_full_disk_on_a_real_small_tmpfs(tiny_ckpt, small_slides, tmp_path):
    mnt = tmp_path / "mnt"
    if not _mount_tmpfs(mnt, "4m"):
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        out = mnt / "out"
        out.mkdir()
        filler = mnt / "filler"
        with open(
            filler, "wb"
        ) as fh:  # leave about 48 KiB: the batch's own files fit, a slide's outputs do not
            fh.write(bytes(4 * 2**20 - 48 * 2**10))
        res = _batch(tiny_ckpt, small_slides, out)
        _check_stopped(res, out, "s_0", ["s_1", "s_2", "s_3"])
        filler.unlink()  # space freed
        res = _batch(tiny_ckpt, small_slides, out)
        assert res.exit_code == 0 and res.done == ["s_0", "s_1", "s_2", "s_3"]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=20)
