"""Outputs of the engine at a git revision against this working tree's, on the engine
benchmark slide (issue: one home for every concept — behaviour unchanged).

    python benchmarks/compare_revisions.py [--before REV] [--threads 2] [--json PATH]

Both engines run the demo model on the CPU with the same torch thread count, each in a fresh
process, on the synthetic slide of ``bench_engine.py`` (seed 777, 7168² px at 0.25 µm/px).
Reported: whether the cell tables are bit-identical (same cells, same order), the tissue
maps identical, ``purity.json``'s values identical (keys may only be added), and the OCELOT
agreement F1 of the detections.

Results: ``results/compare_revisions.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from revisions import ROOT, checkout, compare_results, run_real

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git revision to compare with")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--margin",
        type=int,
        help="cell margin for both (when the revisions' demo checkpoints differ)",
    )
    ap.add_argument(
        "--reach",
        type=float,
        help="border_reach_um for both (0: strict cores, as in engines before the reach)",
    )
    ap.add_argument("--size", type=int, default=7168)
    ap.add_argument("--json", default=str(HERE / "results" / "compare_revisions.json"))
    args = ap.parse_args()

    from wsi_ocelot.synthetic import write_synthetic_slide
    from wsi_ocelot.sysinfo import describe_machine

    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        slide = tmp / "bench.tiff"
        write_synthetic_slide(slide, mpp=0.25, size=(args.size, args.size), seed=777)
        before = run_real(
            checkout(args.before, tmp / "before"),
            slide,
            tmp / "a",
            threads=args.threads,
            margin=args.margin,
            reach=args.reach,
        )
        after = run_real(
            ROOT, slide, tmp / "b", threads=args.threads, margin=args.margin, reach=args.reach
        )
        result = compare_results(before, after, 0.25)
    report = {
        "machine": describe_machine("cpu"),
        "before": args.before,
        "after": f"{head} + working tree",
        "slide": f"synthetic, seed 777, {args.size}x{args.size} px at 0.25 um/px; demo model, CPU, {args.threads} torch threads"
        + (f", cell margin {args.margin} px" if args.margin else "")
        + (f", border reach {args.reach:g} um" if args.reach is not None else ""),
        **result,
    }
    path = Path(args.json)
    path.write_text(json.dumps(report, indent=2) + "\n")
    md = [
        "# Engine outputs: a revision against the working tree",
        "",
        f"Machine: {report['machine']}. Slide: {report['slide']}. Before `{report['before']}`, after `{report['after']}`.",
        "",
        "| check | result |",
        "| --- | --- |",
        f"| cells (before → after) | {result['cells'][0]} → {result['cells'][1]} |",
        f"| cell tables bit-identical (x, y, class, prob; same order) | {result['cells_bit_identical']} |",
        f"| detection agreement F1 (3 µm) | {result['f1']} |",
        f"| tissue map: largest difference (of 255), pixels differing | {result['tissue_map_max_diff']}, {result['tissue_map_pixels_differing']} |",
        f"| purity.json values identical (runtime excepted) | {result['purity_values_identical']} |",
        f"| purity.json values that differ (before, after) | {json.dumps(result['purity_values_differing']) if result['purity_values_differing'] else '-'} |",
        f"| purity.json keys added / removed | {', '.join(result['purity_keys_added']) or '-'} / {', '.join(result['purity_keys_removed']) or '-'} |",
        "",
    ]
    path.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
