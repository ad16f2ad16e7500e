"""What many test modules do the same way: start ``wsi-ocelot`` in a subprocess, give ``run`` the
tests' CPU options; make reader processes die part-way."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cli_argv(*args: str) -> list[str]:
    """``python -m wsi_ocelot ARGS``, with this interpreter."""
    return [sys.executable, "-m", "wsi_ocelot", *args]


#: What the test suite sets to run the eager path (tests/conftest.py); a test of ``auto`` drops them.
RUNTIME_ENV = ("WSI_OCELOT_RUNTIME", "WSI_OCELOT_PRECISION")


def run_cli(*args: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """``wsi-ocelot ARGS`` in a subprocess, to the end; stdout and stderr as text. ``kw``
    (``cwd``, ``env``, ...) go to :func:`subprocess.run`."""
    return subprocess.run(cli_argv(*args), capture_output=True, text=True, timeout=timeout, **kw)


def popen_cli(*args: str, **kw) -> subprocess.Popen:
    """``wsi-ocelot ARGS`` started in a subprocess, stdout and stderr piped as text."""
    return subprocess.Popen(
        cli_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def cpu_run_options(out: Path | str, model: Path | str, *, workers: int = 0) -> list[str]:
    """``--out OUT --model MODEL --device cpu --workers N``: where ``run`` writes, with what, on
    the CPU."""
    return ["--out", str(out), "--model", str(model), "--device", "cpu", "--workers", str(workers)]


def die_in_readers(
    monkeypatch,
    cls: type,
    when: Callable[[Any, int], bool],
    *,
    times: int,
    marker_dir: Path,
    code: int,
) -> None:
    """Reader processes (not this one) exit abruptly with ``code`` when they read item ``i`` of a
    ``cls`` where ``when(reader, i)``, the first ``times`` times (markers in ``marker_dir`` count
    across processes): a codec that takes its process down."""
    parent = os.getpid()
    orig = cls.__getitem__

    def getitem(self, i):
        if os.getpid() != parent and when(self, i):
            for k in range(times):
                try:
                    fd = os.open(marker_dir / f"death-{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    continue
                os.close(fd)
                os._exit(code)
        return orig(self, i)

    monkeypatch.setattr(cls, "__getitem__", getitem)


def write_small_dataset(root: Path, *, seed: int) -> Path:
    """A synthetic OCELOT-layout dataset at ``root``: 4 train, 2 val and 3 test images at 128 px
    tiles (seconds of training on a CPU)."""
    from wsi_ocelot.config import GeometryConfig
    from wsi_ocelot.synthetic.dataset import SyntheticDatasetConfig, write_synthetic_dataset

    write_synthetic_dataset(
        root,
        SyntheticDatasetConfig(
            seed=seed,
            train=4,
            val=2,
            test=3,
            geometry=GeometryConfig(tile_size=128, cell_margin=8, tissue_margin=16),
        ),
    )
    return root
