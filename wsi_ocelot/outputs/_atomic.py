"""Atomic file writes: write to a hidden temporary name in the target folder, rename on success.

An interrupted or failed write never leaves a file under the final name (DESIGN §5, §7).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from wsi_ocelot.errors import OutputWriteError


def open_temp(path: str | os.PathLike[str]) -> tuple[Path, Path, BinaryIO]:
    """Create a temporary file beside ``path``; return ``(final, temp, binary handle)``.

    Raises :class:`OutputWriteError` (one line) when the folder is missing or not writable.
    """
    final = Path(path)
    folder = final.parent if str(final.parent) else Path(".")
    if not folder.is_dir():
        raise OutputWriteError(final, "the output folder does not exist", f"create {folder} first or choose another --out")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=folder)
    except OSError as err:
        raise OutputWriteError(final, f"cannot create a file in {folder} ({err.strerror or err})",
                               "choose a writable output folder") from err
    return final, Path(name), os.fdopen(fd, "wb")


def commit_temp(temp: Path, final: Path) -> None:
    """Make ``temp`` visible under its final name (same folder, so the rename is atomic)."""
    os.chmod(temp, 0o644)  # mkstemp makes 0600 files; outputs are meant to be shared
    os.replace(temp, final)


def discard_temp(temp: Path) -> None:
    """Remove a temporary file after a failure; never raises."""
    with contextlib.suppress(OSError):
        temp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """``with atomic_open(p) as fh:`` writes bytes to a temporary file that becomes ``p`` only
    when the block ends without an exception; on an exception the temporary file is removed."""
    final, temp, fh = open_temp(path)
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        discard_temp(temp)
        raise
    commit_temp(temp, final)
