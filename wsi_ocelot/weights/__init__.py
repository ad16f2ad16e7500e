"""Shipped weights. ``--model demo`` everywhere means :func:`demo_path`.

The demo checkpoint is Pred-to-inter-2 with a small encoder, trained on **synthetic**
data at the real OCELOT geometry (see ``training/README.md``). It is for the demo, tests
and benchmarks; it is not for real slides.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from wsi_ocelot.errors import CheckpointError

DEMO_FILE = Path(__file__).resolve().parent / "demo.safetensors"

#: What ``purity.json``, the manifest, the Zarr attributes and the report say when the demo weights ran.
SYNTHETIC_ONLY_NOTE = (
    "synthetic-only weights: the demo model was trained on synthetic slides, so its cells and purity "
    "on real slides mean nothing; train on your data (training/README.md) and pass --model PATH"
)


def demo_path() -> Path:
    """The shipped demo checkpoint; a one-line error if this build lacks it."""
    if not DEMO_FILE.is_file():
        raise CheckpointError(
            DEMO_FILE,
            "the demo weights are not in this installation",
            "reinstall wsi-ocelot from a release, or train them with the command in training/README.md and pass --model PATH",
        )
    return DEMO_FILE


def resolve_model(spec: str | os.PathLike[str] | None) -> Path:
    """``None`` or ``"demo"`` → the demo checkpoint; anything else is a path."""
    if spec is None or str(spec) == "demo":
        return demo_path()
    return Path(spec)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a weights file, read in 1 MiB blocks (remembered while its size and mtime stay)."""
    path = Path(path)
    st = path.stat()
    return _sha256_of(path, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=8)
def _sha256_of(
    path: Path, size: int, mtime_ns: int
) -> str:  # size and mtime: a changed file is hashed anew
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_demo_weights(path: str | os.PathLike[str]) -> bool:
    """True for the shipped demo checkpoint, also when copied elsewhere (same bytes)."""
    p = Path(path)
    if not p.is_file() or not DEMO_FILE.is_file():
        return False
    if p.resolve() == DEMO_FILE.resolve():
        return True
    return p.stat().st_size == DEMO_FILE.stat().st_size and file_sha256(p.resolve()) == file_sha256(
        DEMO_FILE
    )


def weights_note(path: str | os.PathLike[str]) -> str | None:
    """The note every output of a run with these weights carries (:data:`SYNTHETIC_ONLY_NOTE`
    for the demo weights), or None."""
    return SYNTHETIC_ONLY_NOTE if is_demo_weights(path) else None
