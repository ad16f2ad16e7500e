"""Tile pairs per second through the tile ``Dataset`` (0, 1, 2 reader processes)
against raw ``read_region`` of the same level-0 boxes, as ratios measured in one run.

    python benchmarks/bench_tiling.py [--size 6144] [--tiles 48] [--out benchmarks/results]

"raw" = OpenSlide ``read_region`` of each cell box and context box at the level the
Dataset chooses, without resizing or tensor conversion: the floor any reader pays.
Results go to ``results/tiling.json`` and ``results/tiling.md``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--size", type=int, default=6144, help="synthetic slide side in level-0 px (0.25 µm/px)"
    )
    ap.add_argument("--tiles", type=int, default=48, help="cell/context pairs per measurement")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    import torch

    from wsi_ocelot.config import GeometryConfig
    from wsi_ocelot.slide import open_slide
    from wsi_ocelot.synthetic import write_synthetic_slide
    from wsi_ocelot.sysinfo import describe_machine
    from wsi_ocelot.tiling import TileDataset, plan_tiles, read_batches

    torch.set_num_threads(1)
    geo = GeometryConfig()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.tiff"
        write_synthetic_slide(path, mpp=0.25, size=(args.size, args.size), seed=7)
        slide = open_slide(path)
        plan = plan_tiles(slide, geo)
        n = min(args.tiles, len(plan.cells))
        cells, ctx = plan.cells.boxes[:n], plan.contexts[:n]

        def raw() -> None:
            for boxes, target in ((cells, geo.cell_mpp), (ctx, geo.tissue_mpp)):
                for x, y, w, h in boxes:
                    level = slide.best_level_for_downsample(target / slide.mpp)
                    d = slide.level_downsamples[level]
                    slide._osr.read_region(
                        (int(x), int(y)), level, (int(np.ceil(w / d)), int(np.ceil(h / d)))
                    )

        def through(workers: int) -> None:
            ds = TileDataset(slide, cells, geo.tile_size, ctx)
            for _ in read_batches(ds, readers=workers, batch_size=args.batch_size):
                pass

        raw()  # warm the OS page cache and OpenSlide's tile cache equally for all
        results: dict[str, float] = {}
        for name, fn in [("raw_read_region", raw)] + [
            (f"dataset_{w}_workers", (lambda w=w: through(w))) for w in (0, 1, 2)
        ]:
            t0 = time.perf_counter()
            fn()
            results[name] = n / (time.perf_counter() - t0)
    base = results["raw_read_region"]
    report = {
        "machine": describe_machine("cpu"),
        "slide": f"synthetic {args.size}x{args.size} px at 0.25 µm/px, pyramidal JPEG TIFF",
        "pairs": n,
        "tile_size": geo.tile_size,
        "pairs_per_s": {k: round(v, 2) for k, v in results.items()},
        "ratio_to_raw": {k: round(v / base, 3) for k, v in results.items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tiling.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Tile reading: Dataset vs raw read_region",
        "",
        f"Machine: {report['machine']}. Slide: {report['slide']}. {n} cell/context pairs of {geo.tile_size} px.",
        "",
        "| reader | pairs/s | ratio to raw read_region |",
        "| --- | ---: | ---: |",
    ]
    for k in results:
        lines.append(f"| {k} | {report['pairs_per_s'][k]} | {report['ratio_to_raw'][k]} |")
    (out / "tiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
