"""The tissue map is stitched without seams: overlapping tissue-tile predictions are
cross-faded across core borders, tissue edges (cores without a neighbour) are not faded,
and the engine's map shows no step at the tile seams even when the model's output depends
on where a pixel sits in its tile (the usual cause of seams)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import write_tiny_checkpoint

from wsi_ocelot.inference.engine import EngineConfig, SlideRunner
from wsi_ocelot.inference.tissue_map import BlendedTissueMap, TissueMap
from wsi_ocelot.naming import slide_id_for
from wsi_ocelot.tiling.grid import make_grid


class _ArrayStore:
    """The two calls the blender makes, on a numpy array (with a write counter per pixel)."""

    def __init__(self, h: int, w: int):
        self.map = np.zeros((h, w), np.uint8)
        self.writes = np.zeros((h, w), np.int32)

    def write_tissue_block(self, y0, x0, block):
        h, w = self.map.shape
        b = block[: h - y0, : w - x0]
        self.map[y0 : y0 + b.shape[0], x0 : x0 + b.shape[1]] = b
        self.writes[y0 : y0 + b.shape[0], x0 : x0 + b.shape[1]] += 1


def _blend(
    values: dict[tuple[int, int], float],
    size: int = 1000,
    tile: int = 64,
    margin: int = 16,
    order=None,
):
    """Grid over a ``size``² level-0 slide at 4 level-0 px per map px; tile (r, c) predicts
    the constant ``values[(r, c)]``; tiles not in ``values`` do not exist."""
    full = make_grid(size, size, 0.25, 1.0, tile, margin)
    keep = np.array([(int(r), int(c)) in values for r, c in zip(full.rows, full.cols, strict=True)])
    grid = full.subset(keep)
    tmap = TissueMap(size, size, grid.tile_l0 / tile)
    store = _ArrayStore(tmap.height, tmap.width)
    blend = BlendedTissueMap(grid, tmap, store, size, size)
    idx = list(range(len(grid))) if order is None else order(len(grid))
    for i in idx:
        r, c = int(grid.rows[i]), int(grid.cols[i])
        blend.aggregate(np.array([i]), torch.full((1, tile, tile), values[(r, c)]))
    blend.finalize()
    return store, grid, tmap, blend


def _border_px(k: int, grid, tmap) -> int:
    """First map px (column or row) of core k along an axis."""
    return math.ceil(k * grid.stride_l0 / tmap.scale - 0.5)


def test_equal_predictions_give_that_value_everywhere_and_each_pixel_is_written_once() -> None:
    # partition of unity, corners with a missing diagonal included; nothing written twice
    vals = {
        (r, c): 0.6 for r in range(6) for c in range(6) if (r, c) not in {(2, 3), (4, 1), (0, 5)}
    }
    for order in (
        None,
        lambda n: list(range(n))[::-1],
        lambda n: list(np.random.default_rng(0).permutation(n)),
    ):
        store, grid, tmap, blend = _blend(vals, order=order)
        assert not blend.pending
        owned = store.map > 0
        assert np.all(store.map[owned] == round(0.6 * 255))
        assert store.writes.max() == 1
        # a missing core stays empty
        x0, x1 = _border_px(3, grid, tmap), _border_px(4, grid, tmap)
        y0, y1 = _border_px(2, grid, tmap), _border_px(3, grid, tmap)
        assert not store.map[y0:y1, x0:x1].any()
        # every pixel whose centre lies in an existing core is written (the last map px
        # column/row, with its centre beyond the slide edge, belongs to no core)
        centres = (np.arange(tmap.width - 1) + 0.5) * tmap.scale
        own = np.minimum(centres // grid.stride_l0, grid.n_cols - 1).astype(int)
        expect = np.array([[(r, c) in vals for c in own] for r in own])
        assert np.array_equal(owned[:-1, :-1], expect)


def test_disagreeing_tiles_are_cross_faded_without_a_step() -> None:
    vals = {(r, c): (0.2 if (r + c) % 2 else 0.8) for r in range(4) for c in range(4)}
    store, grid, tmap, blend = _blend(vals, size=500)  # a 4 × 4 grid
    assert (grid.n_rows, grid.n_cols) == (4, 4)
    m = store.map.astype(float)
    band_px = blend.band / tmap.scale
    # a hard stitch would step by 0.6 × 255 = 153 at every seam; the fade spreads it over 2 × band
    step_limit = 0.6 * 255 / (2 * band_px) + 2
    assert np.abs(np.diff(m, axis=1)).max() <= step_limit
    assert np.abs(np.diff(m, axis=0)).max() <= step_limit
    # deep inside a core the tile's own value is kept
    b = math.ceil(band_px) + 1
    for (r, c), v in vals.items():
        x0, x1 = (
            _border_px(c, grid, tmap) + (b if c else 0),
            _border_px(c + 1, grid, tmap) - b if c < 3 else tmap.width,
        )
        y0, y1 = (
            _border_px(r, grid, tmap) + (b if r else 0),
            _border_px(r + 1, grid, tmap) - b if r < 3 else tmap.height,
        )
        inner = m[y0:y1, x0:x1]
        assert inner.size and np.all(inner == round(v * 255))
    # and on a border the two neighbours meet halfway
    xb = _border_px(1, grid, tmap)
    mid_row = (_border_px(1, grid, tmap) + _border_px(2, grid, tmap)) // 2
    assert abs(m[mid_row, xb - 1 : xb + 1].mean() - 0.5 * 255) < 0.6 * 255 / (2 * band_px) + 2


def test_tissue_edge_without_a_neighbour_is_not_faded() -> None:
    vals = {(r, c): 0.75 for r in range(3) for c in range(3) if c < 2}  # column 2 has no tiles
    store, grid, tmap, _ = _blend(vals, size=370)
    assert (grid.n_rows, grid.n_cols) == (3, 3)
    xb = _border_px(2, grid, tmap)
    rows = store.map[: tmap.height - 1]  # the last map row's centre lies beyond the slide edge
    assert np.all(rows[:, xb - 3 : xb] == round(0.75 * 255))  # up to the last pixel of the core
    assert not store.map[:, xb:].any()


def _positional_tissue_probs(x: torch.Tensor) -> torch.Tensor:
    """A tissue branch whose CA probability rises across its tile from left to right and
    top to bottom (0.3 .. 0.7): neighbouring tiles disagree at every core border."""
    b, _, h, w = x.shape
    u = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    v = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    ca = 0.3 + 0.2 * u.view(1, w) + 0.2 * v.view(h, 1)
    ca = ca.expand(b, h, w)
    return torch.stack([1.0 - ca, ca], dim=1)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", tilt=False)


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
def test_engine_tissue_map_has_no_steps_at_tile_seams(tiny_ckpt, synth_025, tmp_path) -> None:
    import zarr

    torch.set_num_threads(2)
    runner = SlideRunner(
        tiny_ckpt, EngineConfig(device="cpu", batch_size=4, workers=0, progress=False)
    )
    runner.predictor.tissue_probs = _positional_tissue_probs
    runner.run(synth_025, tmp_path)
    g = zarr.open_group(str(tmp_path / slide_id_for(synth_025) / "tissue.ome.zarr"), mode="r")
    m = np.asarray(g["0"][:]).astype(float)
    scale = g.attrs["wsi_ocelot"]["level0_downsample"]
    from wsi_ocelot.slide import open_slide
    from wsi_ocelot.tiling import plan_tiles

    with open_slide(synth_025) as slide:
        grid = plan_tiles(slide, runner.geometry).tissue
    assert len(grid) >= 4 and grid.n_cols >= 2
    seams = [
        math.ceil(k * grid.stride_l0 / scale - 0.5) for k in range(1, max(grid.n_cols, grid.n_rows))
    ]
    dx = np.abs(np.diff(m, axis=1))
    both = (m[:, 1:] > 0) & (m[:, :-1] > 0)  # steps inside the map, not at its tissue edge
    at_seam = np.zeros_like(both)
    for s in seams:
        if 0 < s < m.shape[1]:
            at_seam[:, s - 1] = True
    seam_step = dx[both & at_seam].mean()
    other_step = dx[both & ~at_seam].mean()
    # a hard stitch here steps by ~0.2 × 0.75 × 255 ≈ 38 levels at every vertical seam
    assert seam_step < 3.0, (seam_step, other_step)
    assert seam_step < 3 * other_step + 1.0
