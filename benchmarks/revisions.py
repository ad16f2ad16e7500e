"""Run the engine of another git revision beside this working tree's, and compare results.

Used by ``bench_host.py`` (before and after the host-throughput change) and
``compare_revisions.py`` (outputs unchanged by a refactor).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# the real model on a slide, in the engine of `src` (a child process)
REAL = r"""
import json, sys, torch
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
import wsi_ocelot
import wsi_ocelot.inference.engine as eng
assert wsi_ocelot.__file__.startswith(a["src"])
kw = {"border_reach_um": a["reach"]} if a.get("reach") is not None else {}
if a.get("margin") is not None:
    kw["cell_margin"] = a["margin"]
import dataclasses
if "runtime" in {f.name for f in dataclasses.fields(eng.EngineConfig)}:  # revisions with runtimes: the eager fp32 path, as before them
    kw.update(runtime="torch", precision="fp32")
res = eng.SlideRunner("demo", eng.EngineConfig(device="cpu", workers=2, batch_size=8, progress=False, **kw)).run(a["slide"], a["out"])
print(json.dumps({"out": str(res.out_dir), "timings": res.timings}))
"""


def run_child(code: str, src: Path, args: dict, timeout: int = 3600) -> dict:
    """Run ``code`` in a fresh Python whose ``wsi_ocelot`` is the one in ``src``; ``args`` is its
    ``sys.argv[1]`` (JSON, with ``src`` added); returns the JSON of its last output line."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    # run in the source folder: "python -c" puts the working folder first on sys.path
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps({**args, "src": str(src)})],
        env=env,
        cwd=src,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode:
        raise RuntimeError(f"child failed ({src}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def checkout(rev: str, dest: Path) -> Path:
    """The package of git revision ``rev`` (its ``wsi_ocelot/``) unpacked under ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "wsi_ocelot"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_real(
    src: Path,
    slide: Path,
    out: Path,
    *,
    threads: int = 2,
    reach: float | None = None,
    margin: int | None = None,
) -> Path:
    """Run the demo model on ``slide`` with the engine in ``src``; return the result folder."""
    return Path(
        run_child(
            REAL,
            src,
            {
                "slide": str(slide),
                "out": str(out),
                "threads": threads,
                "reach": reach,
                "margin": margin,
            },
        )["out"]
    )


def _differing(ja: dict, jb: dict) -> dict:
    """purity.json values of ``ja`` that ``jb`` has otherwise (runtimes and the model file's
    location, which differ between checkouts, left out)."""

    def norm(d: dict) -> dict:
        return {
            **d,
            "runtime_s": None,
            "model": {k: v for k, v in (d.get("model") or {}).items() if k != "path"},
        }

    na, nb = norm(ja), norm(jb)
    return {k: [v, nb.get(k)] for k, v in na.items() if nb.get(k) != v}


def compare_results(a: Path, b: Path, mpp: float) -> dict:
    from wsi_ocelot.metrics import match_by_class
    from wsi_ocelot.outputs import open_predictions

    def cells(d: Path) -> np.ndarray:
        with open_predictions(d / "predictions.zarr") as s:
            c = s.cells()
        return np.stack([c["x"], c["y"], c["class"], c["prob"]], 1).astype(np.float64)

    pa, pb = cells(a), cells(b)
    tp = sum(len(r.pairs) for r in match_by_class(pb, pa, radius=3.0 / mpp).values())
    f1 = 2 * tp / max(1, len(pa) + len(pb))

    def tissue(
        d: Path,
    ) -> np.ndarray:  # tissue.ome.zarr, or predictions.zarr/tissue of older revisions
        with open_predictions(d / "predictions.zarr") as s:
            return np.asarray(s.tissue(0)[:], np.int16)

    ta, tb = tissue(a), tissue(b)
    ja, jb = (json.loads((d / "purity.json").read_text()) for d in (a, b))
    keys = ("purity", "purity_in_cancer_area", "tissue_area_mm2", "cancer_area_mm2")
    same_cells = pa.shape == pb.shape and bool(np.array_equal(pa, pb))
    return {
        "cells": [len(pa), len(pb)],
        "f1": round(f1, 5),
        "cells_bit_identical": same_cells,
        "tissue_map_max_diff": int(np.abs(ta - tb).max()),
        "tissue_map_pixels_differing": int((ta != tb).sum()),
        "purity": {k: [ja.get(k), jb.get(k)] for k in keys},
        "purity_values_identical": not _differing(ja, jb),
        "purity_values_differing": _differing(ja, jb),
        "purity_keys_added": sorted(set(jb) - set(ja)),
        "purity_keys_removed": sorted(set(ja) - set(jb)),
        "purity_equal_3dp": all(
            ja.get(k) is None
            and jb.get(k) is None
            or (
                ja.get(k) is not None
                and jb.get(k) is not None
                and round(ja[k], 3) == round(jb[k], 3)
            )
            for k in ("purity", "purity_in_cancer_area")
        ),
    }
