"""Export time and peak memory for 1 million cells: QuPath GeoJSON (plain and gzip) and the
``predictions.zarr`` cell columns, each measured in a fresh subprocess in one run.

    python benchmarks/bench_geojson.py [--cells 1000000] [--batch 50000] [--out benchmarks/results]

Cells arrive in batches (as from the slide engine). Peak memory is the child process's
``ru_maxrss`` minus its ``ru_maxrss`` right after imports and making the input columns
(so it is what writing adds). Results go to ``results/geojson.json`` and ``results/geojson.md``.
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path

from writer_bench import machine, measured, parse_args, random_cells, run_child


def child(kind: str, n: int, batch: int, out: str) -> dict[str, float]:
    """Run one measurement (in its own process)."""
    import numpy as np

    from wsi_ocelot.outputs import CellsGeoJSONWriter, PredictionStore

    rng = np.random.default_rng(0)
    x, y, cls, prob = random_cells(rng, n)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if kind.startswith("geojson"):
        path = Path(out) / ("cells.geojson.gz" if kind == "geojson_gzip" else "cells.geojson")
        with CellsGeoJSONWriter(path, gzip=kind == "geojson_gzip", origin=(1000.0, 2000.0)) as w:
            for s in range(0, n, batch):
                w.write(x[s : s + batch], y[s : s + batch], cls[s : s + batch], prob[s : s + batch])
        size = path.stat().st_size
    else:
        path = Path(out) / "predictions.zarr"
        with PredictionStore(path) as store:
            for s in range(0, n, batch):
                store.append_cells(
                    x[s : s + batch], y[s : s + batch], cls[s : s + batch], prob[s : s + batch]
                )
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return measured(n, time.perf_counter() - t0, size, base)


def main() -> None:
    args = parse_args(__doc__)
    if args.child:
        print(json.dumps(child(args.child, args.cells, args.batch, args.tmp)))
        return

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("geojson", "geojson_gzip", "zarr_cells"):
            results[kind] = run_child(__file__, kind, args.cells, args.batch, tmp)
            print(kind, results[kind], flush=True)
    doc = {
        "benchmark": "bench_geojson",
        "cells": args.cells,
        "batch": args.batch,
        "machine": machine("numpy", "shapely", "zarr"),
        "results": results,
        "ratios": {
            "geojson_gzip_vs_plain_time": results["geojson_gzip"]["seconds"]
            / results["geojson"]["seconds"],
            "zarr_vs_geojson_time": results["zarr_cells"]["seconds"]
            / results["geojson"]["seconds"],
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "geojson.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# Export of 1 million cells"
        if args.cells == 1_000_000
        else f"# Export of {args.cells} cells",
        "",
        f"Machine: {doc['machine']}. Batches of {args.batch} cells; each row measured in a fresh process.",
        "Peak memory = ru_maxrss added by writing (beyond the input columns).",
        "",
        "| output | seconds | cells / s | file size (MB) | peak RSS added (MiB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for kind, r in results.items():
        lines.append(
            f"| {kind} | {r['seconds']:.2f} | {r['cells_per_second']:,.0f} | {r['bytes'] / 1e6:.1f} | "
            f"{r['peak_rss_added_mib']:.1f} |"
        )
    lines += [
        "",
        f"gzip / plain time: {doc['ratios']['geojson_gzip_vs_plain_time']:.2f}; "
        f"zarr / geojson time: {doc['ratios']['zarr_vs_geojson_time']:.2f}",
        "",
    ]
    (out / "geojson.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
