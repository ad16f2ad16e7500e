from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from wsi_ocelot.config import GeometryConfig
from wsi_ocelot.slide import open_slide
from wsi_ocelot.tiling import cell_grid, context_boxes, make_grid, plan_tiles, tissue_grid
from wsi_ocelot.tiling.export import export_pairs, write_metadata

SMALL = GeometryConfig(tile_size=256, cell_margin=16, tissue_margin=32)


@pytest.mark.parametrize(
    "w,h,mpp,target",
    [(1000, 700, 0.25, 0.2), (2220, 2967, 0.499, 0.2), (513, 257, 0.5, 0.8), (64, 64, 0.25, 0.2)],
)
def test_cores_partition_the_slide(w, h, mpp, target):
    g = make_grid(w, h, mpp, target, 128, 12)
    cover = np.zeros((h, w), np.int32)
    for x0, y0, x1, y1 in g.cores:
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all(), "every level-0 pixel is owned by exactly one core"
    # every read box contains its core plus the margin
    bx, by, bw, bh = g.boxes.T
    assert (bx <= g.cores[:, 0] - g.margin_l0 + 0).all() and (
        by <= g.cores[:, 1] - g.margin_l0
    ).all()
    assert ((bx + bw)[:-1] >= g.cores[:-1, 2]).all()
    assert g.tile_l0 % 2 == 0 and g.mpp == pytest.approx(target, rel=0.02)


def test_context_boxes_centre_and_ocelot_offsets():
    boxes = np.array([[100, 200, 40, 40]])
    c = context_boxes(boxes, 4)
    assert c.tolist() == [[40, 140, 160, 160]]  # centred: 1.5 tiles on each side
    o = context_boxes(boxes, 4, (0.125, 0.625))
    # cell centre (120, 220) at 0.125 / 0.625 of a 160 px context
    assert o.tolist() == [[100, 120, 160, 160]]


def test_geometry_validation():
    from wsi_ocelot.errors import ConfigError

    with pytest.raises(ConfigError, match="context_factor"):
        GeometryConfig(cell_mpp=0.2, tissue_mpp=0.5)
    with pytest.raises(ConfigError, match="margin"):
        GeometryConfig(tile_size=64, cell_margin=40)


def _check_pairs(slide_path, out, geo, mpp=None, max_cell_mad=4.0, max_ctx_mad=6.0):
    """For every pair: the cell box read straight from level 0 and resized matches the
    cell image; the cell image downsampled by the context factor matches the context
    image at the recorded offset."""
    meta = json.loads((out / "metadata.json").read_text())
    pairs = meta["sample_pairs"]
    assert pairs, "no pairs written"
    slide = open_slide(slide_path, mpp=mpp)
    T, f = geo.tile_size, geo.context_factor
    level0 = slide.read_region((0, 0), 0, slide.dimensions)
    H, W = level0.shape[:2]
    for pid, p in pairs.items():
        cell = np.asarray(Image.open(out / "images" / "cell" / f"{pid}.jpg"))
        ctx = np.asarray(Image.open(out / "images" / "tissue" / f"{pid}.jpg"))
        c = p["cell"]
        assert c["resized_mpp_x"] == pytest.approx((c["x_end"] - c["x_start"]) * p["mpp_x"] / T)
        # straight from level 0 (white outside the slide), resized
        canvas = np.full((c["y_end"] - c["y_start"], c["x_end"] - c["x_start"], 3), 255, np.uint8)
        xs, ys = max(c["x_start"], 0), max(c["y_start"], 0)
        xe, ye = min(c["x_end"], W), min(c["y_end"], H)
        canvas[ys - c["y_start"] : ye - c["y_start"], xs - c["x_start"] : xe - c["x_start"]] = (
            level0[ys:ye, xs:xe]
        )
        ref = np.asarray(Image.fromarray(canvas).resize((T, T), Image.Resampling.BILINEAR))
        mad_cell = np.abs(cell.astype(float) - ref).mean()
        assert mad_cell < max_cell_mad, (
            f"pair {pid}: cell image differs from level 0 (MAD {mad_cell:.2f})"
        )
        # cell downsampled by f sits in the context at the offset
        small = np.asarray(
            Image.fromarray(cell).resize((T // f, T // f), Image.Resampling.BOX)
        ).astype(float)
        x0 = round(p["patch_x_offset"] * T - T / (2 * f))
        y0 = round(p["patch_y_offset"] * T - T / (2 * f))
        region = ctx[y0 : y0 + T // f, x0 : x0 + T // f].astype(float)
        mad_ctx = np.abs(small - region).mean()
        assert mad_ctx < max_ctx_mad, f"pair {pid}: context misaligned (MAD {mad_ctx:.2f})"
        # ... and one pixel off is clearly worse (the check can see misalignment)
        shifted = ctx[y0 + 2 : y0 + 2 + T // f, x0 + 2 : x0 + 2 + T // f].astype(float)
        if shifted.shape == small.shape and small.std() > 10:
            assert np.abs(small - shifted).mean() > mad_ctx


@pytest.mark.parametrize("fixture", ["synth_025", "synth_05"])
def test_tiles_align_on_synthetic_slides(fixture, request, tmp_path):
    path = request.getfixturevalue(fixture)
    geo = SMALL
    slide = open_slide(path)
    pairs = export_pairs(slide, tmp_path, geo, limit=6)
    write_metadata(tmp_path, pairs, geo)
    assert len(pairs) == 6
    _check_pairs(path, tmp_path, geo)


def test_tiles_align_with_ocelot_offsets(synth_025, tmp_path):
    slide = open_slide(synth_025)
    pairs = export_pairs(slide, tmp_path, SMALL, limit=6, offsets="ocelot", seed=3)
    write_metadata(tmp_path, pairs, SMALL)
    offs = {(p["patch_x_offset"], p["patch_y_offset"]) for p in pairs.values()}
    assert offs <= {(a, b) for a in (0.125, 0.625) for b in (0.125, 0.625)}
    _check_pairs(synth_025, tmp_path, SMALL)


@pytest.mark.real_slides
def test_tiles_align_on_real_slide(cmu_slide, tmp_path):
    slide = open_slide(cmu_slide)
    pairs = export_pairs(slide, tmp_path, GeometryConfig(), limit=4)
    write_metadata(tmp_path, pairs, GeometryConfig())
    assert len(pairs) == 4
    # 0.499 µm/px → 0.2 µm/px: the cell tile is upsampled 2.5x from level 0
    assert pairs["001"]["cell"]["resized_mpp_x"] == pytest.approx(0.2, rel=0.01)
    _check_pairs(cmu_slide, tmp_path, GeometryConfig())


def test_plan_tiles_only_on_tissue(synth_025, synth_empty):
    slide = open_slide(synth_025)
    plan = plan_tiles(slide, SMALL)
    full = cell_grid(*slide.dimensions, slide.mpp, SMALL)
    assert 0 < len(plan.cells) <= len(full)
    assert len(plan.contexts) == len(plan.cells)
    assert (plan.contexts[:, 2] == 4 * plan.cells.boxes[:, 2]).all()
    assert len(plan.tissue) <= len(tissue_grid(*slide.dimensions, slide.mpp, SMALL))
    empty = plan_tiles(open_slide(synth_empty), SMALL)
    assert len(empty.cells) == 0 and len(empty.tissue) == 0


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
@pytest.mark.parametrize("workers", [0, 2])
def test_dataset_batches_from_workers(pattern_slide, workers):
    import torch

    from wsi_ocelot.tiling import TileDataset, read_batches

    slide = open_slide(pattern_slide)
    g = cell_grid(*slide.dimensions, slide.mpp, SMALL)
    ctx = context_boxes(g.boxes, 4)
    ds = TileDataset(slide, g.boxes, SMALL.tile_size, ctx)
    batches = list(read_batches(ds, readers=workers, batch_size=4))
    assert sum(b["cell"].shape[0] for b in batches) == len(g)
    b = batches[0]
    assert b["cell"].dtype == torch.uint8 and b["cell"].shape[1:] == (3, 256, 256)
    assert b["context"].shape[1:] == (3, 256, 256) and b["offset"].shape[1:] == (2,)
    i = int(b["index"][1])
    expect = slide.read_box(tuple(g.boxes[i]), (256, 256))
    assert np.array_equal(b["cell"][1].permute(1, 2, 0).numpy(), expect)
    assert torch.equal(b["box"][1], torch.from_numpy(g.boxes[i]))
