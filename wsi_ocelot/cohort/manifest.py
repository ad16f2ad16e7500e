"""``manifest.json``: the status of every slide of a batch, written atomically.

Layout::

    {"version": 1, "updated": "<ISO time>", "model": ..., "slides": {
        "<slide-id>": {"path": ..., "status": "done" | "failed" | "running" | "pending",
                       "error": "<one-line message>" | null, "mpp": ..., "n_cells": ...,
                       "purity": ..., "runtime_s": ..., "timings": {...}, "attempts": n,
                       "started": ..., "finished": ..., "mpp_override": ..., "model_sha256": ...,
                       "identity": {"size": ..., "mtime_ns": ..., "head_sha256": ...}}}}

``path`` is absolute, so a batch resumes from any working directory. ``identity`` recognises
the same slide file at another path (a cohort moved to a new mount point): same size and the
same SHA-256 of its first and last 64 KiB. A done slide is run again when its MPP override or
the model changed, or its file did; a *different* slide with the same id never replaces a
finished result (:meth:`Manifest.resume`).

Only the process that drives the batch writes it (Dask workers return records to it). A slide's
state change costs O(1) in the cohort's size: it is appended to the journal beside the manifest
(``manifest.journal.jsonl``, :mod:`wsi_ocelot.cohort.journal`), and ``manifest.json`` itself is
the snapshot, rewritten whole only at checkpoints (:meth:`Manifest.checkpoint_due`: when the
journal holds more lines than the snapshot has slides, or every few minutes) and at the end of a
batch; it keeps ``journal_seq``, the last change it holds. :meth:`Manifest.load` reads the snapshot
and replays the journal after it, so every reader (resume, ``wsi-ocelot status``, the reports)
sees each change as soon as it is appended. A snapshot goes to a temporary file that replaces the
old one, so a kill at any moment leaves either the previous or the new manifest, never a torn one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_ocelot.atomic import write_text
from wsi_ocelot.cohort.journal import COMPACT_FLOOR, JOURNAL_NAME, Journal, read_journal
from wsi_ocelot.errors import ConfigError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
DONE, FAILED, RUNNING, PENDING = (
    "done",
    "failed",
    "running",
    "pending",
)  # pending: not attempted (the batch stopped)
STATUSES = (DONE, FAILED, RUNNING, PENDING)


IDENTITY_BYTES = 64 * 1024  # hashed at each end of a slide file to recognise it elsewhere
CHECKPOINT_EVERY_S = 300.0  # a snapshot at least this often while changes come in (summary.csv too)
CHECKPOINT_COST_SHARE = (
    0.02  # ... but never more of the time than this: on a huge cohort, less often
)
LOAD_TRIES = 5  # a reader that raced a compaction reads again


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds")


def file_identity(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Size, mtime and the SHA-256 of the first and last :data:`IDENTITY_BYTES` of a slide file
    (cheap on any size: two small reads), or None when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            h = hashlib.sha256(fh.read(IDENTITY_BYTES))
            if st.st_size > 2 * IDENTITY_BYTES:
                fh.seek(-IDENTITY_BYTES, os.SEEK_END)
                h.update(fh.read(IDENTITY_BYTES))
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "head_sha256": h.hexdigest()}


def _same_content(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    return bool(a and b) and a["size"] == b["size"] and a["head_sha256"] == b["head_sha256"]  # type: ignore[index]


def _changed(path: str, old: dict[str, Any]) -> bool:
    """Whether the file at ``path`` differs from its recorded identity: the same size and mtime
    answer "no" from a stat alone (a resume of 10,000 done slides reads nothing); otherwise its
    content decides (a copy over itself with a new mtime is the same slide)."""
    try:
        st = os.stat(path)
    except OSError:
        return False  # gone: the input check reports it before the batch
    if (st.st_size, st.st_mtime_ns) == (old.get("size"), old.get("mtime_ns")):
        return False
    return not _same_content(old, file_identity(path))


@dataclass(frozen=True)
class Resume:
    """What a batch does with one of its slides, given the manifest (:meth:`Manifest.resume`).

    ``done``: keep the finished result (skip the slide). ``why``: one line for the log, why a
    slide marked done runs again or how a moved file was recognised. ``conflict``: the slide
    must not run (another slide's finished result holds its id).
    """

    done: bool
    why: str | None = None
    conflict: ConfigError | None = None


class Manifest:
    """The per-slide status records of one output folder: ``manifest.json`` and its journal."""

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        slides: dict[str, dict[str, Any]] | None = None,
        meta: dict[str, Any] | None = None,
        *,
        journal_seq: int = 0,
        journal_lines: int = 0,
    ):
        self.out_dir = Path(out_dir)
        self.slides: dict[str, dict[str, Any]] = slides or {}
        self.meta: dict[str, Any] = meta or {}
        self.seq = journal_seq  # the last change recorded (snapshot or journal)
        self._journal: Journal | None = None  # opened by the first change this process records
        self._journal_lines = journal_lines  # lines in the journal file when it is not open
        self._checkpoint_t = time.monotonic()
        self._checkpoint_cost_s = 0.0

    @property
    def path(self) -> Path:
        return self.out_dir / MANIFEST_NAME

    @property
    def journal_path(self) -> Path:
        return self.out_dir / JOURNAL_NAME

    @property
    def journal_lines(self) -> int:
        """Changes in the journal since the last snapshot (replayed by every load)."""
        return self._journal.lines if self._journal is not None else self._journal_lines

    @property
    def journal_bytes_written(self) -> int:
        """Bytes this object appended to the journal (the cost of its changes)."""
        return self._journal.bytes_written if self._journal is not None else 0

    @classmethod
    def load(cls, out_dir: str | os.PathLike[str]) -> Manifest:
        """The manifest of ``out_dir``: the snapshot ``manifest.json`` with the journal's changes
        after it applied (empty when there is neither yet).

        Safe while a batch writes the folder: a load that raced a compaction (the snapshot
        replaced, the journal emptied, between its two reads) sees the snapshot's file change and
        reads again."""
        out_dir = Path(out_dir)
        path = out_dir / MANIFEST_NAME
        for _ in range(LOAD_TRIES):
            data, ident = cls._read_snapshot(path)
            changes = list(read_journal(out_dir / JOURNAL_NAME))
            try:
                st = os.stat(path)
                now: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                now = None
            if now == ident:
                break
        slides = data["slides"]
        meta = {k: v for k, v in data.items() if k not in ("slides", "journal_seq")}
        seq = int(data.get("journal_seq") or 0)
        for change_seq, sid, rec in changes:
            if change_seq > seq:  # older ones are in the snapshot already (replay is idempotent)
                slides[sid] = rec
                seq = change_seq
        return cls(out_dir, slides, meta, journal_seq=seq, journal_lines=len(changes))

    @staticmethod
    def _read_snapshot(path: Path) -> tuple[dict[str, Any], tuple[int, int, int] | None]:
        """The snapshot's content and its file's (inode, mtime, size) (None: no snapshot yet)."""
        try:
            with open(path, encoding="utf-8") as fh:
                st = os.fstat(fh.fileno())
                ident = (st.st_ino, st.st_mtime_ns, st.st_size)
                data = json.loads(fh.read())
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            if not isinstance(data["slides"], dict):
                raise TypeError("'slides' is not an object")
        except FileNotFoundError:
            return {"slides": {}}, None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                path,
                f"the batch manifest is unreadable ({exc})",
                "move it away to start the batch afresh (finished slide folders are kept and redone), or restore it",
            ) from None
        return data, ident

    def save(self) -> None:
        """Write the snapshot ``manifest.json`` (atomically) with every change so far, then empty
        the journal (a kill in between leaves lines the snapshot holds: replay skips them)."""
        t0 = time.monotonic()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        data = {
            "version": 1,
            **{k: v for k, v in self.meta.items() if k not in ("version", "journal_seq")},
            "updated": now_iso(),
            "journal_seq": self.seq,
            "slides": self.slides,
        }
        write_text(self.path, json.dumps(data, indent=2, default=str) + "\n")
        if self._journal is not None:
            self._journal.clear()
        elif self._journal_lines or self.journal_path.exists():
            self.journal_path.unlink(missing_ok=True)
            self._journal_lines = 0
        self._checkpoint_t = time.monotonic()
        self._checkpoint_cost_s = self._checkpoint_t - t0

    def checkpoint_due(self) -> bool:
        """Whether a snapshot (:meth:`save`, and ``summary.csv`` with it) is due: the journal holds
        more lines than the snapshot has slides (at least :data:`COMPACT_FLOOR`), so the work of
        all snapshots stays in proportion to the changes; or changes wait since
        :data:`CHECKPOINT_EVERY_S` (longer where a snapshot is slow: at most
        :data:`CHECKPOINT_COST_SHARE` of the time goes to them)."""
        lines = self.journal_lines
        if lines > max(COMPACT_FLOOR, len(self.slides)):
            return True
        every = max(CHECKPOINT_EVERY_S, self._checkpoint_cost_s / CHECKPOINT_COST_SHARE)
        return lines > 0 and time.monotonic() - self._checkpoint_t >= every

    def close(self) -> None:
        """Close the journal (removed when empty: after the last snapshot)."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def _append(self, slide_id: str, *, durable: bool = True) -> None:
        """Record the slide's current entry as one journal line (O(1) in the cohort's size);
        ``durable``: fsync'd too (a finished slide's record)."""
        if self._journal is None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._journal = Journal.open(self.journal_path)
        self._journal.append(self.seq + 1, slide_id, self.slides[slide_id], durable=durable)
        self.seq += 1

    # -- queries ---------------------------------------------------------------------
    def status(self, slide_id: str) -> str | None:
        rec = self.slides.get(slide_id)
        return None if rec is None else rec.get("status")

    def resume(
        self,
        slide_id: str,
        path: str,
        *,
        mpp: float | None = None,
        model_sha256: str | None = None,
        overwrite: bool = False,
    ) -> Resume:
        """Whether the slide ``path`` (absolute) under ``slide_id`` is done, runs (again), or
        must not run because a different slide's finished result holds the id.

        Done means: marked done, its folder still there, for the same file (the same path, or
        the same content at a new path: the record follows it), the same MPP override and the
        same model. A record without a field (older manifests) does not count against it.
        """
        rec = self.slides.get(slide_id)
        if not rec:
            return Resume(False)
        done = rec.get("status") == DONE and (self.out_dir / slide_id / "purity.json").is_file()
        old_path = str(rec.get("path", ""))
        same_path = os.path.abspath(old_path) == os.path.abspath(path)
        old_ident = rec.get("identity")
        ident = (
            None if same_path else file_identity(path)
        )  # two small reads, only when the path differs
        moved = not same_path and _same_content(old_ident, ident)
        if not same_path and not moved:
            if not done:
                return Resume(
                    False,
                    f"{slide_id}: the record of {old_path} ({rec.get('status')}) is replaced by {path}",
                )
            if overwrite:
                return Resume(
                    False,
                    f"{slide_id}: replacing the finished result of {old_path} with {path} (--overwrite)",
                )
            return Resume(
                False,
                conflict=ConfigError(
                    path,
                    f"its id '{slide_id}' already holds the finished result of a different slide, {old_path}, in {self.out_dir}",
                    "give it a distinct id (an 'id' column in a CSV manifest), run it into another --out, "
                    "or pass --overwrite to replace that result",
                ),
            )
        if not done:
            if rec.get("status") == DONE:
                return Resume(
                    False,
                    f"{slide_id}: marked done but {self.out_dir / slide_id}/ is missing; running it again",
                )
            return Resume(False)
        if overwrite:
            return Resume(False)
        if same_path and old_ident and _changed(path, old_ident):
            return Resume(False, f"{slide_id}: {path} changed since it was done; running it again")
        if "mpp_override" in rec and rec["mpp_override"] != mpp:

            def show(v: float | None) -> str:
                return "none" if v is None else f"{v:g}"

            return Resume(
                False,
                f"{slide_id}: the MPP override changed ({show(rec['mpp_override'])} -> {show(mpp)}); running it again",
            )
        if model_sha256 and rec.get("model_sha256") and rec["model_sha256"] != model_sha256:
            return Resume(
                False,
                f"{slide_id}: done with another model ({rec.get('model') or 'unknown'}); running it again",
            )
        if moved:
            rec.update(path=path, moved_from=old_path, identity={**rec["identity"], **ident})  # type: ignore[dict-item]
            return Resume(
                True,
                f"{slide_id}: recognised {path} as {old_path} moved (same size and the same hash of its "
                "first and last 64 KiB); its result is kept",
            )
        return Resume(True)

    def counts(self) -> dict[str, int]:
        """Slides per status: done, failed and running always, pending when there are any."""
        out = dict.fromkeys((DONE, FAILED, RUNNING), 0)
        for rec in self.slides.values():
            out[rec.get("status", FAILED)] = out.get(rec.get("status", FAILED), 0) + 1
        return out

    # -- updates ---------------------------------------------------------------------
    def mark_running(
        self,
        slide_id: str,
        path: str,
        *,
        attempt: int = 1,
        worker: str | None = None,
        save: bool = True,
    ) -> None:
        """Record ``slide_id`` as running: one journal line (``save=False`` when marking many at
        once: call :meth:`save` after)."""
        rec = {
            "path": path,
            "status": RUNNING,
            "error": None,
            "attempts": attempt,
            "started": now_iso(),
        }
        if worker:
            rec["worker"] = worker
        self.slides[slide_id] = rec
        if save:
            self._append(slide_id, durable=False)  # a power cut losing it changes nothing

    def mark_pending(self, jobs: list[tuple[str, str]], reason: str) -> None:
        """Record slides ``(slide_id, path)`` the batch stopped before attempting (not saved:
        call :meth:`save` after)."""
        for sid, path in jobs:
            self.slides[sid] = {"path": path, "status": PENDING, "error": reason}

    def record(self, slide_id: str, record: dict[str, Any]) -> None:
        """Store a finished slide's record (status done or failed): one journal line."""
        old = self.slides.get(slide_id, {})
        rec = {**{k: old[k] for k in ("started",) if k in old}, **record, "finished": now_iso()}
        self.slides[slide_id] = rec
        self._append(slide_id)
