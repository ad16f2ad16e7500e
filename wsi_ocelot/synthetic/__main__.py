"""``python -m wsi_ocelot.synthetic OUT [...]``: the same as ``wsi-ocelot synth-dataset OUT [...]``.

Kept for the scripts and notes that call it this way; both run
:func:`wsi_ocelot.synthetic.command.synth_dataset` with the same options (including
``--ambiguity``, see :func:`wsi_ocelot.synthetic.dataset.ambiguous_params`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from wsi_ocelot.errors import WsiOcelotError
from wsi_ocelot.synthetic.command import (
    DESCRIPTION,
    EXAMPLE,
    add_dataset_arguments,
    synth_dataset,
)

EXIT_USER_ERROR = 2  # as the CLI's


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wsi_ocelot.synthetic",
        description=DESCRIPTION,
        epilog=f"example:\n  {EXAMPLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataset_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # an entry point, as cli.py
    try:
        print(synth_dataset(args))
    except WsiOcelotError as err:
        print(f"error: {err.one_line()}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
