"""``manifest.journal.jsonl``: the append-only log of a batch's per-slide state changes.

Rewriting ``manifest.json`` after every slide costs time in proportion to the cohort, quadratic
over a batch. Instead each state change (a slide marked running, its done/failed record, ...)
appends one line here, whose cost does not depend on the cohort's size::

    {"seq": 17, "slide_id": "A-007", "record": {<the slide's whole new manifest entry>}}\\n

``seq`` numbers the changes of the output folder (it goes on across runs). ``manifest.json``
is the snapshot: it keeps ``journal_seq``, the last change it includes, and a reader
(:meth:`Manifest.load <wsi_ocelot.cohort.manifest.Manifest.load>`) applies the lines after it
in order. The driver compacts (writes ``manifest.json`` atomically, then empties this file)
when the journal holds more lines than the snapshot has slides (at least
:data:`COMPACT_FLOOR`), so the total work of compaction stays in proportion to the number of
changes: amortised O(1) per change.

Safety under SIGKILL at any instant:

* a line is written with one ``write`` of the whole line and flushed; a kill in the middle
  leaves a *torn* last line (no final newline), which readers ignore and the next writer cuts
  off before appending (:meth:`Journal.open`);
* a kill between writing the snapshot and emptying the journal leaves lines the snapshot
  already holds: their ``seq`` is at most the snapshot's ``journal_seq``, so they are skipped
  (replay is idempotent);
* a write that fails (a full disk) is cut back to the last whole line.

A slide's done/failed record is also ``fsync``'d (:data:`FSYNC`), so a power cut keeps every
finished result, as the atomic rewrites of ``manifest.json`` always did; a "running" mark is
only flushed (losing one to a power cut changes nothing: the slide runs again either way).
The fsync is about half the driver's own time per slide (0.3 to 0.6 ms of 0.8 to 1.1 ms at
1,000 and 10,000 slides on this project's machine: benchmarks/results/cohort_scale.md), nothing
next to a slide's minutes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from wsi_ocelot.errors import ConfigError

log = logging.getLogger(__name__)

JOURNAL_NAME = "manifest.journal.jsonl"
COMPACT_FLOOR = 256  # a journal shorter than this is never worth a compaction of its own
FSYNC = True  # fsync the durable lines (power-cut safe); a kill alone needs only the flush


def read_journal(path: str | os.PathLike[str]) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """The changes ``(seq, slide id, record)`` of the journal at ``path``, in order (none when
    there is no journal). A last line without its newline (a write cut short by a kill, or one
    being written right now) is ignored; a damaged whole line is a one-line :class:`ConfigError`.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(
            path,
            f"the batch journal cannot be read ({exc.strerror or exc})",
            "check the folder's permissions, or move the file away to fall back to manifest.json "
            "(slides it recorded run again)",
        ) from None
    end = data.rfind(b"\n") + 1  # whole lines only: what follows the last newline is torn
    for n, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            seq, sid, rec = int(item["seq"]), str(item["slide_id"]), item["record"]
            if not isinstance(rec, dict):
                raise TypeError("'record' is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                path,
                f"line {n} of the batch journal is damaged ({exc})",
                "delete that line (its slide's change is lost: the slide runs again), or move the "
                "file away to fall back to manifest.json",
            ) from None
        yield seq, sid, rec


class Journal:
    """The open journal of the driving process: appends whole lines, empties on compaction."""

    def __init__(self, path: Path, fh: IO[bytes], lines: int, *, fsync: bool = True):
        self.path = path
        self._fh = fh
        self.lines = lines  # whole lines in the file now
        self.fsync = fsync
        self.bytes_written = 0  # by this process, for the tests and the benchmark

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, fsync: bool | None = None) -> Journal:
        """Open (create) the journal at ``path`` for appending; a torn last line is cut off.
        ``fsync``: each line's (default :data:`FSYNC`)."""
        path = Path(path)
        fh = open(path, "ab")  # noqa: SIM115 - held open for the batch; closed by close()
        try:
            size = fh.seek(0, os.SEEK_END)
            with open(path, "rb") as rd:
                data = rd.read(size)
            end = data.rfind(b"\n") + 1
            if end != size:
                log.info(
                    "%s: cut off a torn last line (%d bytes) left by a killed run",
                    path,
                    size - end,
                )
                fh.truncate(end)
                fh.seek(0, os.SEEK_END)
            lines = data[:end].count(b"\n")
        except BaseException:
            fh.close()
            raise
        return cls(path, fh, lines, fsync=FSYNC if fsync is None else fsync)

    def append(
        self, seq: int, slide_id: str, record: dict[str, Any], *, durable: bool = True
    ) -> int:
        """Append one change as one line; return its size in bytes. ``durable``: fsync it too
        (when :attr:`fsync`). A write that fails (a full disk) is cut back to the last whole
        line before the error goes on."""
        line = (
            json.dumps(
                {"seq": seq, "slide_id": slide_id, "record": record},
                default=str,
                separators=(",", ":"),
            )
            + "\n"
        ).encode("utf-8")
        start = self._fh.tell()
        try:
            self._fh.write(line)
            self._fh.flush()
            if durable and self.fsync:
                os.fsync(self._fh.fileno())
        except BaseException:
            try:
                self._fh.truncate(start)
                self._fh.seek(start)
            except (OSError, ValueError):
                pass
            raise
        self.lines += 1
        self.bytes_written += len(line)
        return len(line)

    def clear(self) -> None:
        """Empty the journal (after the snapshot that holds its changes was written)."""
        self._fh.truncate(0)
        self._fh.seek(0)
        if self.fsync:
            os.fsync(self._fh.fileno())
        self.lines = 0

    def close(self) -> None:
        """Close the file, and remove it when it is empty."""
        if self._fh.closed:
            return
        empty = self.lines == 0 and self._fh.tell() == 0
        self._fh.close()
        if empty:
            self.path.unlink(missing_ok=True)
