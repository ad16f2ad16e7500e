"""``manifest.json``: the status of every slide of a batch, written atomically.

Layout::

    {"version": 1, "updated": "<ISO time>", "model": ..., "slides": {
        "<slide-id>": {"path": ..., "status": "done" | "failed" | "running" | "pending",
                       "error": "<one-line message>" | null, "mpp": ..., "n_cells": ...,
                       "purity": ..., "runtime_s": ..., "timings": {...}, "attempts": n,
                       "started": ..., "finished": ...}}}

Only the process that drives the batch writes it (Dask workers return records to it), each
write goes to a temporary file that replaces the old one, so a kill at any moment leaves
either the previous or the new manifest, never a torn one.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any

from wsi_ocelot.atomic import write_text
from wsi_ocelot.errors import ConfigError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
DONE, FAILED, RUNNING, PENDING = "done", "failed", "running", "pending"  # pending: not attempted (the batch stopped)
STATUSES = (DONE, FAILED, RUNNING, PENDING)


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds")


class Manifest:
    """The per-slide status records of one output folder."""

    def __init__(self, out_dir: str | os.PathLike[str], slides: dict[str, dict[str, Any]] | None = None,
                 meta: dict[str, Any] | None = None):
        self.out_dir = Path(out_dir)
        self.slides: dict[str, dict[str, Any]] = slides or {}
        self.meta: dict[str, Any] = meta or {}

    @property
    def path(self) -> Path:
        return self.out_dir / MANIFEST_NAME

    @classmethod
    def load(cls, out_dir: str | os.PathLike[str]) -> Manifest:
        """The manifest of ``out_dir`` (empty when there is none yet)."""
        out_dir = Path(out_dir)
        path = out_dir / MANIFEST_NAME
        if not path.exists():
            return cls(out_dir)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            slides = data["slides"]
            if not isinstance(slides, dict):
                raise TypeError("'slides' is not an object")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(path, f"the batch manifest is unreadable ({exc})",
                              "move it away to start the batch afresh (finished slide folders are kept and redone), or restore it") from None
        meta = {k: v for k, v in data.items() if k != "slides"}
        return cls(out_dir, slides, meta)

    def save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        data = {"version": 1, **{k: v for k, v in self.meta.items() if k != "version"}, "updated": now_iso(), "slides": self.slides}
        write_text(self.path, json.dumps(data, indent=2, default=str) + "\n")

    # -- queries ---------------------------------------------------------------------
    def status(self, slide_id: str) -> str | None:
        rec = self.slides.get(slide_id)
        return None if rec is None else rec.get("status")

    def is_done(self, slide_id: str, path: str) -> bool:
        """Done, for the same slide file, and its folder still there."""
        rec = self.slides.get(slide_id)
        if not rec or rec.get("status") != DONE:
            return False
        if os.path.abspath(rec.get("path", "")) != os.path.abspath(path):
            log.warning("%s: the manifest's record for '%s' is for %s; running it again", path, slide_id, rec.get("path"))
            return False
        if not (self.out_dir / slide_id / "purity.json").is_file():
            log.warning("%s: marked done but %s/ is missing; running it again", path, self.out_dir / slide_id)
            return False
        return True

    def counts(self) -> dict[str, int]:
        """Slides per status: done, failed and running always, pending when there are any."""
        out = dict.fromkeys((DONE, FAILED, RUNNING), 0)
        for rec in self.slides.values():
            out[rec.get("status", FAILED)] = out.get(rec.get("status", FAILED), 0) + 1
        return out

    # -- updates ---------------------------------------------------------------------
    def mark_running(self, slide_id: str, path: str, *, attempt: int = 1, worker: str | None = None,
                     save: bool = True) -> None:
        """Record ``slide_id`` as running (``save=False`` when marking many at once: call :meth:`save` after)."""
        rec = {"path": path, "status": RUNNING, "error": None, "attempts": attempt, "started": now_iso()}
        if worker:
            rec["worker"] = worker
        self.slides[slide_id] = rec
        if save:
            self.save()

    def mark_pending(self, jobs: list[tuple[str, str]], reason: str) -> None:
        """Record slides ``(slide_id, path)`` the batch stopped before attempting (not saved:
        call :meth:`save` after)."""
        for sid, path in jobs:
            self.slides[sid] = {"path": path, "status": PENDING, "error": reason}

    def record(self, slide_id: str, record: dict[str, Any]) -> None:
        """Store a finished slide's record (status done or failed) and save."""
        old = self.slides.get(slide_id, {})
        rec = {**{k: old[k] for k in ("started",) if k in old}, **record, "finished": now_iso()}
        self.slides[slide_id] = rec
        self.save()
