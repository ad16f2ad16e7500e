"""Slide-level against patch-level accuracy of one model, organ by organ.

The engine criterion compares the stitched detections on a whole slide with the model's
patch-level test mF1. The synthetic test splits are cut from slides of OCELOT's six organ
presets; this benchmark renders one slide per organ preset the way the dataset generator
does (1700 µm side, the organ's tissue parameters; written as a pyramidal TIFF at
0.25 µm/px), runs the two-pass engine on it, and scores

* the stitched slide detections against the slide's ground truth (OCELOT matching, 3 µm);
* the model the way a test split scores it, on OCELOT-style pairs cut from the same slide
  (``bench_engine.patch_level``: whole patches, their own contexts, peaks per patch);
* the stitched detections on exactly those patches (like for like).

It also lists the model's per-organ patch-level mF1 on the synthetic test splits recorded in
``training/results/demo_test_seed*.json``. Results: ``benchmarks/results/slide_vs_patch.{json,md}``.

    python benchmarks/bench_slide_vs_patch.py              # demo weights, CPU, ≈ 15 min on 2 cores
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_engine import _ci95, cells_of, demo_test_splits, patch_level  # noqa: E402

log = logging.getLogger("bench_slide_vs_patch")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--seed", type=int, default=900, help="slide seeds are seed, seed + 1, ... (one per organ)"
    )
    ap.add_argument(
        "--size-um",
        type=float,
        default=1700.0,
        help="slide side in µm (the dataset generator's default)",
    )
    ap.add_argument(
        "--patches",
        type=int,
        default=12,
        help="pairs cut from each slide for the patch-level score",
    )
    ap.add_argument("--model", default=None, help="checkpoint (default: the demo weights)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from wsi_ocelot.evaluation import score_slide
    from wsi_ocelot.inference.engine import EngineConfig, SlideRunner
    from wsi_ocelot.model import read_checkpoint_info
    from wsi_ocelot.slide import open_slide
    from wsi_ocelot.synthetic import SyntheticParams, read_ground_truth, write_synthetic_slide
    from wsi_ocelot.synthetic.dataset import ORGANS
    from wsi_ocelot.sysinfo import describe_machine
    from wsi_ocelot.weights import resolve_model

    model_path = str(resolve_model(args.model))
    info = read_checkpoint_info(model_path)
    runner = SlideRunner(
        model_path,
        EngineConfig(
            device=args.device,
            runtime="torch",
            workers=args.workers,
            batch_size=args.batch_size,
            progress=False,
        ),
    )
    dev = str(runner.device)
    pred = runner.predictor
    mpp = 0.25
    size = int(round(args.size_um / mpp))
    rows = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, organ in enumerate(ORGANS):
            seed = args.seed + i
            path = Path(tmp) / f"{organ}.tiff"
            params = dataclasses.replace(SyntheticParams(), **ORGANS[organ])
            write_synthetic_slide(path, mpp=mpp, size=(size, size), seed=seed, params=params)
            t0 = time.perf_counter()
            res = runner.run(str(path), str(Path(tmp) / "out"), slide_id=organ)
            run_s = time.perf_counter() - t0
            cells = cells_of(str(res.out_dir))
            gt, _ = read_ground_truth(path)
            slide = open_slide(path)
            score = score_slide(cells, gt, slide.mpp)
            pl = patch_level(
                slide,
                gt,
                info.geometry,
                pred,
                info.peaks,
                args.patches,
                seed,
                cells,
                args.batch_size,
            )
            row = {
                "organ": organ,
                "seed": seed,
                "gt_cells": int(len(gt)),
                "detections": int(len(cells)),
                "slide_mF1": round(score.mf1, 4),
                "patch_mF1_same_slide": pl["patch_mF1"],
                "stitched_on_same_patches_mF1": pl["stitched_on_same_patches_mF1"],
                "patches": pl["patches"],
                "patch_gt_cells": pl["gt_cells"],
                "engine_s": round(run_s, 1),
            }
            log.info("%s", row)
            rows.append(row)
    splits = demo_test_splits()

    def mean_ci(vals):
        vals = [v for v in vals if v is not None]
        return {
            "mean": round(float(np.mean(vals)), 4),
            "ci95": round(_ci95(vals), 4) if len(vals) > 1 else None,
            "n": len(vals),
        }

    summary = {
        "slide_mF1": mean_ci([r["slide_mF1"] for r in rows]),
        "patch_mF1_same_slides": mean_ci([r["patch_mF1_same_slide"] for r in rows]),
        "stitched_on_same_patches_mF1": mean_ci([r["stitched_on_same_patches_mF1"] for r in rows]),
        "test_splits_mF1": mean_ci([s["overall"] for s in splits.values()]),
    }
    summary["slide_minus_test_splits"] = round(
        summary["slide_mF1"]["mean"] - summary["test_splits_mF1"]["mean"], 4
    )
    summary["stitched_minus_patch_same_patches"] = round(
        summary["stitched_on_same_patches_mF1"]["mean"] - summary["patch_mF1_same_slides"]["mean"],
        4,
    )
    report = {
        "machine": describe_machine(dev),
        "model": Path(model_path).name,
        "slide_size_um": args.size_um,
        "slide_mpp": mpp,
        "patches_per_slide": args.patches,
        "organs": rows,
        "test_splits": splits,
        "summary": summary,
        "wall_s": round(time.perf_counter() - t_all, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "slide_vs_patch.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [
        "# Slide-level vs patch-level mF1, one slide per organ preset",
        "",
        f"Machine: {report['machine']}. Model `{report['model']}`; one synthetic slide per organ preset ({args.size_um:.0f} µm side, "
        f"0.25 µm/px TIFF, seeds {args.seed}–{args.seed + len(rows) - 1}), two-pass engine; {args.patches} OCELOT-style pairs cut from each "
        f"slide for the patch-level score. Wall time {report['wall_s']} s.",
        "",
        "| organ | GT cells | slide mF1 | patch-level mF1 on pairs from this slide | stitched on the same pairs | test splits (per organ) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        per = ", ".join(
            f"{s[r['organ']]:.3f}" for s in splits.values() if s.get(r["organ"]) is not None
        )
        md.append(
            f"| {r['organ']} | {r['gt_cells']} | {r['slide_mF1']:.4f} | {r['patch_mF1_same_slide']:.4f} ({r['patch_gt_cells']} cells) | "
            f"{r['stitched_on_same_patches_mF1']:.4f} | {per} |"
        )
    s = summary
    md += [
        "",
        "| summary (mean ± 95 % CI) | value |",
        "| --- | ---: |",
        f"| slide mF1 over the {s['slide_mF1']['n']} organ slides | {s['slide_mF1']['mean']} ± {s['slide_mF1']['ci95']} |",
        f"| patch-level mF1 on pairs cut from those slides | {s['patch_mF1_same_slides']['mean']} ± {s['patch_mF1_same_slides']['ci95']} |",
        f"| stitched detections on the same pairs | {s['stitched_on_same_patches_mF1']['mean']} ± {s['stitched_on_same_patches_mF1']['ci95']} |",
        f"| patch-level test mF1 over {s['test_splits_mF1']['n']} synthetic test splits (seeds {', '.join(splits)}) | "
        f"{s['test_splits_mF1']['mean']} ± {s['test_splits_mF1']['ci95']} |",
        f"| slide − test splits | {s['slide_minus_test_splits']:+.4f} |",
        f"| stitched − patch-level on the same pairs | {s['stitched_minus_patch_same_patches']:+.4f} |",
    ]
    (out / "slide_vs_patch.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
