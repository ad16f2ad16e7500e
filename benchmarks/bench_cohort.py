"""Cohort throughput: slides per hour in-process and on a Dask LocalCluster with 1 and 2 workers.

    python benchmarks/bench_cohort.py [--slides 6] [--size 2048] [--model demo] [--device cpu]

Writes N synthetic slides (0.25 µm/px, their own seeds), then runs the same batch
(a) in this process, (b) on a LocalCluster with 1 worker, (c) with 2 workers, each into a
fresh output folder, timing the whole batch (cluster start and model loading included: what a
user waits for). Every configuration gets the same total number of torch threads (the machine's
cores, split between workers). Results: ``results/cohort.json`` and ``results/cohort.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from wsi_ocelot.cohort import CohortConfig, collect_jobs, run_cohort
from wsi_ocelot.inference.engine import EngineConfig
from wsi_ocelot.synthetic import write_synthetic_slide
from wsi_ocelot.sysinfo import describe_machine

HERE = Path(__file__).resolve().parent


def _run(
    jobs, out: Path, model: str, device: str, scheduler: str | None, n: int, threads: int
) -> dict:
    cfg = CohortConfig(
        model=model,
        engine=EngineConfig(device=device, workers=0, progress=False, runtime="torch"),
        scheduler=scheduler,
        dask_workers=n if scheduler else None,
        threads=threads,
        report=False,
    )
    t0 = time.perf_counter()
    res = run_cohort(jobs, out, cfg)
    wall = time.perf_counter() - t0
    recs = [res.manifest.slides[j.slide_id] for j in jobs]
    assert all(r["status"] == "done" for r in recs), [r.get("error") for r in recs]
    return {
        "scheduler": scheduler or "in-process",
        "workers": n,
        "torch_threads_per_worker": threads,
        "slides": len(jobs),
        "wall_s": round(wall, 2),
        "slides_per_hour": round(len(jobs) / wall * 3600, 1),
        "mean_slide_s": round(sum(r["runtime_s"] for r in recs) / len(recs), 2),
        "cells": int(sum(r["n_cells"] for r in recs)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slides", type=int, default=6)
    ap.add_argument("--size", type=int, default=2048, help="slide side in level-0 px (0.25 µm/px)")
    ap.add_argument("--model", default="demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cohort")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for i in range(args.slides):
            write_synthetic_slide(
                tmp / "slides" / f"bench_{i}.tiff",
                mpp=0.25,
                size=(args.size, args.size),
                seed=900 + i,
            )
        jobs = collect_jobs([tmp / "slides"])
        runs = [
            _run(jobs, tmp / "inproc", args.model, args.device, None, 1, cores),
            _run(jobs, tmp / "local1", args.model, args.device, "local", 1, cores),
            _run(jobs, tmp / "local2", args.model, args.device, "local", 2, max(1, cores // 2)),
        ]
    one, two = runs[1]["slides_per_hour"], runs[2]["slides_per_hour"]
    result = {
        "machine": describe_machine(),
        "device": args.device,
        "model": args.model,
        "slide": f"{args.size}x{args.size} px at 0.25 µm/px (synthetic)",
        "runs": runs,
        "scaling_2_vs_1_workers": round(two / one, 3),
        "dask_1_worker_vs_in_process": round(one / runs[0]["slides_per_hour"], 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Cohort throughput ({result['machine']}, device {args.device})",
        "",
        f"{args.slides} synthetic slides of {result['slide']}, model `{args.model}`, tile reading in the slide's process "
        "(loader workers 0); wall time of the whole batch, cluster start and model loading included.",
        "",
        "| run | workers | torch threads each | wall s | slides / hour | mean s per slide |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['scheduler']} | {r['workers']} | {r['torch_threads_per_worker']} | {r['wall_s']} | {r['slides_per_hour']} | {r['mean_slide_s']} |"
        for r in runs
    ]
    lines += [
        "",
        f"Scaling, 2 vs 1 LocalCluster workers: **{result['scaling_2_vs_1_workers']}×**; "
        f"1 Dask worker vs in-process: {result['dask_1_worker_vs_in_process']}×.",
        "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
