"""A cohort's output folder without running anything: ``manifest.json`` with records shaped like a
real batch's (done, done by an earlier run, failed with real one-line messages, pending, a glass
slide without tissue) and an ``overview.png`` in each done slide's folder (a few distinct small
PNGs, hard-linked). For the report's tests at any size, and for measuring it at 10,000 slides:

    python tests/fake_cohort.py OUT N
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

#: One-line messages as real batches write them: slides fail for a handful of reasons.
ERRORS = (
    "{path}: 4 of its 4 cell tiles are unreadable (reading failed at level 0, (-38, -38) (Premature "
    "end of JPEG file)), more than the allowed 5%. Fix: re-export or re-scan the slide; or accept it "
    "with a larger --max-unreadable (a fraction, e.g. 0.2)",
    "{path}: the slide has no MPP (µm/px) in its metadata. Fix: pass --mpp, or an 'mpp' column in a "
    "CSV manifest",
    "{path}: does not look like brightfield H&E (mean saturation 0.03, 71% of the tissue dark). Fix: "
    "check the stain, or pass --allow-non-brightfield",
    "{path}: the Dask worker running it died 2 time(s) (KilledWorker). Fix: see logs/{sid}.log",
)
PENDING_REASON = "the batch stopped before this slide (SIGTERM)"
T0 = dt.datetime(2026, 11, 2, 21, 0, tzinfo=dt.UTC)


def _overviews(folder: Path, n: int = 4) -> list[Path]:
    """``n`` distinct overview-like PNGs (a tissue blob with an outline beside a coarse heat map)."""
    rng = np.random.default_rng(5)
    out = []
    for i in range(n):
        im = Image.new("RGB", (600, 300), "white")
        d = ImageDraw.Draw(im)
        cx, cy = 150 + rng.integers(-30, 30), 150 + rng.integers(-30, 30)
        d.ellipse((cx - 110, cy - 90, cx + 110, cy + 90), fill=(222, 170, 200))
        d.ellipse((cx - 60, cy - 50, cx + 50, cy + 40), outline=(0, 200, 0), width=3)
        heat = rng.random((12, 12))
        for y in range(12):
            for x in range(12):
                c = int(255 * heat[y, x])
                d.rectangle(
                    (300 + x * 25, y * 25, 324 + x * 25, 24 + y * 25), fill=(c, 80, 255 - c)
                )
        p = folder / f"overview_{i}.png"
        im.save(p, optimize=True)
        out.append(p)
    return out


def write_fake_cohort(
    out: str | os.PathLike[str],
    n: int,
    *,
    failed: float = 0.04,
    pending: float = 0.01,
    earlier: float = 0.5,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Write ``n`` slides' records into ``out/manifest.json`` (fractions ``failed`` and ``pending``,
    and of the done ones ``earlier`` done by an earlier run, which the last run skipped) and an
    ``overview.png`` per done slide. Returns the manifest's slides."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scratch = out / ".fake-overviews"
    scratch.mkdir(exist_ok=True)
    pngs = _overviews(scratch)
    run_started = T0 + dt.timedelta(days=1)
    slides: dict[str, dict[str, Any]] = {}
    for i in range(n):
        sid = f"TCGA-{i // 1000:02d}-{i:05d}-01Z-00-DX1"
        path = f"/data/cohort/site_{i % 7}/{sid}.svs"
        u = rng.random()
        if u < failed:
            msg = ERRORS[int(rng.integers(len(ERRORS)))].format(path=path, sid=sid)
            slides[sid] = {"path": path, "status": "failed", "error": msg, "runtime_s": 3.1}
            continue
        if u < failed + pending:
            slides[sid] = {"path": path, "status": "pending", "error": PENDING_REASON}
            continue
        tissue = float(rng.gamma(2.0, 40.0))
        glass = rng.random() < 0.005
        n_cells = 0 if glass else int(tissue * rng.uniform(2000, 6000))
        pur = float(rng.beta(3, 4))
        n_tc = round(n_cells * pur)
        finished = (run_started - dt.timedelta(hours=5)) if rng.random() < earlier else None
        finished = finished or run_started + dt.timedelta(seconds=40 * i)
        slides[sid] = {
            "path": path,
            "mpp_override": None,
            "worker": "node-3-0",
            "status": "done",
            "error": None,
            "mpp": 0.2527,
            "mpp_source": "openslide.mpp-x",
            "n_cells": n_cells,
            "n_tc": n_tc,
            "n_bc": n_cells - n_tc,
            "purity": None if glass else n_tc / n_cells,
            "purity_reason": "no tissue" if glass else None,
            "purity_in_cancer_area": None if glass else min(1.0, pur * 1.4),
            "tissue_area_mm2": 0.0 if glass else round(tissue, 4),
            "cancer_area_mm2": 0.0 if glass else round(tissue * rng.uniform(0.1, 0.6), 4),
            "n_unreadable_tiles": int(rng.random() < 0.02),
            "mode": "slide",
            "device": "cuda:0",
            "runtime": "torch",
            "precision": "bf16",
            "model_note": None,
            "timings": {"read": 4.2, "forward": 31.0, "write": 2.2},
            "runtime_s": round(float(rng.uniform(20, 90)), 2),
            "model": "/models/best.safetensors",
            "model_sha256": "ab" * 32,
            "identity": {"size": 123456789, "mtime_ns": 1, "head_sha256": "cd" * 32},
            "started": (finished - dt.timedelta(seconds=38)).isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
        }
        folder = out / sid
        folder.mkdir(exist_ok=True)
        target = folder / "overview.png"
        if not target.exists():
            try:
                os.link(pngs[i % len(pngs)], target)
            except OSError:
                shutil.copy(pngs[i % len(pngs)], target)
    meta = {
        "version": 1,
        "model": "/models/best.safetensors",
        "software": "wsi-ocelot 0.1.0",
        "last_run": {
            "slides": n,
            "started": run_started.isoformat(timespec="seconds"),
            "finished": (run_started + dt.timedelta(seconds=40 * n)).isoformat(timespec="seconds"),
        },
        "slides": slides,
    }
    (out / "manifest.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return slides


if __name__ == "__main__":
    write_fake_cohort(sys.argv[1], int(sys.argv[2]))
