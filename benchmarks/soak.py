"""Soak run: a cohort of small slides, a tenth of them faulty, run with `wsi-ocelot run`, killed
with SIGKILL at random moments and resumed each time, then checked against a clean run.

Faults (equal shares of the faulty tenth): a missing file, a truncated file, a corrupt JPEG tile
in the tissue (done with its unreadable-tile count under ``--max-unreadable 0.5``), no MPP
(fails), glass only (done, zero cells). Good slides are 512² px synthetic slides at 0.25 µm/px
run with a tiny untrained-but-tilted ResNet-18 checkpoint on 256 px tiles (nine cell tiles a
slide), one torch thread, tiles read in-process: outputs are bit-identical between runs.

Checks: every good slide done exactly once over all the runs (one "done" line in ``run.log``,
its folder never rewritten after it was recorded) with outputs identical to the clean run's
(cells.geojson, tissue.geojson, overview.png, the Zarr cell columns and tissue map, purity.json
less its timings); every faulty one failed with its reason, done with its count, or (a missing or
truncated file: not a slide) listed once as not run and never recorded as a slide; no partial
folders left; the manifest valid after every kill.

    python benchmarks/soak.py --slides 200 --kills 3        # writes benchmarks/results/soak.{json,md}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
FAULTS = ("missing", "truncated", "corrupt_tile", "no_mpp", "glass")


def make_checkpoint(path: Path) -> Path:
    import torch

    from wsi_ocelot.config import GeometryConfig
    from wsi_ocelot.inference import PeakConfig
    from wsi_ocelot.model import ModelConfig, build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="resnet18", decoder_channels=64))
    with torch.no_grad():  # tilt the untrained head so that peaks appear
        model.cell.head[0].bias.copy_(torch.tensor([-1.0, 0.5, 0.5]))
    save_checkpoint(
        path,
        model,
        geometry=GeometryConfig(tile_size=256, cell_margin=16, tissue_margin=32),
        peaks=PeakConfig(),
    )
    return path


def make_cohort(root: Path, n: int, seed: int = 0) -> dict[str, str]:
    """``n`` slides in ``root/slides`` (missing ones are only listed); returns slide id → kind
    (``good`` or a fault), the faulty tenth spread through the batch at random."""
    from wsi_ocelot.synthetic import write_synthetic_slide
    from wsi_ocelot.synthetic.tiff import corrupt_tile, write_pyramidal_tiff

    folder = root / "slides"
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"slide_{i:04d}" for i in range(n)]
    kinds = dict.fromkeys(ids, "good")
    for j, sid in enumerate(random.Random(seed).sample(ids, max(len(FAULTS), n // 10))):
        kinds[sid] = FAULTS[j % len(FAULTS)]
    for i, (sid, kind) in enumerate(sorted(kinds.items())):
        path = folder / f"{sid}.tiff"
        if kind == "missing" or path.exists():
            continue
        if kind == "glass":
            write_synthetic_slide(path, mpp=0.25, size=(512, 512), seed=1000 + i, empty=True)
        elif kind == "no_mpp":
            write_pyramidal_tiff(path, np.full((512, 512, 3), 200, np.uint8), None)
        else:
            write_synthetic_slide(path, mpp=0.25, size=(512, 512), seed=1000 + i)
            if kind == "truncated":
                data = path.read_bytes()
                path.write_bytes(data[: len(data) // 2])
            elif kind == "corrupt_tile":
                corrupt_tile(path, 256, 256)
        for side in folder.glob(f"{sid}.*"):  # ground-truth files beside the slide are not inputs
            if side.suffix != ".tiff":
                side.unlink()
    return kinds


def _inputs(root: Path, kinds: dict[str, str]) -> list[str]:
    return [str(root / "slides")] + [
        str(root / "slides" / f"{sid}.tiff") for sid, k in kinds.items() if k == "missing"
    ]


def _cmd(root: Path, kinds: dict[str, str], out: Path, ckpt: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "wsi_ocelot",
        "run",
        *_inputs(root, kinds),
        "--out",
        str(out),
        "--model",
        str(ckpt),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--threads",
        "1",
        "--batch-size",
        "4",
        "--max-unreadable",
        "0.5",
        "--no-progress",
        "--no-report",
    ]


def _digest(folder: Path) -> dict[str, str]:
    """The outputs that must match a clean run's, each as a hash."""
    from wsi_ocelot.outputs import open_predictions

    out = {}
    for name in ("cells.geojson", "tissue.geojson", "overview.png"):
        out[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    purity = json.loads((folder / "purity.json").read_text())
    purity.pop("runtime_s", None)
    out["purity.json"] = hashlib.sha256(json.dumps(purity, sort_keys=True).encode()).hexdigest()
    with open_predictions(folder / "predictions.zarr") as store:
        cells = store.cells()
        h = hashlib.sha256()
        for k in sorted(cells):
            h.update(np.ascontiguousarray(cells[k]).tobytes())
        out["cells"] = h.hexdigest()
        out["tissue"] = hashlib.sha256(np.ascontiguousarray(store.tissue()).tobytes()).hexdigest()
    return out


def _done_lines(log: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    if log.exists():
        for m in re.finditer(r"\] (\S+): done,", log.read_text(encoding="utf-8", errors="replace")):
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def soak(
    root: Path, n: int, kills: int, seed: int = 0, env: dict[str, str] | None = None
) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    ckpt = root / "tiny.safetensors"
    if not ckpt.exists():
        make_checkpoint(ckpt)
    t0 = time.perf_counter()
    kinds = make_cohort(root, n, seed)
    t_make = time.perf_counter() - t0
    env = {**os.environ, **(env or {})}
    rng = random.Random(seed + 1)

    clean, soaked = root / "clean", root / "soak"
    for d in (clean, soaked):
        shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run(_cmd(root, kinds, clean, ckpt), capture_output=True, text=True, env=env)
    t_clean = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"the clean run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")

    # the soaked run: killed `kills` times at random moments, resumed after each
    runs: list[dict[str, Any]] = []
    recorded: dict[str, int] = {}  # slide → purity.json mtime when first seen done in the manifest
    problems: list[str] = []
    for k in range(kills + 1):
        t_start = time.perf_counter()
        p = subprocess.Popen(
            _cmd(root, kinds, soaked, ckpt),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        if k < kills:
            delay = rng.uniform(0.15, 0.85) * t_clean / max(1, kills - k)
            try:
                p.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            killed = p.returncode == -signal.SIGKILL
        else:
            p.wait()
            killed = False
        err = p.stderr.read() if p.stderr else ""
        runs.append(
            {
                "killed": killed,
                "after_s": round(time.perf_counter() - t_start, 2),
                "returncode": p.returncode,
            }
        )
        # after every run: the manifest is valid JSON and done slides are never rewritten
        mf = soaked / "manifest.json"
        if mf.exists():
            try:
                slides = json.loads(mf.read_text())["slides"]
            except (ValueError, KeyError) as exc:
                problems.append(f"run {k}: manifest unreadable ({exc})")
                slides = {}
            for sid, rec in slides.items():
                if rec.get("status") == "done":
                    m = (soaked / sid / "purity.json").stat().st_mtime_ns
                    if recorded.setdefault(sid, m) != m:
                        problems.append(f"{sid}: done earlier, rewritten in run {k}")
        if not killed and p.returncode not in (0, 1):
            problems.append(f"run {k}: exit {p.returncode}: {err[-500:]}")
    wall = time.perf_counter() - t0 - t_clean

    manifest = json.loads((soaked / "manifest.json").read_text())
    slides = manifest["slides"]
    # inputs that are not slides (missing, truncated) are reported before any slide and never
    # recorded as slides: the last run lists them, one line each
    not_run = [str(x) for x in (manifest.get("last_run") or {}).get("not_run") or []]
    clean_slides = json.loads((clean / "manifest.json").read_text())["slides"]
    done_lines = _done_lines(soaked / "run.log")
    n_identical = 0
    for sid, kind in kinds.items():
        rec = slides.get(sid, {})
        if kind in ("good", "glass", "corrupt_tile"):
            if rec.get("status") != "done":
                problems.append(f"{sid} ({kind}): {rec.get('status')} ({rec.get('error')})")
                continue
            if done_lines.get(sid) != 1:
                problems.append(f"{sid}: done {done_lines.get(sid, 0)} times in run.log")
            if _digest(soaked / sid) != _digest(clean / sid):
                problems.append(f"{sid}: outputs differ from the clean run's")
            else:
                n_identical += 1
            if kind == "glass" and not (
                rec.get("n_cells") == 0 and "no tissue" in str(rec.get("purity_reason"))
            ):
                problems.append(f"{sid}: glass without the no-tissue reason")
            if kind == "corrupt_tile" and not rec.get("n_unreadable_tiles"):
                problems.append(f"{sid}: corrupt tile not counted")
        elif kind in ("missing", "truncated"):
            want = {"missing": "no such file", "truncated": "truncated"}[kind]
            lines = [ln for ln in not_run if f"{sid}.tiff" in ln]
            if sid in slides or len(lines) != 1 or want not in lines[0] or "Fix:" not in lines[0]:
                problems.append(f"{sid} ({kind}): {rec.get('status')}; not run: {lines}")
        else:
            want = {"no_mpp": "--mpp"}[kind]
            if (
                rec.get("status") != "failed"
                or want not in str(rec.get("error"))
                or "Fix:" not in str(rec.get("error"))
            ):
                problems.append(f"{sid} ({kind}): {rec.get('status')}: {rec.get('error')}")
        if clean_slides.get(sid, {}).get("status") != rec.get("status"):
            problems.append(
                f"{sid}: {rec.get('status')} here, {clean_slides.get(sid, {}).get('status')} in the clean run"
            )
    partials = [p.name for p in soaked.iterdir() if p.name.startswith(".") and p.is_dir()]
    if partials:
        problems.append(f"partial folders left: {partials}")
    by_kind = {k: sum(1 for v in kinds.values() if v == k) for k in ("good", *FAULTS)}
    return {
        "slides": n,
        "by_kind": by_kind,
        "kills": kills,
        "runs": runs,
        "make_s": round(t_make, 1),
        "clean_run_s": round(t_clean, 1),
        "soak_runs_s": round(wall, 1),
        "identical_to_clean": n_identical,
        "done": sum(1 for r in slides.values() if r.get("status") == "done"),
        "failed": sum(1 for r in slides.values() if r.get("status") == "failed"),
        "not_run": len(not_run),
        "unreadable_tiles": {
            sid: slides[sid].get("n_unreadable_tiles")
            for sid, k in kinds.items()
            if k == "corrupt_tile"
        },
        "partial_folders": partials,
        "problems": problems,
        "ok": not problems,
    }


def write_markdown(r: dict[str, Any], path: Path) -> None:
    kills = [x for x in r["runs"] if x["killed"]]
    lines = [
        "# Soak run: a cohort killed and resumed",
        "",
        f"Machine: {r['machine']}. Produced by `python benchmarks/soak.py --slides {r['slides']} --kills {r['kills']}` "
        f"on {r['date']}.",
        "",
        f"{r['slides']} slides (512² px, 0.25 µm/px; tiny ResNet-18 checkpoint on 256 px tiles, CPU, one thread): "
        + ", ".join(f"{v} {k}" for k, v in r["by_kind"].items())
        + ". "
        f"A clean run took {r['clean_run_s']} s. The soaked run was SIGKILLed {len(kills)} time(s), after "
        + ", ".join(f"{x['after_s']} s" for x in kills)
        + " of its runs, and resumed each time "
        f"({len(r['runs'])} runs, {r['soak_runs_s']} s in all).",
        "",
        "| check | result |",
        "| --- | --- |",
        f"| slides done (good, glass, corrupt tile) | {r['done']} |",
        f"| their outputs identical to the clean run's | {r['identical_to_clean']} |",
        f"| slides failed with their reason (no MPP) | {r['failed']} |",
        f"| inputs not run, each named in one line (missing, truncated) | {r['not_run']} |",
        f"| corrupt-tile slides' unreadable tiles | {', '.join(str(v) for v in r['unreadable_tiles'].values())} |",
        f"| partial folders left | {len(r['partial_folders'])} |",
        f"| problems | {len(r['problems'])} |",
        "",
        "**All checks passed.**"
        if r["ok"]
        else "Problems:\n\n" + "\n".join(f"- {p}" for p in r["problems"]),
        "",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slides", type=int, default=200)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/wsi-ocelot-soak")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    from wsi_ocelot.sysinfo import describe_machine

    r = soak(Path(args.workdir), args.slides, args.kills, args.seed)
    r["machine"] = describe_machine("cpu")
    r["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "soak.json").write_text(json.dumps(r, indent=2) + "\n")
        write_markdown(r, RESULTS / "soak.md")
    print(
        json.dumps(
            {
                k: r[k]
                for k in ("ok", "done", "failed", "not_run", "identical_to_clean", "problems")
            },
            indent=2,
        )
    )
    sys.exit(0 if r["ok"] else 1)


if __name__ == "__main__":
    main()
