"""Host throughput of the slide engine: what the main process, the writer and the readers cost
per tile when the model costs nothing, before and after the host-throughput change, and a
projection for a GPU box (issue: keep an accelerator busy).

    python benchmarks/bench_host.py [--before REV] [--size 6144] [--seed 777] [--json PATH]

One run, on this machine:

1. A synthetic slide (``--size``² px at 0.25 µm/px). The demo model runs over it once on the
   CPU and its outputs are recorded, per tile, keyed by the tile's pixels.
2. **Stand-in model**: the engine of ``--before`` (a git revision, checked out into a
   temporary folder) and the engine of this working tree run the slide with the model
   replaced by a stand-in that returns the recorded outputs (a dictionary look-up), with 1
   and 2 reader processes, each in a fresh process. Measured: cell tiles/s; the main
   thread's CPU time, from which the stand-in's own time and peak finding are taken out
   (peak finding runs on the device under CUDA; its host side there is the launch of its
   kernels, counted below); the writer thread's CPU time (after only); the readers' CPU time.
3. **Reading**: core-ms per cell tile to read and decode (and, separately, resize) the cell
   tiles tile by tile (before) and block by block (after), with OpenSlide and tifffile,
   against the floor: decoding each stored tile of level 0 under the cell tiles once.
4. **Answers**: the engine benchmark slide (7168² px, seed 777) with the real demo model,
   before and after: detection F1 (class-aware matching at 3 µm), the tissue map's largest
   difference, the purity values.
5. **Projection** for one H100 and 16 cores: s/mm² of tissue at the default geometry.

Results: ``benchmarks/results/host.json`` and ``host.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from revisions import ROOT, checkout, compare_results, run_child, run_real

HERE = Path(__file__).resolve().parent
BEFORE = "2d5832b"  # main before the host-throughput change
OLD_MARGIN = 160  # the demo checkpoint's cell margin before it (cell px)

H100_BF16_TFLOPS = 989.0  # dense bf16 tensor-core peak of an H100 SXM
ASSUMED_UTILISATION = 0.40
LAUNCH_US = 10.0  # host cost of one eager CUDA kernel launch, assumed (PyTorch eager: ~5-10 µs)

# --- the child: one engine run with the stand-in model --------------------------------------------
_CHILD = r"""
import hashlib, json, resource, sys, threading, time
import numpy as np, torch
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
import wsi_ocelot
import wsi_ocelot.inference.engine as eng
assert wsi_ocelot.__file__.startswith(a["src"]), (wsi_ocelot.__file__, a["src"])
# the passes live in inference/slide_run.py since #23 (SlideRun.cell_pass), before in the engine
host = sys.modules.get("wsi_ocelot.inference.slide_run", eng)
pass_owner, pass_name = (eng.SlideRun, "cell_pass") if hasattr(eng, "SlideRun") else (eng.SlideRunner, "_cell_pass")

rec = np.load(a["record"], allow_pickle=False)
table = {k: torch.from_numpy(rec[k]) for k in rec.files}

def key(t):
    return hashlib.blake2b(np.ascontiguousarray(t[:, ::8, ::8].numpy()).tobytes(), digest_size=16).hexdigest()

class StandIn:
    cpu = 0.0
    misses = 0
    def __init__(self, kind):
        self.kind = kind
    def __call__(self, x, *rest):
        t0 = time.thread_time()
        outs = []
        for k in range(x.shape[0]):
            o = table.get(self.kind + key(x[k]))
            if o is None:
                StandIn.misses += 1
                o = table[next(iter(table))] if self.kind == "t" else table[next(k for k in table if k[0] == "c")]
            outs.append(o)
        out = torch.stack(outs)
        StandIn.cpu += time.thread_time() - t0
        return out

peaks_cpu = [0.0]
_fp = host.find_peaks
def find_peaks(*args, **kw):
    t0 = time.thread_time()
    try:
        return _fp(*args, **kw)
    finally:
        peaks_cpu[0] += time.thread_time() - t0
host.find_peaks = find_peaks

cell_pass = {}
_cp = getattr(pass_owner, pass_name)
def timed_cell_pass(self, *args, **kw):
    t0, w0, p0, s0 = time.thread_time(), time.perf_counter(), peaks_cpu[0], StandIn.cpu
    try:
        return _cp(self, *args, **kw)
    finally:
        cell_pass.update(cpu=time.thread_time() - t0, wall=time.perf_counter() - w0,
                         peaks=peaks_cpu[0] - p0, standin=StandIn.cpu - s0)
setattr(pass_owner, pass_name, timed_cell_pass)

writer = {}
if hasattr(host, "BackgroundWriter"):
    _close = host.BackgroundWriter.close
    def close(self):
        _close(self)
        writer["cpu"] = writer.get("cpu", 0.0) + self.cpu_s
        writer["wait"] = writer.get("wait", 0.0) + self.wait_s
    host.BackgroundWriter.close = close

cfg = eng.EngineConfig(device="cpu", runtime="torch", precision="fp32", workers=a["workers"], batch_size=a["batch_size"], progress=False)
runner = eng.SlideRunner("demo", cfg)
runner.predictor.tissue_probs = StandIn("t")
runner.predictor.cell_probs = StandIn("c")
for rep in range(a["repeat"]):
    peaks_cpu[0] = 0.0; StandIn.cpu = 0.0; writer.clear(); cell_pass.clear()
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0, w0 = time.thread_time(), time.perf_counter()
    res = runner.run(a["slide"], a["out"])
    main_cpu, wall = time.thread_time() - t0, time.perf_counter() - w0
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
readers = (ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)
print(json.dumps({"wall": wall, "main_cpu": main_cpu, "standin_cpu": StandIn.cpu, "peaks_cpu": peaks_cpu[0],
                  "cell_pass": cell_pass, "writer": writer, "readers_cpu": readers, "misses": StandIn.misses,
                  "timings": res.timings, "n_cells": res.n_cells, "n_cell_tiles": res.purity["n_cell_tiles"],
                  "n_tissue_tiles": res.purity["n_tissue_tiles"], "tissue_mm2": res.purity["tissue_area_mm2"],
                  "engine": wsi_ocelot.__file__}))
"""


# --- 1. recording ---------------------------------------------------------------------------------
def record_outputs(slide: Path, path: Path, threads: int, margins: tuple[int, ...]) -> dict:
    """Run the demo model over the slide (two-pass, this tree's engine) at each cell margin
    (the engine before and after may tile differently) and save every tile's output, keyed
    by kind ('t' tissue, 'c' cell) and the tile's pixels."""
    import hashlib

    import torch

    from wsi_ocelot.inference.engine import EngineConfig, SlideRunner

    torch.set_num_threads(threads)
    out: dict[str, np.ndarray] = {}

    def key(t: torch.Tensor) -> str:
        return hashlib.blake2b(
            np.ascontiguousarray(t[:, ::8, ::8].numpy()).tobytes(), digest_size=16
        ).hexdigest()

    t0 = time.perf_counter()
    for margin in margins:
        runner = SlideRunner(
            "demo",
            EngineConfig(
                device="cpu",
                runtime="torch",
                precision="fp32",
                workers=1,
                batch_size=8,
                progress=False,
                cell_margin=margin,
            ),
        )
        _record_run(runner, slide, out, key)
    np.savez(path, **out)
    return {
        "tiles_recorded": len(out),
        "margins": list(margins),
        "model_run_s": round(time.perf_counter() - t0, 1),
    }


def _record_run(runner, slide: Path, out: dict, key) -> None:
    tissue, cell = runner.predictor.tissue_probs, runner.predictor.cell_probs

    def rec_tissue(x):
        y = tissue(x)
        for k in range(len(x)):
            out["t" + key(x[k])] = y[k].numpy().copy()
        return y

    def rec_cell(x, crop):
        y = cell(x, crop)
        for k in range(len(x)):
            out["c" + key(x[k])] = y[k].numpy().copy()
        return y

    runner.predictor.tissue_probs, runner.predictor.cell_probs = rec_tissue, rec_cell
    with tempfile.TemporaryDirectory() as tmp:
        runner.run(slide, tmp)


# --- 3. reading -----------------------------------------------------------------------------------
def read_costs(slide_path: Path, geometry, batch_sizes: tuple[int, ...] = (8, 32)) -> dict:
    """Core-ms per cell tile: read + decode, and resize, tile by tile and block by block, for
    each reader, and the decode-once floor."""
    from wsi_ocelot.slide import open_slide
    from wsi_ocelot.tiling import plan_batches, plan_tiles
    from wsi_ocelot.tiling.dataset import block_ids

    out: dict[str, dict] = {}
    for reader in ("openslide", "tifffile"):
        slide = open_slide(slide_path, reader=reader)
        grid = plan_tiles(slide, geometry).cells
        T = geometry.tile_size
        n = len(grid)
        decode = [0.0]
        raw_read = slide.read_region

        def timed_read(*a, _raw=raw_read, _acc=decode, **kw):
            t0 = time.process_time()
            try:
                return _raw(*a, **kw)
            finally:
                _acc[0] += time.process_time() - t0

        slide.read_region = timed_read  # type: ignore[method-assign]
        # the floor: every stored tile of level 0 under the cell tiles, decoded once
        tw = int(slide.properties.get("openslide.level[0].tile-width", 256))
        th = int(slide.properties.get("openslide.level[0].tile-height", 256))
        W, H = slide.dimensions
        stored = set()
        for x, y, w, h in grid.boxes:
            for ty in range(max(0, y // th), min(math.ceil(H / th), math.ceil((y + h) / th))):
                for tx in range(max(0, x // tw), min(math.ceil(W / tw), math.ceil((x + w) / tw))):
                    stored.add((tx, ty))
        slide.read_region((0, 0), 0, (tw, th))  # warm up (handles, imports)
        decode[0] = 0.0
        t0 = time.process_time()
        for tx, ty in sorted(stored, key=lambda t: (t[1], t[0])):
            slide.read_region((tx * tw, ty * th), 0, (tw, th))
        floor = time.process_time() - t0
        # tile by tile (the engine before)
        decode[0] = 0.0
        t0 = time.process_time()
        for b in grid.boxes:
            slide.read_box(tuple(b), (T, T))
        per_tile_total, per_tile_decode = time.process_time() - t0, decode[0]
        # block by block: one region read over each block's tiles (the engine after reads so with tifffile),
        # blocks of a batch of 8 (2 x 4 tiles, the CPU's batch) and of 32 (4 x 8, a large GPU's)
        blocks_by_batch = {}
        for batch_size in batch_sizes:
            decode[0] = 0.0
            t0 = time.process_time()
            for idx in plan_batches(grid.rows, grid.cols, batch_size):
                blocks = block_ids(grid.rows[idx], grid.cols[idx], batch_size)
                for b in np.unique(blocks):
                    slide.read_boxes(grid.boxes[idx[blocks == b]], (T, T), union=True)
            blocks_by_batch[batch_size] = (time.process_time() - t0, decode[0])

        def ms(s: float, n: int = n) -> float:
            return round(1000 * s / n, 2)

        out[reader] = {
            "stored_tiles": len(stored),
            "stored_tile_size": [tw, th],
            "floor_decode_ms": ms(floor),
            "per_tile": {
                "decode_ms": ms(per_tile_decode),
                "resize_ms": ms(per_tile_total - per_tile_decode),
                "decode_vs_floor": round(per_tile_decode / floor, 3),
            },
            **{
                f"blocks_{b}": {
                    "decode_ms": ms(dec),
                    "resize_ms": ms(tot - dec),
                    "decode_vs_floor": round(dec / floor, 3),
                }
                for b, (tot, dec) in blocks_by_batch.items()
            },
        }
        slide.close()
    return out


# --- 4. answers -----------------------------------------------------------------------------------
def ground_truth_mf1(result: Path, slide: Path) -> float:
    """The OCELOT mF1 of a result folder's cells against the synthetic slide's ground truth."""
    from wsi_ocelot.evaluation import score_slide
    from wsi_ocelot.outputs import open_predictions
    from wsi_ocelot.synthetic import read_ground_truth

    gt, _ = read_ground_truth(slide)
    with open_predictions(result / "predictions.zarr") as s:
        c = s.cells()
    pred = np.stack([c["x"], c["y"], c["class"], c["prob"]], 1).astype(np.float64)
    return round(float(score_slide(pred, gt, 0.25).mf1), 4)


# --- 5. projection --------------------------------------------------------------------------------
def model_costs(batch: int = 32) -> dict:
    """FLOPs of the demo model per 1024² tile (cell branch with its crop, and the tissue
    branch), and the eager ops dispatched per batch by the model and by peak finding (each
    about one kernel launch on CUDA)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from wsi_ocelot.inference.peaks import find_peaks
    from wsi_ocelot.model import load_model
    from wsi_ocelot.weights import demo_path

    class CountOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    model, info = load_model(demo_path())
    model.eval()
    T = info.geometry.tile_size
    x = torch.rand(1, 3, T, T)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as fc:
            tissue = model.tissue_probs(x)
        tissue_flops = fc.get_total_flops()
        crop = torch.rand(
            1, 2, T // info.geometry.context_factor, T // info.geometry.context_factor
        )
        with FlopCounterMode(display=False) as fc:
            probs = model.cell_logits_from_tissue(x, crop).softmax(1)
        cell_flops = fc.get_total_flops()
        # eager op counts do not depend on the tile size: count them on small tiles
        t = 256
        xb = torch.rand(batch, 3, t, t)
        cb = torch.rand(
            batch, 2, t // info.geometry.context_factor, t // info.geometry.context_factor
        )
        with CountOps() as ops:
            pb = model.cell_logits_from_tissue(xb, cb).softmax(1)
        model_ops = ops.n
        with CountOps() as ops:
            find_peaks(
                pb, info.peaks, core=(30.0, 30.0, 226.0, 226.0), per_image=False
            )  # CUDA's path
        peak_ops = ops.n
    del tissue, probs
    return {
        "encoder": info.model.encoder,
        "variant": info.model.variant,
        "tile": T,
        "cell_gflop_per_tile": round(cell_flops / 1e9, 1),
        "tissue_gflop_per_tile": round(tissue_flops / 1e9, 1),
        "ops_per_batch": {"batch": batch, "model": model_ops, "peaks": peak_ops},
    }


def tiles_per_mm2(geometry, slide_mpp: float = 0.25) -> dict:
    """Cell and tissue tiles per mm² of tissue (interior: one core per tile) at ``slide_mpp``."""
    from wsi_ocelot.tiling.grid import make_grid

    cg = make_grid(
        10_000, 10_000, slide_mpp, geometry.cell_mpp, geometry.tile_size, geometry.cell_margin
    )
    tg = make_grid(
        10_000, 10_000, slide_mpp, geometry.tissue_mpp, geometry.tile_size, geometry.tissue_margin
    )
    core_mm = lambda g: g.stride_l0 * slide_mpp / 1000.0  # noqa: E731
    return {
        "cell": round(1 / core_mm(cg) ** 2, 2),
        "tissue": round(1 / core_mm(tg) ** 2, 3),
        "cell_core_um": round(core_mm(cg) * 1000, 1),
        "margin_px": geometry.cell_margin,
    }


def project(after: dict, reads: dict, costs: dict, density: dict, cores: int = 16) -> dict:
    """s/mm² on one H100 with ``cores`` cores: each cell tile's period is the slowest of the
    device, the main thread, the writer thread and the readers (``cores - 1`` processes)."""
    dev_ms = (
        costs["cell_gflop_per_tile"] * 1e9 / (H100_BF16_TFLOPS * 1e12 * ASSUMED_UTILISATION) * 1e3
    )
    tissue_dev_ms = (
        costs["tissue_gflop_per_tile"] * 1e9 / (H100_BF16_TFLOPS * 1e12 * ASSUMED_UTILISATION) * 1e3
    )
    ops = costs["ops_per_batch"]
    launch_ms = (ops["model"] + ops["peaks"]) * LAUNCH_US / 1e3 / ops["batch"]
    host_ms = after["serial_ms_per_cell_tile"] + launch_ms
    # what the engine does on the GPU box (batch 32): tifffile by 4 x 8 blocks, OpenSlide tile by tile
    reader = reads["tifffile"]["blocks_32"], reads["openslide"]["per_tile"]
    rows = {}
    for name, r in (("tifffile", reader[0]), ("openslide", reader[1])):
        read_ms = (r["decode_ms"] + r["resize_ms"]) / (cores - 1)
        period = max(dev_ms, host_ms, after["writer_ms_per_cell_tile"], read_ms)
        s_mm2 = density["cell"] * period / 1e3 + density["tissue"] * tissue_dev_ms / 1e3
        rows[name] = {
            "reader_ms_per_tile": round(read_ms, 2),
            "period_ms": round(period, 2),
            "s_per_mm2": round(s_mm2, 3),
            "bound_by": ["device", "main thread", "writer thread", "readers"][
                [dev_ms, host_ms, after["writer_ms_per_cell_tile"], read_ms].index(period)
            ],
        }
    return {
        "device_ms_per_cell_tile": round(dev_ms, 3),
        "device_ms_per_tissue_tile": round(tissue_dev_ms, 3),
        "assumption": f"no GPU was available: device time from FLOPs at {int(ASSUMED_UTILISATION * 100)} % of an H100's "
        f"{H100_BF16_TFLOPS:g} dense bf16 TFLOPS; kernel launches at {LAUNCH_US:g} µs each on the host",
        "launch_ms_per_cell_tile": round(launch_ms, 3),
        "host_serial_ms_per_cell_tile": round(host_ms, 3),
        "cores": cores,
        "by_reader": rows,
    }


def summarise(run: dict) -> dict:
    n = run["n_cell_tiles"]
    cp = run["cell_pass"]
    serial_all = run["main_cpu"] - run["standin_cpu"] - run["peaks_cpu"]
    serial_cp = cp["cpu"] - cp["standin"] - cp["peaks"]
    writer = run["writer"].get("cpu", 0.0)
    return {
        "wall_s_per_mm2": round(run["wall"] / run["tissue_mm2"], 3),
        "cell_tiles": n,
        "cell_tiles_per_s": round(n / run["wall"], 2),
        "cell_pass_tiles_per_s": round(n / cp["wall"], 2),
        "wall_s": round(run["wall"], 2),
        "serial_ms_per_cell_tile": round(1000 * serial_cp / n, 2),
        "serial_ms_per_cell_tile_whole_run": round(1000 * serial_all / n, 2),
        "peaks_ms_per_cell_tile": round(1000 * cp["peaks"] / n, 2),
        "writer_ms_per_cell_tile": round(1000 * writer / n, 2),
        "readers_core_ms_per_tile": round(
            1000 * run["readers_cpu"] / (n + run["n_tissue_tiles"]), 2
        ),
        "standin_misses": run["misses"],
        "cells": run["n_cells"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=BEFORE, help="git revision of the engine before the change")
    ap.add_argument("--size", type=int, default=6144)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the engine process")
    ap.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="runs per setting; the last is kept (the first warms up)",
    )
    ap.add_argument("--skip-answers", action="store_true")
    ap.add_argument(
        "--reading-only",
        action="store_true",
        help="rerun only the reading costs (and the projection) into the existing --json",
    )
    ap.add_argument("--json", default=str(HERE / "results" / "host.json"))
    args = ap.parse_args()

    from wsi_ocelot.inference.engine import SlideRunner
    from wsi_ocelot.model import load_model
    from wsi_ocelot.synthetic import write_synthetic_slide
    from wsi_ocelot.sysinfo import describe_machine
    from wsi_ocelot.weights import demo_path

    t_start = time.perf_counter()
    _, info = load_model(demo_path())
    geo = info.geometry
    if args.reading_only:
        path = Path(args.json)
        report = json.loads(path.read_text())
        with tempfile.TemporaryDirectory() as tmp_dir:
            slide = Path(tmp_dir) / "host.tiff"
            write_synthetic_slide(slide, mpp=0.25, size=(args.size, args.size), seed=args.seed)
            report["reading"] = read_costs(slide, geo)
        report["reading_rerun"] = f"reading costs rerun alone, load average {list(os.getloadavg())}"
        report["projection"] = project(
            report["stand_in"]["after, batch 32, 2 reader(s)"],
            report["reading"],
            report["model"],
            report["tiles_per_mm2"],
        )
        path.write_text(json.dumps(report, indent=2) + "\n")
        write_markdown(report, path.with_suffix(".md"))
        print(path.with_suffix(".md").read_text())
        return
    report: dict = {
        "machine": describe_machine("cpu"),
        "before": args.before,
        "after": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        + " + working tree",
        "slide": f"synthetic, seed {args.seed}, {args.size}x{args.size} px at 0.25 um/px",
        "batch_size": args.batch_size,
        "load_start": list(os.getloadavg()),
    }
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        slide = tmp / "host.tiff"
        write_synthetic_slide(slide, mpp=0.25, size=(args.size, args.size), seed=args.seed)
        report["recording"] = record_outputs(
            slide,
            tmp / "record.npz",
            threads=2,
            margins=tuple(sorted({OLD_MARGIN, geo.cell_margin})),
        )
        before_src = checkout(args.before, tmp / "before")
        runs: dict[str, dict] = {}
        for name, src in (("before", before_src), ("after", ROOT)):
            for batch, workers in ((args.batch_size, 1), (args.batch_size, 2), (32, 2)):
                r = run_child(
                    _CHILD,
                    src,
                    {
                        "slide": str(slide),
                        "out": str(tmp / f"out_{name}_{batch}_{workers}"),
                        "workers": workers,
                        "batch_size": batch,
                        "threads": args.threads,
                        "record": str(tmp / "record.npz"),
                        "repeat": args.repeat,
                    },
                )
                runs[f"{name}, batch {batch}, {workers} reader(s)"] = {"raw": r, **summarise(r)}
                print(name, batch, workers, json.dumps(summarise(r)), flush=True)
        report["stand_in"] = runs
        report["reading"] = read_costs(slide, geo)
        print(json.dumps(report["reading"]), flush=True)
        if not args.skip_answers:
            bench = tmp / "bench.tiff"
            write_synthetic_slide(bench, mpp=0.25, size=(7168, 7168), seed=777)
            outs = {}
            for name, src, reach, margin in (
                ("before", before_src, None, None),
                ("after, strict cores, margin 160", ROOT, 0.0, OLD_MARGIN),
                ("after", ROOT, None, None),
            ):
                outs[name] = run_real(
                    src, bench, tmp / f"real_{len(outs)}", reach=reach, margin=margin
                )
            gt_mf1 = {name: ground_truth_mf1(d, bench) for name, d in outs.items()}
            report["answers"] = {
                "slide": "engine benchmark slide: synthetic, seed 777, 7168x7168 px at 0.25 um/px; demo model, CPU",
                "after, strict cores, margin 160 vs before": compare_results(
                    outs["before"], outs["after, strict cores, margin 160"], 0.25
                ),
                "after (defaults) vs before": compare_results(outs["before"], outs["after"], 0.25),
                "mF1 against the ground truth": gt_mf1,
            }
            print(json.dumps(report["answers"]), flush=True)
    report["model"] = model_costs()
    report["tiles_per_mm2"] = tiles_per_mm2(geo)
    report["projection"] = project(
        runs["after, batch 32, 2 reader(s)"],
        report["reading"],
        report["model"],
        report["tiles_per_mm2"],
    )
    report["load_end"] = list(os.getloadavg())
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    _ = SlideRunner  # the engine of this tree is importable (checked before the long run)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, path.with_suffix(".md"))
    print(path.with_suffix(".md").read_text())


def write_markdown(r: dict, path: Path) -> None:
    runs = r["stand_in"]
    lines = [
        "# Host throughput of the slide engine (stand-in model)",
        "",
        f"Machine: {r['machine']}. Slide: {r['slide']}; engine process on 1 torch thread. "
        f"Before: `{r['before']}`; after: `{r['after']}`. Load average at start {r['load_start']}, at end {r['load_end']}.",
        "",
        "The model is replaced by a stand-in that returns the demo model's real outputs for each tile, recorded in a real run "
        f"({r['recording']['tiles_recorded']} tiles). Serial main-thread CPU excludes the stand-in's own time and peak finding "
        "(device work under CUDA: its kernel launches are counted in the projection).",
        "",
        "Before and after tile the slide differently (cell margin 160 px before, 48 after: larger cores, fewer tiles per mm², "
        "more peak-finding area per tile), so compare per mm² of tissue. The whole run's serial CPU includes the per-slide "
        "fixed costs (tissue mask, overview, polygons, map pyramid, starting the readers), a few tenths of a second per slide "
        "that weigh on a slide this small; the cell pass's is the cost per tile that grows with the slide.",
        "",
        "| run | wall s per mm² of tissue (whole run) | cell tiles | cell tiles/s (whole run) | cell pass tiles/s | serial main-thread CPU ms per cell tile (cell pass / whole run) | writer thread ms per cell tile | peak finding ms per tile (device under CUDA) | readers core-ms per tile |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in runs.items():
        lines.append(
            f"| {name} | {s['wall_s_per_mm2']} | {s['cell_tiles']} | {s['cell_tiles_per_s']} | {s['cell_pass_tiles_per_s']} | {s['serial_ms_per_cell_tile']} / "
            f"{s['serial_ms_per_cell_tile_whole_run']} | {s['writer_ms_per_cell_tile']} | {s['peaks_ms_per_cell_tile']} | "
            f"{s['readers_core_ms_per_tile']} |"
        )
    lines += [
        "",
        "## Reading (core-ms per cell tile, one process)",
        "",
        "The engine reads block by block with tifffile and tile by tile with OpenSlide (whose cache of decoded tiles "
        "already serves the overlap; a large region costs it more per pixel).",
        "",
        "| reader | decode-once floor | tile by tile: decode / resize (× floor) | blocks of 2 × 4 tiles (batch 8) | blocks of 4 × 8 tiles (batch 32) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for reader, x in r["reading"].items():
        blk = [x.get(f"blocks_{b}") for b in (8, 32)]
        lines.append(
            f"| {reader} | {x['floor_decode_ms']} ({x['stored_tiles']} stored tiles of {x['stored_tile_size'][0]} px) | "
            f"{x['per_tile']['decode_ms']} / {x['per_tile']['resize_ms']} (× {x['per_tile']['decode_vs_floor']}) | "
            + " | ".join(
                "-"
                if b is None
                else f"{b['decode_ms']} / {b['resize_ms']} (× {b['decode_vs_floor']})"
                for b in blk
            )
            + " |"
        )
    if "answers" in r:
        lines += [
            "",
            f"## Answers ({r['answers']['slide']})",
            "",
            "| comparison | cells | detection F1 | tissue map: largest difference (of 255), pixels differing | purity / in cancer area | equal to 3 decimals |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for k, a in r["answers"].items():
            if k in ("slide", "mF1 against the ground truth"):
                continue
            lines.append(
                f"| {k} | {a['cells'][0]} → {a['cells'][1]} | {a['f1']} | {a['tissue_map_max_diff']}, {a['tissue_map_pixels_differing']} | "
                f"{a['purity']['purity']} / {a['purity']['purity_in_cancer_area']} | {a['purity_equal_3dp']} |"
            )
        lines += [
            "",
            "mF1 against the slide's ground truth: "
            + ", ".join(f"{k} {v}" for k, v in r["answers"]["mF1 against the ground truth"].items())
            + ".",
        ]
    p, m, d = r["projection"], r["model"], r["tiles_per_mm2"]
    lines += [
        "",
        "## Projection: one H100, 16 cores (a projection, not a measurement)",
        "",
        f"Default geometry: {d['cell']} cell tiles and {d['tissue']} tissue tiles per mm² of tissue (cell margin {d['margin_px']} px, "
        f"core {d['cell_core_um']} µm). Model ({m['variant']}, {m['encoder']}): {m['cell_gflop_per_tile']} GFLOP per cell tile, "
        f"{m['tissue_gflop_per_tile']} per tissue tile; {m['ops_per_batch']['model']} + {m['ops_per_batch']['peaks']} eager ops per batch "
        f"of {m['ops_per_batch']['batch']} (model + peaks). {p['assumption']}.",
        "",
        f"Device {p['device_ms_per_cell_tile']} ms per cell tile; host serial {p['host_serial_ms_per_cell_tile']} ms per cell tile "
        f"(measured main thread + {p['launch_ms_per_cell_tile']} ms of launches).",
        "",
        "| reader | readers ms per tile (15 processes) | period per cell tile (ms) | bound by | s per mm² of tissue |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for reader, x in p["by_reader"].items():
        lines.append(
            f"| {reader} | {x['reader_ms_per_tile']} | {x['period_ms']} | {x['bound_by']} | {x['s_per_mm2']} |"
        )
    lines += ["", f"Benchmark wall time {r['wall_s']} s.", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
