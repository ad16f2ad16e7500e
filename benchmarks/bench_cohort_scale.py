"""The cohort driver and report at N slides, with a stand-in per-slide task (no model).

    python benchmarks/bench_cohort_scale.py --sizes 100 1000 10000 [--json FILE] [--no-browser]

Each size runs in a fresh subprocess (so its peak RSS is its own): N hard links to one small
synthetic slide (each its own input file), then the real driver, ``run_cohort`` (input checks,
resume decisions, the manifest and its journal, progress, checkpoints, ``summary.csv``), with
the per-slide engine call replaced by :func:`standin_process`, which writes a slide folder of
the usual shape (``purity.json``, written atomically and fsync'd as the engine writes it, and a
real ``overview.png``) and returns a done outcome with a
realistic :class:`SlideRecord` (every 50th slide fails with a one-line error instead). Then the
report: ``write_report`` timed, ``report.html``'s size (with any local file it loads), and its
load in headless Chromium (``--headless --no-sandbox --disable-gpu
--disable-background-networking``) until ``document.readyState`` is complete and the table
has drawn its first page of rows.

Row keys: ``n_slides``, ``driver_ms_per_slide`` (the batch's wall time less the stand-in's own
time, per slide), ``report_mb``, ``report_load_s``, ``driver_peak_rss_mb`` (VmHWM after the
batch, before the report is built), and ``driver_ms_per_slide_no_fsync`` (the same batch with
the journal's per-line fsync off), ``standin_ms_per_slide``, ``report_write_s``,
``driver_rss_mb_after_50`` / ``driver_rss_mb_at_end`` (VmRSS after the 50th slide and after the
last), ``checkpoints``. Results: ``results/cohort_scale.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from wsi_ocelot.atomic import write_text
from wsi_ocelot.cohort import CohortConfig, collect_jobs, run_cohort
from wsi_ocelot.cohort import journal as journal_mod
from wsi_ocelot.cohort.inputs import SlideJob
from wsi_ocelot.cohort.manifest import Manifest
from wsi_ocelot.cohort.outcome import SlideOutcome
from wsi_ocelot.cohort.report import PAGE_ROWS, write_report
from wsi_ocelot.inference.engine import EngineConfig
from wsi_ocelot.purity import SlideRecord
from wsi_ocelot.sysinfo import cpu_model, describe_machine

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # chromium.py: the WebDriver client the tests use
FAIL_EVERY = 50  # every 50th slide fails (a one-line error), as bad slides do in a real cohort
_STANDIN_S = [0.0]  # seconds spent inside the stand-in (not the driver's)


# -- the stand-in per-slide task -------------------------------------------------------------
def purity_json(slide: str, i: int) -> dict[str, Any]:
    """A ``purity.json`` body of the usual shape, its numbers varied by ``i``."""
    rng = np.random.default_rng(i)
    n_tc, n_bc = int(rng.integers(20_000, 200_000)), int(rng.integers(20_000, 200_000))
    tissue = round(float(rng.uniform(20, 250)), 3)
    return {
        "slide": slide,
        "n_cells": n_tc + n_bc,
        "n_tc": n_tc,
        "n_bc": n_bc,
        "purity": n_tc / (n_tc + n_bc),
        "purity_reason": None,
        "n_cells_in_cancer_area": n_tc + n_bc // 3,
        "n_tc_in_cancer_area": n_tc,
        "n_bc_in_cancer_area": n_bc // 3,
        "purity_in_cancer_area": n_tc / (n_tc + n_bc // 3),
        "purity_in_cancer_area_reason": None,
        "tissue_area_mm2": tissue,
        "cancer_area_mm2": round(tissue * 0.4, 3),
        "mpp": 0.2527,
        "mpp_source": "openslide",
        "model": {
            "path": "/models/best.safetensors",
            "variant": "pred_to_inter2",
            "encoder": "resnet34",
        },
        "model_note": None,
        "mode": "two-pass",
        "device": "cuda",
        "runtime": "torch",
        "precision": "bf16",
        "runtime_detail": {"runtime": "torch", "precision": "bf16", "reason": "auto"},
        "n_cell_tiles": int(tissue * 7),
        "n_tissue_tiles": int(tissue / 2),
        "n_unreadable_tiles": 0,
        "runtime_s": {
            "plan": 0.4,
            "read": 31.2,
            "tissue pass": 8.1,
            "write": 12.5,
            "cell pass": 61.3,
            "post-processing": 4.2,
            "total": 97.4,
        },
    }


def standin_process(
    job: SlideJob,
    out_dir: str,
    model: str,
    config: EngineConfig,
    *,
    torch_threads: int | None = None,
) -> SlideOutcome:
    """``process_slide``'s stand-in: the slide folder (``purity.json``, ``overview.png`` hard
    linked from ``<out>/../overview.png``) and the outcome, without a model."""
    t0 = time.perf_counter()
    i = int(job.slide_id.rsplit("_", 1)[-1])
    where = f"{socket.gethostname()}:{os.getpid()}"
    if i % FAIL_EVERY == FAIL_EVERY - 1:
        outcome = SlideOutcome.failed(
            job.path,
            f"{job.path}: not brightfield H&E (mean saturation 0.02). Fix: check the stain, or "
            "pass --allow-non-brightfield",
            runtime_s=1.2,
            mpp_override=job.mpp,
            worker=where,
        )
    else:
        folder = Path(out_dir) / job.slide_id
        folder.mkdir(exist_ok=True)
        body = purity_json(job.path, i)
        # written as the engine writes it: atomically, fsync'd (no dirty data left for the driver's fsyncs)
        write_text(folder / "purity.json", json.dumps(body, indent=2))
        overview = folder / "overview.png"
        if not overview.exists():
            os.link(Path(out_dir).parent / "overview.png", overview)
        outcome = SlideOutcome(
            path=job.path,
            status="done",
            runtime_s=97.4,
            mpp_override=job.mpp,
            worker=where,
            record=SlideRecord.from_json(body),
        )
    _STANDIN_S[0] += time.perf_counter() - t0
    return outcome


# -- inputs --------------------------------------------------------------------------------------
def make_source(root: Path) -> None:
    """``root/src/slide.tiff`` (a small synthetic slide) and ``root/overview.png`` (a real
    overview of it, about 1200 px on the long side like the engine's)."""
    import openslide

    from wsi_ocelot.outputs.overview import write_overview
    from wsi_ocelot.synthetic import write_synthetic_slide

    src = root / "src" / "slide.tiff"
    src.parent.mkdir(parents=True, exist_ok=True)
    write_synthetic_slide(src, mpp=0.25, size=(2048, 2048), seed=5)
    with openslide.OpenSlide(str(src)) as s:
        thumb = np.asarray(s.get_thumbnail((600, 600)).convert("RGB"))
    rng = np.random.default_rng(0)
    grid = np.clip(rng.normal(0.45, 0.2, size=(20, 20)), 0, 1)
    write_overview(
        root / "overview.png", thumb, 2048 / thumb.shape[1], purity=grid, purity_cell_size=2048 / 20
    )


def make_slides(root: Path, work: Path, n: int) -> Path:
    """``work/slides/s_<i>.tiff``: ``n`` hard links to ``root/src/slide.tiff`` (each its own
    input path), and ``work/overview.png``; returns the slides' folder."""
    os.link(root / "overview.png", work / "overview.png")
    slides = work / "slides"
    slides.mkdir()
    for i in range(n):
        os.link(root / "src" / "slide.tiff", slides / f"s_{i}.tiff")
    return slides


def _vm(key: str) -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


# -- the report in headless Chromium ---------------------------------------------------------------
def chromium_load_s(page: Path, rows: int, timeout_s: float = 600.0) -> float | None:
    """Seconds from navigation to ``readyState`` complete with the table's first page drawn
    (``rows`` slides, :data:`PAGE_ROWS` a page: the first ``min(rows, PAGE_ROWS)`` rows; a
    fresh headless Chromium over the WebDriver protocol of ``tests/chromium.py``); None
    without Chromium."""
    from chromium import WebDriver, browser

    found = browser()
    if found is None:
        return None
    rows = min(rows, PAGE_ROWS)
    wd = WebDriver(*found, size=(1366, 900), page_load="none", timeout=timeout_s)
    try:
        script = (
            "return document.readyState === 'complete' && "
            "document.querySelectorAll('#slides tbody tr').length"
        )
        t0 = time.perf_counter()
        wd.get(page.resolve().as_uri())
        while time.perf_counter() - t0 < timeout_s:
            n = wd.js(script)
            if n and n >= rows:
                return time.perf_counter() - t0
            time.sleep(0.05)
        raise TimeoutError(f"the report was not ready after {timeout_s:.0f} s")
    finally:
        wd.quit()


def report_size_mb(page: Path) -> float:
    """``report.html`` and every local file it loads (``src=``; none today: it is one file; the
    links to each full ``overview.png`` are not loaded with the page)."""
    import re

    text = page.read_text(encoding="utf-8")
    total = page.stat().st_size
    for ref in set(re.findall(r'src="([^"#:]+)"', text)):
        f = page.parent / ref
        if f.is_file():
            total += f.stat().st_size
    return total / 1e6


# -- one size, in its own process --------------------------------------------------------------------
def one_size(n: int, src: Path, browser: bool) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="cohort_scale_", dir=src) as tmp_dir:
        root = Path(tmp_dir)
        jobs = collect_jobs([make_slides(src, root, n)])
        cfg = CohortConfig(model="demo", engine=EngineConfig(device="cpu"), report=False)
        rss: dict[str, float] = {}

        def on_record(job: SlideJob, outcome: SlideOutcome) -> None:
            on_record.count += 1  # type: ignore[attr-defined]
            if on_record.count == 50:  # type: ignore[attr-defined]
                rss["after_50"] = _vm("VmRSS")

        on_record.count = 0  # type: ignore[attr-defined]
        # the journal without fsync first (a warm-up of the imports and the page cache too)
        journal_mod.FSYNC = False
        _STANDIN_S[0] = 0.0
        os.sync()  # each run starts with no dirty data of another's for its fsyncs to flush
        t0 = time.perf_counter()
        run_cohort(jobs, root / "out_nofsync", cfg, process=standin_process)
        nofsync_ms = (time.perf_counter() - t0 - _STANDIN_S[0]) / n * 1e3
        shutil.rmtree(root / "out_nofsync")
        journal_mod.FSYNC = True
        _STANDIN_S[0] = 0.0
        saves = [0]
        real_save = Manifest.save

        def counting_save(self: Manifest) -> None:
            saves[0] += 1
            real_save(self)

        Manifest.save = counting_save  # type: ignore[method-assign]
        os.sync()  # the first run's folders, removed: not for this run's fsyncs to flush
        t0 = time.perf_counter()
        res = run_cohort(jobs, root / "out", cfg, on_record=on_record, process=standin_process)
        wall = time.perf_counter() - t0
        Manifest.save = real_save  # type: ignore[method-assign]
        rss["at_end"] = _vm("VmRSS")
        peak = _vm("VmHWM")
        assert len(res.done) + len(res.failed) == n, (len(res.done), len(res.failed))
        t0 = time.perf_counter()
        page = write_report(root / "out", res.manifest)
        report_write_s = time.perf_counter() - t0
        row = {
            "n_slides": n,
            "driver_ms_per_slide": round((wall - _STANDIN_S[0]) / n * 1e3, 3),
            "report_mb": round(report_size_mb(page), 2),
            "report_load_s": None,
            "driver_peak_rss_mb": round(peak, 1),
            "driver_ms_per_slide_no_fsync": round(nofsync_ms, 3),
            "standin_ms_per_slide": round(_STANDIN_S[0] / n * 1e3, 3),
            "batch_wall_s": round(wall, 2),
            "checkpoints": saves[0],
            "report_write_s": round(report_write_s, 2),
            "driver_rss_mb_after_50": round(rss.get("after_50", float("nan")), 1),
            "driver_rss_mb_at_end": round(rss["at_end"], 1),
        }
        if browser:
            try:
                t = chromium_load_s(page, n)
                row["report_load_s"] = None if t is None else round(t, 2)
            except (OSError, TimeoutError, KeyError, TypeError) as exc:
                row["report_load_error"] = f"{type(exc).__name__}: {exc}"
        return row


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--json", type=Path, default=HERE / "results" / "cohort_scale.json")
    ap.add_argument("--no-browser", action="store_true", help="skip the Chromium load")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one size, in this process ...
    ap.add_argument("--src", type=Path, help=argparse.SUPPRESS)  # ... from make_source's folder
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one, args.src, not args.no_browser)))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="cohort_scale_src_") as src_dir:
        make_source(Path(src_dir))
        for n in args.sizes:
            cmd = [sys.executable, __file__, "--one", str(n), "--src", src_dir]
            proc = subprocess.run(
                cmd + (["--no-browser"] if args.no_browser else []),
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                sys.exit(f"size {n} failed:\n{proc.stderr[-4000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["driver_ms_per_slide"]
    result = {
        "machine": describe_machine(),
        "cpu_model": cpu_model(),
        "task": "stand-in per-slide task (no model): a purity.json and an overview.png per slide, "
        f"every {FAIL_EVERY}th slide failed",
        "journal_fsync": True,
        "rows": rows,
        "driver_ms_per_slide_ratio_largest_vs_smallest": round(
            rows[-1]["driver_ms_per_slide"] / base, 3
        ),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Cohort driver and report at scale ({result['machine']})",
        "",
        f"CPU: {result['cpu_model']}. The real driver (`run_cohort`, in-process) with a {result['task']}; "
        "each size in a fresh process. Driver ms per slide = the batch's wall time less the stand-in's, "
        "per slide (input checks, resume, the manifest's journal, each done/failed line fsync'd, progress, checkpoints "
        "of manifest.json and summary.csv, the final snapshot). Peak RSS: VmHWM after the batch, before the "
        "report. Report: `write_report`, then headless Chromium until the table has drawn its first page.",
        "",
        "| slides | driver ms/slide | (no fsync) | checkpoints | driver peak RSS MB | RSS after 50 / at end MB "
        "| report write s | report MB | report load s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        load = (
            r["report_load_s"]
            if r["report_load_s"] is not None
            else r.get("report_load_error", "n/a")
        )
        lines.append(
            f"| {r['n_slides']} | {r['driver_ms_per_slide']} | {r['driver_ms_per_slide_no_fsync']} | "
            f"{r['checkpoints']} | {r['driver_peak_rss_mb']} | {r['driver_rss_mb_after_50']} / "
            f"{r['driver_rss_mb_at_end']} | {r['report_write_s']} | {r['report_mb']} | {load} |"
        )
    lines += [
        "",
        f"Driver ms per slide, {rows[-1]['n_slides']} vs {rows[0]['n_slides']} slides: "
        f"**{result['driver_ms_per_slide_ratio_largest_vs_smallest']}×** (target ≤ 1.5×; and ≤ 20 ms at 10,000).",
        "",
    ]
    args.json.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
