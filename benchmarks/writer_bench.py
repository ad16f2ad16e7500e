"""What the output-writer benchmarks (``bench_geojson.py``, ``bench_cells_table.py``) share:
the machine line with the versions of the packages they exercise, and a slide's worth of
random cells."""

from __future__ import annotations

import importlib

import numpy as np


def machine(*modules: str) -> str:
    """This machine (``wsi_ocelot.sysinfo``) and ``module version`` of each of ``modules``."""
    from wsi_ocelot.sysinfo import describe_machine

    versions = ", ".join(f"{m} {importlib.import_module(m).__version__}" for m in modules)
    return f"{describe_machine('cpu')}, {versions}" if versions else describe_machine("cpu")


def random_cells(
    rng: np.random.Generator, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``x, y`` (float32, level-0 px over a 150,000 × 100,000 px slide), ``class`` (uint8, 1 or 2)
    and ``prob`` (float32 in [0.3, 1)) of ``n`` cells, drawn from ``rng``."""
    x = rng.uniform(0, 150_000, n).astype(np.float32)
    y = rng.uniform(0, 100_000, n).astype(np.float32)
    cls = rng.integers(1, 3, n).astype(np.uint8)
    prob = rng.uniform(0.3, 1.0, n).astype(np.float32)
    return x, y, cls, prob


def parse_args(doc: str | None):
    """The writer benchmarks' command line: ``--cells``, ``--batch``, ``--out``, and the
    hidden ``--child KIND --tmp DIR`` of a measuring subprocess."""
    import argparse
    from pathlib import Path

    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=50_000, help="cells per write call")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    return ap.parse_args()


def run_child(script: str, kind: str, cells: int, batch: int, tmp: str) -> dict:
    """Run ``script --child kind`` in a fresh process (the repository on its path) and return
    the JSON it prints last."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [
            sys.executable,
            script,
            "--child",
            kind,
            "--cells",
            str(cells),
            "--batch",
            str(batch),
            "--tmp",
            tmp,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measured(cells: int, seconds: float, size: int, base_rss_kib: int) -> dict[str, float]:
    """One child's result: time, rate, bytes written and the peak RSS it added over ``base_rss_kib``."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": seconds,
        "cells_per_second": cells / seconds,
        "bytes": size,
        "peak_rss_added_mib": (peak - base_rss_kib) / 1024,
        "peak_rss_mib": peak / 1024,
    }
