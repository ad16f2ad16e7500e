"""``python -m wsi_ocelot.synthetic OUT [...]``: the same as ``wsi-ocelot synth-dataset OUT [...]``.

Kept for the scripts and notes that call it this way; the options (including ``--ambiguity``,
see :func:`wsi_ocelot.synthetic.dataset.ambiguous_params`) are the verb's.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from wsi_ocelot.cli import main as cli_main

    return cli_main(["synth-dataset", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
