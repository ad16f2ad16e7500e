"""Reading tiles block by block and the tifffile decoder give exactly the pixels of reading
every tile on its own through OpenSlide."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_ocelot.errors import ConfigError
from wsi_ocelot.slide import open_slide
from wsi_ocelot.tiling import BlockBatches, TileDataset, make_grid, plan_batches, read_batches
from wsi_ocelot.tiling.dataset import block_shape, default_workers


def _per_box(slide, boxes, size):
    return np.stack([slide.read_box(tuple(b), size) for b in boxes])


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
@pytest.mark.parametrize("reader", ["openslide", "tifffile"])
@pytest.mark.parametrize("target_mpp, size", [(0.2, 256), (0.8, 128), (1.0, 100)])
def test_read_boxes_equals_read_box(pattern_slide, target_mpp, size, reader):
    """Level 0 (upsampling), level 1 and level 2 reads (downsampling) of overlapping tiles,
    including tiles reaching past the slide's edge (white), cut from one union read
    (tifffile) or read one by one (OpenSlide), equal OpenSlide's tile-by-tile pixels."""
    s, ref = open_slide(pattern_slide, reader=reader), open_slide(pattern_slide)
    g = make_grid(*s.dimensions, s.mpp, target_mpp, size, size // 8)
    for idx in plan_batches(g.rows, g.cols, 6):
        boxes = g.boxes[idx]
        expected = _per_box(ref, boxes, (size, size))
        assert np.array_equal(s.read_boxes(boxes, (size, size)), expected)
        assert np.array_equal(s.read_boxes(boxes, (size, size), union=True), expected)


def test_read_boxes_falls_back_for_mixed_phases(pattern_slide):
    s = open_slide(pattern_slide, reader="tifffile")
    boxes = np.array(
        [[10, 10, 301, 301], [11, 13, 300, 300], [500, 7, 64, 64]]
    )  # odd offsets at a level-1 read
    assert np.array_equal(s.read_boxes(boxes, (100, 100)), _per_box(s, boxes, (100, 100)))
    assert s.read_boxes(np.zeros((0, 4), np.int64), (8, 8)).shape == (0, 8, 8, 3)


@pytest.mark.parametrize("name", ["pattern_slide", "synth_025"])
def test_tifffile_reader_gives_openslides_pixels(request, name):
    path = request.getfixturevalue(name)
    a, b = open_slide(path), open_slide(path, reader="tifffile")
    assert b._tiff_reader is not None  # the fast path is used for this file
    W, H = a.dimensions
    for level in range(a.level_count):
        d = int(a.level_downsamples[level])
        for loc, size in [
            ((0, 0), (300, 200)),
            ((W - 100 * d, H - 50 * d), (300, 200)),
            ((-64 * d, -32 * d), (200, 100)),
            ((256 * d, 512 * d), (256, 256)),
            ((W + 10 * d, 0), (16, 16)),
        ]:
            assert np.array_equal(
                a.read_region(loc, level, size), b.read_region(loc, level, size)
            ), (level, loc, size)
    boxes = np.array([[100, 200, 820, 820], [664, 200, 820, 820], [5, 3, 1640, 1640]])
    assert np.array_equal(_per_box(a, boxes, (1024, 1024)), b.read_boxes(boxes, (1024, 1024)))


def test_tifffile_reader_falls_back_to_openslide_for_fractional_level_coordinates(pattern_slide):
    a, b = open_slide(pattern_slide), open_slide(pattern_slide, reader="tifffile")
    assert (
        b._tiff_reader.read((3, 5), 1, (10, 10), 2.0) is None
    )  # 1.5, 2.5 level px: not a whole pixel
    assert np.array_equal(a.read_region((3, 5), 1, (40, 30)), b.read_region((3, 5), 1, (40, 30)))


@pytest.mark.real_slides
def test_tifffile_reader_on_a_real_svs(cmu_slide):
    """Aperio SVS (JPEG): the tifffile path gives OpenSlide's pixels exactly (both decode
    with libjpeg-turbo)."""
    a, b = open_slide(cmu_slide), open_slide(cmu_slide, reader="tifffile")
    assert b._tiff_reader is not None
    W, H = a.dimensions
    for loc, size in [
        ((0, 0), (512, 512)),
        ((W // 2 + 13, H // 3 + 7), (700, 300)),
        ((W - 200, H - 100), (400, 300)),
    ]:
        assert np.array_equal(a.read_region(loc, 0, size), b.read_region(loc, 0, size))


def test_unknown_reader_is_a_one_line_error(pattern_slide):
    with pytest.raises(ConfigError, match="unknown slide reader 'pillow'"):
        open_slide(pattern_slide, reader="pillow")


def test_plan_batches_groups_neighbours_and_covers_every_tile_once():
    assert (
        block_shape(8) == (2, 4)
        and block_shape(16) == (4, 4)
        and block_shape(32) == (4, 8)
        and block_shape(7) == (1, 7)
    )
    rows, cols = np.meshgrid(np.arange(7), np.arange(9), indexing="ij")
    keep = (rows.ravel() + cols.ravel()) % 5 != 0  # holes, like tiles off tissue
    r, c = rows.ravel()[keep], cols.ravel()[keep]
    batches = plan_batches(r, c, 8)
    allidx = np.concatenate(batches)
    assert sorted(allidx.tolist()) == list(range(len(r))) and all(len(b) <= 8 for b in batches)
    block = r * 1000 + c // 4 - (r % 2) * 1000  # (row // 2, col // 4)
    owner = {}
    for k, b in enumerate(batches):
        for t in b:
            assert owner.setdefault(int(block[t]), k) == k, "a block is never split between batches"
    assert np.mean([len(b) for b in batches]) > 6  # partial blocks are packed together


@pytest.mark.parametrize("workers", [0, 2])
def test_block_batches_equal_tile_dataset(pattern_slide, workers):
    s = open_slide(pattern_slide)
    g = make_grid(*s.dimensions, s.mpp, 0.2, 128, 16)
    ds = BlockBatches(s, g.boxes, g.rows, g.cols, 128, 4)
    seen = []
    for batch in read_batches(ds, readers=workers):
        idx = batch["index"].numpy()
        ref = TileDataset(s, g.boxes[idx], 128)
        assert batch["cell"].shape == (len(idx), 3, 128, 128)
        for k in range(len(idx)):
            assert np.array_equal(batch["cell"][k].numpy(), ref[k]["cell"].numpy())
        seen += idx.tolist()
    assert sorted(seen) == list(range(len(g)))


def test_default_workers_fit_the_machine():
    import os

    n = default_workers()
    assert 1 <= n <= 16 and n <= max(1, len(os.sched_getaffinity(0)))
