"""Export time and peak memory of the cells table (``cells.parquet`` and ``cells.csv``, the
engine's ``--cells-table``) for 1 million cells, and memory against the cell count (0.25, 1 and
4 million cells to parquet): the writer streams row groups, so what it adds must not grow with
the slide. Each row is measured in a fresh subprocess, in one run.

    python benchmarks/bench_cells_table.py [--cells 1000000] [--batch 50000] [--out benchmarks/results]

Cells arrive in batches, as from the slide engine's writer thread. Peak memory is the child's
``ru_maxrss`` minus its ``ru_maxrss`` right after imports (pyarrow included) and making the input
columns, i.e. what writing adds. Results go to ``results/cells_table.json`` and ``.md``, beside
``geojson.md`` (the GeoJSON and Zarr exports of the same cells, ``bench_geojson.py``).
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path

from writer_bench import machine, measured, parse_args, random_cells, run_child


def child(fmt: str, n: int, batch: int, out: str) -> dict[str, float]:
    """Write ``n`` cells as ``cells.<fmt>`` (in its own process) and measure it."""
    import numpy as np
    import pyarrow.parquet  # noqa: F401 - imported before the baseline, as the engine has it loaded

    from wsi_ocelot.outputs import CellsTableWriter

    rng = np.random.default_rng(0)
    x, y, cls, prob = random_cells(rng, n)
    inside = rng.random(n) < 0.4
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    path = Path(out) / f"cells.{fmt}"
    t0 = time.perf_counter()
    with CellsTableWriter(path, mpp=0.25) as w:
        for s in range(0, n, batch):
            w.write(
                x[s : s + batch],
                y[s : s + batch],
                cls[s : s + batch],
                prob[s : s + batch],
                inside[s : s + batch],
            )
    dt = time.perf_counter() - t0
    size = path.stat().st_size
    path.unlink()
    return {"cells": n, **measured(n, dt, size, base)}


def main() -> None:
    args = parse_args(__doc__)
    if args.child:
        print(json.dumps(child(args.child, args.cells, args.batch, args.tmp)))
        return

    runs = [("parquet", args.cells), ("csv", args.cells)] + [
        ("parquet", m) for m in (args.cells // 4, args.cells * 4)
    ]
    results: list[dict[str, float | str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, n in runs:
            r = {"format": fmt, **run_child(__file__, fmt, n, args.batch, tmp)}
            results.append(r)
            print(r, flush=True)
    pq = {int(r["cells"]): r for r in results if r["format"] == "parquet"}
    small, big = pq[args.cells // 4], pq[args.cells * 4]
    main_pq = pq[args.cells]
    main_csv = next(r for r in results if r["format"] == "csv")
    doc = {
        "benchmark": "bench_cells_table",
        "cells": args.cells,
        "batch": args.batch,
        "machine": machine("numpy", "pandas", "pyarrow"),
        "results": results,
        "ratios": {
            "csv_vs_parquet_time": main_csv["seconds"] / main_pq["seconds"],
            "parquet_memory_16x_cells": big["peak_rss_added_mib"]
            / max(small["peak_rss_added_mib"], 1e-9),
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cells_table.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        f"# Cells table (`--cells-table`): {args.cells:,} cells",
        "",
        f"Machine: {doc['machine']} (no GPU). Batches of {args.batch} cells, as from the engine's writer thread;",
        "each row measured in a fresh process (`python benchmarks/bench_cells_table.py`).",
        "Peak memory = ru_maxrss added by writing (beyond pyarrow's import and the input columns).",
        "",
        "| file | cells | seconds | cells / s | file size (MB) | peak RSS added (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| cells.{r['format']} | {int(r['cells']):,} | {r['seconds']:.2f} | {r['cells_per_second']:,.0f} | "
            f"{r['bytes'] / 1e6:.1f} | {r['peak_rss_added_mib']:.1f} |"
        )
    lines += [
        "",
        f"Memory against the cell count: 16× the cells ({small['cells']:,} → {big['cells']:,}) to parquet adds "
        f"{doc['ratios']['parquet_memory_16x_cells']:.2f}× the memory (row groups of 262,144 rows are written as they fill; "
        "one row group is the most held).",
        f"csv / parquet time at {args.cells:,} cells: {doc['ratios']['csv_vs_parquet_time']:.2f}. "
        "The same cells as GeoJSON and Zarr columns: `geojson.md`.",
        "",
    ]
    (out / "cells_table.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
