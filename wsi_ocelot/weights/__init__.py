"""Shipped weights. ``--model demo`` everywhere means :func:`demo_path`.

The demo checkpoint is Pred-to-inter-2 with a small encoder, trained on **synthetic**
data at the real OCELOT geometry (see ``training/README.md``). It is for the demo, tests
and benchmarks; it is not for real slides.
"""

from __future__ import annotations

import os
from pathlib import Path

from wsi_ocelot.errors import CheckpointError

DEMO_FILE = Path(__file__).resolve().parent / "demo.safetensors"


def demo_path() -> Path:
    """The shipped demo checkpoint; a one-line error if this build lacks it."""
    if not DEMO_FILE.is_file():
        raise CheckpointError(DEMO_FILE, "the demo weights are not in this installation",
                              "reinstall wsi-ocelot from a release, or train them with the command in training/README.md and pass --model PATH")
    return DEMO_FILE


def resolve_model(spec: str | os.PathLike[str] | None) -> Path:
    """``None`` or ``"demo"`` → the demo checkpoint; anything else is a path."""
    if spec is None or str(spec) == "demo":
        return demo_path()
    return Path(spec)
