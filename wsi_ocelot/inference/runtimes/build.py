"""Build and gate runtime paths for one checkpoint, in a child process (docs/runtimes.md).

``python -m wsi_ocelot.inference.runtimes.build REQUEST.json`` exports the graphs into the
cache entry (fp32 ONNX; int8 by static quantisation calibrated on synthetic tiles at the
model's geometry), then for each requested path runs the gate's tiles through it and through
fp32 torch and appends one JSON line per path to the request's progress file: ``start``
before a path is tried, then its result (``ok`` with fidelity and speed, or ``failed`` with
the error). A runtime that kills the process (OpenVINO's SIGFPE in ``compile_model`` on some
AMD Zen 4 CPUs, issue 35943) leaves a ``start`` without a result: the parent marks that path
crashed and starts a new child for the rest, so nothing in the engine's process is at risk.

Fault injection (for the tests): where the environment variable ``WSI_OCELOT_BUILD_CRASH``
is ``"<runtime> <precision>"`` (e.g. ``"openvino fp32"``), the child kills itself with SIGFPE
right after writing that path's ``start`` line, as OpenVINO issue 35943 does.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsi_ocelot.inference.peaks import PeakConfig, find_peaks
from wsi_ocelot.inference.runtimes.backends import open_backend
from wsi_ocelot.inference.runtimes.cache import graph_files
from wsi_ocelot.inference.runtimes.fidelity import cells_agreement, tissue_agreement
from wsi_ocelot.inference.runtimes.graphs import (
    CalibrationPairs,
    CellGraph,
    TissueGraph,
    calibration_pairs,
    crop_injection,
    export_onnx,
    quantize_int8,
)
from wsi_ocelot.inference.runtimes.spec import FIDELITY, cpu_has_bf16, cpu_has_vnni
from wsi_ocelot.model.checkpoint import load_model
from wsi_ocelot.model.precision import autocast
from wsi_ocelot.model.variants import OcelotModel
from wsi_ocelot.purity import compute_purity

log = logging.getLogger(__name__)

CALIBRATION_SEED, CALIBRATION_PAIRS = 1, 4
#: The gate's tile pairs (its fidelity is measured on all of them: ~1,300-1,900 cells on the demo
#: and the bench's ResNet-34, where 3 pairs gave ~500 and a cells F1 good to about ±0.004) and the
#: first TIMING_PAIRS of them, twice over, are the batch its speed is timed on.
GATE_SEED, GATE_PAIRS, TIMING_PAIRS = 2, 8, 3

#: A path's tissue graph (``x`` → ``probs``) and cell graph (``cell``, ``injection`` → ``probs``).
TissueFn = Callable[[np.ndarray], np.ndarray]
CellFn = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


def _append(progress: Path, record: dict[str, Any]) -> None:
    with open(progress, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()


def _torch_run(model: OcelotModel, dtype: torch.dtype | None) -> tuple[TissueFn, CellFn]:
    tissue_graph, cell_graph = TissueGraph(model), CellGraph(model)
    dev = torch.device("cpu")

    def tissue(x: np.ndarray) -> np.ndarray:  # fp32 on every CPU path, as the engine runs it
        with torch.inference_mode():
            return tissue_graph(torch.from_numpy(x)).float().numpy()

    def cell(c: np.ndarray, inj: np.ndarray | None) -> np.ndarray:
        with torch.inference_mode(), autocast(dev, dtype):
            args = (
                (torch.from_numpy(c),)
                if inj is None
                else (torch.from_numpy(c), torch.from_numpy(inj))
            )
            return cell_graph(*args).float().numpy()

    return tissue, cell


def _outputs(
    model: OcelotModel,
    tissue_fn: TissueFn,
    cell_fn: CellFn,
    pairs: CalibrationPairs,
    tile: int,
    has_tissue: bool,
) -> tuple[dict[str, Any], float, float]:
    """Run the gate's pairs the way the engine does (the cell graph gets the crop of this path's
    own tissue prediction); returns outputs and ms per tile of each graph. The cell graph, which
    runs on 16× as many tiles, is timed as the engine runs it (a batch of 6 tiles, the first
    TIMING_PAIRS twice, after the first call; the faster of two runs); the tissue graph's time is
    that of its first call on the pairs (fp32 on every CPU path, so it barely ranks them)."""
    k = TIMING_PAIRS  # the pairs go through in batches of k, as at most 3 did before (memory)
    chunks = [slice(i, i + k) for i in range(0, len(pairs.cell), k)]
    t0 = time.perf_counter()
    tis = np.concatenate([tissue_fn(pairs.tissue[c]) for c in chunks]) if has_tissue else None
    t_tissue = (time.perf_counter() - t0) * 1000 / len(pairs.tissue) if has_tissue else 0.0
    inj = crop_injection(model, tis, tile) if tis is not None else None
    cell = np.concatenate([cell_fn(pairs.cell[c], None if inj is None else inj[c]) for c in chunks])
    batch = (
        np.concatenate([pairs.cell[:k], pairs.cell[:k]]),
        None if inj is None else np.concatenate([inj[:k], inj[:k]]),
    )
    times = []
    for _ in range(2):  # the faster of two: paths 10 % apart on a slide must rank so here
        t0 = time.perf_counter()
        cell_fn(*batch)
        times.append((time.perf_counter() - t0) * 1000 / len(batch[0]))
    return {"tissue": tis, "cell": cell}, t_tissue, min(times)


def _points(probs: np.ndarray, peaks: PeakConfig) -> np.ndarray:
    pts = find_peaks(torch.from_numpy(probs), peaks, per_image=True)
    return (
        np.concatenate(
            [np.column_stack([np.full(len(p), i), p.double().numpy()]) for i, p in enumerate(pts)]
        )
        if pts
        else np.zeros((0, 5))
    )


def _tumour_share(points: np.ndarray) -> float:
    """The purity of the gate's tiles (tumour cells over all cells; 0 without cells)."""
    return compute_purity(points[:, 1], points[:, 2], points[:, 3]).purity or 0.0


def _fidelity(
    ref: dict[str, Any], out: dict[str, Any], ref_pts: np.ndarray, peaks: PeakConfig
) -> dict[str, Any]:
    pts = _points(out["cell"], peaks)
    # one frame for all tiles: shift each tile's points by its index far apart
    shift = lambda p: np.column_stack([p[:, 1] + p[:, 0] * 1e6, p[:, 2], p[:, 3], p[:, 4]])  # noqa: E731
    fid: dict[str, Any] = cells_agreement(shift(ref_pts), shift(pts), FIDELITY["match_px"])
    fid["purity_delta"] = round(_tumour_share(pts) - _tumour_share(ref_pts), 5)
    if ref["tissue"] is not None:
        fid.update(tissue_agreement(ref["tissue"][:, 1], out["tissue"][:, 1]))
    fid["passes"] = bool(
        fid["cells_f1"] >= FIDELITY["cells_f1"]
        and fid.get("tissue_mean_abs", 0.0) <= FIDELITY["tissue_mean_abs"]
        and fid.get("ca_agreement", 1.0) >= FIDELITY["ca_agreement"]
    )
    return fid


def _int8_float_to_try(runtime: str, precision: str) -> list[str | None]:
    """What an OpenVINO int8 path's float parts may run at, fastest first: on a CPU with native
    bf16, bf16, else (when that misses the gate) fp32. The tissue graph is fp32 on every CPU path
    (docs/runtimes.md). Every other path: its one form (None)."""
    if (runtime, precision) != ("openvino", "int8") or not cpu_has_bf16():
        return [None]
    return ["bf16", "fp32"]


def build(request: dict[str, Any]) -> None:
    entry = Path(request["entry_dir"])
    progress = Path(request["progress"])
    threads = int(request["threads"])
    torch.set_num_threads(threads)
    model, info = load_model(request["checkpoint"], device="cpu")
    model.eval()
    tile = info.geometry.tile_size
    has_tissue = bool(getattr(model, "has_tissue_branch", False))
    candidates = [tuple(c) for c in request["candidates"]]
    t0 = time.perf_counter()
    if not (entry / "cell.onnx").exists():
        export_onnx(model, tile, entry)
    t_export = time.perf_counter() - t0
    t0 = time.perf_counter()
    if any(p == "int8" for _, p in candidates) and not (entry / "cell.int8.onnx").exists():
        cal = calibration_pairs(info, CALIBRATION_PAIRS, CALIBRATION_SEED)
        ref_tissue, _ = _torch_run(model, None)
        feeds_cell: list[dict[str, np.ndarray]] = []
        tis = ref_tissue(cal.tissue) if has_tissue else None
        inj = crop_injection(model, tis, tile) if tis is not None else None
        for i in range(len(cal.cell)):
            feeds_cell.append(
                {
                    "cell": cal.cell[i : i + 1],
                    **({} if inj is None else {"injection": inj[i : i + 1]}),
                }
            )
        # the cell graph only: the tissue branch runs on 1/context_factor² as many tiles, and its map
        # (thresholded at 128 for the cancer area) is what int8 moved most (docs/runtimes.md)
        quantize_int8(
            entry / "cell.onnx",
            entry / "cell.int8.onnx",
            feeds_cell,
            reduce_range=not cpu_has_vnni(),
        )
    t_quant = time.perf_counter() - t0
    pairs = calibration_pairs(info, GATE_PAIRS, GATE_SEED)
    ref, ref_tissue_ms, ref_cell_ms = _outputs(
        model, *_torch_run(model, None), pairs, tile, has_tissue
    )
    ref_pts = _points(ref["cell"], info.peaks)
    f2 = info.geometry.context_factor**2
    _append(
        progress,
        {
            "reference": {
                "tissue_ms": round(ref_tissue_ms, 1),
                "cell_ms": round(ref_cell_ms, 1),
                "ms_per_cell_tile": round(ref_cell_ms + ref_tissue_ms / f2, 1),
            },
            "export_s": round(t_export, 2),
            "quantize_s": round(t_quant, 2),
        },
    )
    for runtime, precision in candidates:
        _append(progress, {"start": [runtime, precision]})
        if os.environ.get("WSI_OCELOT_BUILD_CRASH") == f"{runtime} {precision}":
            # fault injection: stands in for OpenVINO issue 35943 (SIGFPE in compile_model on some
            # AMD Zen 4 CPUs), so the parent's handling of a child that dies can be tested
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file for a planned crash
            signal.signal(signal.SIGFPE, signal.SIG_DFL)
            signal.raise_signal(signal.SIGFPE)
        try:
            for int8_float in _int8_float_to_try(runtime, precision):
                t0 = time.perf_counter()
                if runtime == "torch":
                    fns = _torch_run(model, torch.bfloat16 if precision == "bf16" else None)
                else:
                    backend = open_backend(
                        runtime, precision, graph_files(entry, precision), threads, int8_float
                    )
                    fns = (backend.tissue, backend.cell)
                load_s = time.perf_counter() - t0
                out, tissue_ms, cell_ms = _outputs(model, *fns, pairs, tile, has_tissue)
                fid = _fidelity(ref, out, ref_pts, info.peaks)
                if fid["passes"]:
                    break
            _append(
                progress,
                {
                    "result": [runtime, precision],
                    "status": "ok",
                    "fidelity": fid,
                    "load_s": round(load_s, 2),
                    "tissue_ms": round(tissue_ms, 1),
                    "cell_ms": round(cell_ms, 1),
                    "ms_per_cell_tile": round(cell_ms + tissue_ms / f2, 1),
                    **({"int8_float": int8_float} if int8_float else {}),
                },
            )
        except Exception as err:  # a path that fails is recorded, never fatal
            log.debug("%s %s failed:\n%s", runtime, precision, traceback.format_exc())
            _append(
                progress,
                {
                    "result": [runtime, precision],
                    "status": "failed",
                    "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[
                        :300
                    ],
                },
            )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    build(json.loads(Path(args[0]).read_text(encoding="utf-8")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
