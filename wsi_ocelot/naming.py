"""Output folder names: a slide's id is its file stem, made safe for a path."""

from __future__ import annotations

import os
import re
from pathlib import Path


def safe_name(raw: str) -> str:
    """``raw`` with every run of characters other than letters, digits, '.', '_' and '-'
    replaced by '_', and leading/trailing '.' and '_' removed (may be empty)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw.strip()).strip("._")


def slide_id_for(path: str | os.PathLike[str]) -> str:
    """The output folder name of a slide: its file stem (``.ome.tif(f)`` removed whole), made safe for a path."""
    stem = Path(path).name
    for ext in (".ome.tiff", ".ome.tif"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    else:
        stem = Path(stem).stem
    return safe_name(stem) or "slide"
