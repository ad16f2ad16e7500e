"""Output folder names: a slide's id is its file stem, made safe for a path."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

#: The longest slide id: a folder name must stay under the file systems' 255 bytes with the
#: ``.<id>.partial-<pid>`` / ``.<id>.old-<pid>`` names it is built under.
MAX_ID = 120


def safe_name(raw: str) -> str:
    """``raw`` with every run of characters other than letters, digits, '.', '_' and '-'
    replaced by '_', and leading/trailing '.' and '_' removed (may be empty). A name longer
    than :data:`MAX_ID` is cut and ends in 8 hex digits of a hash of the whole ``raw``, so
    two long names that share a beginning stay apart."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", raw.strip()).strip("._")
    if len(name) > MAX_ID:
        digest = hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        name = name[: MAX_ID - 9].rstrip("._-") + "-" + digest
    return name


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
