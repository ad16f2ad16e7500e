"""The slide engine with the demo model, measured in one run (issue: slide inference engine).

    python benchmarks/bench_engine.py [--size 7168] [--seed 777] [--device auto|cpu|cuda]
        [--batch-size 8] [--workers 2] [--patches 24] [--repeat 1] [--skip-memory] [--json PATH]

On a GPU (bf16 autocast and channels-last are the engine's defaults there; ``--no-amp`` /
``--no-channels-last`` turn them off), e.g.::

    python benchmarks/bench_engine.py --device cuda --batch-size 16 --workers 8 --repeat 2 \
        --skip-memory --json benchmarks/results/engine_gpu.json

On a synthetic slide no model saw (its own seed, 0.25 µm/px):

* accuracy: stitched two-pass detections against the slide's ground truth with the OCELOT
  matching (3 µm), next to the demo model's patch-level mF1 — on its own test split (mixed
  organs, recorded in training/results) and on OCELOT-style cell/context pairs cut from this
  same slide (the matched comparison: same tissue, same cells); cells reported twice;
  recall within 20 cell-tile px (4 µm) of a tile-core border against recall elsewhere;
  estimated against true purity;
* two-pass against the paper's per-tile path: agreement F1 of the two outputs and speed-up;
* throughput: end-to-end cell tiles/s against model-only tiles/s on the same tiles/device,
  by wall time and by CPU time (the CPU-time ratio is robust to other work on a shared machine);
* peak memory (max RSS of a fresh process) for the slide and for one with 4× the area.

Results: ``benchmarks/results/engine.json`` and ``engine.md`` (``engine_gpu.*`` on CUDA), or
``--json PATH`` (and the Markdown beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "training" / "results"  # the recorded training and demo test results

_CHILD = r"""
import json, resource, sys, time
import torch
from wsi_ocelot.inference.engine import EngineConfig, SlideRunner
a = json.loads(sys.argv[1])
cfg = EngineConfig(device=a["device"], runtime="torch", workers=a["workers"], batch_size=a["batch_size"], amp=a["amp"],
                   channels_last=a["channels_last"], progress=False, per_tile=a["mode"] == "per-tile")
def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
def peak_mb():
    # VmHWM: this process's own peak RSS. (ru_maxrss of an exec'd child starts at its parent's
    # peak RSS at fork time, so a child started by a big parent would report the parent's.)
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
runner = SlideRunner(a["model"], cfg)
load_s = time.perf_counter() - t0
def busy_sampler():
    # the device's busy fraction: NVML utilisation sampled every 100 ms by nvidia-smi during the run
    import subprocess
    try:
        return subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100",
                                 "-i", str(runner.device.index or 0)], stdout=subprocess.PIPE, text=True)
    except OSError:
        return None
busy = None
for rep in range(a["repeat"]):  # the last run is reported; earlier ones warm the device up
    sampler = busy_sampler() if runner.device.type == "cuda" and rep == a["repeat"] - 1 else None
    t1, c1 = time.perf_counter(), cpu()
    res = runner.run(a["slide"], a["out"])
    if runner.device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu_s = time.perf_counter() - t1, cpu() - c1
    if sampler is not None:
        sampler.terminate()
        vals = [float(v) for v in sampler.communicate()[0].split() if v.replace(".", "", 1).isdigit()]
        busy = sum(vals) / len(vals) / 100 if vals else None
tissue_mm2 = res.purity.get("tissue_area_mm2") or None
print(json.dumps({"wall_s": wall, "cpu_s": cpu_s, "model_load_s": load_s, "timings": res.timings, "n_cells": res.n_cells,
                  "gpu_busy_fraction": busy, "s_per_mm2": wall / tissue_mm2 if tissue_mm2 else None, "tissue_mm2": tissue_mm2,
                  "out": str(res.out_dir), "max_rss_mb": peak_mb(), "mode": res.mode,
                  "gpu_max_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if runner.device.type == "cuda" else None}))
"""


def run_child(slide: Path, out: Path, mode: str, args, model: str) -> dict:
    spec = {
        "slide": str(slide),
        "out": str(out),
        "mode": mode,
        "device": args.device,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "model": model,
        "repeat": args.repeat,
    }
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def patch_level(
    slide,
    gt: np.ndarray,
    geo,
    pred,
    peaks,
    n: int,
    seed: int,
    slide_cells: np.ndarray,
    batch_size: int,
) -> dict:
    """The demo model the way its test split scores it, on OCELOT-style pairs cut from this
    slide: non-overlapping cell patches (>= 50 % tissue, evenly spread), each with its context
    at one of OCELOT's four offsets, whole patch through the full model, peaks over the whole
    patch, the OCELOT matching (3 µm) against the slide's ground-truth cells in the patch.
    Also the stitched slide detections scored on exactly those patches (like for like)."""
    import torch

    from wsi_ocelot.inference import find_peaks
    from wsi_ocelot.metrics import evaluate
    from wsi_ocelot.slide import tissue_mask
    from wsi_ocelot.tiling.export import OCELOT_OFFSETS, pick_cell_boxes
    from wsi_ocelot.tiling.grid import context_boxes

    T = geo.tile_size
    boxes = pick_cell_boxes(slide, geo, tissue_mask(slide), limit=n)
    off = np.random.default_rng(seed).choice(np.asarray(OCELOT_OFFSETS), size=(len(boxes), 2))
    ctx = context_boxes(boxes, geo.context_factor, off)
    preds, gts, stitched = [], [], []
    t0 = time.perf_counter()
    for i in range(0, len(boxes), batch_size):
        sl = slice(i, i + batch_size)
        cell = torch.stack(
            [
                torch.from_numpy(
                    np.ascontiguousarray(slide.read_box(tuple(b), (T, T)).transpose(2, 0, 1))
                )
                for b in boxes[sl]
            ]
        )
        tissue = torch.stack(
            [
                torch.from_numpy(
                    np.ascontiguousarray(slide.read_box(tuple(b), (T, T)).transpose(2, 0, 1))
                )
                for b in ctx[sl]
            ]
        )
        probs, _ = pred.per_tile(cell, tissue, torch.from_numpy(off[sl]).float())
        preds += [pts.cpu().double().numpy() for pts in find_peaks(probs, peaks)]
    for b in boxes:
        s = b[2] / T  # level-0 px per patch px

        def in_box(p, b=b):
            return (
                (p[:, 0] >= b[0])
                & (p[:, 0] < b[0] + b[2])
                & (p[:, 1] >= b[1])
                & (p[:, 1] < b[1] + b[3])
            )

        g = gt[in_box(gt)].copy()
        g[:, :2] = (g[:, :2] - b[:2]) / s - 0.5  # level-0 → patch px (pixel j centred at j + 0.5)
        gts.append(g)
        d = slide_cells[in_box(slide_cells)].copy()
        d[:, :2] = (d[:, :2] - b[:2]) / s - 0.5
        stitched.append(d)
    radius = 3.0 / (boxes[0][2] * slide.mpp / T) if len(boxes) else 15.0
    own = evaluate(preds, gts, radius)
    st = evaluate(stitched, gts, radius)
    return {
        "patches": len(boxes),
        "gt_cells": int(sum(len(g) for g in gts)),
        "radius_px": round(radius, 3),
        "patch_mF1": round(own.mf1, 4),
        "patch_BC_f1": round(own.bc.f1, 4),
        "patch_TC_f1": round(own.tc.f1, 4),
        "stitched_on_same_patches_mF1": round(st.mf1, 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def demo_test_splits() -> dict[str, dict[str, float]]:
    """The demo's patch-level test mF1 on every synthetic test split evaluated so far
    (``training/results/demo_test_seed<S>.json``): {seed: {"overall": mF1, organ: mF1, ...}}."""
    out = {}
    for f in sorted(RESULTS.glob("demo_test_seed*.json")):
        d = json.loads(f.read_text())
        out[f.stem.rsplit("seed", 1)[1]] = {
            "overall": d["overall"]["mF1"],
            **{o: v["mF1"] for o, v in d.get("per_organ", {}).items()},
        }
    return out


def _ci95(values: list[float]) -> float:
    """Half-width of the 95 % t confidence interval of the mean."""
    from scipy import stats

    v = np.asarray(values, float)
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def cells_of(out_dir: str) -> np.ndarray:
    from wsi_ocelot.outputs import open_predictions

    with open_predictions(Path(out_dir) / "predictions.zarr") as s:
        c = s.cells()
    return (
        np.stack([c["x"], c["y"], c["class"], c["prob"]], 1).astype(np.float64)
        if len(c["x"])
        else np.zeros((0, 4))
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--size",
        type=int,
        default=7168,
        help="slide side, level-0 px at 0.25 µm/px (7168 → a 10 × 10 cell-tile grid)",
    )
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--workers", type=int, default=2, help="reader processes of the engine runs")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA (default: on)"
    )
    ap.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="NCHW on CUDA (default: channels-last)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="engine runs per mode in one process; the last is reported (2 on a GPU: warm-up)",
    )
    ap.add_argument(
        "--patches",
        type=int,
        default=24,
        help="cell/context pairs cut from the slide for the patch-level mF1 (0: skip)",
    )
    ap.add_argument("--model", default=None, help="checkpoint (default: the demo weights)")
    ap.add_argument("--skip-memory", action="store_true", help="skip the 4×-area memory run")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for engine[_gpu].json/.md")
    ap.add_argument(
        "--json", default=None, help="write the JSON here instead (the Markdown beside it, .md)"
    )
    ap.add_argument(
        "--memory-only",
        action="store_true",
        help="rerun only the peak-memory pair (the slide and 4x its area) and update the memory of an existing result JSON",
    )
    ap.add_argument(
        "--note",
        default="",
        help="a line added under the machine description (e.g. 'machine shared with other jobs')",
    )
    args = ap.parse_args()

    import torch

    from wsi_ocelot.config import GeometryConfig
    from wsi_ocelot.evaluation import score_slide
    from wsi_ocelot.inference.predictor import Predictor
    from wsi_ocelot.metrics import match_by_class
    from wsi_ocelot.model import load_model, read_checkpoint_info
    from wsi_ocelot.model.device import resolve_device
    from wsi_ocelot.slide import open_slide
    from wsi_ocelot.synthetic import read_ground_truth, write_synthetic_slide
    from wsi_ocelot.sysinfo import describe_machine
    from wsi_ocelot.tiling import TileDataset, plan_tiles, read_batches
    from wsi_ocelot.weights import resolve_model

    model_path = str(resolve_model(args.model))
    info = read_checkpoint_info(model_path)
    dev = str(resolve_device(args.device))
    args.device = dev
    cuda = dev.startswith("cuda")
    report: dict = {
        "machine": describe_machine(dev),
        "device": dev,
        "model": Path(model_path).name,
        "seed": args.seed,
        "size": args.size,
        "settings": {
            "batch_size": args.batch_size,
            "workers": args.workers,
            "repeat": args.repeat,
            "bf16_autocast": bool(cuda and args.amp),
            "channels_last": bool(cuda and args.channels_last),
        },
        "note": args.note,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }
    t_bench = time.perf_counter()
    if args.memory_only:
        json_path = (
            Path(args.json)
            if args.json
            else Path(args.out) / ("engine_gpu.json" if cuda else "engine.json")
        )
        report = json.loads(json_path.read_text())
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            write_synthetic_slide(
                tmp / "bench.tiff", mpp=0.25, size=(args.size, args.size), seed=args.seed
            )
            one = run_child(tmp / "bench.tiff", tmp / "one", "two-pass", args, model_path)
            report["memory"] = _memory_pair(one, tmp, args, model_path, write_synthetic_slide)
        report["memory"]["rerun"] = (
            f"memory pair rerun alone (--memory-only), {describe_machine(dev)}, {round(time.perf_counter() - t_bench)} s"
        )
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        write_markdown(report, json_path, cuda)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slide_path = tmp / "bench.tiff"
        t0 = time.perf_counter()
        synth = write_synthetic_slide(
            slide_path, mpp=0.25, size=(args.size, args.size), seed=args.seed
        )
        report["slide_write_s"] = round(time.perf_counter() - t0, 1)
        gt, _ = read_ground_truth(slide_path)
        geo: GeometryConfig = info.geometry
        slide = open_slide(slide_path)
        plan = plan_tiles(slide, geo)
        report["cell_grid"] = [plan.cells.n_cols, plan.cells.n_rows]
        report["cell_tiles_on_tissue"] = len(plan.cells)
        report["tissue_tiles"] = len(plan.tissue)

        two = run_child(slide_path, tmp / "two", "two-pass", args, model_path)
        per = run_child(slide_path, tmp / "per", "per-tile", args, model_path)
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
        from wsi_ocelot.outputs import open_predictions

        with open_predictions(Path(two["out"]) / "predictions.zarr") as s:
            tm = np.asarray(s.tissue(0)[:]).astype(float)
        t_stride = geo.tile_size - 2 * round(
            plan.tissue.margin_l0 * geo.tile_size / plan.tissue.tile_l0
        )
        cols = np.arange(t_stride, tm.shape[1], t_stride)
        rows = np.arange(t_stride, tm.shape[0], t_stride)
        dx, dy = np.abs(np.diff(tm, axis=1)), np.abs(np.diff(tm, axis=0))
        seam = (
            float(np.concatenate([dx[:, cols - 1].ravel(), dy[rows - 1, :].ravel()]).mean())
            if len(cols) or len(rows)
            else float("nan")
        )
        other = float(
            np.concatenate(
                [np.delete(dx, cols - 1, axis=1).ravel(), np.delete(dy, rows - 1, axis=0).ravel()]
            ).mean()
        )
        # purity
        true_purity = float((gt[:, 2] == 2).mean())
        est = json.loads((Path(two["out"]) / "purity.json").read_text())["purity"]
        # agreement two-pass vs per-tile (same class within 3 µm)
        m = match_by_class(a, b[:, :3], radius=r3)
        tp = sum(r.tp for r in m.values())
        prec, rec = tp / max(len(a), 1), tp / max(len(b), 1)
        agree_f1 = 2 * prec * rec / max(prec + rec, 1e-12)
        table5 = RESULTS / "synthetic_table5.json"
        demo_patch = (
            json.loads(table5.read_text()).get("demo", {}).get("mean") if table5.is_file() else None
        )
        splits = {seed: d["overall"] for seed, d in demo_test_splits().items()}
        report["accuracy"] = {
            "slide_mF1": score.mf1,
            "BC_f1": score.bc.f1,
            "TC_f1": score.tc.f1,
            "demo_patch_test_mF1": demo_patch,
            "demo_patch_test_splits_mF1": {k: round(v, 4) for k, v in splits.items()},
            "demo_patch_test_splits_mean": round(float(np.mean(list(splits.values()))), 4)
            if splits
            else None,
            "demo_patch_test_splits_ci95": round(_ci95(list(splits.values())), 4)
            if len(splits) > 1
            else None,
            "gt_cells": int(len(gt)),
            "detections": int(len(a)),
            "gt_cells_with_two_detections_within_3um": twice,
            "detection_pairs_closer_than_3um": close_pairs,
            "recall_within_20px_of_tile_border": round(rec_border, 4),
            "recall_elsewhere": round(rec_inner, 4),
            "purity_estimated": est,
            "purity_true": round(true_purity, 4),
            "tissue_map_step_at_tile_seams": round(seam, 3),
            "tissue_map_step_elsewhere": round(other, 3),
        }
        report["two_pass_vs_per_tile"] = {
            "agreement_f1": round(agree_f1, 4),
            "two_pass_s": round(two["wall_s"], 2),
            "per_tile_s": round(per["wall_s"], 2),
            "speedup": round(per["wall_s"] / two["wall_s"], 3),
            "two_pass_cpu_s": round(two["cpu_s"], 2),
            "per_tile_cpu_s": round(per["cpu_s"], 2),
            "speedup_cpu_time": round(per["cpu_s"] / two["cpu_s"], 3),
            "two_pass_timings": {k: round(v, 2) for k, v in two["timings"].items()},
            "per_tile_timings": {k: round(v, 2) for k, v in per["timings"].items()},
            "model_load_s": round(two["model_load_s"], 2),
            "gpu_max_mem_mb": two["gpu_max_mem_mb"],
        }
        # model-only throughput on the same tiles and device: tiles read once into memory first,
        # one warm-up batch, then the tissue branch over the tissue tiles and the cell branch
        # (with a tissue crop) over the cell tiles, as the two-pass engine runs them
        model, _ = load_model(model_path, dev)
        pred = Predictor(model, torch.device(dev), amp=args.amp, channels_last=args.channels_last)
        bs = args.batch_size
        tiss = [
            bt["cell"]
            for bt in read_batches(
                TileDataset(slide, plan.tissue.boxes, geo.tile_size), readers=0, batch_size=bs
            )
        ]
        cells = [
            bt["cell"]
            for bt in read_batches(
                TileDataset(slide, plan.cells.boxes, geo.tile_size), readers=0, batch_size=bs
            )
        ]
        n_crop = geo.tile_size // geo.context_factor
        crops = [torch.rand(x.shape[0], 2, n_crop, n_crop) for x in cells]
        pred.tissue_probs(tiss[0])
        pred.cell_probs(cells[0], crops[0])
        if cuda:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        for x in tiss:
            pred.tissue_probs(x)
        for x, crop in zip(cells, crops, strict=True):
            pred.cell_probs(x, crop)
        if cuda:
            torch.cuda.synchronize()
        model_s, model_cpu = time.perf_counter() - t0, time.process_time() - c0
        n_tiles = len(plan.cells)
        report["throughput"] = {
            "cell_tiles": n_tiles,
            "end_to_end_tiles_per_s": round(n_tiles / two["wall_s"], 3),
            "model_only_tiles_per_s": round(n_tiles / model_s, 3),
            "ratio": round(model_s / two["wall_s"], 3),
            "end_to_end_cpu_s": round(two["cpu_s"], 2),
            "model_only_cpu_s": round(model_cpu, 2),
            "ratio_cpu_time": round(model_cpu / two["cpu_s"], 3),
            "s_per_mm2_tissue": None
            if two.get("s_per_mm2") is None
            else round(two["s_per_mm2"], 3),
            "tissue_mm2": two.get("tissue_mm2"),
            "gpu_busy_fraction": None
            if two.get("gpu_busy_fraction") is None
            else round(two["gpu_busy_fraction"], 3),
            "note": "end to end = SlideRunner.run() of the two-pass path (model loaded once beforehand, "
            f"{two['model_load_s']:.1f} s); CPU time = the process and its reader processes",
        }
        if args.patches:
            report["patch_level_on_this_slide"] = patch_level(
                slide, gt, geo, pred, info.peaks, args.patches, args.seed, a, bs
            )
        if args.skip_memory:
            report["memory"] = {
                "slide_max_rss_mb": round(two["max_rss_mb"], 1),
                "slide_area_mm2": round((args.size * 0.25 / 1000) ** 2, 3),
            }
        else:
            report["memory"] = _memory_pair(two, tmp, args, model_path, write_synthetic_slide)
        del synth
    report["bench_wall_s"] = round(time.perf_counter() - t_bench, 1)
    report["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    if args.json:
        json_path = Path(args.json)
    else:
        json_path = Path(args.out) / ("engine_gpu.json" if cuda else "engine.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, json_path, cuda)


def _memory_pair(one: dict, tmp: Path, args, model_path: str, write_synthetic_slide) -> dict:
    """Peak RSS of the engine process on the slide (``one``, already run) and on one with 4x its area."""
    big = tmp / "big.tiff"
    write_synthetic_slide(big, mpp=0.25, size=(2 * args.size, 2 * args.size), seed=args.seed + 1)
    r4 = run_child(big, tmp / "big", "two-pass", args, model_path)
    return {
        "slide_max_rss_mb": round(one["max_rss_mb"], 1),
        "slide_area_mm2": round((args.size * 0.25 / 1000) ** 2, 3),
        "4x_area_max_rss_mb": round(r4["max_rss_mb"], 1),
        "ratio": round(r4["max_rss_mb"] / one["max_rss_mb"], 3),
        "4x_area_wall_s": round(r4["wall_s"], 1),
        "4x_area_cells": r4["n_cells"],
        "measure": "VmHWM (peak RSS) of the engine process, a fresh process per slide; its tile-reading workers are separate processes",
    }


def write_markdown(report: dict, json_path: Path, cuda: bool) -> None:
    acc, tp_, th, mem = (
        report["accuracy"],
        report["two_pass_vs_per_tile"],
        report["throughput"],
        report["memory"],
    )
    pl = report.get("patch_level_on_this_slide")
    st = report["settings"]
    md = [
        "# Slide engine with the demo model" + (" (GPU)" if cuda else ""),
        "",
        f"Machine: {report['machine']}; device {report['device']}"
        + (
            f", bf16 autocast {st['bf16_autocast']}, channels-last {st['channels_last']}"
            if cuda
            else ""
        )
        + f"; batch {st['batch_size']}, {st['workers']} loader workers. Synthetic slide, seed {report['seed']}, {report['size']}² px at 0.25 µm/px, "
        f"cell grid {report['cell_grid'][0]} × {report['cell_grid'][1]} ({report['cell_tiles_on_tissue']} cell tiles on tissue, {report['tissue_tiles']} tissue tiles).",
    ]
    if report.get("note"):
        md += ["", report["note"]]
    md += [
        "",
        "| measure | value | target |",
        "| --- | ---: | --- |",
        f"| slide mF1 vs ground truth (3 µm) | {acc['slide_mF1']:.4f} | within 0.02 of the demo's patch-level mF1 (below) |",
    ]
    if pl:
        md.append(
            f"| demo patch-level mF1 on {pl['patches']} OCELOT-style pairs cut from this slide ({pl['gt_cells']} cells) | {pl['patch_mF1']:.4f} "
            f"(stitched detections on the same patches: {pl['stitched_on_same_patches_mF1']:.4f}) | the matched comparison |"
        )
    md += [
        f"| demo patch-level test mF1: recorded (its own split, seed 200) / every split so far, mean ± 95 % CI "
        f"({len(acc['demo_patch_test_splits_mF1'])} splits: "
        + ", ".join(f"seed {k} {v}" for k, v in acc["demo_patch_test_splits_mF1"].items())
        + f") | {acc['demo_patch_test_mF1']} / {acc['demo_patch_test_splits_mean']} ± {acc['demo_patch_test_splits_ci95']} | training/results/demo_test_seed*.json |",
        f"| detection pairs closer than 3 µm (a cell reported twice) | {acc['detection_pairs_closer_than_3um']} of {acc['detections']} detections | 0 |",
        f"| ground-truth cells with two detections within 3 µm of them (the two up to 6 µm apart) | {acc['gt_cells_with_two_detections_within_3um']} of {acc['gt_cells']} | |",
        f"| recall within 20 px of a tile border / elsewhere | {acc['recall_within_20px_of_tile_border']} / {acc['recall_elsewhere']} | within 0.03 |",
        f"| purity estimated / true | {acc['purity_estimated']:.4f} / {acc['purity_true']:.4f} | within 0.03 |",
        f"| tissue-map step at tile seams / elsewhere (0–255) | {acc['tissue_map_step_at_tile_seams']} / {acc['tissue_map_step_elsewhere']} | no visible seams |",
        f"| two-pass vs per-tile agreement F1 | {tp_['agreement_f1']} | ≥ 0.97 |",
        f"| two-pass / per-tile wall time | {tp_['two_pass_s']} s / {tp_['per_tile_s']} s (× {tp_['speedup']}) | ≥ 1.6× |",
        f"| two-pass / per-tile CPU time | {tp_['two_pass_cpu_s']} s / {tp_['per_tile_cpu_s']} s (× {tp_['speedup_cpu_time']}) | |",
        f"| end-to-end / model-only cell tiles/s (wall) | {th['end_to_end_tiles_per_s']} / {th['model_only_tiles_per_s']} (ratio {th['ratio']}) | ≥ 0.85 |",
        f"| model-only / end-to-end CPU time | {th['model_only_cpu_s']} s / {th['end_to_end_cpu_s']} s (ratio {th['ratio_cpu_time']}) | |",
        f"| end to end, s per mm² of tissue ({th.get('tissue_mm2')} mm²) | {th.get('s_per_mm2_tissue')} | ≤ 0.25 on a GPU box |",
        f"| device busy fraction (NVML utilisation sampled every 100 ms) | {th.get('gpu_busy_fraction', '-')} | ≥ 0.8 on a GPU |",
        f"| peak memory (the engine process's peak RSS): slide / 4× area | {mem['slide_max_rss_mb']} MB / {mem.get('4x_area_max_rss_mb', '-')} MB (ratio {mem.get('ratio', '-')}) | ≤ 1.2× |",
        "",
        "Two-pass stage times (s): "
        + ", ".join(f"{k} {v}" for k, v in tp_["two_pass_timings"].items())
        + ".",
        "Per-tile stage times (s): "
        + ", ".join(f"{k} {v}" for k, v in tp_["per_tile_timings"].items())
        + ".",
        f"End to end is `SlideRunner.run()` (model loaded once beforehand, {tp_['model_load_s']} s). Benchmark wall time {report['bench_wall_s']} s "
        f"(synthetic slide written in {report['slide_write_s']} s). Load average (1, 5, 15 min) at start {report['load_average_at_start']}, "
        f"at end {report['load_average_at_end']} on {os.cpu_count()} cores.",
    ]
    if mem.get("measure"):
        md += ["", f"Memory: {mem['measure']}." + (f" {mem['rerun']}." if mem.get("rerun") else "")]
    md += [
        "",
        "Analysis and earlier runs: `engine_notes.md`; slide vs patch-level mF1 over the six organ presets: `slide_vs_patch.md`.",
    ]
    json_path.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
