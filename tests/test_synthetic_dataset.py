"""``wsi-ocelot synth-dataset``: the OCELOT release layout, cut from synthetic slides."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from wsi_ocelot.cli import main
from wsi_ocelot.config import GeometryConfig
from wsi_ocelot.synthetic import make_synthetic_slide
from wsi_ocelot.synthetic.dataset import ORGANS, SyntheticDatasetConfig, write_synthetic_dataset

GEO = GeometryConfig(tile_size=256, cell_margin=16, tissue_margin=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthds")
    assert (
        main(
            [
                "synth-dataset",
                str(out),
                "--seed",
                "5",
                "--train",
                "4",
                "--val",
                "2",
                "--test",
                "2",
                "--tile-size",
                "256",
            ]
        )
        == 0
    )
    return out


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
def test_layout_and_metadata(dataset):
    meta = json.loads((dataset / "metadata.json").read_text())
    assert set(meta) == {"general_info", "label_info", "field_description", "sample_pairs"}
    pairs = meta["sample_pairs"]
    assert [p["subset"] for p in pairs.values()] == ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    for pid, p in pairs.items():
        split = p["subset"]
        for sub in (
            f"images/{split}/cell/{pid}.jpg",
            f"images/{split}/tissue/{pid}.jpg",
            f"annotations/{split}/cell/{pid}.csv",
            f"annotations/{split}/tissue/{pid}.png",
        ):
            assert (dataset / sub).is_file(), sub
        assert p["patch_x_offset"] in (0.125, 0.625) and p["patch_y_offset"] in (0.125, 0.625)
        assert p["organ"] in ORGANS
        assert p["tissue"]["x_end"] - p["tissue"]["x_start"] == 4 * (
            p["cell"]["x_end"] - p["cell"]["x_start"]
        )
        assert Image.open(dataset / f"images/{split}/cell/{pid}.jpg").size == (256, 256)
        lab = np.asarray(Image.open(dataset / f"annotations/{split}/tissue/{pid}.png"))
        assert set(np.unique(lab)) <= {1, 2, 255}
    # splits come from different slides
    names = {
        s: {p["slide_name"] for p in pairs.values() if p["subset"] == s}
        for s in ("train", "val", "test")
    }
    assert (
        not (names["train"] & names["val"])
        and not (names["train"] & names["test"])
        and not (names["val"] & names["test"])
    )


def test_annotations_match_the_slide(dataset):
    """The CSV points are the slide's cells in the cell box, in cell-patch px; the tissue
    PNG is its cancer area; the cell patch sits in the tissue patch at the offset."""
    meta = json.loads((dataset / "metadata.json").read_text())
    for pid, p in list(meta["sample_pairs"].items())[:3]:
        slide = make_synthetic_slide(
            mpp=p["mpp_x"],
            size=tuple(p["slide_size"]),
            seed=p["slide_seed"],
            params=_params(p["organ"]),
        )
        c = p["cell"]
        box = (c["x_start"], c["y_start"], c["x_end"] - c["x_start"], c["y_end"] - c["y_start"])
        cells = slide.cells_in_box(box)
        text = (dataset / f"annotations/{p['subset']}/cell/{pid}.csv").read_text().strip()
        rows = (
            np.array([list(map(int, ln.split(","))) for ln in text.splitlines()])
            if text
            else np.zeros((0, 3), int)
        )
        assert len(rows) == len(cells)
        expect = np.floor((cells[:, :2] - box[:2]) * 256 / box[2]).astype(int)
        assert np.array_equal(rows[:, :2], np.clip(expect, 0, 255)) and np.array_equal(
            rows[:, 2], cells[:, 2].astype(int)
        )
        # a nucleus (dark rim or body) at every annotated point; vesicular tumour
        # nuclei have pale centres, so look at the darkest pixel within ~1 µm
        from scipy import ndimage as ndi

        img = (
            np.asarray(Image.open(dataset / f"images/{p['subset']}/cell/{pid}.jpg"))
            .astype(float)
            .mean(axis=2)
        )
        dark = ndi.minimum_filter(img, size=11)
        if len(rows):
            assert np.median(dark[rows[:, 1], rows[:, 0]]) < np.median(img) - 40
        # downsampled cell patch = the tissue patch region at the offset
        cell = Image.open(dataset / f"images/{p['subset']}/cell/{pid}.jpg")
        small = np.asarray(cell.resize((64, 64), Image.Resampling.BOX)).astype(float)
        ctx = np.asarray(Image.open(dataset / f"images/{p['subset']}/tissue/{pid}.jpg")).astype(
            float
        )
        x0, y0 = round(p["patch_x_offset"] * 256 - 32), round(p["patch_y_offset"] * 256 - 32)
        assert np.abs(small - ctx[y0 : y0 + 64, x0 : x0 + 64]).mean() < 8


def _params(organ):
    import dataclasses

    from wsi_ocelot.synthetic import SyntheticParams

    return dataclasses.replace(SyntheticParams(), **ORGANS[organ])


def test_different_seeds_differ_same_seed_repeats(tmp_path):
    cfg = SyntheticDatasetConfig(seed=1, train=1, val=0, test=0, geometry=GEO)
    write_synthetic_dataset(tmp_path / "a", cfg)
    write_synthetic_dataset(tmp_path / "b", cfg)
    write_synthetic_dataset(
        tmp_path / "c", SyntheticDatasetConfig(seed=2, train=1, val=0, test=0, geometry=GEO)
    )
    a = (tmp_path / "a/images/train/cell/001.jpg").read_bytes()
    assert a == (tmp_path / "b/images/train/cell/001.jpg").read_bytes()
    assert a != (tmp_path / "c/images/train/cell/001.jpg").read_bytes()
