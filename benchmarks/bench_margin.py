"""Recall near cell-tile borders against the cell-tile margin (demo weights, CPU).

    python benchmarks/bench_margin.py [--margins 16 32 48 64 96 160] [--strict-margins 32 64 160] [--json PATH]

Runs the two-pass engine on the engine benchmark's synthetic slide (seed 777, 7168² px at
0.25 µm/px) with the demo weights, for each cell margin (cell px) with the engine's border reach (3 µm: a tile keeps its
detections that far beyond its core) and, for comparison, with strict cores (reach 0, the
engine before), and reports the recall of
ground-truth cells within 20 cell-tile px of a tile-core border and elsewhere (class-aware
OCELOT matching at 3 µm), the slide's detection F1, cell tiles per mm² of tissue, and the
smallest margin whose border recall stays within 0.01 of the interior's and whose slide F1
stays within 0.002 of the best margin's: the demo's geometry.

Results: ``results/margin.json`` and ``margin.md`` (earlier strict-core runs of the old engine:
``results/engine_margin.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from wsi_ocelot.sysinfo import describe_machine
from wsi_ocelot.tiling import plan_tiles
from wsi_ocelot.weights import demo_path

HERE = Path(__file__).resolve().parent
REACH = EngineConfig().border_reach_um


def run_one(slide: Path, gt: np.ndarray, tmp: Path, margin: int, reach: float) -> dict:
    model, info = load_model(demo_path())
    geo = dataclasses.replace(info.geometry, cell_margin=margin)
    ckpt = tmp / f"m{margin}.safetensors"
    save_checkpoint(ckpt, model, geometry=geo, peaks=info.peaks)
    t0 = time.time()
    res = SlideRunner(
        ckpt,
        EngineConfig(
            device="cpu",
            runtime="torch",
            precision="fp32",
            workers=1,
            progress=False,
            border_reach_um=reach,
        ),
    ).run(slide, tmp / "out")
    wall = time.time() - t0
    with open_predictions(res.out_dir / "predictions.zarr") as store:
        c = store.cells()
    pred = np.stack([c["x"], c["y"], c["class"], c["prob"]], 1).astype(float)
    plan = plan_tiles(open_slide(slide), geo)
    stride = plan.cells.stride_l0
    band = 20 * plan.cells.tile_l0 / geo.tile_size
    fx, fy = np.mod(gt[:, 0], stride), np.mod(gt[:, 1], stride)
    border = (np.minimum(fx, stride - fx) <= band) | (np.minimum(fy, stride - fy) <= band)
    matched = np.zeros(len(gt), bool)
    tp = 0
    for r in match_by_class(pred, gt, radius=3.0 / 0.25).values():
        if len(r.pairs):
            matched[r.pairs[:, 1]] = True
            tp += len(r.pairs)
    core_mm = stride * 0.25 / 1000.0
    return {
        "margin": margin,
        "reach_um": reach,
        "tiles": len(plan.cells),
        "cell_tiles_per_mm2": round(1 / core_mm**2, 2),
        "wall": round(wall, 1),
        "recall_border": round(float(matched[border].mean()), 4),
        "recall_else": round(float(matched[~border].mean()), 4),
        "n_border": int(border.sum()),
        "f1": round(2 * tp / (len(pred) + len(gt)), 4),
        "cells": len(pred),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--margins", type=int, nargs="+", default=[16, 32, 48, 64, 96, 160])
    ap.add_argument(
        "--strict-margins",
        type=int,
        nargs="*",
        default=[32, 64, 160],
        help="margins also run with strict cores",
    )
    ap.add_argument("--json", default=str(HERE / "results" / "margin.json"))
    args = ap.parse_args()
    t_start = time.time()
    runs = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        slide = tmp / "bench.tiff"
        write_synthetic_slide(slide, mpp=0.25, size=(7168, 7168), seed=777)
        gt, _ = read_ground_truth(slide)
        for reach, margins in ((REACH, args.margins), (0.0, args.strict_margins)):
            for margin in margins:
                runs.append(run_one(slide, gt, tmp, margin, reach))
                print(json.dumps(runs[-1]), flush=True)
    best_f1 = max(r["f1"] for r in runs if r["reach_um"] == REACH)
    ok = [
        r
        for r in runs
        if r["reach_um"] == REACH
        and r["recall_border"] >= r["recall_else"] - 0.01
        and r["f1"] >= best_f1 - 0.002
    ]
    chosen = min(ok, key=lambda r: r["margin"]) if ok else None
    report = {
        "machine": describe_machine("cpu"),
        "slide": "synthetic, seed 777, 7168x7168 px at 0.25 um/px; demo weights (two-pass); class-aware matching at 3 um",
        "runs": runs,
        "chosen_margin": chosen["margin"] if chosen else None,
        "wall_s": round(time.time() - t_start, 1),
    }
    path = Path(args.json)
    path.write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Cell-tile margin against recall near tile-core borders (demo model, CPU)",
        "",
        f"Machine: {report['machine']}. Slide: {report['slide']}. Border: ground-truth cells within 20 cell-tile px "
        "(4 µm) of a tile-core border. Reach: how far beyond its core a tile keeps its detections (0 = strict cores, "
        "the engine before; cross-tile pairs closer than 3 µm are one cell either way).",
        "",
        "| margin (cell px) | reach (µm) | cell tiles per mm² | tiles on this slide | recall near borders | recall elsewhere | gap | slide F1 | wall (s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        lines.append(
            f"| {r['margin']} | {r['reach_um']:g} | {r['cell_tiles_per_mm2']} | {r['tiles']} | {r['recall_border']} | "
            f"{r['recall_else']} | {r['recall_else'] - r['recall_border']:+.4f} | {r['f1']} | {r['wall']} |"
        )
    lines += [
        "",
        f"Smallest margin whose border recall is within 0.01 of the interior's and whose F1 is within 0.002 of the best (reach {REACH:g} µm): "
        f"**{report['chosen_margin']} px**. Benchmark wall time {report['wall_s']} s.",
        "",
    ]
    path.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
