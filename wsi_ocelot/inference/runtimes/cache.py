"""Where exported graphs live and when they may be trusted (docs/runtimes.md).

One folder per key under ``$WSI_OCELOT_CACHE`` (default ``$XDG_CACHE_HOME/wsi-ocelot``, else
``~/.cache/wsi-ocelot``) ``/runtimes/``. The key is a hash of everything that decides what a
graph computes or how fast it runs: the checkpoint's SHA-256, the tile and injection sizes,
this package's graph version, the versions of torch, ONNX Runtime and OpenVINO, and the CPU's
model and kernel flags. ``build.json`` holds the key's material, the SHA-256 of every file
(the graphs and ``reference.npz``, the gate's fp32 outputs) and each path's gate result; an
entry whose material or files do not match is rebuilt, never trusted, and a file it does not
list (left by a build that died) is removed.

The gate's synthetic tile pairs depend only on the geometry and the generator, so they are kept
once for every checkpoint: ``runtimes/pairs/<key>.npz``, keyed by the geometry, count, seed and
a hash of the generator's source, checked against its own SHA-256 when read.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from wsi_ocelot import __version__
from wsi_ocelot.atomic import atomic_open, write_json
from wsi_ocelot.inference.runtimes.graphs import (
    PER_CONTEXT,
    CalibrationPairs,
    RenderedPairs,
    render_pairs,
)
from wsi_ocelot.inference.runtimes.spec import KERNEL_FLAGS, cpu_flags, runtime_version
from wsi_ocelot.model.checkpoint import CheckpointInfo
from wsi_ocelot.sysinfo import cpu_model
from wsi_ocelot.weights import file_sha256

log = logging.getLogger(__name__)

__all__ = ["GRAPH_VERSION", "CacheEntry", "cache_root", "cached_pairs", "key_material"]

#: bump when graphs.py or the gate change what a cached entry means
GRAPH_VERSION = 8

#: the files of an entry that ``build.json`` lists with their SHA-256
ENTRY_FILES = ("*.onnx", "*.npz")


def cache_root() -> Path:
    """``$WSI_OCELOT_CACHE``, else ``$XDG_CACHE_HOME/wsi-ocelot``, else ``~/.cache/wsi-ocelot``."""
    env = os.environ.get("WSI_OCELOT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "wsi-ocelot"


def key_material(
    checkpoint_sha256: str, tile: int, injection: tuple[int, int] | None
) -> dict[str, Any]:
    return {
        "checkpoint_sha256": checkpoint_sha256,
        "tile": tile,
        "injection": list(injection) if injection else None,
        "graph_version": GRAPH_VERSION,
        "wsi_ocelot": __version__,
        "torch": runtime_version("torch"),
        "onnxruntime": runtime_version("onnxruntime"),
        "openvino": runtime_version("openvino"),
        "cpu": cpu_model(),
        "cpu_flags": sorted(f for f in KERNEL_FLAGS if f in cpu_flags()),
    }


class CacheEntry:
    """One key's folder: its lock, its ``build.json`` and its graph files."""

    def __init__(self, material: dict[str, Any], root: Path | None = None):
        self.material = material
        digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]
        self.dir = (root or cache_root()) / "runtimes" / digest
        self.build_json = self.dir / "build.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the entry's lock (processes on one machine building the same key wait for the first)."""
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.dir.with_suffix(".lock"), "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def read(self) -> dict[str, Any]:
        """The entry's ``build.json`` if it can be trusted (same key material, every file it
        lists present with its recorded SHA-256), else an empty record after clearing the
        folder. Call under :meth:`locked`."""
        try:
            data = json.loads(self.build_json.read_text(encoding="utf-8"))
            ok = data.get("material") == self.material and all(
                (self.dir / name).is_file() and file_sha256(self.dir / name) == sha
                for name, sha in data.get("files", {}).items()
            )
        except (OSError, ValueError):
            data, ok = {}, False
        if not ok:
            if self.dir.exists():
                shutil.rmtree(self.dir, ignore_errors=True)
            data = {"material": self.material, "files": {}, "paths": {}}
        self.dir.mkdir(parents=True, exist_ok=True)
        for path in self._files():  # left by a build that died before build.json listed it
            if path.name not in data["files"]:
                path.unlink(missing_ok=True)
        return data

    def _files(self) -> list[Path]:
        return sorted(p for pattern in ENTRY_FILES for p in self.dir.glob(pattern))

    def write(self, data: dict[str, Any]) -> None:
        """Record the files now in the folder (name → SHA-256) and save ``build.json`` atomically."""
        data["files"] = {p.name: file_sha256(p) for p in self._files()}
        write_json(self.build_json, data, indent=1)


def graph_files(folder: Path, precision: str) -> dict[str, Path]:
    """The graph files a path at ``precision`` runs: the int8 path runs ``cell.int8.onnx`` with
    the fp32 ``tissue.onnx``; the others ``tissue.onnx`` and ``cell.onnx``."""
    files = {
        "tissue": folder / "tissue.onnx",
        "cell": folder / ("cell.int8.onnx" if precision == "int8" else "cell.onnx"),
    }
    return {name: path for name, path in files.items() if path.exists()}


def _generator_digest() -> str:
    """A hash of the synthetic generator's source: rendered pairs are stale when it changes."""
    folder = Path(__file__).resolve().parents[2] / "synthetic"
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _arrays_sha(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str((a.dtype.str, a.shape)).encode() + np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def cached_pairs(info: CheckpointInfo, n: int, seed: int, workers: int = 1) -> CalibrationPairs:
    """``graphs.render_pairs(info, n, seed, workers)`` as model inputs, rendered once per
    geometry and generator and kept as uint8 under ``runtimes/pairs/`` (the 12 cell tiles and 3
    contexts of a 1024 px build took 10 s to render in two threads on a 2-core AMD EPYC, and are
    46 MB). A file that fails its check is rendered anew; a cache that cannot be written costs
    only the time."""
    g = info.geometry
    material = {
        "tile": g.tile_size,
        "cell_mpp": g.cell_mpp,
        "tissue_mpp": g.tissue_mpp,
        "n": n,
        "seed": seed,
        "per_context": PER_CONTEXT,
        "generator": _generator_digest(),
    }
    text = json.dumps(material, sort_keys=True)
    path = (
        cache_root()
        / "runtimes"
        / "pairs"
        / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.npz"
    )
    try:
        with np.load(path) as z:
            kept = RenderedPairs(*(z[k] for k in RenderedPairs._fields))
            sha = str(z["sha256"])
            if str(z["material"]) == text and sha == _arrays_sha(*kept):
                return CalibrationPairs.from_rgb(kept, sha)
        log.debug("%s: stale or damaged, rendered anew", path)
    except (OSError, ValueError, KeyError):
        pass  # absent (or unreadable): rendered below
    rendered = render_pairs(info, n, seed, workers)
    sha = _arrays_sha(*rendered)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as fh:
            np.savez(fh, **rendered._asdict(), material=text, sha256=sha)
    except OSError as err:
        log.debug("%s: not kept (%s)", path, err)
    return CalibrationPairs.from_rgb(rendered, sha)
