"""``python -m wsi_ocelot.synthetic OUT [--seed S] [--train N --val N --test N] [--ambiguity A] [--workers W]``

A synthetic dataset in the OCELOT layout at the release geometry (1024 px pairs at ~0.2 /
~0.8 µm/px), as ``wsi-ocelot synth-dataset`` writes it, plus ``--ambiguity`` (0–1, default
0 = the same files as ``synth-dataset``): more and larger regions of small round tumour cells
inside the cancer area and of lymphocyte aggregates outside it, whose cells look alike, so
that the tissue context decides their class (see
:func:`wsi_ocelot.synthetic.dataset.ambiguous_params`). The Table-5 study data uses it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from wsi_ocelot.synthetic.dataset import SyntheticDatasetConfig, write_synthetic_dataset

    p = argparse.ArgumentParser(prog="python -m wsi_ocelot.synthetic", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output folder (images/, annotations/, metadata.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=40)
    p.add_argument("--val", type=int, default=12)
    p.add_argument("--test", type=int, default=12)
    p.add_argument("--ambiguity", type=float, default=0.0, help="0 (default tissue) … 1 (most context-dependent cells)")
    p.add_argument("--workers", type=int, default=0, help="render this many slides at once (same files)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = SyntheticDatasetConfig(seed=args.seed, train=args.train, val=args.val, test=args.test, ambiguity=args.ambiguity)
    except ValueError as err:
        p.error(str(err))
    path = write_synthetic_dataset(args.out, cfg, workers=args.workers)
    print(f"wrote {args.train}/{args.val}/{args.test} train/val/test pairs (ambiguity {args.ambiguity:g}) to {args.out}; metadata in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
