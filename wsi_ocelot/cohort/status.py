"""``wsi-ocelot status OUT``: where a batch stands, while it runs or after it.

Read from ``manifest.json`` and its journal (:meth:`Manifest.load`: the driving process appends
every slide's change to the journal as it happens, and writes the snapshot at checkpoints) and
the batch's lock: counts per status, the running batch's throughput and ETA (its own slides: those it marked
to run, finished since it started), and every failed slide with its one-line error.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_ocelot.cohort.manifest import DONE, FAILED, MANIFEST_NAME, PENDING, RUNNING, Manifest
from wsi_ocelot.errors import ConfigError

LOCK_NAME = ".wsi-ocelot.lock"  # the batch's lock (cohort.batch): "<host> <pid>" while a run writes the folder


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class BatchStatus:
    """Where the batch in ``out_dir`` stands. ``running``: a live process holds the folder's lock;
    ``run_*``: the running batch's own slides (or the last run's, when none runs)."""

    out_dir: Path
    counts: dict[str, int]
    running: bool
    run_total: int | None = None
    run_finished: int | None = None
    elapsed_s: float | None = None
    failed: list[tuple[str, str]] = field(default_factory=list)  # (slide id, one-line error)
    last_run: dict[str, Any] = field(default_factory=dict)

    @property
    def slides_per_hour(self) -> float | None:
        if not self.run_finished or not self.elapsed_s:
            return None
        return self.run_finished / self.elapsed_s * 3600.0

    @property
    def eta_s(self) -> float | None:
        rate = self.slides_per_hour
        if not self.running or rate is None or self.run_total is None or self.run_finished is None:
            return None
        return (self.run_total - self.run_finished) / rate * 3600.0

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "running": self.running,
            "counts": self.counts,
            "run_total": self.run_total,
            "run_finished": self.run_finished,
            "elapsed_s": self.elapsed_s,
            "slides_per_hour": self.slides_per_hour,
            "eta_s": self.eta_s,
            "failed": [{"slide_id": s, "error": e} for s, e in self.failed],
            "last_run": self.last_run,
        }


def _parse(ts: Any) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(str(ts))
    except (TypeError, ValueError):
        return None


def _lock_alive(out: Path) -> bool:
    try:
        host, pid = (out / LOCK_NAME).read_text().split()
    except (OSError, ValueError):
        return False
    if host != socket.gethostname():
        return True  # another machine's run: trust the lock
    try:
        return pid_alive(int(pid))
    except ValueError:
        return False


def batch_status(out_dir: str | os.PathLike[str]) -> BatchStatus:
    """The status of the batch output folder ``out_dir`` (a one-line error when it is not one)."""
    out = Path(out_dir)
    if not (out / MANIFEST_NAME).is_file():
        raise ConfigError(
            out, "no batch here (no manifest.json)", "pass the --out folder of a `wsi-ocelot run`"
        )
    m = Manifest.load(out)
    running = _lock_alive(out)
    run = m.meta.get("current_run") if running else None
    counts = m.counts()
    failed = sorted(
        (sid, str(r.get("error") or "")) for sid, r in m.slides.items() if r.get("status") == FAILED
    )
    now = _dt.datetime.now(_dt.UTC)
    if run:
        started = _parse(run.get("started"))
        ids = list(run.get("to_run") or [])
        fin = 0
        for sid in ids:
            rec = m.slides.get(sid) or {}
            t = _parse(rec.get("finished"))
            if (
                rec.get("status") in (DONE, FAILED)
                and t is not None
                and started is not None
                and t >= started
            ):
                fin += 1
        elapsed = (now - started).total_seconds() if started else None
        return BatchStatus(
            out, counts, True, len(ids), fin, elapsed, failed, m.meta.get("last_run") or {}
        )
    last = m.meta.get("last_run") or {}
    return BatchStatus(
        out,
        counts,
        running,
        last.get("ran"),
        (last.get("done") or 0) + (last.get("failed") or 0) if last else None,
        last.get("wall_s"),
        failed,
        last,
    )


def format_duration(s: float) -> str:
    """``s`` seconds as "42 s", "3 min 05 s" or "1 h 07 min" ("?" for NaN)."""
    if s != s:  # nan
        return "?"
    s = int(round(s))
    return (
        f"{s // 3600} h {s % 3600 // 60:02d} min"
        if s >= 3600
        else (f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s")
    )


def format_status(st: BatchStatus, shown: int = 20) -> str:
    """A few lines for the terminal: state, counts, throughput and ETA, the failed slides."""
    c = st.counts
    parts = [f"{c.get(DONE, 0)} done", f"{c.get(FAILED, 0)} failed"]
    if c.get(RUNNING):
        parts.append(
            f"{c[RUNNING]} {'running' if st.running else 'left running by a killed run (rerun to redo them)'}"
        )
    if c.get(PENDING):
        parts.append(f"{c[PENDING]} pending")
    lines = [
        f"{st.out_dir}: {'a batch is running' if st.running else 'no batch running'}; "
        + ", ".join(parts)
    ]
    if st.running and st.run_total is not None:
        rate = st.slides_per_hour
        eta = st.eta_s
        lines.append(
            f"this run: {st.run_finished} of {st.run_total} slide(s) finished in {format_duration(st.elapsed_s or 0)}"
            + (
                f", {rate:.0f} slides/hour, ETA {format_duration(eta)}"
                if rate and eta is not None
                else ""
            )
        )
    elif st.last_run:
        lr = st.last_run
        rate = st.slides_per_hour
        lines.append(
            f"last run: {lr.get('done', 0)} done, {lr.get('failed', 0)} failed, {lr.get('skipped', 0)} skipped"
            + (f", {lr.get('pending')} pending" if lr.get("pending") else "")
            + (f", interrupted ({lr['interrupted']})" if lr.get("interrupted") else "")
            + (
                f" in {format_duration(float(lr['wall_s']))}"
                if lr.get("wall_s") is not None
                else ""
            )
            + (f" ({rate:.0f} slides/hour)" if rate else "")
            + (f"; {len(lr['not_run'])} input(s) not run" if lr.get("not_run") else "")
        )
    if st.failed:
        lines.append(f"{len(st.failed)} failed slide(s):")
        lines += [f"  {sid}: {err}" for sid, err in st.failed[:shown]]
        if len(st.failed) > shown:
            lines.append(f"  ... {len(st.failed) - shown} more: summary.csv lists them all")
    return "\n".join(lines)
