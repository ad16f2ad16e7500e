"""Which runtime and precision run a model's forward pass here, built once and gated on
fidelity (docs/runtimes.md).

``auto`` on the CPU builds the candidate paths for this checkpoint (in a child process, cached
by checkpoint, versions and CPU), measures each one's speed and its fidelity against fp32
torch on synthetic tiles at the model's geometry, and takes the fastest that keeps
:data:`~wsi_ocelot.inference.runtimes.spec.FIDELITY` with auto's margins (cells F1, tumour
share). A path that is missing, fails to build or load, or crashes its child falls back (to the
next candidate, at worst fp32 torch) with one warning line; nothing a runtime does can take
down a slide or a batch. On CUDA, torch runs bf16 autocast (fp32 with ``--precision fp32``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from wsi_ocelot.errors import ConfigError, WsiOcelotError
from wsi_ocelot.inference.runtimes.backends import Backend, open_backend, require_runtime
from wsi_ocelot.inference.runtimes.cache import CacheEntry, graph_files, key_material
from wsi_ocelot.inference.runtimes.graphs import injection_size
from wsi_ocelot.inference.runtimes.spec import (
    PRECISIONS,
    RUNTIMES,
    SUPPORTED,
    RuntimeChoice,
    auto_may_take,
    cpu_has_bf16,
    reserve_for,
    runtime_version,
)
from wsi_ocelot.model.checkpoint import CheckpointInfo
from wsi_ocelot.sysinfo import cpu_model
from wsi_ocelot.weights import file_sha256

log = logging.getLogger(__name__)

__all__ = ["check_runtime_here", "check_runtime_options", "choose_runtime"]

BUILD_TIMEOUT_S = 1800


def check_runtime_options(runtime: str, precision: str) -> None:
    """The spelling of ``--runtime`` / ``--precision`` (one line each)."""
    if runtime not in RUNTIMES:
        raise ConfigError(None, f"unknown runtime {runtime!r}", f"use one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise ConfigError(
            None, f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}"
        )
    if runtime != "auto" and precision not in ("auto", *SUPPORTED[runtime]):
        raise ConfigError(
            None,
            f"--runtime {runtime} has no {precision} path",
            f"use --precision {' or '.join(SUPPORTED[runtime])} (or auto) with it",
        )


def site_defaults(runtime: str, precision: str) -> tuple[str, str]:
    """``auto`` as this environment means it: ``WSI_OCELOT_RUNTIME`` / ``WSI_OCELOT_PRECISION``
    where set (a site's or a cluster's default), else ``auto``."""
    check_runtime_options(runtime, precision)
    if runtime == "auto":
        runtime = os.environ.get("WSI_OCELOT_RUNTIME") or runtime
    if precision == "auto":
        precision = os.environ.get("WSI_OCELOT_PRECISION") or precision
    check_runtime_options(runtime, precision)
    return runtime, precision


def check_runtime_here(runtime: str, precision: str, device: torch.device) -> None:
    """The checks that need no model: the spelling, the runtime imports, bf16 on a CPU without
    it, a CPU runtime or int8 on a GPU. One line each, before any slide (``cohort/batch.py``)."""
    runtime, precision = site_defaults(runtime, precision)
    if device.type == "cuda":
        _cuda_choice(device, runtime, precision, True)
        return
    if precision == "bf16" and not cpu_has_bf16():
        raise WsiOcelotError(
            None,
            "--precision bf16 asked for, but this CPU has no bf16 instructions (AVX-512 BF16 or AMX): it would run emulated, many times slower than fp32",
            "use --precision auto, fp32 or int8",
        )
    if runtime not in ("auto", "torch"):
        require_runtime(runtime)


def _cuda_choice(device: torch.device, runtime: str, precision: str, amp: bool) -> RuntimeChoice:
    if runtime not in ("auto", "torch"):
        raise WsiOcelotError(
            None,
            f"--runtime {runtime} runs on the CPU, and the device is {device}",
            "use --runtime torch (or auto) on a GPU, or --device cpu",
        )
    if precision == "int8":
        raise WsiOcelotError(
            None, "--precision int8 is a CPU path", "use --precision bf16, fp32 or auto on a GPU"
        )
    prec = "bf16" if precision == "bf16" or (precision == "auto" and amp) else "fp32"
    return RuntimeChoice(
        "torch",
        prec,
        torch.__version__,
        torch.cuda.get_device_name(device),
        None,
        "CUDA: bf16 autocast, channels-last" if prec == "bf16" else "CUDA: fp32 as asked",
    )


def _candidates(runtime: str, precision: str, bf16: bool) -> list[tuple[str, str]]:
    order = [
        ("openvino", "int8"),
        ("openvino", "bf16"),
        ("openvino", "fp32"),
        ("onnxruntime", "int8"),
        ("onnxruntime", "fp32"),
        ("torch", "bf16"),
        ("torch", "fp32"),
    ]
    out = []
    for rt, prec in order:
        if runtime not in ("auto", rt) or precision not in ("auto", prec):
            continue
        if prec == "bf16" and not bf16:
            continue
        if (rt, prec) == ("torch", "bf16") and runtime == "torch" and precision == "auto":
            continue  # --runtime torch alone: torch's own default, fp32 on the CPU (bf16 autocast on CUDA)
        if runtime == "auto" and rt != "torch" and runtime_version(rt) is None:
            continue
        if (
            (rt, prec) == ("torch", "bf16")
            and runtime == precision == "auto"
            and (("openvino", "bf16") in out)
        ):
            # OpenVINO runs the same precision faster (end to end 1.7x on the demo, 1.8x on the
            # ResNet-34; benchmarks/results/runtime.md): gating torch bf16 as well cost auto's
            # first build ~10 s for the demo (first demo 110-112 s -> 100-107 s) and, by its gate
            # times, ~45 s for the ResNet-34. Asked for by name, it is built then.
            continue
        out.append((rt, prec))
    return out


def _run_children(
    entry: CacheEntry,
    checkpoint: str,
    missing: list[tuple[str, str]],
    threads: int,
    mode: str,
    known: dict[str, Any],
    beat_reference: bool,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Time and gate ``missing`` in child processes (``build.py``; ``mode`` ``"auto"`` or
    ``"each"``; ``known``: the entry's ``build.json``; ``beat_reference``: fp32 torch is a
    candidate, so ``auto`` gates only paths faster than it); a child that dies marks the path it was
    on as crashed and a new child goes on with the rest. A path timed but left ungated by an
    ``auto`` build is recorded ``timed``."""
    results: dict[tuple[str, str], dict[str, Any]] = {}
    timed: dict[tuple[str, str], dict[str, Any]] = {
        c: rec
        for c in missing
        if (rec := known["paths"].get(f"{c[0]} {c[1]}", {})).get("status") == "timed"
    }
    reference: dict[str, Any] = {}
    todo = list(missing)
    with tempfile.TemporaryDirectory(prefix="wsi-ocelot-build-") as tmp:
        while todo:
            progress = Path(tmp) / f"progress-{len(results)}.jsonl"
            request = Path(tmp) / "request.json"
            paths = {**known["paths"], **{f"{r} {p}": v for (r, p), v in results.items()}}
            request.write_text(
                json.dumps(
                    {
                        "checkpoint": checkpoint,
                        "entry_dir": str(entry.dir),
                        "progress": str(progress),
                        "candidates": [list(c) for c in todo],
                        "mode": mode,
                        "beat_reference": beat_reference,
                        "timed": {f"{r} {p}": v for (r, p), v in timed.items() if (r, p) in todo},
                        "best_ms": min(
                            (_speed(v) for v in paths.values() if auto_may_take(v)), default=None
                        ),
                        "reference_ms": (
                            reference.get("reference") or known.get("reference") or {}
                        ).get("ms_per_cell_tile"),
                        "threads": threads,
                    }
                ),
                encoding="utf-8",
            )
            names = ", ".join(f"{r} {p}" for r, p in todo)
            if mode == "auto":
                first = [c for c in todo if not reserve_for(c, todo)]
                spare = [c for c in todo if reserve_for(c, todo)]
                names = ", ".join(f"{r} {p}" for r, p in first) + (
                    f" ({', '.join(f'{r} {p}' for r, p in spare)} only if openvino's fall short)"
                    if spare
                    else ""
                )
            log.info(
                "building %s for this model: timing %s, then checking %s against fp32 torch "
                "(once per checkpoint and machine)",
                "its runtimes" if mode == "auto" else names,
                names if mode == "auto" else "it",
                "the fastest" if mode == "auto" else "it",
            )
            # in a folder of its own: ONNX Runtime's shape inference leaves temporary files in the working directory
            rc, err_tail = _run_child(
                [sys.executable, "-m", "wsi_ocelot.inference.runtimes.build", str(request)],
                Path(tmp),
                progress,
            )
            started: tuple[str, str] | None = None
            lines = progress.read_text(encoding="utf-8").splitlines() if progress.exists() else []
            for line in lines:
                rec = json.loads(line)
                if "reference" in rec:
                    reference = rec
                elif "start" in rec:
                    started = (rec["start"][0], rec["start"][1])
                elif "timing" in rec:  # a timing batch ended well
                    started = None
                elif "timed" in rec:
                    timed[(rec["timed"][0], rec["timed"][1])] = {
                        k: v for k, v in rec.items() if k != "timed"
                    }
                    started = None
                elif "result" in rec:
                    key = (rec["result"][0], rec["result"][1])
                    results[key] = {k: v for k, v in rec.items() if k != "result"}
                    started = None
            if started is not None:  # the child died inside this path
                how = (
                    f"signal {signal.Signals(-rc).name}"
                    if rc < 0 and -rc in signal.Signals._value2member_map_
                    else f"exit {rc}"
                )
                # killed (the out-of-memory killer, our timeout) may not happen again: tried anew next time;
                # a fault (SIGFPE, SIGSEGV, SIGILL) in a runtime is this CPU's and version's: remembered
                results[started] = {
                    "status": "crashed",
                    "error": f"the build process died ({how}) in this path",
                    "transient": rc in (-signal.SIGKILL, -signal.SIGTERM),
                }
            elif rc != 0:  # died outside any path (export, calibration, reference): the rest failed
                for c in todo:
                    if c not in results:
                        results[c] = {
                            "status": "failed",
                            "error": err_tail[:300] or f"the build process exited {rc}",
                        }
            todo = [c for c in todo if c not in results]
            if rc == 0 and todo:  # the rest were timed, not gated (auto), or not reported
                for c in todo:
                    results[c] = (
                        {"status": "timed", **timed[c]}
                        if mode == "auto" and c in timed
                        else {"status": "failed", "error": "no result from the build process"}
                    )
                todo = []
    if reference:
        results[("reference", "")] = reference
    return results


def _run_child(cmd: list[str], folder: Path, progress: Path) -> tuple[int, str]:
    """Run one build child in ``folder``, logging its progress lines as they come (a first build
    takes a minute or more); returns its exit code (-9 past ``BUILD_TIMEOUT_S``) and the last
    line of its stderr. The child never outlives this call (Ctrl-C included)."""
    seen = 0

    def report() -> None:
        nonlocal seen
        try:
            lines = progress.read_text(encoding="utf-8").splitlines()
        except OSError:
            return
        for line in lines[seen:]:
            try:
                rec = json.loads(line)
            except ValueError:  # a line being written: read again next time
                break
            seen += 1
            _log_progress(rec)

    deadline = time.monotonic() + BUILD_TIMEOUT_S
    with open(folder / "stderr.txt", "w+", encoding="utf-8") as err:
        proc = subprocess.Popen(cmd, cwd=folder, stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    report()
                    if time.monotonic() > deadline:
                        proc.kill()
                        proc.wait()
                        report()
                        return -9, f"the build took over {BUILD_TIMEOUT_S} s"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        report()
        err.seek(0)
        return rc, (err.read().strip().splitlines() or [""])[-1]


def _log_progress(rec: dict[str, Any]) -> None:
    """One progress record of a build child as a log line (what it measured)."""
    if "reference" in rec:
        log.info("  fp32 torch (the reference): %.0f ms per cell tile", _speed(rec["reference"]))
    elif "timed" in rec:
        log.info("  %s %s: %.0f ms per cell tile", *rec["timed"], _speed(rec))
    elif "result" in rec and rec.get("status") == "reserve":
        log.debug(
            "  %s %s not timed: the reserve of %s (docs/runtimes.md)",
            *rec["result"],
            rec["reserve_for"],
        )
    elif "result" in rec and rec.get("status") == "ok":
        log.info(
            "  %s %s against fp32 torch: %s", *rec["result"], _fid_text(rec.get("fidelity") or {})
        )
    elif "result" in rec:
        log.info("  %s %s %s: %s", *rec["result"], rec.get("status"), rec.get("error"))


def _entry_for(model: torch.nn.Module, info: CheckpointInfo, checkpoint: str) -> CacheEntry:
    tile = info.geometry.tile_size
    return CacheEntry(key_material(file_sha256(checkpoint), tile, injection_size(model, tile)))


def _settled(res: dict[str, Any] | None, mode: str) -> bool:
    """A path's record needs no build: any outcome but a transient crash, and for ``"each"``
    (a path asked for by name) not merely ``timed`` or a ``reserve`` (an ONNX Runtime path
    an ``auto`` build left untimed: ``spec.reserve_for``)."""
    return bool(
        res
        and not res.get("transient")
        and (mode == "auto" or res.get("status") not in ("timed", "reserve"))
    )


def gate_results(
    model: torch.nn.Module,
    info: CheckpointInfo,
    checkpoint: str,
    paths: list[tuple[str, str]],
    threads: int,
    mode: str = "each",
) -> tuple[CacheEntry, dict[str, Any]]:
    """The cache entry for this checkpoint here and its ``build.json`` with a record for every
    one of ``paths`` (built in child processes where missing). ``mode="each"`` gates every path;
    ``"auto"`` times them all and gates fastest first until one keeps auto's margins, leaving
    the slower ones ``timed``."""
    entry = _entry_for(model, info, checkpoint)
    with entry.locked():
        data = entry.read()
        missing = [
            c
            for c in paths
            if c != ("torch", "fp32") and not _settled(data["paths"].get(f"{c[0]} {c[1]}"), mode)
        ]
        if missing or "reference" not in data:
            built = _run_children(
                entry, checkpoint, missing, threads, mode, data, ("torch", "fp32") in paths
            )
            if ("reference", "") in built:
                ref = built.pop(("reference", ""))
                # computed with the reference outputs it saved (reference.npz): the record of that run
                data["reference"] = {
                    **ref["reference"],
                    "export_s": ref.get("export_s"),
                    "quantize_s": ref.get("quantize_s"),
                }
            for (rt, prec), res in built.items():
                data["paths"][f"{rt} {prec}"] = res
            entry.write(data)
    return entry, data


def _speed(res: dict[str, Any]) -> float:
    return float(res.get("ms_per_cell_tile") or float("inf"))


def choose_runtime(
    model: torch.nn.Module,
    info: CheckpointInfo,
    checkpoint: str,
    device: torch.device,
    runtime: str = "auto",
    precision: str = "auto",
    *,
    two_pass: bool = True,
    amp: bool = True,
    threads: int | None = None,
) -> tuple[RuntimeChoice, Backend | None]:
    """The path this model runs here and, for OpenVINO or ONNX Runtime, its loaded backend
    (None: torch runs it, at the returned precision). ``auto`` means the environment's
    ``WSI_OCELOT_RUNTIME`` / ``WSI_OCELOT_PRECISION`` where set (a site's or a cluster's
    default), else the choice described in the module's docstring."""
    runtime, precision = site_defaults(runtime, precision)
    if device.type == "cuda":
        return _cuda_choice(device, runtime, precision, amp), None
    threads = threads or torch.get_num_threads()
    bf16 = cpu_has_bf16()
    torch_fp32 = RuntimeChoice("torch", "fp32", torch.__version__, cpu_model(), threads, "")
    check_runtime_here(runtime, precision, device)
    if not two_pass:
        if runtime not in ("auto", "torch") or precision == "int8":
            raise WsiOcelotError(
                None,
                "this model runs the per-tile path, which only torch runs",
                "use --runtime torch (or auto) and --precision fp32 or auto",
            )
        prec = "bf16" if precision == "bf16" else "fp32"
        return RuntimeChoice(
            "torch", prec, torch.__version__, cpu_model(), threads, "per-tile path: torch only"
        ), None
    candidates = _candidates(runtime, precision, bf16)
    if candidates == [("torch", "fp32")]:
        why = (
            "asked for" if runtime == "torch" and precision == "fp32" else "the only path asked for"
        )
        return RuntimeChoice(**{**torch_fp32.to_json(), "reason": why}), None
    explicit = runtime != "auto" and precision != "auto"
    mode = "each" if explicit else "auto"
    try:
        entry, data = gate_results(model, info, checkpoint, candidates, threads, mode)
    except (OSError, RuntimeError) as err:  # an unwritable cache, a child that cannot start
        log.warning("warning: the runtime cache could not be built (%s); running fp32 torch", err)
        return RuntimeChoice(**{**torch_fp32.to_json(), "reason": f"fallback: {err}"}), None
    ref_ms = _speed(data.get("reference", {}))

    def records() -> dict[tuple[str, str], dict[str, Any]]:
        return {
            c: data["paths"].get(f"{c[0]} {c[1]}", {}) for c in candidates if c != ("torch", "fp32")
        }

    results = records()
    broken = {c: r for c, r in results.items() if r.get("status") not in ("ok", "timed", "reserve")}
    if explicit:
        c = candidates[0]
        res: dict[str, Any] = results.get(c, {}) if c != ("torch", "fp32") else {"status": "ok"}
        if res.get("status") != "ok":
            log.warning(
                "warning: %s %s does not run here (%s); running fp32 torch instead",
                c[0],
                c[1],
                res.get("error"),
            )
            return RuntimeChoice(
                **{**torch_fp32.to_json(), "reason": f"fallback: {c[0]} {c[1]} {res.get('status')}"}
            ), None
        if not res.get("fidelity", {}).get("passes", True):
            log.warning(
                "warning: %s %s misses the fidelity gate on this model (%s); running it because you asked",
                c[0],
                c[1],
                _fid_text(res["fidelity"]),
            )
        if c[0] == "torch":  # nothing to load: torch runs it at this precision
            return RuntimeChoice(
                "torch",
                c[1],
                torch.__version__,
                cpu_model(),
                threads,
                "asked for",
                res.get("fidelity"),
            ), None
        loaded = _load_choice(c, res, entry, threads, "asked for")
        if loaded is None:
            return RuntimeChoice(
                **{**torch_fp32.to_json(), "reason": f"fallback: {c[0]} {c[1]} failed to load"}
            ), None
        return loaded
    if broken:
        log.warning(
            "warning: %s not usable here (%s); choosing among the rest",
            ", ".join(f"{r} {p}" for r, p in broken),
            "; ".join(f"{r} {p}: {v.get('error')}" for (r, p), v in broken.items()),
        )
    unloaded: list[str] = []  # faster paths that raised at load (fp32 torch is then a fallback)
    while True:
        faster = sorted(
            (
                c
                for c, r in results.items()
                if f"{c[0]} {c[1]}" not in unloaded
                and r.get("status") in ("ok", "timed")
                and (_speed(r) < ref_ms or ("torch", "fp32") not in candidates)
            ),
            key=lambda c: _speed(results[c]),
        )
        ok = [c for c in faster if auto_may_take(results[c])]
        if not ok:
            # only ungated paths are left faster (the gated ones failed to load): gate them, and
            # when none are, the reserves (ONNX Runtime's, left untimed while OpenVINO's passed)
            ungated = [c for c in faster if results[c].get("status") == "timed"] or [
                c for c, r in results.items() if r.get("status") == "reserve"
            ]
            if not ungated:
                break
            try:
                entry, data = gate_results(model, info, checkpoint, ungated, threads, "each")
            except (OSError, RuntimeError) as err:
                log.warning(
                    "warning: %s could not be gated (%s)",
                    ", ".join(f"{r} {p}" for r, p in ungated),
                    err,
                )
                break
            results = records()
            continue
        c = ok[0]
        res = results[c]
        why = (
            f"auto: fastest within the fidelity gate here ({_speed(res):.0f} ms per cell tile, "
            f"fp32 torch {ref_ms:.0f})"
        )
        if c[0] == "torch":  # torch bf16: nothing to load
            return RuntimeChoice(
                c[0], c[1], torch.__version__, cpu_model(), threads, why, res.get("fidelity")
            ), None
        loaded = _load_choice(c, res, entry, threads, why)
        if loaded is not None:
            return loaded
        unloaded.append(f"{c[0]} {c[1]}")
    if ("torch", "fp32") not in candidates:
        # --precision int8 or bf16 (or --runtime openvino / onnxruntime) alone: no path of it keeps
        # auto's margins (or loaded). That was asked for: its fastest path that keeps the gate runs,
        # as a path asked for by name would; without one, fp32 torch; either way one warning
        what = precision if precision != "auto" else runtime  # int8, bf16, openvino, ...
        kept = sorted(
            (
                c
                for c, r in results.items()
                if f"{c[0]} {c[1]}" not in unloaded
                and r.get("status") == "ok"
                and (r.get("fidelity") or {}).get("passes")
            ),
            key=lambda c: _speed(results[c]),
        )
        if kept:
            log.warning(
                "warning: no %s path keeps auto's margins on this model; running the fastest that "
                "keeps the fidelity gate, %s %s (%s)",
                what,
                *kept[0],
                _fid_text(results[kept[0]]["fidelity"]),
            )
        why = f"{what} asked for: fastest within the fidelity gate here, not within auto's margins"
        for c in kept:
            res = results[c]
            if c[0] == "torch":
                return RuntimeChoice(
                    c[0], c[1], torch.__version__, cpu_model(), threads, why, res.get("fidelity")
                ), None
            loaded = _load_choice(c, res, entry, threads, why)
            if loaded is not None:
                return loaded
            unloaded.append(f"{c[0]} {c[1]}")
        log.warning(
            "warning: no %s path keeps the fidelity gate and loads here; running fp32 torch", what
        )
        reason = f"fallback: no {what} path keeps the fidelity gate and loads"
        return RuntimeChoice(**{**torch_fp32.to_json(), "reason": reason}), None
    reason = (
        f"fallback: {', '.join(unloaded)} failed to load"
        if unloaded
        else "auto: no faster path keeps the fidelity gate"
    )
    return RuntimeChoice(**{**torch_fp32.to_json(), "reason": reason}), None


def _load_choice(
    c: tuple[str, str], res: dict[str, Any], entry: CacheEntry, threads: int, why: str
) -> tuple[RuntimeChoice, Backend | None] | None:
    """Load the backend of an OpenVINO or ONNX Runtime path: its choice and backend, or None
    (with one warning line) when the runtime raises."""
    try:
        backend = open_backend(
            c[0], c[1], graph_files(entry.dir, c[1]), threads, res.get("int8_float")
        )
    except Exception as err:  # a runtime that raises at load: the caller falls back
        log.warning(
            "warning: %s %s failed to load (%s: %s); %s",
            c[0],
            c[1],
            type(err).__name__,
            err,
            "running fp32 torch" if why == "asked for" else "trying the next path",
        )
        return None
    return RuntimeChoice(
        c[0],
        c[1],
        runtime_version(c[0]) or "?",
        cpu_model(),
        threads,
        why,
        res.get("fidelity"),
        res.get("int8_float"),
    ), backend


def _fid_text(fid: dict[str, Any]) -> str:
    parts = [f"cells F1 {fid.get('cells_f1')}"]
    if "purity_delta" in fid:
        parts.append(f"tumour share {fid['purity_delta']:+.4f}")
    if "tissue_mean_abs" in fid:
        parts.append(
            f"tissue map mean |diff| {fid['tissue_mean_abs']}/255, cancer-area agreement {fid['ca_agreement']}"
        )
    return ", ".join(parts)


def describe(choice: RuntimeChoice) -> str:
    """One line for the log: ``openvino 2026.4.1 int8 on AMD EPYC, 2 threads (auto: ...)``."""
    threads = f", {choice.threads} thread(s)" if choice.threads else ""
    return f"{choice.label()} on {choice.processor}{threads} ({choice.reason})"
