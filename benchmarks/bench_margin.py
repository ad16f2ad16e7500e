"""Recall near cell-tile borders against the cell-tile margin (demo weights, CPU).

    python benchmarks/bench_margin.py MARGIN     # e.g. 64, then 160

Runs the two-pass engine on the engine benchmark's synthetic slide (seed 777, 7168² px at
0.25 µm/px) with the demo weights and the given cell margin (cell px), and prints the recall
of ground-truth cells within 20 cell-tile px of a tile-core border and elsewhere.
Results of the committed runs: ``results/engine_margin.json``.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from wsi_ocelot.inference.engine import EngineConfig, SlideRunner
from wsi_ocelot.metrics import match_by_class
from wsi_ocelot.model import load_model, save_checkpoint
from wsi_ocelot.outputs import open_predictions
from wsi_ocelot.slide import open_slide
from wsi_ocelot.synthetic import read_ground_truth, write_synthetic_slide
from wsi_ocelot.tiling import plan_tiles
from wsi_ocelot.weights import demo_path


def main(margin: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        slide = tmp / "bench.tiff"
        write_synthetic_slide(slide, mpp=0.25, size=(7168, 7168), seed=777)
        gt, _ = read_ground_truth(slide)
        model, info = load_model(demo_path())
        geo = dataclasses.replace(info.geometry, cell_margin=margin)
        ckpt = tmp / f"m{margin}.safetensors"
        save_checkpoint(ckpt, model, geometry=geo, peaks=info.peaks)
        t0 = time.time()
        res = SlideRunner(ckpt, EngineConfig(device="cpu", workers=1, progress=False)).run(slide, tmp / "out")
        with open_predictions(res.out_dir / "predictions.zarr") as store:
            c = store.cells()
        pred = np.stack([c["x"], c["y"], c["class"], c["prob"]], 1).astype(float)
        plan = plan_tiles(open_slide(slide), geo)
        stride = plan.cells.stride_l0
        band = 20 * plan.cells.tile_l0 / geo.tile_size
        fx, fy = np.mod(gt[:, 0], stride), np.mod(gt[:, 1], stride)
        border = (np.minimum(fx, stride - fx) <= band) | (np.minimum(fy, stride - fy) <= band)
        matched = np.zeros(len(gt), bool)
        for r in match_by_class(pred, gt, radius=3.0 / 0.25).values():
            if len(r.pairs):
                matched[r.pairs[:, 1]] = True
        return {"margin": margin, "tiles": len(plan.cells), "wall": round(time.time() - t0, 1),
                "recall_border": round(float(matched[border].mean()), 4), "recall_else": round(float(matched[~border].mean()), 4),
                "n_border": int(border.sum())}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 160)))
