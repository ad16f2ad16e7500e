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


def random_cells(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``x, y`` (float32, level-0 px over a 150,000 × 100,000 px slide), ``class`` (uint8, 1 or 2)
    and ``prob`` (float32 in [0.3, 1)) of ``n`` cells, drawn from ``rng``."""
    x = rng.uniform(0, 150_000, n).astype(np.float32)
    y = rng.uniform(0, 100_000, n).astype(np.float32)
    cls = rng.integers(1, 3, n).astype(np.uint8)
    prob = rng.uniform(0.3, 1.0, n).astype(np.float32)
    return x, y, cls, prob
