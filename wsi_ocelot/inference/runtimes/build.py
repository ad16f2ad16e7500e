"""Build and gate runtime paths for one checkpoint, in a child process (docs/runtimes.md).

``python -m wsi_ocelot.inference.runtimes.build REQUEST.json`` exports the graphs into the
cache entry (fp32 ONNX; int8 by static quantisation calibrated on synthetic tiles at the
model's geometry), runs the gate's tiles through fp32 torch once (kept as ``reference.npz``),
then works in two steps and appends one JSON line per step to the request's progress file:

1. **time** every requested path not timed yet (``start``, then ``timed`` with its speed, or a
   ``result`` that it ``failed``), but in ``"auto"`` mode ONNX Runtime's paths are reserves
   (``spec.reserve_for``): one is timed only when OpenVINO's path at its precision did not time
   here, or missed auto's margins at the gate by little (``spec.reserve_may_pass``), else it
   ends as a ``result`` with the status ``reserve``;
2. **gate** paths on fidelity (``start``, then ``result``: ``ok`` with fidelity and speed, or
   ``failed``). In ``"each"`` mode every requested path; in ``"auto"`` mode fastest first, only
   while a path is faster than the fastest path already known to keep auto's margins
   (``best_ms``) and than fp32 torch (``beat_reference``: it is a candidate): the slower paths stay
   ``timed`` (their fidelity is measured when one is asked for by name).

A runtime that kills the process (OpenVINO's SIGFPE in ``compile_model`` on some AMD Zen 4
CPUs, issue 35943) leaves a ``start`` without a record after it: the parent marks that path
crashed and starts a new child for the rest, so nothing in the engine's process is at risk.

Fault injection (for the tests): where the environment variable ``WSI_OCELOT_BUILD_CRASH``
is ``"<runtime> <precision>"`` (e.g. ``"openvino fp32"``), the child kills itself with SIGFPE
right after writing that path's first ``start`` line, as OpenVINO issue 35943 does.
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

from wsi_ocelot.atomic import atomic_open
from wsi_ocelot.inference.peaks import PeakConfig, find_peaks
from wsi_ocelot.inference.runtimes.backends import open_backend
from wsi_ocelot.inference.runtimes.cache import cached_pairs, graph_files
from wsi_ocelot.inference.runtimes.fidelity import cells_agreement, tissue_agreement
from wsi_ocelot.inference.runtimes.graphs import (
    CalibrationPairs,
    CellGraph,
    TissueGraph,
    export_onnx,
    quantize_int8,
)
from wsi_ocelot.inference.runtimes.spec import (
    FIDELITY,
    auto_may_take,
    cpu_has_bf16,
    cpu_has_vnni,
    reserve_for,
    reserve_may_pass,
)
from wsi_ocelot.model.checkpoint import load_model
from wsi_ocelot.model.precision import autocast
from wsi_ocelot.model.variants import OcelotModel
from wsi_ocelot.purity import compute_purity

log = logging.getLogger(__name__)

CALIBRATION_SEED, CALIBRATION_PAIRS = 1, 4
#: The gate's tile pairs: its fidelity is measured on all of them (~1,300-1,900 cells on the
#: demo and the bench's ResNet-34, where 3 pairs gave ~500 and a cells F1 good to about ±0.004).
GATE_SEED, GATE_PAIRS = 2, 8
#: Pairs that go through a graph at once in the fidelity run (memory: 3 did before).
CHUNK = 3
#: A path's speed: after a warm-up batch of 2 cell tiles (one per OpenVINO stream on 2 cores),
#: the fastest of up to ROUNDS batches of the gate's first TIMING_TILES cell tiles: every path
#: one batch in turn, then the close ones take turns, one batch each per round, so that a busy
#: spell of a shared machine falls on all of them rather than on one. A path stays in (and
#: loaded) for round k only while its best is within STAY_WITHIN[k] of the fastest path's
#: (paths 10 % apart on a slide must rank so here; one 4-tile batch alone misranked OpenVINO
#: bf16 and int8 on the demo model on a noisy 2-core VM). A path left alone, more than
#: STAY_WITHIN[-1] faster than fp32 torch, keeps its first batch's time (no turns to take: a
#: ResNet-34's OpenVINO int8 spent 11 s of its build on two more rounds on the AVX2 EPYC).
TIMING_TILES, ROUNDS = 4, 3
STAY_WITHIN = (float("inf"), 1.5, 1.2)

#: A path's tissue graph (``x`` → ``probs``) and cell graph (``cell``, ``injection`` → ``probs``).
TissueFn = Callable[[np.ndarray], np.ndarray]
CellFn = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


def per_cell_tile(cell_ms: float, tissue_ms: float, context_factor: int) -> float:
    """A path's model time per cell tile: its cell graph's plus its share of the tissue graph's
    (one context per ``context_factor²`` cell tiles). What the gate ranks paths and bars them by
    against fp32 torch."""
    return cell_ms + tissue_ms / context_factor**2


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


def _run_pairs(
    model: OcelotModel,
    tissue_fn: TissueFn,
    cell_fn: CellFn,
    pairs: CalibrationPairs,
    has_tissue: bool,
    tissue: np.ndarray | None = None,
) -> tuple[dict[str, Any], float, float]:
    """Run the gate's tiles the way the engine does (the tissue graph on the contexts, the cell
    graph on the cell tiles with the crop of this path's own tissue prediction), CHUNK tiles at a
    time. Returns the outputs (``tissue`` probabilities on the contexts or None, ``injection`` or
    None, ``cell`` probabilities) and each graph's ms per tile over its chunks after the first
    (all of them when there is one; fp32 torch's speed: it needs no warm-up). ``tissue``: the
    tissue graph's outputs on these contexts where another path of the runtime computed them (its
    tissue graph is the same fp32 graph on each of its paths); then its time is 0."""

    def through(
        fn: Callable[..., np.ndarray], x: np.ndarray, *extra: np.ndarray | None
    ) -> tuple[np.ndarray, float]:
        n = len(x)
        chunks = [slice(i, i + CHUNK) for i in range(0, n, CHUNK)]
        timed_from = 1 if len(chunks) > 1 else 0  # the chunks after the first, where there are any
        outs, spent = [], 0.0
        for k, c in enumerate(chunks):
            t0 = time.perf_counter()
            outs.append(fn(x[c], *(None if a is None else a[c] for a in extra)))
            if k >= timed_from:
                spent += time.perf_counter() - t0
        return np.concatenate(outs), spent * 1000 / (n - (CHUNK if timed_from else 0))

    tis: np.ndarray | None = tissue
    tissue_ms = 0.0
    if tis is None and has_tissue:
        tis, tissue_ms = through(tissue_fn, pairs.tissue)
    inj = pairs.injection(model, tis) if tis is not None else None
    cell, cell_ms = through(cell_fn, pairs.cell, inj)
    return {"tissue": tis, "injection": inj, "cell": cell}, tissue_ms, cell_ms


def cell_points(probs: np.ndarray, peaks: PeakConfig) -> np.ndarray:
    """The cells the engine would find in a batch of cell-graph outputs: (N, 5) rows of tile
    index, x, y, class, probability."""
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


def gate_fidelity(
    ref_pts: np.ndarray,
    ref_tissue: np.ndarray | None,
    cell_probs: np.ndarray,
    tissue_probs: np.ndarray | None,
    peaks: PeakConfig,
) -> dict[str, Any]:
    """The gate's measure of one path against the reference: ``ref_pts`` (:func:`cell_points`
    of the reference) and ``ref_tissue`` (its cancer-area channel, (N, T, T) floats in [0, 1] or
    0-255 uint8; None for a cell-only model) against the path's cell-graph and tissue-graph
    probabilities. Cells F1 and count, the tumour share's shift, the map's differences and
    whether it ``passes`` ``FIDELITY``."""
    pts = cell_points(cell_probs, peaks)
    # one frame for all tiles: shift each tile's points by its index far apart
    shift = lambda p: np.column_stack([p[:, 1] + p[:, 0] * 1e6, p[:, 2], p[:, 3], p[:, 4]])  # noqa: E731
    fid: dict[str, Any] = cells_agreement(shift(ref_pts), shift(pts), FIDELITY["match_px"])
    fid["purity_delta"] = round(_tumour_share(pts) - _tumour_share(ref_pts), 5)
    if ref_tissue is not None and tissue_probs is not None:
        fid.update(tissue_agreement(ref_tissue, tissue_probs[:, 1]))
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


class _Reference:
    """fp32 torch on the gate's pairs: its cells, its cancer-area channel (uint8), the cell
    graph's injection inputs (for timing) and its speed. Computed once per cache entry and kept
    there as ``reference.npz`` (listed in ``build.json`` with its SHA-256 like the graphs), with
    the key of the pairs it ran on: other pairs (a changed generator) are run anew."""

    FILE = "reference.npz"

    def __init__(
        self,
        points: np.ndarray,
        tissue: np.ndarray | None,
        injection: np.ndarray | None,
        record: dict[str, Any] | None,
    ):
        self.points, self.tissue, self.injection = points, tissue, injection
        self.record = record  # the speed, when computed in this process (None: loaded)

    @classmethod
    def get(
        cls,
        entry: Path,
        model: OcelotModel,
        info: Any,
        pairs: CalibrationPairs,
        has_tissue: bool,
    ) -> _Reference:
        path = entry / cls.FILE
        if path.exists():  # written by an earlier child of this build, or listed in build.json
            try:
                with np.load(path) as z:
                    tis, inj = z["tissue"], z["injection"]
                    if str(z["pairs"]) == pairs.key:  # else the generator changed: computed anew
                        return cls(
                            z["points"], tis if tis.size else None, inj if inj.size else None, None
                        )
            except (OSError, ValueError, KeyError) as err:
                log.debug("%s unreadable (%s): computed anew", path, err)
        out, tissue_ms, cell_ms = _run_pairs(model, *_torch_run(model, None), pairs, has_tissue)
        points = cell_points(out["cell"], info.peaks)
        tissue = (
            None
            if out["tissue"] is None
            else np.rint(np.clip(out["tissue"][:, 1], 0, 1) * 255).astype(np.uint8)
        )
        injection = out["injection"]
        with atomic_open(path) as fh:
            np.savez(
                fh,
                points=points,
                tissue=np.zeros(0, np.uint8) if tissue is None else tissue,
                injection=np.zeros(0, np.float32) if injection is None else injection,
                pairs=pairs.key,
            )
        record = {
            "tissue_ms": round(tissue_ms, 1),
            "cell_ms": round(cell_ms, 1),
            "ms_per_cell_tile": round(
                per_cell_tile(cell_ms, tissue_ms, info.geometry.context_factor), 1
            ),
        }
        return cls(points, tissue, injection, record)


def _warm_up(
    tissue_fn: TissueFn, cell_fn: CellFn, pairs: CalibrationPairs, ref: _Reference, tissue: bool
) -> float:
    """The first calls of a loaded path; returns its tissue graph's ms per tile when ``tissue``
    (one warm-up tile, then two timed: fp32 on every CPU path, so it barely ranks them), else 0."""
    inj = None if ref.injection is None else ref.injection[:2]
    cell_fn(pairs.cell[:2], inj)
    if not tissue:
        return 0.0
    tissue_fn(pairs.tissue[:1])
    timed = pairs.tissue[:2]
    t0 = time.perf_counter()
    tissue_fn(timed)
    return (time.perf_counter() - t0) * 1000 / len(timed)


def _time_batch(cell_fn: CellFn, pairs: CalibrationPairs, ref: _Reference) -> float:
    """ms per tile of one batch of the gate's first TIMING_TILES cell tiles."""
    n = TIMING_TILES
    inj = None if ref.injection is None else ref.injection[:n]
    t0 = time.perf_counter()
    cell_fn(pairs.cell[:n], inj)
    return (time.perf_counter() - t0) * 1000 / n


def _load(
    model: OcelotModel,
    entry: Path,
    runtime: str,
    precision: str,
    threads: int,
    int8_float: str | None,
) -> tuple[TissueFn, CellFn]:
    if runtime == "torch":
        return _torch_run(model, torch.bfloat16 if precision == "bf16" else None)
    backend = open_backend(runtime, precision, graph_files(entry, precision), threads, int8_float)
    return backend.tissue, backend.cell


def _failed(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]


def _maybe_crash(runtime: str, precision: str) -> None:
    if os.environ.get("WSI_OCELOT_BUILD_CRASH") == f"{runtime} {precision}":
        # fault injection: stands in for OpenVINO issue 35943 (SIGFPE in compile_model on some
        # AMD Zen 4 CPUs), so the parent's handling of a child that dies can be tested
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file for a planned crash
        signal.signal(signal.SIGFPE, signal.SIG_DFL)
        signal.raise_signal(signal.SIGFPE)


def build(request: dict[str, Any]) -> None:
    entry = Path(request["entry_dir"])
    progress = Path(request["progress"])
    threads = int(request["threads"])
    mode = request.get("mode", "each")
    torch.set_num_threads(threads)
    model, info = load_model(request["checkpoint"], device="cpu")
    model.eval()
    tile = info.geometry.tile_size
    factor = info.geometry.context_factor
    has_tissue = bool(getattr(model, "has_tissue_branch", False))
    candidates = [(str(c[0]), str(c[1])) for c in request["candidates"]]
    t0 = time.perf_counter()
    if not (entry / "cell.onnx").exists():
        export_onnx(model, tile, entry)
    t_export = time.perf_counter() - t0
    t0 = time.perf_counter()
    if any(p == "int8" for _, p in candidates) and not (entry / "cell.int8.onnx").exists():
        cal = cached_pairs(info, CALIBRATION_PAIRS, CALIBRATION_SEED, threads)
        ref_tissue, _ = _torch_run(model, None)
        tis = ref_tissue(cal.tissue) if has_tissue else None
        inj = cal.injection(model, tis) if tis is not None else None
        feeds_cell = [
            {"cell": cal.cell[i : i + 1], **({} if inj is None else {"injection": inj[i : i + 1]})}
            for i in range(len(cal.cell))
        ]
        # the cell graph only: the tissue branch runs on 1/context_factor² as many tiles, and its map
        # (thresholded at 128 for the cancer area) is what int8 moved most (docs/runtimes.md)
        quantize_int8(
            entry / "cell.onnx",
            entry / "cell.int8.onnx",
            feeds_cell,
            reduce_range=not cpu_has_vnni(),
        )
    t_quant = time.perf_counter() - t0
    pairs = cached_pairs(info, GATE_PAIRS, GATE_SEED, threads)
    ref = _Reference.get(entry, model, info, pairs, has_tissue)
    if ref.record is not None:
        _append(
            progress,
            {
                "reference": ref.record,
                "export_s": round(t_export, 2),
                "quantize_s": round(t_quant, 2),
            },
        )
    ref_ms = (
        request.get("reference_ms") or (ref.record or {}).get("ms_per_cell_tile")
        if request.get("beat_reference", True)
        else None
    )

    def start(c: tuple[str, str]) -> None:
        _append(progress, {"start": list(c)})
        _maybe_crash(*c)

    # 1. time every path not timed yet: one after another, then the close ones by turns (ROUNDS)
    timed: dict[tuple[str, str], dict[str, Any]] = {
        (str(k.split()[0]), str(k.split()[1])): {n: x for n, x in v.items() if n != "status"}
        for k, v in request.get("timed", {}).items()
    }
    loaded: dict[tuple[str, str], CellFn] = {}  # kept loaded while in the running (memory)
    tissue_ms_of: dict[str, float] = {}  # a runtime's tissue graph is the same on each of its paths

    def fastest() -> float:
        return min((v["cell_ms"] for v in timed.values() if "cell_ms" in v), default=float("inf"))

    def time_once(c: tuple[str, str]) -> bool:
        start(c)
        try:
            ms = _time_batch(loaded[c], pairs, ref)
        except Exception as err:  # a path that fails is recorded, never fatal
            log.debug("%s %s failed:\n%s", *c, traceback.format_exc())
            _append(progress, {"result": list(c), "status": "failed", "error": _failed(err)})
            del loaded[c], timed[c]
            return False
        timed[c]["cell_ms"] = round(min(ms, timed[c].get("cell_ms", ms)), 1)
        _append(progress, {"timing": list(c)})  # the start above ended well
        return True

    def prune(within: float) -> None:
        for c in [c for c in loaded if timed[c]["cell_ms"] > within * fastest()]:
            del loaded[c]

    def time_first(c: tuple[str, str]) -> bool:
        """Load ``c``, warm it up and time one batch (its tissue graph too where its runtime's
        is not timed yet); False when it fails (recorded)."""
        start(c)
        runtime, precision = c
        int8_float = _int8_float_to_try(runtime, precision)[0]
        try:
            t0 = time.perf_counter()
            tissue_fn, cell_fn = _load(model, entry, runtime, precision, threads, int8_float)
            load_s = time.perf_counter() - t0
            first = has_tissue and runtime not in tissue_ms_of
            tissue_ms = _warm_up(tissue_fn, cell_fn, pairs, ref, first)
            if first:
                tissue_ms_of[runtime] = tissue_ms
        except Exception as err:  # a path that fails is recorded, never fatal
            log.debug("%s %s failed:\n%s", runtime, precision, traceback.format_exc())
            _append(progress, {"result": list(c), "status": "failed", "error": _failed(err)})
            return False
        loaded[c] = cell_fn
        timed[c] = {
            "load_s": round(load_s, 2),
            "tissue_ms": round(tissue_ms_of.get(runtime, 0.0), 1),
            **({"int8_float": int8_float} if int8_float else {}),
        }
        del tissue_fn, cell_fn
        return time_once(c)

    def report_timed() -> None:
        for c, v in timed.items():
            if c in candidates and "ms_per_cell_tile" not in v:
                v["ms_per_cell_tile"] = round(
                    per_cell_tile(v["cell_ms"], v["tissue_ms"], factor), 1
                )
                _append(progress, {"timed": list(c), **v})

    # ONNX Runtime's paths wait on OpenVINO's at their precision (auto mode)
    reserves = {
        c: other
        for c in candidates
        if mode == "auto" and c not in timed and (other := reserve_for(c, candidates))
    }

    def time_reserves(of: Callable[[tuple[str, str]], bool]) -> None:
        """Time the reserves whose OpenVINO path ``of`` says failed, each alone (the best of
        ROUNDS batches)."""
        for r in [r for r, other in reserves.items() if of(other)]:
            del reserves[r]
            if time_first(r):
                for _ in range(ROUNDS - 1):
                    if not time_once(r):
                        break
            loaded.clear()
            report_timed()

    for c in candidates:
        if c in timed or c in reserves:
            continue
        if time_first(c):
            prune(STAY_WITHIN[1])
    for within in STAY_WITHIN[1:ROUNDS]:
        prune(within)
        if len(loaded) < 2 and (
            ref_ms is None
            or all(
                per_cell_tile(timed[c]["cell_ms"], timed[c]["tissue_ms"], factor) * STAY_WITHIN[-1]
                < ref_ms
                for c in loaded
            )
        ):
            break  # one path left (and well ahead of fp32 torch): nothing to take turns with
        for c in list(loaded):
            time_once(c)
    loaded.clear()
    report_timed()
    time_reserves(lambda other: other not in timed)  # OpenVINO failed to build, load or time

    # 2. gate: every timed path ("each"), or fastest first until one keeps auto's margins ("auto")
    best_ms = request.get("best_ms")
    gated: set[tuple[str, str]] = set()
    tissue_out: dict[str, np.ndarray] = {}  # a runtime's tissue graph on the gate's contexts
    while True:
        todo = sorted(
            (c for c in timed if c in candidates and c not in gated),
            key=lambda c: timed[c]["ms_per_cell_tile"],
        )
        if mode == "auto":
            bar = min(x for x in (best_ms, ref_ms, float("inf")) if x is not None)
            todo = [c for c in todo if timed[c]["ms_per_cell_tile"] < bar]
        if not todo:
            break
        c = todo[0]
        gated.add(c)
        start(c)
        runtime, precision = c
        try:
            record = dict(timed[c])
            for int8_float in _int8_float_to_try(runtime, precision):
                t0 = time.perf_counter()
                fns = _load(model, entry, runtime, precision, threads, int8_float)
                load_s = time.perf_counter() - t0
                out, _, _ = _run_pairs(model, *fns, pairs, has_tissue, tissue_out.get(runtime))
                if out["tissue"] is not None:
                    tissue_out.setdefault(runtime, out["tissue"])
                fid = gate_fidelity(ref.points, ref.tissue, out["cell"], out["tissue"], info.peaks)
                if int8_float != record.get("int8_float"):  # another form than the one timed
                    _warm_up(*fns, pairs, ref, False)
                    cell_ms = min(_time_batch(fns[1], pairs, ref) for _ in range(ROUNDS))
                    record.update(
                        load_s=round(load_s, 2),
                        cell_ms=round(cell_ms, 1),
                        ms_per_cell_tile=round(
                            per_cell_tile(cell_ms, record["tissue_ms"], factor), 1
                        ),
                        int8_float=int8_float,
                    )
                if fid["passes"]:
                    break
            result = {**record, "status": "ok", "fidelity": fid}
        except Exception as err:
            log.debug("%s %s failed:\n%s", runtime, precision, traceback.format_exc())
            result = {"status": "failed", "error": _failed(err)}
        _append(progress, {"result": list(c), **result})
        if result["status"] == "ok":  # its speed as gated (another int8 form may have been timed)
            timed[c] = {k: v for k, v in result.items() if k not in ("status", "fidelity")}
        if mode == "auto" and auto_may_take(result):
            ms = result["ms_per_cell_tile"]
            best_ms = ms if best_ms is None else min(best_ms, ms)
        elif mode == "auto" and reserve_may_pass(result):  # failed, or missed auto's margins
            time_reserves(c.__eq__)  # by little: its reserve (same graph) is timed now
    for c, other in reserves.items():
        _append(
            progress,
            {"result": list(c), "status": "reserve", "reserve_for": f"{other[0]} {other[1]}"},
        )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    build(json.loads(Path(args[0]).read_text(encoding="utf-8")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
