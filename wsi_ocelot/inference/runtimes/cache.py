"""Where exported graphs live and when they may be trusted (docs/runtimes.md).

One folder per key under ``$WSI_OCELOT_CACHE`` (default ``$XDG_CACHE_HOME/wsi-ocelot``, else
``~/.cache/wsi-ocelot``) ``/runtimes/``. The key is a hash of everything that decides what a
graph computes or how fast it runs: the checkpoint's SHA-256, the tile and injection sizes,
this package's graph version, the versions of torch, ONNX Runtime and OpenVINO, and the CPU's
model and kernel flags. ``build.json`` holds the key's material, the SHA-256 of every file
and each path's gate result; an entry whose material or files do not match is rebuilt,
never trusted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wsi_ocelot import __version__
from wsi_ocelot.atomic import write_json
from wsi_ocelot.inference.runtimes.spec import KERNEL_FLAGS, cpu_flags, runtime_version
from wsi_ocelot.sysinfo import cpu_model
from wsi_ocelot.weights import file_sha256

__all__ = ["GRAPH_VERSION", "CacheEntry", "cache_root", "key_material"]

#: bump when graphs.py or the gate change what a cached entry means
GRAPH_VERSION = 6


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
        return data

    def write(self, data: dict[str, Any]) -> None:
        """Record the files now in the folder (name → SHA-256) and save ``build.json`` atomically."""
        data["files"] = {p.name: file_sha256(p) for p in sorted(self.dir.glob("*.onnx"))}
        write_json(self.build_json, data, indent=1)


def graph_files(folder: Path, precision: str) -> dict[str, Path]:
    """The graph files a path at ``precision`` runs: the int8 path runs ``cell.int8.onnx`` with
    the fp32 ``tissue.onnx``; the others ``tissue.onnx`` and ``cell.onnx``."""
    files = {
        "tissue": folder / "tissue.onnx",
        "cell": folder / ("cell.int8.onnx" if precision == "int8" else "cell.onnx"),
    }
    return {name: path for name, path in files.items() if path.exists()}
