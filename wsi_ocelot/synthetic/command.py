"""The synthetic-dataset command, one function for both of its entry points:
``wsi-ocelot synth-dataset OUT [...]`` (the CLI adds these options to its verb) and
``python -m wsi_ocelot.synthetic OUT [...]`` (``synthetic/__main__.py``). It lives here, below
the CLI, so the synthetic package never imports the CLI."""

from __future__ import annotations

import argparse
import dataclasses

__all__ = ["DESCRIPTION", "EXAMPLE", "add_dataset_arguments", "synth_dataset"]

DESCRIPTION = "Write a synthetic dataset in the OCELOT release layout, cut from synthetic slides."
EXAMPLE = "wsi-ocelot synth-dataset synth_data --seed 1 --train 40 --val 12 --test 12"


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    """The command's arguments, added to ``p``."""
    p.add_argument(
        "out", help="output folder (OCELOT layout: images/, annotations/, metadata.json)"
    )
    p.add_argument("--seed", type=int, default=0, help="different seeds give different slides")
    p.add_argument("--train", type=int, default=40, help="pairs in the train split")
    p.add_argument("--val", type=int, default=12, help="pairs in the val split")
    p.add_argument("--test", type=int, default=12, help="pairs in the test split")
    p.add_argument(
        "--geometry", help="YAML with a 'geometry:' mapping (cell_mpp, tissue_mpp, tile_size, ...)"
    )
    p.add_argument(
        "--tile-size", type=int, help="tile size in px (default 1024; smaller for quick CPU runs)"
    )
    p.add_argument(
        "--slide-size-um", type=float, help="side of each synthetic slide in µm (default 1700)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="render this many slides at once in worker processes (same files)",
    )
    p.add_argument(
        "--ambiguity",
        type=float,
        default=0.0,
        help="0 (default tissue, the demo's data) … 1: more and larger zones of small round tumour cells and of lymphocyte "
        "aggregates, whose cells look alike, so the tissue context decides the class (the Table-5 study data)",
    )


def synth_dataset(args: argparse.Namespace) -> str:
    """Write the dataset the parsed arguments describe; return the line that reports it.

    Raises :class:`~wsi_ocelot.errors.WsiOcelotError` (one line) for a bad value."""
    # deliberately deferred: the CLI's parser imports this module for its options
    from wsi_ocelot.config import load_geometry
    from wsi_ocelot.synthetic.dataset import SyntheticDatasetConfig, write_synthetic_dataset

    cfg = SyntheticDatasetConfig(
        seed=args.seed,
        train=args.train,
        val=args.val,
        test=args.test,
        geometry=load_geometry(args.geometry, args.tile_size),
        ambiguity=args.ambiguity,
    )
    if args.slide_size_um:
        cfg = dataclasses.replace(cfg, slide_size_um=args.slide_size_um)
    path = write_synthetic_dataset(args.out, cfg, workers=args.workers)
    amb = f" (ambiguity {args.ambiguity:g})" if args.ambiguity else ""
    return (
        f"wrote {args.train}/{args.val}/{args.test} train/val/test pairs{amb} to {args.out}; "
        f"metadata in {path}"
    )
