"""Run a cohort: many slides, resumable, fault-isolated, in-process or on Dask.

The driving process owns ``manifest.json`` and the reports; slide work happens in
:func:`wsi_ocelot.cohort.worker.process_slide`, the same function whether it runs here or
on a Dask worker, so both give identical outputs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsi_ocelot import __version__
from wsi_ocelot.cohort.inputs import SlideJob, check_unique
from wsi_ocelot.cohort.manifest import DONE, FAILED, Manifest
from wsi_ocelot.cohort.report import write_report, write_summary_csv
from wsi_ocelot.cohort.worker import process_slide, run_slide_task
from wsi_ocelot.errors import ConfigError, DiskFullError, WsiOcelotError, is_disk_full
from wsi_ocelot.inference.engine import EngineConfig
from wsi_ocelot.model import read_checkpoint_info
from wsi_ocelot.weights import resolve_model, weights_note

log = logging.getLogger(__name__)

LOG_NAME = "run.log"
TASKS_DIR = ".wsi-ocelot-tasks"  # start markers of the Dask tasks of the running batch
MAX_REQUEUES = 5  # resubmissions of a slide lost from a dead worker before it started
LOCK_NAME = ".wsi-ocelot.lock"


@dataclass(frozen=True)
class CohortConfig:
    """How a batch runs.

    Parameters
    ----------
    model
        A checkpoint or ``"demo"``.
    engine
        An :class:`~wsi_ocelot.inference.engine.EngineConfig` for every slide.
    overwrite
        Redo slides the manifest marks done.
    scheduler, dask_workers, retries, threads
        ``"local"`` (a LocalCluster here) or a Dask scheduler address; the cluster's size;
        attempts for a slide whose worker died; torch threads per slide.
    report
        Write ``report.html`` at the end (``summary.csv`` is always written).

    Examples
    --------
    >>> CohortConfig(model="best.safetensors", engine=EngineConfig(device="cuda"), scheduler="local")  # doctest: +SKIP
    """

    model: str = "demo"
    engine: Any = None
    overwrite: bool = False
    scheduler: str | None = None  # None: in this process; "local": a LocalCluster; else a scheduler address
    dask_workers: int | None = None  # LocalCluster size (default: one per GPU, else 1)
    retries: int = 1  # a slide whose worker died is retried this many times, then reported failed
    report: bool = True
    threads: int | None = None  # torch CPU threads per slide process (None: all cores here, cores / workers on a LocalCluster)


@dataclass
class CohortResult:
    out_dir: Path
    manifest: Manifest
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    stopped: str | None = None  # why the batch stopped before its last slide (a full disk), one line
    wall_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.stopped else 0

    def failure_table(self) -> str:
        """A short plain-text table of the failed slides (id, path, error)."""
        if not self.failed:
            return ""
        rows = [(sid, self.manifest.slides[sid].get("path", ""), self.manifest.slides[sid].get("error") or "") for sid in self.failed]
        w = max(len("slide"), *(len(r[0]) for r in rows))
        lines = [f"{len(self.failed)} slide(s) failed:", f"  {'slide'.ljust(w)}  error"]
        lines += [f"  {sid.ljust(w)}  {err}" for sid, _, err in rows]
        return "\n".join(lines)


# -- folder hygiene ------------------------------------------------------------------------
@contextmanager
def _lock(out_dir: Path) -> Iterator[None]:
    """One batch at a time per output folder (a stale lock of a dead process is taken over)."""
    path = out_dir / LOCK_NAME
    me = f"{socket.gethostname()} {os.getpid()}"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            host, pid = path.read_text().split()
            alive = host == socket.gethostname() and _pid_alive(int(pid))
        except (OSError, ValueError):
            alive = False
        if alive:
            raise ConfigError(out_dir, f"another wsi-ocelot run (pid {pid}) is writing to this folder",
                              "wait for it to finish, or use another --out") from None
        log.info("%s: taking over the lock of a run that is no longer alive", out_dir)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with os.fdopen(fd, "w") as fh:
        fh.write(me)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_partials(out_dir: Path) -> list[str]:
    """Remove half-written slide folders left by a killed run (``.<id>.partial-*``, ``.<id>.old-*``)."""
    removed = []
    shutil.rmtree(out_dir / TASKS_DIR, ignore_errors=True)  # start markers of a killed Dask run
    for p in out_dir.iterdir():
        if p.is_dir() and p.name.startswith(".") and (".partial-" in p.name or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    if removed:
        log.info("removed %d unfinished slide folder(s) left by an interrupted run: %s", len(removed), ", ".join(sorted(removed)))
    return removed


class _RunLogHandler(logging.FileHandler):
    """``run.log``: on a full disk the log lines that do not fit are dropped quietly (the
    console still shows them), not reported with a traceback each."""

    def handleError(self, record: logging.LogRecord) -> None:
        if is_disk_full(sys.exc_info()[1]):
            return
        super().handleError(record)


@contextmanager
def _log_file(out_dir: Path) -> Iterator[Path]:
    """Append this run's log (INFO and up, whatever the console shows) to ``<out>/run.log``."""
    path = out_dir / LOG_NAME
    handler = _RunLogHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    pkg = logging.getLogger("wsi_ocelot")
    old_level, effective = pkg.level, pkg.getEffectiveLevel()
    raised: list[tuple[logging.Handler, int]] = []
    if effective > logging.INFO:  # the console is quieter than the file: keep it so
        for h in logging.getLogger().handlers + pkg.handlers:
            if h.level < effective:
                raised.append((h, h.level))
                h.setLevel(effective)
        pkg.setLevel(logging.INFO)
    pkg.addHandler(handler)
    try:
        yield path
    finally:
        pkg.removeHandler(handler)
        pkg.setLevel(old_level)
        for h, level in raised:
            h.setLevel(level)
        handler.close()


# -- progress ------------------------------------------------------------------------------
class _Progress:
    def __init__(self, total: int, skipped: int):
        self.total, self.skipped = total, skipped
        self.done = self.failed = 0
        self.t0 = time.perf_counter()

    def update(self, sid: str, rec: dict[str, Any]) -> None:
        if rec["status"] == DONE:
            self.done += 1
            purity = "n/a" if rec.get("purity") is None else f"{rec['purity']:.3f}"
            what = f"done, {rec.get('n_cells', 0)} cells, purity {purity}"
        else:
            self.failed += 1
            what = f"FAILED: {rec.get('error')}"
        finished = self.done + self.failed
        remaining = self.total - finished
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / finished * remaining if finished else float("nan")
        log.info("[%d/%d] %s: %s (%.1f s) | done %d, failed %d, remaining %d, ETA %s", finished, self.total, sid, what,
                 rec.get("runtime_s", 0.0), self.done, self.failed, remaining, _fmt_eta(eta) if remaining else "0 s")


def _fmt_eta(s: float) -> str:
    if s != s:  # nan
        return "?"
    s = int(round(s))
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else (f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s")


# -- executors -----------------------------------------------------------------------------
Record = tuple[SlideJob, dict[str, Any]]


def _run_in_process(jobs: Sequence[SlideJob], out: str, cfg: CohortConfig, manifest: Manifest) -> Iterator[Record]:
    for job in jobs:
        try:
            manifest.mark_running(job.slide_id, job.path)
        except (OSError, WsiOcelotError) as err:
            if not is_disk_full(err):
                raise
            # not even the manifest can be written: the slide fails as it would have, unattempted
            yield job, {"path": job.path, "status": FAILED, "runtime_s": 0.0, "disk_full": True,
                        "error": DiskFullError.under(Path(out), f"No space left on device before {job.slide_id} could start").one_line()}
            continue
        yield job, process_slide(job, out, cfg.model, cfg.engine, torch_threads=cfg.threads)


def _saving(what: str, fn: Callable[..., Any], *args: Any) -> bool:
    """Run a write of the batch's own files; on a full disk log it and return False (the last
    complete version stays: every write is atomic)."""
    try:
        fn(*args)
    except (OSError, WsiOcelotError) as err:
        if not is_disk_full(err):
            raise
        log.error("could not write %s: no space left on the device; the previous version is kept", what)
        return False
    return True


def _local_cluster_size(cfg: CohortConfig) -> int:
    if cfg.dask_workers:
        return cfg.dask_workers
    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def _run_on_dask(jobs: Sequence[SlideJob], out: str, cfg: CohortConfig, manifest: Manifest) -> Iterator[Record]:
    # deliberately deferred: Dask and distributed (about 1 s to import) only for --scheduler
    import dask
    from distributed import Client, LocalCluster, as_completed
    from distributed.scheduler import KilledWorker

    out = os.path.abspath(out)
    cluster = None
    settings: dict[str, Any] = {"distributed.scheduler.allowed-failures": 0, "distributed.worker.daemon": False,
                                "distributed.worker.profile.enabled": False,  # no use in a batch run
                                "distributed.scheduler.worker-saturation": 1.0}  # a worker holds only the slides it runs
    if cfg.scheduler == "local":
        n = _local_cluster_size(cfg)
        threads = cfg.threads or max(1, (os.cpu_count() or 1) // n)
        # Dask starts workers with OMP_NUM_THREADS=1; start them with the thread count they will use
        settings.update({f"distributed.nanny.pre-spawn-environ.{k}": threads for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    with dask.config.set(settings):
        if cfg.scheduler == "local":
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=logging.ERROR)
            log.info("started a local Dask cluster: %d worker(s), %d torch thread(s) each", n, threads)
            client = Client(cluster)
        else:
            threads = cfg.threads
            try:
                client = Client(cfg.scheduler, timeout="30s")
            except OSError as exc:
                raise ConfigError(cfg.scheduler, f"cannot reach the Dask scheduler ({exc})",
                                  "start it with `dask scheduler` and workers with `dask worker ADDRESS`, or use --scheduler local") from None
            n = len(client.scheduler_info().get("workers", {}))
            log.info("joined the Dask cluster at %s (%d worker(s))", cfg.scheduler, n)
        tasks = Path(out) / TASKS_DIR
        shutil.rmtree(tasks, ignore_errors=True)
        tasks.mkdir()
        try:
            died: dict[str, int] = {}  # per slide: attempts that started and lost their worker
            requeues: dict[str, int] = {}
            by_key: dict[str, tuple[SlideJob, Path]] = {}

            def submit(job: SlideJob):
                key = f"wsi-ocelot-{job.slide_id}-{died.get(job.slide_id, 0) + 1}-{os.getpid()}-{time.time_ns()}"
                marker = tasks / key
                fut = client.submit(run_slide_task, job, out, cfg.model, cfg.engine, torch_threads=threads,
                                    started_marker=str(marker), key=key, pure=False)
                by_key[fut.key] = (job, marker)
                return fut

            for job in jobs:
                manifest.mark_running(job.slide_id, job.path, save=False)
            manifest.save()
            ac = as_completed([submit(job) for job in jobs])
            for fut in ac:
                job, marker = by_key.pop(fut.key)
                sid = job.slide_id
                try:
                    rec = fut.result()
                except KilledWorker as exc:  # the worker died while it held the slide
                    finished = marker.with_name(marker.name + ".json")
                    if finished.exists():  # it had finished; the worker died before it could report
                        rec = json.loads(finished.read_text(encoding="utf-8"))
                        log.info("%s: finished before its Dask worker was lost; its outputs are kept", sid)
                    elif not marker.exists() and requeues.get(sid, 0) < MAX_REQUEUES:
                        # it was queued on the worker that died and never started: not an attempt
                        requeues[sid] = requeues.get(sid, 0) + 1
                        log.info("%s: was waiting on a Dask worker that was lost; resubmitted", sid)
                        ac.add(submit(job))
                        continue
                    else:
                        died[sid] = died.get(sid, 0) + 1
                        if died[sid] <= cfg.retries:
                            log.warning("%s: its Dask worker was lost (%s); retrying the slide", sid, type(exc).__name__)
                            manifest.slides[sid]["attempts"] = died[sid] + 1
                            ac.add(submit(job))
                            continue
                        rec = {"path": job.path, "status": FAILED, "runtime_s": None,
                               "error": f"{job.path}: the Dask worker running this slide died {died[sid]} time(s) "
                                        f"({type(exc).__name__}). Fix: check the worker logs (memory, GPU driver); run the slide alone to see its error",
                               "attempts": died[sid]}  # every attempt died
                except Exception as exc:  # raised outside process_slide (it turns every Exception into a record)
                    first = str(exc).splitlines()[0] if str(exc) else ""
                    rec = {"path": job.path, "status": FAILED, "runtime_s": None,
                           "error": f"{job.path}: the Dask task failed outside the slide's own run ({type(exc).__name__}: {first}). "
                                    "Fix: check that the workers run the same wsi-ocelot version and see the worker logs"}
                    log.error("%s: Dask task error: %r", sid, exc)
                rec.setdefault("attempts", died.get(sid, 0) + 1)  # the attempts that died, and this one
                yield job, rec
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
            shutil.rmtree(tasks, ignore_errors=True)


# -- the batch -----------------------------------------------------------------------------
def run_cohort(jobs: Sequence[SlideJob], out_dir: str | os.PathLike[str], config: CohortConfig,
               on_record: Callable[[SlideJob, dict[str, Any]], None] | None = None) -> CohortResult:
    """Run a batch of slides into ``out_dir``; skip slides already done (unless ``config.overwrite``).

    Parameters
    ----------
    jobs
        From :func:`~wsi_ocelot.cohort.collect_jobs` (files, folders, CSV manifests).
    out_dir
        The batch's output folder: one folder per slide, ``manifest.json``, ``summary.csv``,
        ``report.html``.
    config
        A :class:`CohortConfig` (model, engine config, Dask scheduler, retries, ...).
    on_record
        Called after each slide with its job and manifest record.

    Returns
    -------
    CohortResult
        Counts of done / failed / skipped slides and their records.

    Examples
    --------
    >>> jobs = collect_jobs(["slides/"])                                        # doctest: +SKIP
    >>> res = run_cohort(jobs, "results", CohortConfig(model="best.safetensors"))  # doctest: +SKIP
    """
    check_unique(jobs)
    engine = config.engine or EngineConfig()
    model = str(resolve_model(config.model))
    read_checkpoint_info(model)  # a bad checkpoint fails the batch up front, not once per slide
    cfg = dataclasses.replace(config, model=model, engine=engine)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with _lock(out), _log_file(out) as log_path:
        manifest = Manifest.load(out)
        clean_partials(out)
        result = CohortResult(out, manifest)
        todo = []
        for job in jobs:
            if not cfg.overwrite and manifest.is_done(job.slide_id, job.path):
                result.skipped.append(job.slide_id)
            else:
                todo.append(job)
        manifest.meta.update({"model": model, "model_note": weights_note(model), "software": f"wsi-ocelot {__version__}",
                              "scheduler": cfg.scheduler or "in-process"})
        log.info("batch of %d slide(s) into %s: %d to run, %d already done%s; log: %s", len(jobs), out, len(todo),
                 len(result.skipped), " (skipped; --overwrite redoes them)" if result.skipped else "", log_path)
        progress = _Progress(len(todo), len(result.skipped))
        run = _run_in_process if cfg.scheduler is None else _run_on_dask
        for job, rec in run(todo, str(out), cfg, manifest):
            tb = rec.pop("traceback", None)
            if tb:
                log.error("%s: unexpected error on %s\n%s", job.slide_id, rec.get("worker"), tb)
            disk_full = bool(rec.pop("disk_full", False))
            _saving("manifest.json", manifest.record, job.slide_id, rec)
            (result.done if rec["status"] == DONE else result.failed).append(job.slide_id)
            progress.update(job.slide_id, rec)
            _saving("summary.csv", write_summary_csv, out, manifest)
            if on_record:
                on_record(job, rec)
            if disk_full:  # every later slide would fail the same way: stop, keep them for a rerun
                finished = set(result.done) | set(result.failed)
                result.pending = [j.slide_id for j in todo if j.slide_id not in finished]
                result.stopped = (f"{out}: the disk is full; the batch stopped after {job.slide_id}, {len(result.pending)} slide(s) "
                                  f"not attempted (pending). Fix: free space on the disk of {out}, then run the same command "
                                  "again: it goes on where this run stopped")
                log.error("%s", result.stopped)
                manifest.mark_pending([(j.slide_id, j.path) for j in todo if j.slide_id in set(result.pending)],
                                      "not attempted: the batch stopped on a full disk")
                break
        result.wall_s = time.perf_counter() - t0
        manifest.meta["last_run"] = {"slides": len(jobs), "ran": len(todo), "done": len(result.done), "failed": len(result.failed),
                                     "skipped": len(result.skipped), "pending": len(result.pending), "wall_s": round(result.wall_s, 2)}
        _saving("manifest.json", manifest.save)
        _saving("summary.csv", write_summary_csv, out, manifest)
        if cfg.report:
            _saving("report.html", write_report, out, manifest)
        log.info("batch finished in %s: %d done, %d failed, %d skipped; summary %s, report %s", _fmt_eta(result.wall_s),
                 len(result.done), len(result.failed), len(result.skipped), out / "summary.csv", out / "report.html")
    return result
