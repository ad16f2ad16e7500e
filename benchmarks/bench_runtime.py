"""The forward pass's runtimes, end to end on a synthetic slide (issue: CPU runtimes).

    python benchmarks/bench_runtime.py [--models demo resnet34] [--paths torch:fp32 openvino:int8 ... auto]
        [--resnet34-checkpoint PATH] [--slide-size 4096] [--resnet34-slide-size 4096] [--mpp 0.25] [--seed 777] [--threads N] [--workers N]
        [--repeat 1] [--rounds 1] [--cache DIR] [--json PATH] [--md PATH]

For each model and each path (runtime × precision), on the CPU:

* **build**: the first ``SlideRunner`` construction against a fresh runtime cache
  (``WSI_OCELOT_CACHE`` in a temporary folder unless ``--cache``): export, int8 calibration and
  the fidelity gate of the paths not yet built, plus loading; the first non-torch path pays the
  ONNX export and the gate's fp32 reference, the first int8 path the quantisation, ``auto`` (run
  last) only what the explicit paths left unbuilt;
* **speed**: ``runner.run`` on one synthetic slide (written once per slide size) with the runner
  already built: end-to-end seconds and seconds per mm² of tissue (``purity.json``'s
  ``tissue_area_mm2``), model ms per cell tile (the engine's "cell pass" + "tissue pass" time over
  the slide's cell tiles) and the end-to-end speed-up over ``torch fp32``;
* **fidelity** against ``torch fp32`` on the same slide: cells F1 between the two outputs (same
  class, within the gate's 3 model px; also at the OCELOT 3 µm), slide mF1 against the slide's
  ground truth (trained weights only: an mF1 of random weights means nothing), purity and purity in the
  cancer area, and the tissue map's max and mean absolute difference (0-255, ``tissue.ome.zarr``
  level 0).

Each path runs in a fresh process (no runtime's thread pool or allocator outlives its path).
After the paths, ``torch fp32`` runs once more: the report gives both baseline times and calls
the run noisy when they are more than ``BASELINE_SPREAD`` (15 %) apart, since every ratio divides
by the first (a ResNet-34 fp32 torch run 40 % slower than any other once made 3.9x read 5.5x).
With ``--rounds K`` every path instead runs K − 1 more times, the baseline first in each round,
and the target is judged on the median of the rounds' paired ratios.
``auto`` runs with ``WSI_OCELOT_RUNTIME`` / ``WSI_OCELOT_PRECISION`` unset; what it picked and
why is recorded. Models: ``demo`` (the shipped weights) and ``resnet34``, a paper-size
DeepLabV3+ ResNet-34 Pred-to-inter-2 (256 decoder channels). With ``--resnet34-checkpoint`` its
weights are quickly trained ones (``configs/bench_resnet34.yaml``, a few hundred CPU steps on
synthetic pairs): reduced precision is judged on outputs with a trained model's structure.
Without, random seeded weights at the demo checkpoint's geometry and peaks (its cell head's bias
tilted as in the tests' tiny checkpoint, so it finds cells): valid speed figures, but their
near-flat outputs flip under any rounding, so int8 and bf16 cannot pass the gate on them.

Targets (issue): the default path (``auto``) >= 4x faster end to end than ``torch fp32`` for the
demo model, >= 6x for the ResNet-34 model.

Results: ``benchmarks/results/runtime.json`` and ``runtime.md`` (or ``--json`` / ``--md``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TARGETS = {"demo": 4.0, "resnet34": 6.0}  # auto's end-to-end speed-up over torch fp32 (issue)
FID_TOL = {
    "cells_f1": 0.99,
    "mF1": 0.005,
    "purity": 0.005,
    "purity_in_ca": 0.005,
}  # the fidelity criteria
ALL_PATHS = (
    "torch:fp32",
    "torch:bf16",
    "openvino:fp32",
    "openvino:int8",
    "openvino:bf16",
    "onnxruntime:fp32",
    "onnxruntime:int8",
    "auto",
)
RESNET34_SEED = 0
TILT = (
    -1.0,
    0.5,
    0.5,
)  # the cell head's bias (no cell, BC, TC), as tests/conftest.py write_tiny_checkpoint

# --- one path in a fresh process -------------------------------------------------------------------
_CHILD = r"""
import json, logging, os, resource, sys, time
a = json.loads(sys.argv[1])
os.environ["WSI_OCELOT_CACHE"] = a["cache"]
for k in ("WSI_OCELOT_RUNTIME", "WSI_OCELOT_PRECISION"):
    os.environ.pop(k, None)  # auto means the machine's choice, not a site default
logging.basicConfig(level=logging.WARNING, format="%(message)s")
import torch
if a["threads"]:
    torch.set_num_threads(a["threads"])
from wsi_ocelot.inference.engine import EngineConfig, SlideRunner
def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
cfg = EngineConfig(device="cpu", runtime=a["runtime"], precision=a["precision"], threads=a["threads"], workers=a["workers"],
                   progress=False)
t0 = time.perf_counter()
runner = SlideRunner(a["model"], cfg)  # builds and gates what the cache lacks, loads the backend
build_s = time.perf_counter() - t0
runs = []
for rep in range(a["repeat"]):
    t1, c1 = time.perf_counter(), cpu()
    res = runner.run(a["slide"], a["out"])
    runs.append({"wall_s": time.perf_counter() - t1, "cpu_s": cpu() - c1, "timings": res.timings})
print(json.dumps({"build_s": build_s, "runs": runs, "out": str(res.out_dir), "purity": res.purity,
                  "choice": runner.runtime.to_json(), "torch_threads": torch.get_num_threads(),
                  "workers": runner.config.workers, "batch_size": runner.config.batch_size}))
"""


def run_path(
    model_ckpt: Path, slide: Path, out: Path, runtime: str, precision: str, args, cache: Path
) -> dict[str, Any]:
    spec = {
        "model": str(model_ckpt),
        "slide": str(slide),
        "out": str(out),
        "runtime": runtime,
        "precision": precision,
        "threads": args.threads,
        "workers": args.workers,
        "repeat": args.repeat,
        "cache": str(cache),
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise RuntimeError(
            f"{runtime} {precision}: the benchmark's process exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec["child_wall_s"] = time.perf_counter() - t0
    rec["log"] = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(" ")][
        -20:
    ]
    return rec


# --- models ----------------------------------------------------------------------------------------
def model_checkpoint(name: str, tmp: Path, trained: str | None = None) -> Path:
    """The demo weights; for ``resnet34`` the checkpoint at ``trained`` (checked to be the paper-size
    model) or, without one, random seeded weights written into ``tmp``."""
    from wsi_ocelot.weights import demo_path

    if name == "demo":
        return demo_path()
    if trained:
        from wsi_ocelot.model.checkpoint import read_checkpoint_info

        path = Path(trained).expanduser().resolve()
        m = read_checkpoint_info(path).model
        if (m.variant, m.encoder) != ("pred_to_inter2", "resnet34"):
            raise SystemExit(
                f"{path}: a {m.variant} {m.encoder} checkpoint; --resnet34-checkpoint wants "
                "pred_to_inter2 with a resnet34 encoder (configs/bench_resnet34.yaml trains one)"
            )
        return path
    import torch

    from wsi_ocelot.model import ModelConfig, build_model, save_checkpoint
    from wsi_ocelot.model.checkpoint import read_checkpoint_info

    info = read_checkpoint_info(demo_path())
    torch.manual_seed(RESNET34_SEED)
    model = build_model(
        ModelConfig(
            variant="pred_to_inter2",
            encoder="resnet34",
            decoder_channels=256,
            context_factor=info.geometry.context_factor,
        )
    ).eval()
    with torch.no_grad():
        model.cell.head[0].bias.copy_(torch.tensor(TILT))
    path = tmp / "resnet34_random.safetensors"
    save_checkpoint(
        path,
        model,
        geometry=info.geometry,
        peaks=info.peaks,
        training={
            "note": f"random weights (torch seed {RESNET34_SEED}), cell head bias tilted {list(TILT)}; "
            "for runtime benchmarks only"
        },
    )
    return path


# --- comparison with torch fp32 --------------------------------------------------------------------
def read_cells(out_dir: Path) -> np.ndarray:
    from wsi_ocelot.outputs import open_predictions

    with open_predictions(out_dir / "predictions.zarr") as s:
        c = s.cells()
    return (
        np.stack([c["x"], c["y"], c["class"], c["prob"]], 1).astype(np.float64)
        if len(c["x"])
        else np.zeros((0, 4))
    )


def read_tissue(out_dir: Path) -> np.ndarray | None:
    from wsi_ocelot.outputs import open_predictions

    with open_predictions(out_dir / "predictions.zarr") as s:
        return None if s.tissue_map is None else np.asarray(s.tissue(0)[:])


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 5)


def fidelity(
    ref: dict[str, Any], row: dict[str, Any], gt: np.ndarray | None, mpp: float, cell_mpp: float
) -> dict[str, Any]:
    """``row``'s outputs against ``ref``'s (torch fp32) on the same slide."""
    from wsi_ocelot.evaluation import score_slide
    from wsi_ocelot.inference.runtimes.fidelity import cells_agreement, tissue_agreement
    from wsi_ocelot.inference.runtimes.spec import FIDELITY

    pa, pb = ref["_cells"], row["_cells"]
    gate_px = FIDELITY["match_px"] * cell_mpp / mpp  # the gate's 3 model px, in level-0 px
    f: dict[str, Any] = {
        "cells": len(pb),
        "cells_fp32": len(pa),
        "cells_f1_vs_fp32": cells_agreement(pa, pb, gate_px)["cells_f1"],
        "cells_f1_vs_fp32_3um": cells_agreement(pa, pb, 3.0 / mpp)["cells_f1"],
    }
    if gt is not None:
        mf1 = round(float(score_slide(pb, gt, mpp).mf1), 5)
        f["mF1"], f["mF1_delta"] = mf1, _delta(ref["mF1"], mf1)
    pr, pp = ref["purity_json"], row["purity_json"]
    f["purity"], f["purity_delta"] = pp.get("purity"), _delta(pr.get("purity"), pp.get("purity"))
    f["purity_in_ca"], f["purity_in_ca_delta"] = (
        pp.get("purity_in_cancer_area"),
        _delta(pr.get("purity_in_cancer_area"), pp.get("purity_in_cancer_area")),
    )
    ta, tb = ref["_tissue"], row["_tissue"]
    if ta is not None and tb is not None and ta.shape == tb.shape:
        t = tissue_agreement(ta, tb)
        f["tissue_max_abs"], f["tissue_mean_abs"], f["ca_agreement"] = (
            int(t["tissue_max_abs"]),
            t["tissue_mean_abs"],
            t["ca_agreement"],
        )
    else:
        f["tissue_max_abs"] = f["tissue_mean_abs"] = f["ca_agreement"] = None

    def within(delta: float | None, a: float | None, b: float | None, tol: float) -> bool:
        return (a is None and b is None) if delta is None else abs(delta) <= tol

    passes = {
        "cells_f1": bool(f["cells_f1_vs_fp32"] >= FID_TOL["cells_f1"]),
        "mF1": None if gt is None else within(f["mF1_delta"], ref["mF1"], f["mF1"], FID_TOL["mF1"]),
        "purity": within(f["purity_delta"], pr.get("purity"), pp.get("purity"), FID_TOL["purity"]),
        "purity_in_ca": within(
            f["purity_in_ca_delta"],
            pr.get("purity_in_cancer_area"),
            pp.get("purity_in_cancer_area"),
            FID_TOL["purity_in_ca"],
        ),
    }
    passes["all"] = all(v for v in passes.values() if v is not None)
    f["passes"] = passes
    return f


def gate_record(cache: Path, ckpt: Path) -> dict[str, Any] | None:
    """The runtime cache's ``build.json`` for this checkpoint (the gate's own speed and fidelity per path)."""
    from wsi_ocelot.weights import file_sha256

    sha = file_sha256(ckpt)
    for p in sorted((cache / "runtimes").glob("*/build.json")):
        data = json.loads(p.read_text(encoding="utf-8"))
        if data.get("material", {}).get("checkpoint_sha256") == sha:
            return {"reference": data.get("reference"), "paths": data.get("paths")}
    return None


# --- the benchmark ---------------------------------------------------------------------------------
def parse_paths(paths: list[str], bf16: bool) -> tuple[list[tuple[str, str]], list[str]]:
    from wsi_ocelot.inference.runtimes.spec import SUPPORTED

    out, skipped = [], []
    for p in paths:
        rt, _, prec = p.partition(":")
        if p == "auto":
            rt, prec = "auto", "auto"
        elif rt not in SUPPORTED or prec not in SUPPORTED[rt]:
            raise SystemExit(
                f"unknown path {p!r}: use runtime:precision from {', '.join(ALL_PATHS)}"
            )
        if prec == "bf16" and not bf16:
            skipped.append(f"{p} (this CPU has no native bf16: AVX-512 BF16 or AMX)")
            continue
        if (rt, prec) not in out:
            out.append((rt, prec))
    if ("torch", "fp32") not in out:  # the baseline of every comparison
        out.insert(0, ("torch", "fp32"))
    out.sort(
        key=lambda c: (c != ("torch", "fp32"), c == ("auto", "auto"))
    )  # the baseline first, auto last
    return out, skipped


#: How far apart fp32 torch's two baseline runs (before and after the other paths) may be before
#: the report calls the machine noisy (the ratios divide by the first).
BASELINE_SPREAD = 0.15


def bench_model(
    name: str, args, tmp: Path, cache: Path, slides: dict[int, Any], paths: list[tuple[str, str]]
) -> dict[str, Any]:
    from wsi_ocelot.model.checkpoint import read_checkpoint_info
    from wsi_ocelot.synthetic import read_ground_truth, write_synthetic_slide
    from wsi_ocelot.weights import file_sha256

    size = (
        args.resnet34_slide_size
        if name == "resnet34" and args.resnet34_slide_size
        else args.slide_size
    )
    if size not in slides:
        t0 = time.perf_counter()
        path = tmp / f"slide_{size}.tiff"
        write_synthetic_slide(path, mpp=args.mpp, size=(size, size), seed=args.seed)
        slides[size] = path
        print(
            f"synthetic slide {size}x{size} px at {args.mpp} um/px, seed {args.seed}: {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
    slide = slides[size]
    ckpt = model_checkpoint(name, tmp, args.resnet34_checkpoint)
    random_weights = name != "demo" and not args.resnet34_checkpoint
    info = read_checkpoint_info(ckpt)
    gt = (
        None if random_weights else read_ground_truth(slide)[0]
    )  # random weights: an mF1 means nothing
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    ref: dict[str, Any] | None = None
    for rt, prec in paths:
        print(f"[{name}] {_path_arg(rt, prec)} ...", flush=True)
        try:
            rec = run_path(ckpt, slide, tmp / f"out_{name}_{rt}_{prec}", rt, prec, args, cache)
        except RuntimeError as err:
            if ref is None:  # no baseline, no comparison
                raise SystemExit(str(err)) from err
            print(f"  FAILED: {err}", flush=True)
            failed.append(
                {
                    "model": name,
                    "path": {"runtime": rt, "precision": prec},
                    "error": str(err)[-1500:],
                }
            )
            continue
        best = min(rec["runs"], key=lambda r: r["wall_s"])
        timings, pj = best["timings"], rec["purity"]
        n_tiles = int(pj.get("n_cell_tiles") or 0)
        tissue_mm2 = pj.get("tissue_area_mm2") or None
        model_s = timings.get("cell pass", 0.0) + timings.get("tissue pass", 0.0)
        choice = rec["choice"]
        row: dict[str, Any] = {
            "model": name,
            "path": {"runtime": rt, "precision": prec},
            "ran": {
                "runtime": choice["runtime"],
                "precision": choice["precision"],
                "version": choice["version"],
                "reason": choice["reason"],
                "threads": choice["threads"],
                "gate_fidelity": choice.get("fidelity"),
            },
            "build_s": round(rec["build_s"], 2),
            "e2e_s": round(best["wall_s"], 3),
            "e2e_first_s": round(
                rec["runs"][0]["wall_s"], 3
            ),  # the runner's first slide: first-call costs included
            "e2e_runs_s": [round(r["wall_s"], 3) for r in rec["runs"]],
            "cpu_s": round(best["cpu_s"], 2),
            "s_per_mm2": round(best["wall_s"] / tissue_mm2, 4) if tissue_mm2 else None,
            "tissue_area_mm2": tissue_mm2,
            "n_cell_tiles": n_tiles,
            "n_tissue_tiles": pj.get("n_tissue_tiles"),
            "model_ms_per_cell_tile": round(model_s * 1000 / n_tiles, 1) if n_tiles else None,
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "torch_threads": rec["torch_threads"],
            "workers": rec["workers"],
            "batch_size": rec["batch_size"],
            "log": [ln for ln in rec["log"] if "warning" in ln.lower()],
            "purity_json": {
                k: pj.get(k)
                for k in (
                    "purity",
                    "purity_in_cancer_area",
                    "n_cells",
                    "n_tc",
                    "n_bc",
                    "tissue_area_mm2",
                    "cancer_area_mm2",
                )
            },
            "_cells": read_cells(Path(rec["out"])),
            "_tissue": read_tissue(Path(rec["out"])),
        }
        if rt != "auto" and (choice["runtime"], choice["precision"]) != (rt, prec):
            row["fell_back"] = (
                True  # the engine ran something else (the path failed to build or load)
            )
        if ref is None:
            ref = row
            if gt is not None:
                from wsi_ocelot.evaluation import score_slide

                ref["mF1"] = round(float(score_slide(ref["_cells"], gt, args.mpp).mf1), 5)
        row["speedup_e2e"] = round(ref["e2e_s"] / row["e2e_s"], 3)
        row["speedup_e2e_first"] = round(ref["e2e_first_s"] / row["e2e_first_s"], 3)
        row["speedup_model"] = (
            round(ref["model_ms_per_cell_tile"] / row["model_ms_per_cell_tile"], 3)
            if ref["model_ms_per_cell_tile"] and row["model_ms_per_cell_tile"]
            else None
        )
        row.update(fidelity(ref, row, gt, args.mpp, info.geometry.cell_mpp))
        rows.append(row)
        print(
            "  "
            + json.dumps(
                {
                    k: row.get(k)
                    for k in (
                        "ran",
                        "build_s",
                        "e2e_s",
                        "s_per_mm2",
                        "model_ms_per_cell_tile",
                        "speedup_e2e",
                        "cells_f1_vs_fp32",
                        "mF1_delta",
                        "purity_delta",
                        "purity_in_ca_delta",
                        "tissue_max_abs",
                        "tissue_mean_abs",
                        "passes",
                    )
                },
                default=str,
            ),
            flush=True,
        )
        for ln in row["log"]:
            print(f"  log: {ln}", flush=True)
    for r in rows:
        r.pop("_cells"), r.pop("_tissue")
    rounds = paired_rounds(name, rows, ckpt, slide, tmp, args, cache)
    # the baseline once more, after every path: a noisy spell during its first runs would inflate
    # every ratio (the ResNet-34's fp32 torch once ran 40 % slower than in any other run)
    again = None
    if ref is not None and len(rows) > 1 and rounds is None:
        print(f"[{name}] torch:fp32 again (baseline check) ...", flush=True)
        try:
            rec = run_path(
                ckpt, slide, tmp / f"out_{name}_baseline_again", "torch", "fp32", args, cache
            )
            again = round(min(r["wall_s"] for r in rec["runs"]), 3)
        except RuntimeError as err:
            print(f"  FAILED: {err}", flush=True)
    baseline_check = (
        None
        if again is None or ref is None
        else {
            "e2e_before_s": ref["e2e_s"],
            "e2e_after_s": again,
            "spread": round(max(again, ref["e2e_s"]) / min(again, ref["e2e_s"]) - 1, 3),
        }
    )
    auto = next((r for r in rows if r["path"]["runtime"] == "auto"), None)
    target = TARGETS.get(name)
    return {
        "model": name,
        "checkpoint": ckpt.name,
        "encoder": info.model.encoder,
        "decoder_channels": info.model.decoder_channels,
        "random_weights": random_weights,
        "checkpoint_sha256": file_sha256(ckpt),
        "training": info.training,
        "metrics": {k: v for k, v in info.metrics.items() if k != "val"},
        "slide": {
            "size_px": size,
            "mpp": args.mpp,
            "seed": args.seed,
            "tissue_area_mm2": rows[0]["tissue_area_mm2"],
            "n_cell_tiles": rows[0]["n_cell_tiles"],
            "n_tissue_tiles": rows[0]["n_tissue_tiles"],
        },
        "rows": rows,
        "baseline_check": baseline_check,
        "rounds": rounds,
        "failed": failed,
        "gate": gate_record(cache, ckpt),
        "auto": None
        if auto is None
        else {
            "picked": auto["ran"],
            "speedup_e2e": auto["speedup_e2e"],
            "speedup_e2e_first": auto["speedup_e2e_first"],
            **(
                {}
                if rounds is None
                else {"speedup_e2e_paired_median": auto["speedup_e2e_paired_median"]}
            ),
        },
        "target_speedup_e2e": target,
        "target_met": None
        if auto is None or target is None
        else bool(
            (auto["speedup_e2e"] if rounds is None else auto["speedup_e2e_paired_median"]) >= target
        ),
    }


def paired_rounds(
    name: str,
    rows: list[dict[str, Any]],
    ckpt: Path,
    slide: Path,
    tmp: Path,
    args,
    cache: Path,
) -> dict[str, Any] | None:
    """``--rounds`` K > 1: K − 1 more rounds of every path that ran, the baseline first, each in a
    fresh process on the built cache, so that each round's ratio divides times taken minutes
    apart, not a whole benchmark apart (on a shared 2-core VM fp32 torch's own time moved 9-14 %
    between the start and the end of one benchmark). Adds ``e2e_rounds_s`` (the first pass's
    time first) and ``speedup_e2e_paired`` / ``speedup_e2e_paired_median`` (each round's
    baseline over the path's) to each row; returns the rounds' summary, None for K = 1."""
    if args.rounds <= 1 or len(rows) < 2:
        return None
    for r in rows:
        r["e2e_rounds_s"] = [r["e2e_s"]]
    for k in range(2, args.rounds + 1):
        for r in rows:
            rt, prec = r["path"]["runtime"], r["path"]["precision"]
            print(f"[{name}] round {k}/{args.rounds}: {_path_arg(rt, prec)} ...", flush=True)
            try:
                rec = run_path(
                    ckpt, slide, tmp / f"out_{name}_{rt}_{prec}_r{k}", rt, prec, args, cache
                )
            except RuntimeError as err:  # a round lost, not the benchmark
                print(f"  FAILED: {err}", flush=True)
                r["e2e_rounds_s"].append(None)
                continue
            r["e2e_rounds_s"].append(round(min(x["wall_s"] for x in rec["runs"]), 3))
    base = rows[0]["e2e_rounds_s"]
    for r in rows:
        r["speedup_e2e_paired"] = [
            None if b is None or t is None else round(b / t, 3)
            for b, t in zip(base, r["e2e_rounds_s"], strict=True)
        ]
        got = [x for x in r["speedup_e2e_paired"] if x is not None]
        r["speedup_e2e_paired_median"] = round(statistics.median(got), 3) if got else None
    done = [b for b in base if b is not None]
    return {
        "rounds": args.rounds,
        "baseline_e2e_s": base,
        "baseline_spread": round(max(done) / min(done) - 1, 3),
    }


def machine() -> dict[str, Any]:
    from wsi_ocelot.inference.runtimes.spec import (
        KERNEL_FLAGS,
        cpu_flags,
        cpu_has_bf16,
        cpu_has_vnni,
        runtime_version,
    )
    from wsi_ocelot.sysinfo import cpu_model, describe_machine

    flags = cpu_flags()
    return {
        "describe": describe_machine("cpu"),
        "cpu_model": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "kernel_flags": [f for f in KERNEL_FLAGS if f in flags],
        "bf16": cpu_has_bf16(),
        "vnni": cpu_has_vnni(),
        "versions": {rt: runtime_version(rt) for rt in ("torch", "openvino", "onnxruntime")},
    }


def git_head() -> str | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        )
        return head.stdout.strip() + (" + working tree" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


# --- Markdown --------------------------------------------------------------------------------------
def _path_arg(rt: str, prec: str) -> str:
    """A path as ``--paths`` names it: ``auto`` or ``runtime:precision``."""
    return "auto" if rt == "auto" else f"{rt}:{prec}"


def _ran_label(r: dict[str, Any]) -> str:
    """A row's path as the tables name it: what ran, ``auto → `` before it where auto chose it."""
    ran = r["ran"]
    return (
        "auto → " if r["path"]["runtime"] == "auto" else ""
    ) + f"{ran['runtime']} {ran['precision']}"


def _f(v: Any, fmt: str = "{}") -> str:
    return "-" if v is None else fmt.format(v)


def _ok(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "**no**")


def markdown(report: dict[str, Any]) -> str:
    from wsi_ocelot.inference.runtimes.build import GATE_PAIRS
    from wsi_ocelot.inference.runtimes.spec import FIDELITY, auto_may_take

    m = report["machine"]
    lines = [
        "# Forward-pass runtimes, end to end on a synthetic slide (CPU)",
        "",
        f"Machine: {m['describe']}. CPU: {m['cpu_model']}; kernel flags: {', '.join(m['kernel_flags']) or 'none'} "
        f"(native bf16: {'yes' if m['bf16'] else 'no'}, VNNI: {'yes' if m['vnni'] else 'no'}). "
        f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items() if v)}. "
        f"Load average at start {report['loadavg_start']}, at end {report['loadavg_end']}.",
        "",
        f"Command: `{report['command']}`. Benchmark wall time {report['wall_s']} s.",
        "",
    ]
    if report["skipped"]:
        lines += [f"Not run: {'; '.join(report['skipped'])}.", ""]
    for mr in report["models"]:
        s = mr["slide"]
        weights = (
            "**random weights**"
            if mr["random_weights"]
            else f"trained on synthetic data, checkpoint sha256 {mr['checkpoint_sha256'][:12]}"
        )
        title = (
            "demo model (shipped weights)"
            if mr["model"] == "demo"
            else f"ResNet-34 model (DeepLabV3+ Pred-to-inter-2, {mr['decoder_channels']} decoder channels, {weights})"
        )
        lines += [
            f"## {title}",
            "",
            f"Slide: synthetic, seed {s['seed']}, {s['size_px']}x{s['size_px']} px at {s['mpp']} µm/px, "
            f"{_f(s['tissue_area_mm2'])} mm² of tissue, {s['n_cell_tiles']} cell tiles and {s['n_tissue_tiles']} tissue tiles. "
            f"Each path in a fresh process; {report['repeat']} run(s) per path, the fastest reported; "
            f"{mr['rows'][0]['torch_threads']} torch thread(s), {mr['rows'][0]['workers']} reader process(es).",
            "",
        ]
        if mr["random_weights"]:
            lines += [
                "Random seeded weights (cell head bias tilted so peaks appear, as in the tests' tiny checkpoint): its "
                "cells, purity and tissue map mean nothing, but speed and agreement with fp32 torch are valid figures; no "
                "mF1 against ground truth. Nearly all its cells come out as tumour cells, so its purity is near 1 and the "
                "purity deltas say little: the class-aware cells F1 and the tissue map difference are its agreement "
                "figures. Its untrained tissue branch puts most of the map near 0.5, so the cancer area (map >= 128) is "
                "far more sensitive to small numeric differences than a trained model's.",
                "",
            ]
        elif mr["model"] != "demo":
            tr, val = mr["training"], (mr.get("metrics") or {}).get("val_mF1")
            lines += [
                f"Weights trained quickly on synthetic pairs on this CPU ({tr.get('step', '?')} optimizer steps, "
                f"{tr.get('epoch', '?')} epochs, validation mF1 {_f(val)}; the commands are in docs/runtimes.md): a model whose "
                "outputs have a trained model's structure (peaks well above the background, a tissue map away from 0.5), "
                "which reduced precision's agreement figures need. Its accuracy is not the point (the demo model's is): "
                "the mF1 column is against the slide's ground truth all the same.",
                "",
            ]
        lines += [
            "| path (ran as) | build s | end-to-end s (first run) | s per mm² | model ms per cell tile | speed-up e2e (first run; model) | "
            "cells F1 vs fp32 (3 µm) | mF1 (Δ) | purity (Δ) | purity in CA (Δ) | tissue map max / mean diff | fidelity criteria |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in mr["rows"]:
            ran = r["ran"]
            label = _ran_label(r)
            if r.get("fell_back"):
                label = f"{r['path']['runtime']} {r['path']['precision']} (fell back to {ran['runtime']} {ran['precision']})"
            mf1 = "-" if "mF1" not in r else f"{r['mF1']} ({_f(r['mF1_delta'], '{:+.4f}')})"
            fails = [k for k, v in r["passes"].items() if k != "all" and v is False]
            crit = (
                "ref."
                if r is mr["rows"][0]
                else ("all met" if r["passes"]["all"] else "misses " + ", ".join(fails))
            )
            lines.append(
                f"| {label} | {r['build_s']} | {r['e2e_s']} ({r['e2e_first_s']}) | {_f(r['s_per_mm2'])} | {_f(r['model_ms_per_cell_tile'])} | "
                f"{r['speedup_e2e']}× ({r['speedup_e2e_first']}×; {_f(r['speedup_model'])}×) | {r['cells_f1_vs_fp32']} ({r['cells_f1_vs_fp32_3um']}) | {mf1} | "
                f"{_f(r['purity'], '{:.4f}')} ({_f(r['purity_delta'], '{:+.4f}')}) | "
                f"{_f(r['purity_in_ca'], '{:.4f}')} ({_f(r['purity_in_ca_delta'], '{:+.4f}')}) | "
                f"{_f(r['tissue_max_abs'])} / {_f(r['tissue_mean_abs'])} | {crit} |"
            )
        lines.append("")
        bc = mr.get("baseline_check")
        if bc:
            noisy = bc["spread"] > BASELINE_SPREAD
            lines += [
                f"Baseline check: fp32 torch ran {bc['e2e_before_s']} s before the other paths and "
                f"{bc['e2e_after_s']} s after them ({bc['spread']:.0%} apart)"
                + (
                    f": **over {BASELINE_SPREAD:.0%}, the machine was noisy and every ratio above is "
                    "suspect; run it again**."
                    if noisy
                    else "."
                ),
                "",
            ]
        rd = mr.get("rounds")
        if rd:
            lines += [
                f"Paired rounds: every path ran in {rd['rounds']} rounds (fresh processes, fp32 torch first in "
                f"each; round 1 is the table's pass). fp32 torch end to end: {', '.join(map(str, rd['baseline_e2e_s']))} s "
                f"({rd['baseline_spread']:.0%} between its fastest and slowest round). Each round's speed-up "
                "divides that round's fp32 torch time by the path's:",
                "",
                "| path | end-to-end s per round | speed-up per round | median speed-up |",
                "| --- | --- | --- | ---: |",
            ]
            for r in mr["rows"][1:]:
                lines.append(
                    f"| {_ran_label(r)} | {', '.join(_f(x) for x in r['e2e_rounds_s'])} | "
                    f"{', '.join(_f(x, '{}×') for x in r['speedup_e2e_paired'])} | {r['speedup_e2e_paired_median']}× |"
                )
            lines.append("")
        for fr in mr.get("failed", []):
            last = fr["error"].strip().splitlines()[-1] if fr["error"].strip() else ""
            lines += [f"**{fr['path']['runtime']} {fr['path']['precision']} failed**: {last}", ""]
        if mr["auto"]:
            a = mr["auto"]["picked"]
            met = "met" if mr["target_met"] else "**not met**"
            paired = mr["auto"].get("speedup_e2e_paired_median")
            measured = (
                f"{mr['auto']['speedup_e2e']}× ({mr['auto']['speedup_e2e_first']}× on the runner's first slide)"
                if paired is None
                else f"{paired}×, the median of the paired rounds (first pass {mr['auto']['speedup_e2e']}×)"
            )
            lines += [
                f"`auto` picked **{a['runtime']} {a['precision']}** ({a['runtime']} {a['version']}): {a['reason']}. "
                f"Target: auto >= {mr['target_speedup_e2e']}× faster end to end than torch fp32; measured "
                f"{measured}: {met}.",
                "",
            ]
        g = mr.get("gate")
        if g and g.get("paths"):
            ref = g.get("reference") or {}
            lines += [
                f"The gate's own figures (cache `build.json`: {GATE_PAIRS} synthetic tile pairs at the model's geometry; "
                f"auto may take a path that passes with a cells F1 >= {FIDELITY['cells_f1_auto']} and a tumour share within {FIDELITY['purity_auto']}; fp32 torch {ref.get('ms_per_cell_tile')} ms per cell tile there), which `auto` ranks by:",
                "",
                "| path | status | gate ms per cell tile | load s | cells F1 | tumour share Δ | tissue mean diff | CA agreement | passes gate | auto may take |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
            ]
            for k, v in g["paths"].items():
                fid = v.get("fidelity") or {}
                status = (
                    v.get("status")
                    if v.get("status") in ("ok", "timed")
                    else f"reserve for {v.get('reserve_for')}"
                    if v.get("status") == "reserve"
                    else f"{v.get('status')}: {v.get('error')}"
                )
                lines.append(
                    f"| {k} | {status} | {_f(v.get('ms_per_cell_tile'))} | {_f(v.get('load_s'))} | {_f(fid.get('cells_f1'))} | "
                    f"{_f(fid.get('purity_delta'))} | {_f(fid.get('tissue_mean_abs'))} | {_f(fid.get('ca_agreement'))} | "
                    f"{_ok(fid.get('passes'))} | {_ok(auto_may_take(v))} |"
                )
            lines.append("")
    lines += [
        "## Notes",
        "",
        "* Build s: the first `SlideRunner` construction of the path on a fresh runtime cache (export, int8 calibration, "
        "the fidelity gate of the paths the cache lacks, and loading). The first non-torch path pays the ONNX export and "
        "the gate's fp32 reference, the first int8 path the quantisation; `auto` runs last and builds only what the explicit "
        "paths left. A user pays this once per checkpoint, machine and versions.",
        "* End-to-end s: `SlideRunner.run` on the slide with the runner built (tissue mask, both passes, reading, peaks, "
        "writing, overview, purity): the fastest of the runs (a runner's steady state, as over a cohort); in brackets "
        "the runner's first slide, which also pays each runtime's first-call costs (torch's oneDNN set-up, OpenVINO's "
        "shape compilation), as a one-slide `wsi-ocelot run` does. The targets are judged on the fastest. Model ms per "
        "cell tile (of the fastest run): the engine's cell-pass + tissue-pass time (the forward "
        "passes, the tissue crop's resize included) over the slide's cell tiles.",
        f"* Fidelity criteria (issue), each path against fp32 torch on the same slide: cells F1 between the two outputs "
        f">= {FID_TOL['cells_f1']} (same class, matched within the gate's 3 model px; in brackets within the OCELOT 3 µm), "
        f"slide mF1 against the ground truth within {FID_TOL['mF1']} (models with trained weights), purity and purity in the cancer area "
        f"within {FID_TOL['purity']}. The tissue map's max and mean absolute difference (0-255, level 0 of "
        "`tissue.ome.zarr`) are reported without a criterion of their own; the gate asks a mean <= 1.0 on its tiles. "
        "Reduced precision (int8, bf16) is the cell graph's (int8 leaves its convolutions at stride 4 or finer in float: the encoder's stem and first stage, the decoder's tail); "
        "the tissue graph runs fp32 on every CPU path.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models", nargs="+", default=["demo", "resnet34"], choices=["demo", "resnet34"]
    )
    ap.add_argument(
        "--paths",
        nargs="+",
        default=list(ALL_PATHS),
        metavar="RUNTIME:PRECISION",
        help=f"of {' '.join(ALL_PATHS)} (torch:fp32, the baseline, is always run; bf16 only on a CPU with it)",
    )
    ap.add_argument(
        "--slide-size",
        type=int,
        default=4096,
        help="synthetic slide side in px (default 4096, like the demo)",
    )
    ap.add_argument(
        "--resnet34-slide-size",
        type=int,
        help="the ResNet-34 model's slide side in px (default: --slide-size)",
    )
    ap.add_argument(
        "--resnet34-checkpoint",
        metavar="PATH",
        help="quickly trained ResNet-34 weights for the resnet34 model (configs/bench_resnet34.yaml; "
        "default: random seeded weights, for speed only)",
    )
    ap.add_argument("--mpp", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument(
        "--threads",
        type=int,
        help="the runtime's intra-op threads and torch's (default: torch's, all cores)",
    )
    ap.add_argument(
        "--workers", type=int, help="tile-reading processes (default: the engine's, cores - 1)"
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="runs per path with the same runner (default 2): the fastest is reported, the first (with the "
        "runtime's first-call costs) beside it",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="K > 1: after the first pass (builds, fidelity), K - 1 more rounds of every path in fresh "
        "processes, the baseline first in each; the speed-ups are then also the median of the rounds' "
        "paired ratios, which the target is judged on (default 1)",
    )
    ap.add_argument(
        "--cache",
        help="runtime cache folder (default: a fresh temporary one, so build times are real)",
    )
    ap.add_argument("--json", default=str(HERE / "results" / "runtime.json"))
    ap.add_argument("--md", help="default: the --json path with .md")
    args = ap.parse_args()

    import wsi_ocelot
    from wsi_ocelot.inference.runtimes.spec import cpu_has_bf16

    paths, skipped = parse_paths(args.paths, cpu_has_bf16())
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "machine": machine(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "command": "python benchmarks/bench_runtime.py " + " ".join(sys.argv[1:]),
        "repeat": args.repeat,
        "rounds": args.rounds,
        "threads": args.threads,
        "workers": args.workers,
        "skipped": skipped,
        "fidelity_criteria": FID_TOL,
        "targets_speedup_e2e": TARGETS,
    }
    report["versions"] = {
        **report["machine"]["versions"],
        "wsi_ocelot": wsi_ocelot.__version__,
        "git": git_head(),
    }
    print(report["machine"]["describe"], "| flags:", report["machine"]["kernel_flags"], flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp_dir:
        tmp = Path(tmp_dir)
        cache = Path(args.cache) if args.cache else tmp / "cache"
        slides: dict[int, Any] = {}
        report["models"] = [
            bench_model(name, args, tmp, cache, slides, paths) for name in args.models
        ]
    report["targets_met"] = {mr["model"]: mr["target_met"] for mr in report["models"]}
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md = markdown(report)
    md_path = Path(vars(args)["md"] or path.with_suffix(".md"))
    md_path.write_text(md)
    print(md)


if __name__ == "__main__":
    main()
