"""The forward pass's modes on a GPU, model only (issue: forward pass at the machine's speed, item 5).

    python benchmarks/bench_gpu_forward.py [--device cuda] [--models demo resnet34]
        [--resnet34-checkpoint PATH] [--batch 32] [--pairs 8] [--repeat 5] [--json PATH]

For each model, both graphs of the two-pass engine (the tissue graph on context tiles, the cell
graph with its resized injection; ``wsi_ocelot.inference.runtimes.graphs``) in each mode:

* ``eager fp32``: the reference (``--precision fp32``);
* ``eager bf16``: bf16 autocast + channels-last, what ``auto`` runs on CUDA today;
* ``compile bf16``: the same under ``torch.compile`` (Inductor, default mode);
* ``cudagraphs bf16``: ``torch.compile(mode="reduce-overhead")``, Inductor with CUDA graphs.

Per mode: compile (first-call) seconds, ms per tile of each graph at ``--batch`` (the best of
``--repeat`` timed batches after two warm-ups, the device synchronised), ms per cell tile (cell +
tissue / context factor², as the engine runs them), and fidelity against eager fp32 on synthetic
tile pairs at the model's geometry: cells F1 (same class, within 3 px) and the tumour share's
shift, and the cancer-area map's mean difference (0-255). A mode is worth making ``auto``'s when
it is faster per cell tile than ``eager bf16`` and keeps the gate (docs/runtimes.md).

Runs on the CPU too (``--device cpu --batch 2 --pairs 2 --repeat 1``), to check the script; its
CPU figures mean nothing for the GPU. Results: ``benchmarks/results/gpu_forward.json`` and
``.md`` (or ``--json PATH``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODES = ("eager fp32", "eager bf16", "compile bf16", "cudagraphs bf16")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _graphs(model: Any, mode: str) -> tuple[Any, Any]:
    import torch

    from wsi_ocelot.inference.runtimes.graphs import CellGraph, TissueGraph

    tissue, cell = TissueGraph(model), CellGraph(model)
    if mode.startswith("compile"):
        tissue, cell = torch.compile(tissue), torch.compile(cell)
    elif mode.startswith("cudagraphs"):
        tissue = torch.compile(tissue, mode="reduce-overhead")
        cell = torch.compile(cell, mode="reduce-overhead")
    return tissue, cell


def _run_mode(model: Any, mode: str, pairs: Any, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from wsi_ocelot.model.precision import autocast

    device = torch.device(args.device)
    bf16 = mode.endswith("bf16")
    if bf16 and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    tissue_g, cell_g = _graphs(model, mode)
    dtype = torch.bfloat16 if bf16 else None

    def fmt(a: np.ndarray) -> Any:
        t = torch.from_numpy(a).to(device)
        return t.contiguous(memory_format=torch.channels_last) if bf16 else t

    def tissue(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), autocast(device, dtype):
            return tissue_g(fmt(x)).float().cpu().numpy()

    def cell(c: np.ndarray, inj: np.ndarray | None) -> np.ndarray:
        with torch.inference_mode(), autocast(device, dtype):
            args_ = (fmt(c),) if inj is None else (fmt(c), torch.from_numpy(inj).to(device))
            return cell_g(*args_).float().cpu().numpy()

    # outputs on the pairs, a batch at a time (the first call compiles)
    t0 = time.perf_counter()
    tis = np.concatenate(
        [tissue(pairs.tissue[i : i + args.batch]) for i in range(0, len(pairs.tissue), args.batch)]
    )
    inj = pairs.injection(model, tis)
    out = np.concatenate(
        [
            cell(pairs.cell[i : i + args.batch], None if inj is None else inj[i : i + args.batch])
            for i in range(0, len(pairs.cell), args.batch)
        ]
    )
    first_s = time.perf_counter() - t0

    # speed: a full batch of the pairs repeated, after two warm-ups
    def full(a: np.ndarray) -> np.ndarray:  # a batch of args.batch rows, ``a``'s repeated
        return np.concatenate([a] * -(-args.batch // len(a)))[: args.batch]

    xb, cb = full(pairs.tissue), full(pairs.cell)  # fewer contexts than cell tiles
    ib = None if inj is None else full(inj)
    xt, ct = fmt(xb), fmt(cb)
    it = None if ib is None else torch.from_numpy(ib).to(device)

    def timed(fn: Any, *a: Any) -> float:
        best = float("inf")
        with torch.inference_mode(), autocast(device, dtype):
            for k in range(2 + args.repeat):
                _sync(device)
                t0 = time.perf_counter()
                fn(*a)
                _sync(device)
                if k >= 2:
                    best = min(best, time.perf_counter() - t0)
        return best * 1000 / args.batch

    tissue_ms = timed(tissue_g, xt)
    cell_ms = timed(cell_g, ct) if it is None else timed(cell_g, ct, it)
    return {
        "tissue": tis,
        "cell": out,
        "first_s": first_s,
        "tissue_ms": tissue_ms,
        "cell_ms": cell_ms,
    }


def _fidelity(ref: dict[str, Any], out: dict[str, Any], peaks: Any) -> dict[str, Any]:
    """The CPU gate's own measure (build.gate_fidelity) of one mode against the first."""
    from wsi_ocelot.inference.runtimes.build import cell_points, gate_fidelity

    ref_tissue = None if ref["tissue"] is None else ref["tissue"][:, 1]
    return gate_fidelity(
        cell_points(ref["cell"], peaks), ref_tissue, out["cell"], out["tissue"], peaks
    )


def bench_model(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import torch
    from bench_runtime import model_checkpoint

    from wsi_ocelot.inference.runtimes.build import per_cell_tile
    from wsi_ocelot.inference.runtimes.graphs import calibration_pairs
    from wsi_ocelot.model.checkpoint import load_model

    ckpt = model_checkpoint(name, tmp, args.resnet34_checkpoint if name == "resnet34" else None)
    _, info = load_model(ckpt, device="cpu")
    pairs = calibration_pairs(info, args.pairs, 2)
    rows: dict[str, Any] = {}
    ref: dict[str, Any] | None = None
    for mode in MODES:
        torch._dynamo.reset()
        model, _ = load_model(ckpt, device=args.device)
        model.eval()
        try:
            r = _run_mode(model, mode, pairs, args)
        except Exception as err:  # a mode that fails is recorded, never fatal
            rows[mode] = {"status": "failed", "error": f"{type(err).__name__}: {str(err)[:300]}"}
            print(f"{name} {mode}: failed ({err})", file=sys.stderr, flush=True)
            continue
        if ref is None:
            ref = r
        fid = _fidelity(ref, r, info.peaks)
        rows[mode] = {
            "status": "ok",
            "first_call_s": round(r["first_s"], 2),
            "tissue_ms": round(r["tissue_ms"], 2),
            "cell_ms": round(r["cell_ms"], 2),
            "ms_per_cell_tile": round(
                per_cell_tile(r["cell_ms"], r["tissue_ms"], info.geometry.context_factor), 2
            ),
            "fidelity": fid,
        }
        print(f"{name} {mode}: {json.dumps(rows[mode])}", file=sys.stderr, flush=True)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    base = rows.get("eager bf16", {}).get("ms_per_cell_tile")
    for r in rows.values():
        if r.get("status") == "ok" and base:
            r["speedup_vs_eager_bf16"] = round(base / r["ms_per_cell_tile"], 3)
    return {"checkpoint": str(ckpt), "tile": info.geometry.tile_size, "modes": rows}


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    from wsi_ocelot.sysinfo import cpu_model

    return cpu_model()


def write_md(data: dict[str, Any], path: Path) -> None:
    lines = [
        "# The forward pass's modes on a GPU (model only)",
        "",
        f"Device: {data['device_name']} ({data['device']}); torch {data['torch']}; batch {data['batch']}; "
        f"{data['pairs']} synthetic tile pairs for fidelity; best of {data['repeat']} timed batches.",
        "",
        f"Command: `{data['command']}`",
        "",
    ]
    for name, m in data["models"].items():
        lines += [
            f"## {name}",
            "",
            "| mode | first call s | tissue ms/tile | cell ms/tile | ms per cell tile | vs eager bf16 | cells F1 vs fp32 | tumour share Δ | map mean diff |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for mode, r in m["modes"].items():
            if r.get("status") != "ok":
                lines.append(f"| {mode} | failed: {r.get('error')} | | | | | | | |")
                continue
            f = r["fidelity"]
            lines.append(
                f"| {mode} | {r['first_call_s']} | {r['tissue_ms']} | {r['cell_ms']} | {r['ms_per_cell_tile']} | "
                f"{r.get('speedup_vs_eager_bf16', '')}× | {f['cells_f1']} | {f['purity_delta']:+.4f} | "
                f"{f.get('tissue_mean_abs', '')} |"
            )
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--models", nargs="+", default=["demo", "resnet34"], choices=["demo", "resnet34"]
    )
    ap.add_argument("--resnet34-checkpoint", default=None, metavar="PATH")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=str(HERE / "results" / "gpu_forward.json"))
    args = ap.parse_args()

    import torch

    data: dict[str, Any] = {
        "device": args.device,
        "device_name": _device_name(args.device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "batch": args.batch,
        "pairs": args.pairs,
        "repeat": args.repeat,
        "command": "python benchmarks/bench_gpu_forward.py " + " ".join(sys.argv[1:]),
        "models": {},
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:  # written after each model: a run cut short keeps what it measured
            data["models"][name] = bench_model(name, args, Path(tmp))
            out.write_text(json.dumps(data, indent=2), encoding="utf-8")
            write_md(data, out.with_suffix(".md"))
    print(out.with_suffix(".md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
