"""Memory over a cohort with the real engine: the driver's and each Dask worker's RSS after 50
slides against after the last (issue: memory flat over the cohort, within 1.2x).

    python benchmarks/bench_cohort_memory.py --slides 1000 [--workers 2] [--json FILE]

The cohort: ``--slides`` hard links to one 512² px synthetic slide at 0.25 µm/px (each its own
input, its own slide id), run by ``run_cohort`` on a local Dask cluster of ``--workers`` worker
processes (one torch thread each, tiles read in the worker's process) with soak.py's tiny
ResNet-18 checkpoint on 256 px tiles: every slide goes through the whole engine (tissue pass,
cell pass, peaks, GeoJSON, Zarr, purity, overview). Each worker records its VmRSS after every
slide it runs (a wrapper around ``process_slide``); the driver its own after every record.

Results: ``results/cohort_memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # soak.py's checkpoint; this module on the Dask workers

from wsi_ocelot.cohort.inputs import SlideJob  # noqa: E402
from wsi_ocelot.cohort.outcome import SlideOutcome  # noqa: E402
from wsi_ocelot.cohort.worker import process_slide  # noqa: E402
from wsi_ocelot.inference.run_setup import EngineConfig  # noqa: E402

RSS_LOG = "WSI_OCELOT_BENCH_RSS_LOG"  # the file each worker appends "pid n rss_mb" lines to
_done = [0]


def rss_mb() -> float:
    """This process's resident set (VmRSS) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measured_process(
    job: SlideJob,
    out_dir: str,
    model: str,
    config: EngineConfig,
    *,
    torch_threads: int | None = None,
) -> SlideOutcome:
    """``process_slide``, then this worker's RSS appended to the log."""
    outcome = process_slide(job, out_dir, model, config, torch_threads=torch_threads)
    _done[0] += 1
    with open(os.environ[RSS_LOG], "a", encoding="utf-8") as fh:
        fh.write(f"{os.getpid()} {_done[0]} {rss_mb():.1f}\n")
    return outcome


def run(n: int, workers: int, root: Path) -> dict[str, Any]:
    import bench_cohort_memory  # by module name, so the workers import it (not __main__ by value)
    from soak import make_checkpoint

    from wsi_ocelot.cohort import CohortConfig, collect_jobs, run_cohort
    from wsi_ocelot.synthetic import write_synthetic_slide

    ckpt = make_checkpoint(root / "tiny.safetensors")
    src = root / "src.tiff"
    write_synthetic_slide(src, mpp=0.25, size=(512, 512), seed=1000)
    slides = root / "slides"
    slides.mkdir()
    for i in range(n):
        os.link(src, slides / f"slide_{i:05d}.tiff")
    log = root / "rss.log"
    os.environ[RSS_LOG] = str(log)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    driver: list[float] = []
    cfg = CohortConfig(
        model=str(ckpt),
        engine=EngineConfig(device="cpu", workers=0, batch_size=4, progress=False),
        scheduler="local",
        dask_workers=workers,
        threads=1,
        report=False,
    )
    t0 = time.perf_counter()
    result = run_cohort(
        collect_jobs([str(slides)]),
        root / "out",
        cfg,
        on_record=lambda job, outcome: driver.append(rss_mb()),
        process=bench_cohort_memory.measured_process,
    )
    wall = time.perf_counter() - t0
    per_worker: dict[str, list[tuple[int, float]]] = {}
    for line in log.read_text().splitlines():
        pid, k, mb = line.split()
        per_worker.setdefault(pid, []).append((int(k), float(mb)))
    rows = []
    for pid, seq in sorted(per_worker.items()):
        seq.sort()
        at50 = next((mb for k, mb in seq if k == 50), None)
        rows.append(
            {
                "worker_pid": int(pid),
                "slides": seq[-1][0],
                "rss_mb_after_50": at50,
                "rss_mb_at_end": seq[-1][1],
                "ratio": None if not at50 else round(seq[-1][1] / at50, 3),
                "rss_mb_max": max(mb for _, mb in seq),
            }
        )
    return {
        "slides": n,
        "done": len(result.done),
        "failed": len(result.failed),
        "wall_s": round(wall, 1),
        "driver": {
            "rss_mb_after_50": round(driver[49], 1) if len(driver) >= 50 else None,
            "rss_mb_at_end": round(driver[-1], 1),
            "ratio": round(driver[-1] / driver[49], 3) if len(driver) >= 50 else None,
        },
        "workers": rows,
    }


def write_markdown(r: dict[str, Any], path: Path) -> None:
    lines = [
        "# Memory over a cohort (real engine, local Dask cluster)",
        "",
        f"Machine: {r['machine']}. {r['slides']} slides (hard links to one 512² px synthetic slide,"
        f" 0.25 µm/px; soak.py's tiny ResNet-18 checkpoint on 256 px tiles), {len(r['workers'])}"
        f" Dask worker processes, one torch thread each; {r['done']} done, {r['failed']} failed,"
        f" {r['wall_s']} s. {r['date']}.",
        "",
        "| process | slides | RSS after 50 (MB) | RSS at the end (MB) | end / after 50 | max (MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| driver | {r['slides']} | {r['driver']['rss_mb_after_50']} | {r['driver']['rss_mb_at_end']}"
        f" | {r['driver']['ratio']} | |",
    ]
    for w in r["workers"]:
        lines.append(
            f"| worker {w['worker_pid']} | {w['slides']} | {w['rss_mb_after_50']} |"
            f" {w['rss_mb_at_end']} | {w['ratio']} | {w['rss_mb_max']} |"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, default=HERE / "results" / "cohort_memory.json")
    args = ap.parse_args()

    from wsi_ocelot.sysinfo import describe_machine

    with tempfile.TemporaryDirectory() as tmp:
        r = run(args.slides, args.workers, Path(tmp))
    r["machine"] = describe_machine("cpu")
    r["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
    write_markdown(r, args.json.with_suffix(".md"))
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
