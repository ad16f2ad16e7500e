"""The slide engine with the demo model, measured in one run (issue: slide inference engine).

    python benchmarks/bench_engine.py [--size 7168] [--seed 777] [--device auto] [--quick]

On a synthetic slide no model saw (its own seed, 0.25 µm/px):

* accuracy: stitched two-pass detections against the slide's ground truth with the OCELOT
  matching (3 µm), next to the demo model's patch-level test mF1; cells reported twice;
  recall within 20 cell-tile px (4 µm) of a tile-core border against recall elsewhere;
  estimated against true purity;
* two-pass against the paper's per-tile path: agreement F1 of the two outputs and speed-up;
* throughput: end-to-end cell tiles/s against model-only tiles/s on the same tiles/device;
* peak memory (max RSS of a fresh process) for the slide and for one with 4× the area.

Results: ``benchmarks/results/engine.json`` and ``engine.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

_CHILD = r"""
import json, resource, sys, time
from wsi_ocelot.inference.engine import EngineConfig, SlideRunner
cfg = EngineConfig(device=sys.argv[4], workers=int(sys.argv[5]), progress=False, per_tile=sys.argv[3] == "per-tile")
t0 = time.perf_counter()
res = SlideRunner(sys.argv[6], cfg).run(sys.argv[1], sys.argv[2])
print(json.dumps({"wall_s": time.perf_counter() - t0, "timings": res.timings, "n_cells": res.n_cells, "out": str(res.out_dir),
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "mode": res.mode}))
"""


def run_child(slide: Path, out: Path, mode: str, device: str, workers: int, model: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(slide), str(out), mode, device, str(workers), model],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cells_of(out_dir: str) -> np.ndarray:
    from wsi_ocelot.outputs import open_predictions

    with open_predictions(Path(out_dir) / "predictions.zarr") as s:
        c = s.cells()
    return np.stack([c["x"], c["y"], c["class"], c["prob"]], 1).astype(np.float64) if len(c["x"]) else np.zeros((0, 4))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=7168, help="slide side, level-0 px at 0.25 µm/px (7168 → a 10 × 10 cell-tile grid)")
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default=None, help="checkpoint (default: the demo weights)")
    ap.add_argument("--skip-memory", action="store_true", help="skip the 4×-area memory run")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()

    import torch

    from wsi_ocelot.config import GeometryConfig
    from wsi_ocelot.evaluation import score_slide
    from wsi_ocelot.inference.predictor import Predictor, resolve_device
    from wsi_ocelot.metrics import match_by_class
    from wsi_ocelot.model import load_model, read_checkpoint_info
    from wsi_ocelot.slide import open_slide
    from wsi_ocelot.synthetic import read_ground_truth, write_synthetic_slide
    from wsi_ocelot.sysinfo import describe_machine
    from wsi_ocelot.tiling import TileDataset, make_loader, plan_tiles
    from wsi_ocelot.weights import resolve_model

    model_path = str(resolve_model(args.model))
    info = read_checkpoint_info(model_path)
    dev = str(resolve_device(args.device))
    report: dict = {"machine": describe_machine(dev), "device": dev, "model": Path(model_path).name, "seed": args.seed, "size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slide_path = tmp / "bench.tiff"
        synth = write_synthetic_slide(slide_path, mpp=0.25, size=(args.size, args.size), seed=args.seed)
        gt, _ = read_ground_truth(slide_path)
        geo: GeometryConfig = info.geometry
        slide = open_slide(slide_path)
        plan = plan_tiles(slide, geo)
        report["cell_grid"] = [plan.cells.n_cols, plan.cells.n_rows]
        report["cell_tiles_on_tissue"] = len(plan.cells)
        report["tissue_tiles"] = len(plan.tissue)

        two = run_child(slide_path, tmp / "two", "two-pass", dev, args.workers, model_path)
        per = run_child(slide_path, tmp / "per", "per-tile", dev, args.workers, model_path)
        a, b = cells_of(two["out"]), cells_of(per["out"])
        mpp = slide.mpp
        score = score_slide(a, gt, mpp)
        r3 = 3.0 / mpp
        # cells reported twice: a ground-truth cell with two detections of any class within 3 µm
        from scipy.spatial import cKDTree

        near = cKDTree(a[:, :2]).query_ball_point(gt[:, :2], r3) if len(a) else [[] for _ in gt]
        twice = int(sum(len(n) >= 2 for n in near))
        close_pairs = len(cKDTree(a[:, :2]).query_pairs(r3)) if len(a) else 0
        # recall near tile-core borders (within 20 cell-tile px) vs elsewhere
        stride = plan.cells.stride_l0
        band = 20 * plan.cells.tile_l0 / geo.tile_size
        fx, fy = np.mod(gt[:, 0], stride), np.mod(gt[:, 1], stride)
        border = (np.minimum(fx, stride - fx) <= band) | (np.minimum(fy, stride - fy) <= band)
        matched = np.zeros(len(gt), bool)
        for res in match_by_class(a, gt, radius=r3).values():
            if len(res.pairs):
                matched[res.pairs[:, 1]] = True
        rec_border = float(matched[border].mean()) if border.any() else float("nan")
        rec_inner = float(matched[~border].mean()) if (~border).any() else float("nan")
        # seams in the stitched tissue map: mean |step| across tissue-tile core borders vs elsewhere
        import zarr

        tm = np.asarray(zarr.open_group(str(Path(two["out"]) / "predictions.zarr"), mode="r")["tissue"]["0"][:]).astype(float)
        t_stride = geo.tile_size - 2 * round(plan.tissue.margin_l0 * geo.tile_size / plan.tissue.tile_l0)
        cols = np.arange(t_stride, tm.shape[1], t_stride)
        rows = np.arange(t_stride, tm.shape[0], t_stride)
        dx, dy = np.abs(np.diff(tm, axis=1)), np.abs(np.diff(tm, axis=0))
        seam = float(np.concatenate([dx[:, cols - 1].ravel(), dy[rows - 1, :].ravel()]).mean()) if len(cols) or len(rows) else float("nan")
        other = float(np.concatenate([np.delete(dx, cols - 1, axis=1).ravel(), np.delete(dy, rows - 1, axis=0).ravel()]).mean())
        # purity
        true_purity = float((gt[:, 2] == 2).mean())
        est = json.loads((Path(two["out"]) / "purity.json").read_text())["purity"]
        # agreement two-pass vs per-tile (same class within 3 µm)
        m = match_by_class(a, b[:, :3], radius=r3)
        tp = sum(r.tp for r in m.values())
        prec, rec = tp / max(len(a), 1), tp / max(len(b), 1)
        agree_f1 = 2 * prec * rec / max(prec + rec, 1e-12)
        demo_patch = json.loads((Path(__file__).resolve().parent.parent / "training" / "results" / "synthetic_table5.json").read_text()).get("demo", {}).get("mean") \
            if (Path(__file__).resolve().parent.parent / "training" / "results" / "synthetic_table5.json").is_file() else None
        report["accuracy"] = {
            "slide_mF1": score.mf1, "BC_f1": score.bc.f1, "TC_f1": score.tc.f1, "demo_patch_test_mF1": demo_patch,
            "gt_cells": int(len(gt)), "detections": int(len(a)), "gt_cells_with_two_detections_within_3um": twice,
            "detection_pairs_closer_than_3um": close_pairs,
            "recall_within_20px_of_tile_border": round(rec_border, 4), "recall_elsewhere": round(rec_inner, 4),
            "purity_estimated": est, "purity_true": round(true_purity, 4),
            "tissue_map_step_at_tile_seams": round(seam, 3), "tissue_map_step_elsewhere": round(other, 3),
        }
        report["two_pass_vs_per_tile"] = {
            "agreement_f1": round(agree_f1, 4), "two_pass_s": round(two["wall_s"], 2), "per_tile_s": round(per["wall_s"], 2),
            "speedup": round(per["wall_s"] / two["wall_s"], 3), "two_pass_timings": {k: round(v, 2) for k, v in two["timings"].items()},
            "per_tile_timings": {k: round(v, 2) for k, v in per["timings"].items()},
        }
        # model-only throughput on the same tiles and device: tiles read once into memory first
        model, _ = load_model(model_path, dev)
        pred = Predictor(model, torch.device(dev))
        tiss = [bt["cell"] for bt in make_loader(TileDataset(slide, plan.tissue.boxes, geo.tile_size), batch_size=8, workers=0)]
        cells = [bt["cell"] for bt in make_loader(TileDataset(slide, plan.cells.boxes, geo.tile_size), batch_size=8, workers=0)]
        n_crop = geo.tile_size // geo.context_factor
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for x in tiss:
            pred.tissue_probs(x)
        for x in cells:
            crop = torch.rand(x.shape[0], 2, n_crop, n_crop)
            pred.cell_probs(x, crop)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        model_s = time.perf_counter() - t0
        n_tiles = len(plan.cells)
        report["throughput"] = {
            "cell_tiles": n_tiles, "end_to_end_tiles_per_s": round(n_tiles / two["wall_s"], 3),
            "model_only_tiles_per_s": round(n_tiles / model_s, 3), "ratio": round(model_s / two["wall_s"], 3),
        }
        report["memory"] = {"slide_max_rss_mb": round(two["max_rss_mb"], 1), "slide_area_mm2": round((args.size * 0.25 / 1000) ** 2, 3)}
        if not args.skip_memory:
            big = tmp / "big.tiff"
            write_synthetic_slide(big, mpp=0.25, size=(2 * args.size, 2 * args.size), seed=args.seed + 1)
            r4 = run_child(big, tmp / "big", "two-pass", dev, args.workers, model_path)
            report["memory"].update({"4x_area_max_rss_mb": round(r4["max_rss_mb"], 1), "ratio": round(r4["max_rss_mb"] / two["max_rss_mb"], 3),
                                     "4x_area_wall_s": round(r4["wall_s"], 1), "4x_area_cells": r4["n_cells"]})
        del synth
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "engine" if not dev.startswith("cuda") else "engine_gpu"
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    acc, tp_, th, mem = report["accuracy"], report["two_pass_vs_per_tile"], report["throughput"], report["memory"]
    md = [
        "# Slide engine with the demo model", "",
        f"Machine: {report['machine']}; device {dev}. Synthetic slide, seed {args.seed}, {args.size}² px at 0.25 µm/px, "
        f"cell grid {report['cell_grid'][0]} × {report['cell_grid'][1]} ({report['cell_tiles_on_tissue']} cell tiles on tissue, {report['tissue_tiles']} tissue tiles).", "",
        "| measure | value | target |", "| --- | ---: | --- |",
        f"| slide mF1 vs ground truth (3 µm) | {acc['slide_mF1']:.4f} | within 0.02 of the demo's patch-level test mF1 ({acc['demo_patch_test_mF1']}) |",
        f"| ground-truth cells with two detections within 3 µm | {acc['gt_cells_with_two_detections_within_3um']} of {acc['gt_cells']} | 0 |",
        f"| recall within 20 px of a tile border / elsewhere | {acc['recall_within_20px_of_tile_border']} / {acc['recall_elsewhere']} | within 0.03 |",
        f"| purity estimated / true | {acc['purity_estimated']:.4f} / {acc['purity_true']:.4f} | within 0.03 |",
        f"| tissue-map step at tile seams / elsewhere (0–255) | {acc['tissue_map_step_at_tile_seams']} / {acc['tissue_map_step_elsewhere']} | no visible seams |",
        f"| two-pass vs per-tile agreement F1 | {tp_['agreement_f1']} | ≥ 0.97 |",
        f"| two-pass / per-tile wall time | {tp_['two_pass_s']} s / {tp_['per_tile_s']} s (× {tp_['speedup']}) | ≥ 1.6× |",
        f"| end-to-end / model-only cell tiles/s | {th['end_to_end_tiles_per_s']} / {th['model_only_tiles_per_s']} (ratio {th['ratio']}) | ≥ 0.85 |",
        f"| peak memory: slide / 4× area | {mem['slide_max_rss_mb']} MB / {mem.get('4x_area_max_rss_mb', '-')} MB (ratio {mem.get('ratio', '-')}) | ≤ 1.2× |",
    ]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
