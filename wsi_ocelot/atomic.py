"""Atomic writes: every file and result folder appears complete under its final name or not
at all (docs/architecture.md, *Faults*). The one home of temporary names, fsync and clean-up.

Files are written to a hidden temporary name in the target folder (``.NAME.XXXX.part``),
flushed and fsync'd, then renamed over the final name; on any exception the temporary file
is removed. A result folder is built under a hidden ``.ID.partial-PID`` name and swapped in
with :func:`publish_folder`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self

from wsi_ocelot.errors import OutputWriteError

log = logging.getLogger(__name__)

__all__ = [
    "StreamedFile",
    "StreamedWriter",
    "atomic_open",
    "atomic_path",
    "commit_temp",
    "discard_temp",
    "open_temp",
    "partial_folder",
    "publish_folder",
    "write_bytes",
    "write_json",
    "write_text",
]


def _temp_name(final: Path) -> Path:
    folder = final.parent if str(final.parent) else Path(".")
    if not folder.is_dir():
        raise OutputWriteError(
            final,
            "the output folder does not exist",
            f"create {folder} first or choose another --out",
        )
    try:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=folder)
    except OSError as err:
        raise OutputWriteError(
            final,
            f"cannot create a file in {folder} ({err.strerror or err})",
            "choose a writable output folder",
        ) from err
    os.close(fd)
    return Path(name)


def open_temp(path: str | os.PathLike[str]) -> tuple[Path, Path, BinaryIO]:
    """Create a temporary file beside ``path`` for a streamed write; return ``(final, temp,
    binary handle)``. Finish with :func:`commit_temp` or :func:`discard_temp`.

    Raises :class:`OutputWriteError` (one line) when the folder is missing or not writable.
    """
    final = Path(path)
    temp = _temp_name(final)
    return final, temp, open(temp, "wb")  # noqa: SIM115 - the caller owns the handle


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def commit_temp(temp: Path, final: Path) -> None:
    """Make ``temp`` visible under its final name (same folder, so the rename is atomic)."""
    os.chmod(temp, 0o644)  # mkstemp makes 0600 files; outputs are meant to be shared
    os.replace(temp, final)


def discard_temp(temp: Path) -> None:
    """Remove a temporary file after a failure; never raises."""
    with contextlib.suppress(OSError):
        temp.unlink()


class StreamedFile:
    """A file written as a stream (a writer holding it for a whole slide) under a temporary name
    beside ``path``: ``raw`` is its binary handle; :meth:`commit` flushes, fsyncs and gives it
    its final name; :meth:`discard` closes and removes it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.final, self.temp, self.raw = open_temp(path)

    def commit(self) -> Path:
        """Flush, fsync, close and rename to the final name; return it."""
        self.raw.flush()
        os.fsync(self.raw.fileno())
        self.raw.close()
        commit_temp(self.temp, self.final)
        return self.final

    def finish(self, last: Callable[[], Any], *closers: Any) -> Path:
        """Run ``last`` (the writer's closing bytes; it ends the writer's own streams over
        ``raw``), then :meth:`commit`; if either fails, :meth:`discard` with ``closers`` and
        re-raise."""
        try:
            last()
            return self.commit()
        except BaseException:
            self.discard(*closers)
            raise

    def discard(self, *closers: Any) -> None:
        """Call ``closers`` (the writer's own streams over ``raw``), close ``raw`` and remove the
        file; never raises (the file is being thrown away)."""
        for close in (*closers, self.raw.close):
            with contextlib.suppress(Exception):
                close()
        discard_temp(self.temp)


class StreamedWriter:
    """Base of a writer that streams one file through a :class:`StreamedFile` (``self._file``,
    set by the subclass): ``close()`` writes its closing bytes (``_end``) and gives the file its
    final name, ``abort()`` throws it away; as a context manager it closes on success and aborts
    on an exception. ``_what`` names the rows in the log line; ``_closers`` are the subclass's
    own streams over ``raw``, closed when the file is thrown away."""

    _file: StreamedFile
    _closed: bool = False
    _what: str = "rows"
    count: int = 0

    def _end(self) -> None:  # pragma: no cover - each writer has its own
        raise NotImplementedError

    def _closers(self) -> tuple[Callable[[], Any], ...]:
        return ()

    def close(self) -> Path:
        """Finish the file and move it to its final name; return the path."""
        if self._closed:
            return self._file.final
        self._closed = True
        self._file.finish(self._end, *self._closers())
        log.debug("wrote %d %s to %s", self.count, self._what, self._file.final)
        return self._file.final

    def abort(self) -> None:
        """Drop everything written so far: close and remove the temporary file."""
        if self._closed:
            return
        self._closed = True
        self._file.discard(*self._closers())
        log.debug("discarded partial %s", self._file.final)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """``with atomic_path(p) as tmp:`` gives a temporary path beside ``p`` for a writer that
    wants a file name (safetensors, zarr, numpy); it becomes ``p`` when the block ends
    without an exception (after an fsync), and is removed otherwise."""
    final = Path(path)
    temp = _temp_name(final)
    try:
        yield temp
        _fsync(temp)
    except BaseException:
        discard_temp(temp)
        raise
    commit_temp(temp, final)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "wb", encoding: str = "utf-8"
) -> Iterator[Any]:
    """``with atomic_open(p) as fh:`` writes to a temporary file that becomes ``p`` only when
    the block ends without an exception; ``mode`` is ``"wb"`` or ``"w"`` (text, ``encoding``)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    final, temp, fh = open_temp(path)
    out = fh if mode == "wb" else io.TextIOWrapper(fh, encoding=encoding)
    try:
        yield out
        out.flush()
        os.fsync(fh.fileno())
    except BaseException:
        out.close()
        discard_temp(temp)
        raise
    out.close()
    commit_temp(temp, final)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return the path."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; return the path."""
    return write_bytes(path, text.encode(encoding))


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (with a final newline when indented) to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=indent) + ("\n" if indent is not None else ""))


def partial_folder(out_root: str | os.PathLike[str], name: str) -> Path:
    """A fresh, empty hidden folder ``<out_root>/.<name>.partial-<pid>`` to build a result in."""
    work = Path(out_root) / f".{name}.partial-{os.getpid()}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return work


def publish_folder(work: Path, final: Path) -> None:
    """Swap the finished folder ``work`` in as ``final`` (replacing an earlier ``final``): two
    renames in one folder, so a reader sees the old result or the new one, never a mix."""
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(work, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, final)
