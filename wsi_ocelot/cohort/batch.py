"""Run a cohort: many slides, resumable, fault-isolated, in-process or on Dask.

The driving process owns ``manifest.json`` and the reports; slide work happens in
:func:`wsi_ocelot.cohort.worker.process_slide`, the same function whether it runs here or
on a Dask worker, so both give identical outputs.

Per slide the driver's own cost does not grow with the cohort: each state change is one line
appended to the manifest's journal (:mod:`wsi_ocelot.cohort.journal`); ``manifest.json`` and
``summary.csv`` are written whole at checkpoints (:meth:`Manifest.checkpoint_due`) and at the
end, ``report.html`` at the end. Beyond the manifest's records the driver keeps no per-slide
state but the ids in :class:`CohortResult`.
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
from wsi_ocelot.atomic import write_text
from wsi_ocelot.cohort.inputs import SlideJob, check_unique
from wsi_ocelot.cohort.manifest import Manifest, file_identity, now_iso
from wsi_ocelot.cohort.outcome import SlideOutcome
from wsi_ocelot.cohort.report import write_report, write_summary_csv
from wsi_ocelot.cohort.status import LOCK_NAME, format_duration, pid_alive
from wsi_ocelot.cohort.worker import SLIDE_LOGS, process_slide, run_slide_task
from wsi_ocelot.errors import (
    ConfigError,
    DiskFullError,
    SlideTaskError,
    WsiOcelotError,
    is_disk_full,
)
from wsi_ocelot.inference.engine import EngineConfig
from wsi_ocelot.inference.runtimes.select import check_runtime_here
from wsi_ocelot.model import CheckpointInfo, read_checkpoint_info
from wsi_ocelot.model.device import resolve_device
from wsi_ocelot.slide import check_slide_file
from wsi_ocelot.weights import file_sha256, resolve_model, weights_note

log = logging.getLogger(__name__)

LOG_NAME = "run.log"
TASKS_DIR = ".wsi-ocelot-tasks"  # start markers of the Dask tasks of the running batch
MAX_REQUEUES = 5  # resubmissions of a slide lost from a dead worker before it started


@dataclass(frozen=True)
class CohortConfig:
    """How a batch runs.

    Parameters
    ----------
    model
        A checkpoint or ``"demo"``.
    engine
        An :class:`~wsi_ocelot.inference.engine.EngineConfig` for every slide (the default's
        when not given).
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
    engine: EngineConfig = field(default_factory=EngineConfig)
    overwrite: bool = False
    scheduler: str | None = (
        None  # None: in this process; "local": a LocalCluster; else a scheduler address
    )
    dask_workers: int | None = None  # LocalCluster size (default: one per GPU, else 1)
    retries: int = 1  # a slide whose worker died is retried this many times, then reported failed
    report: bool = True
    threads: int | None = (
        None  # torch CPU threads per slide process (None: all cores here, cores / workers on a LocalCluster)
    )


@dataclass
class CohortResult:
    out_dir: Path
    manifest: Manifest
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    stopped: str | None = (
        None  # why the batch stopped before its last slide (a full disk), one line
    )
    input_errors: list[str] = field(
        default_factory=list
    )  # inputs not run and not recorded (not a slide, an id taken), one line each
    interrupted: str | None = None  # "SIGINT" / "SIGTERM" when the run was stopped by a signal
    wall_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """1 when a slide failed or the batch stopped early, else 2 when an input was refused
        (nothing recorded for it), else 0."""
        if self.failed or self.stopped:
            return 1
        return 2 if self.input_errors else 0

    def failure_table(self) -> str:
        """A short plain-text table of the failed slides (id, path, error)."""
        if not self.failed:
            return ""
        rows = [
            (
                sid,
                self.manifest.slides[sid].get("path", ""),
                self.manifest.slides[sid].get("error") or "",
            )
            for sid in self.failed
        ]
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
            alive = host == socket.gethostname() and pid_alive(int(pid))
        except (OSError, ValueError):
            alive = False
        if alive:
            raise ConfigError(
                out_dir,
                f"another wsi-ocelot run (pid {pid}) is writing to this folder",
                "wait for it to finish, or use another --out",
            ) from None
        log.info("%s: taking over the lock of a run that is no longer alive", out_dir)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with os.fdopen(fd, "w") as fh:
        fh.write(me)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def clean_partials(out_dir: Path) -> list[str]:
    """Remove half-written slide folders left by a killed run (``.<id>.partial-*``, ``.<id>.old-*``)."""
    removed = []
    shutil.rmtree(out_dir / TASKS_DIR, ignore_errors=True)  # start markers of a killed Dask run
    for p in out_dir.iterdir():
        if p.is_dir() and p.name.startswith(".") and (".partial-" in p.name or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    if removed:
        log.info(
            "removed %d unfinished slide folder(s) left by an interrupted run: %s",
            len(removed),
            ", ".join(sorted(removed)),
        )
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
#: a slide's progress line names the seconds its process spent on the model's load and runtime
#: choice from this many on (a first build of the runtime cache: a minute or more on 2 cores)
SETUP_SHOWN_S = 5.0


class _Progress:
    def __init__(self, total: int, skipped: int):
        self.total, self.skipped = total, skipped
        self.done = self.failed = 0
        self.t0 = time.perf_counter()
        # the longest model load and runtime choice seen (processes make theirs at once; the
        # first of a checkpoint on a machine builds its runtime cache, a minute or more): one-off
        # seconds the ETA leaves out
        self.setup = 0.0

    def update(self, sid: str, outcome: SlideOutcome) -> None:
        if outcome.record is not None:
            self.done += 1
            p = outcome.record.purity
            purity = "n/a" if p.purity is None else f"{p.purity:.3f}"
            what = f"done, {p.n_cells} cells, purity {purity}"
        else:
            self.failed += 1
            what = f"FAILED: {outcome.error}"
        finished = self.done + self.failed
        remaining = self.total - finished
        self.setup = max(self.setup, outcome.setup_s or 0.0)
        elapsed = max(time.perf_counter() - self.t0 - self.setup, 0.0)
        eta = elapsed / finished * remaining if finished else float("nan")
        took = f"{outcome.runtime_s or 0.0:.1f} s"
        if (outcome.setup_s or 0.0) >= SETUP_SHOWN_S:
            took += f", {outcome.setup_s:.0f} s of it loading the model and choosing its runtime"
        log.info(
            "[%d/%d] %s: %s (%s) | done %d, failed %d, remaining %d, ETA %s",
            finished,
            self.total,
            sid,
            what,
            took,
            self.done,
            self.failed,
            remaining,
            format_duration(eta) if remaining else "0 s",
        )


# -- executors -----------------------------------------------------------------------------
Outcomes = Iterator[tuple[SlideJob, SlideOutcome]]
ProcessSlide = Callable[..., SlideOutcome]  # process_slide's signature


def _run_in_process(
    jobs: Sequence[SlideJob],
    out: str,
    cfg: CohortConfig,
    manifest: Manifest,
    process: ProcessSlide = process_slide,
) -> Outcomes:
    for job in jobs:
        try:
            manifest.mark_running(job.slide_id, job.path)
        except (OSError, WsiOcelotError) as err:
            if not is_disk_full(err):
                raise
            # not even the manifest can be written: the slide fails as it would have, unattempted
            err = DiskFullError.under(
                Path(out), f"No space left on device before {job.slide_id} could start"
            )
            yield job, SlideOutcome.failed(job.path, err.one_line(), runtime_s=0.0, disk_full=True)
            continue
        yield job, process(job, out, cfg.model, cfg.engine, torch_threads=cfg.threads)


def _saving(what: str, fn: Callable[..., Any], *args: Any) -> bool:
    """Run a write of the batch's own files; on a full disk log it and return False (the last
    complete version stays: every write is atomic)."""
    try:
        fn(*args)
    except (OSError, WsiOcelotError) as err:
        if not is_disk_full(err):
            raise
        log.error(
            "could not write %s: no space left on the device; the previous version is kept", what
        )
        return False
    return True


def _local_cluster_size(cfg: CohortConfig) -> int:
    if cfg.dask_workers:
        return cfg.dask_workers
    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def _run_on_dask(
    jobs: Sequence[SlideJob],
    out: str,
    cfg: CohortConfig,
    manifest: Manifest,
    process: ProcessSlide = process_slide,
) -> Outcomes:
    # deliberately deferred: Dask and distributed (about 1 s to import) only for --scheduler
    import dask
    from distributed import Client, LocalCluster, as_completed
    from distributed.scheduler import KilledWorker

    out = os.path.abspath(out)
    cluster = None
    settings: dict[str, Any] = {
        "distributed.scheduler.allowed-failures": 0,
        "distributed.worker.daemon": False,
        "distributed.worker.profile.enabled": False,  # no use in a batch run
        "distributed.scheduler.worker-saturation": 1.0,
    }  # a worker holds only the slides it runs
    if cfg.scheduler == "local":
        n = _local_cluster_size(cfg)
        threads: int | None = cfg.threads or max(1, (os.cpu_count() or 1) // n)
        # Dask starts workers with OMP_NUM_THREADS=1; start them with the thread count they will use
        settings.update(
            {
                f"distributed.nanny.pre-spawn-environ.{k}": threads
                for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
            }
        )
    with dask.config.set(settings):
        if cfg.scheduler == "local":
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            log.info(
                "started a local Dask cluster: %d worker(s), %d torch thread(s) each", n, threads
            )
            client = Client(cluster)
        else:
            threads = cfg.threads
            try:
                client = Client(cfg.scheduler, timeout="30s")
            except OSError as exc:
                raise ConfigError(
                    cfg.scheduler,
                    f"cannot reach the Dask scheduler ({exc})",
                    "start it with `dask scheduler` and workers with `dask worker ADDRESS`, or use --scheduler local",
                ) from None
            n = len(client.scheduler_info().get("workers", {}))
            log.info("joined the Dask cluster at %s (%d worker(s))", cfg.scheduler, n)
        tasks = Path(out) / TASKS_DIR
        shutil.rmtree(tasks, ignore_errors=True)
        tasks.mkdir()
        try:
            died: dict[str, int] = {}  # per slide: attempts that started and lost their worker
            requeues: dict[str, int] = {}
            by_key: dict[Any, tuple[SlideJob, Path]] = {}  # by Dask future key

            def submit(job: SlideJob) -> Any:  # a distributed.Future
                key = f"wsi-ocelot-{job.slide_id}-{died.get(job.slide_id, 0) + 1}-{os.getpid()}-{time.time_ns()}"
                marker = tasks / key
                fut = client.submit(
                    run_slide_task,
                    job,
                    out,
                    cfg.model,
                    cfg.engine,
                    torch_threads=threads,
                    started_marker=str(marker),
                    process=process,
                    key=key,
                    pure=False,
                )
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
                    outcome: SlideOutcome = fut.result()
                except KilledWorker as exc:  # the worker died while it held the slide
                    finished = marker.with_name(marker.name + ".json")
                    if finished.exists():  # it had finished; the worker died before it could report
                        outcome = SlideOutcome.from_json(
                            json.loads(finished.read_text(encoding="utf-8"))
                        )
                        log.info(
                            "%s: finished before its Dask worker was lost; its outputs are kept",
                            sid,
                        )
                    elif not marker.exists() and requeues.get(sid, 0) < MAX_REQUEUES:
                        # it was queued on the worker that died and never started: not an attempt
                        requeues[sid] = requeues.get(sid, 0) + 1
                        log.info("%s: was waiting on a Dask worker that was lost; resubmitted", sid)
                        ac.add(submit(job))
                        continue
                    else:
                        died[sid] = died.get(sid, 0) + 1
                        if died[sid] <= cfg.retries:
                            log.warning(
                                "%s: its Dask worker was lost (%s); retrying the slide",
                                sid,
                                type(exc).__name__,
                            )
                            manifest.slides[sid]["attempts"] = died[sid] + 1
                            ac.add(submit(job))
                            continue
                        err = SlideTaskError(
                            job.path,
                            f"the Dask worker running this slide died {died[sid]} time(s) "
                            f"({type(exc).__name__})",
                            "check the worker logs (memory, GPU driver); run the slide alone to "
                            "see its error",
                        )  # every attempt died
                        outcome = SlideOutcome.failed(job.path, err.one_line(), attempts=died[sid])
                except (
                    Exception
                ) as exc:  # raised outside process_slide (it turns every Exception into a record)
                    first = str(exc).splitlines()[0] if str(exc) else ""
                    err = SlideTaskError(
                        job.path,
                        f"the Dask task failed outside the slide's own run "
                        f"({type(exc).__name__}: {first})",
                        "check that the workers run the same wsi-ocelot version and see the "
                        "worker logs",
                    )
                    outcome = SlideOutcome.failed(job.path, err.one_line())
                    log.error("%s: Dask task error: %r", sid, exc)
                if outcome.attempts is None:  # the attempts that died, and this one
                    outcome = dataclasses.replace(outcome, attempts=died.get(sid, 0) + 1)
                yield job, outcome
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
            shutil.rmtree(tasks, ignore_errors=True)


# -- before any slide ----------------------------------------------------------------------
def prepare_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Create the batch's output folder, or a one-line :class:`ConfigError` when it cannot be
    a writable folder (a file in the way, a read-only mount, no permission)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(
            out,
            "--out is a file, not a folder",
            "choose a folder for the results (it is created if missing)",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".wsi-ocelot-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            out,
            f"cannot write the results there ({exc.strerror or exc})",
            "choose a folder you can write to for --out (a local disk or a writable share)",
        ) from None
    return out


def check_options(config: CohortConfig, info: CheckpointInfo) -> None:
    """The options every slide would use, checked once before any slide is touched: the device
    (its syntax always; that it exists here unless the slides run on a remote Dask cluster,
    whose workers may have GPUs this machine lacks), the runtime and precision (that they can
    run here, on the same condition) and the cell margin against the model's tiles."""
    engine = config.engine
    here = config.scheduler in (None, "local")
    device = resolve_device(engine.device, here=here)
    if here:  # a remote cluster's workers may have other CPUs, GPUs and packages
        check_runtime_here(engine.runtime, engine.precision, device)
    margin, tile = engine.cell_margin, info.geometry.tile_size
    if margin is not None and not 0 <= margin < tile // 2:
        raise ConfigError(
            None,
            f"--cell-margin {margin} does not fit the model's {tile} px cell tiles (a margin must be in [0, {tile // 2}))",
            f"use a margin below {tile // 2}, or leave it unset for the model's own {info.geometry.cell_margin}",
        )


def check_inputs(jobs: Sequence[SlideJob]) -> tuple[list[SlideJob], list[str]]:
    """Split jobs into slides to run and input errors (no such file, not a slide), one line each;
    the cheap checks only (:func:`~wsi_ocelot.slide.check_slide_file`)."""
    ok, errors = [], []
    for job in jobs:
        try:
            check_slide_file(job.path)
        except WsiOcelotError as err:
            errors.append(err.one_line())
        else:
            ok.append(job)
    return ok, errors


def _absolute(job: SlideJob) -> SlideJob:
    return (
        job if os.path.isabs(job.path) else dataclasses.replace(job, path=os.path.abspath(job.path))
    )


# -- the batch -----------------------------------------------------------------------------
def run_cohort(
    jobs: Sequence[SlideJob],
    out_dir: str | os.PathLike[str],
    config: CohortConfig,
    on_record: Callable[[SlideJob, SlideOutcome], None] | None = None,
    *,
    process: ProcessSlide = process_slide,
) -> CohortResult:
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
        Called after each slide with its job and :class:`~wsi_ocelot.cohort.outcome.SlideOutcome`
        (its manifest entry is recorded by then).
    process
        The per-slide function, :func:`~wsi_ocelot.cohort.worker.process_slide` (its
        signature; on Dask it must be importable on the workers): a benchmark of the driver
        passes a stand-in that returns an outcome without running a model.

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
    jobs = [
        _absolute(j) for j in jobs
    ]  # the manifest keeps absolute paths: resume works from any folder
    out = prepare_out_dir(out_dir)
    model = str(resolve_model(config.model))
    info = read_checkpoint_info(
        model
    )  # a bad checkpoint fails the batch up front, not once per slide
    cfg = dataclasses.replace(config, model=model)
    check_options(cfg, info)
    runnable, input_errors = check_inputs(jobs)
    model_sha = file_sha256(model)
    t0 = time.perf_counter()
    with _lock(out), _log_file(out) as log_path:
        for line in input_errors:  # before any slide (and the model) is loaded; in run.log too
            log.error("%s", line)
        manifest = Manifest.load(out)
        clean_partials(out)
        result = CohortResult(out, manifest, input_errors=input_errors)
        todo = []
        for job in runnable:
            decision = manifest.resume(
                job.slide_id, job.path, mpp=job.mpp, model_sha256=model_sha, overwrite=cfg.overwrite
            )
            if decision.conflict is not None:
                result.input_errors.append(decision.conflict.one_line())
                log.error("%s", decision.conflict.one_line())
                continue
            if decision.why:
                log.info("%s", decision.why)
            (result.skipped.append(job.slide_id) if decision.done else todo.append(job))
        manifest.meta.update(
            {
                "model": model,
                "model_note": weights_note(model),
                "software": f"wsi-ocelot {__version__}",
                "scheduler": cfg.scheduler or "in-process",
                # what `wsi-ocelot status` needs while the batch runs (in the snapshot below)
                "current_run": {
                    "started": now_iso(),
                    "to_run": [j.slide_id for j in todo],
                    "skipped": len(result.skipped),
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                },
            }
        )
        log.info(
            "batch of %d slide(s) into %s: %d to run, %d already done%s%s; log: %s",
            len(todo) + len(result.skipped),
            out,
            len(todo),
            len(result.skipped),
            " (skipped; --overwrite redoes them)" if result.skipped else "",
            f", {len(result.input_errors)} input(s) not run (above)" if result.input_errors else "",
            log_path,
        )
        progress = _Progress(len(todo), len(result.skipped))
        run = _run_in_process if cfg.scheduler is None else _run_on_dask
        # a snapshot first: the run's meta for `wsi-ocelot status`, any journal left by a killed run folded in
        _saving("manifest.json", manifest.save)
        try:
            for job, outcome in run(todo, str(out), cfg, manifest, process):
                if outcome.traceback is not None:
                    log.error(
                        "%s: unexpected error on %s\n%s",
                        job.slide_id,
                        outcome.worker,
                        outcome.traceback,
                    )
                    outcome = dataclasses.replace(
                        outcome, log=_slide_log(out, job.slide_id, outcome)
                    )
                entry = outcome.manifest_entry(
                    model=model, model_sha256=model_sha, identity=file_identity(job.path)
                )
                _saving("manifest.json", manifest.record, job.slide_id, entry)
                (result.done if outcome.done else result.failed).append(job.slide_id)
                progress.update(job.slide_id, outcome)
                if manifest.checkpoint_due():  # amortised O(1) per slide (manifest.py)
                    _checkpoint(out, manifest)
                if on_record:
                    on_record(job, outcome)
                if (
                    outcome.disk_full
                ):  # every later slide would fail the same way: stop, keep them for a rerun
                    result.pending = _unfinished(todo, result)
                    result.stopped = DiskFullError(
                        out,
                        f"the disk is full; the batch stopped after {job.slide_id}, "
                        f"{len(result.pending)} slide(s) not attempted (pending)",
                        f"free space on the disk of {out}, then run the same command again: it goes "
                        "on where this run stopped",
                    ).one_line()
                    log.error("%s", result.stopped)
                    pending = set(result.pending)
                    manifest.mark_pending(
                        [(j.slide_id, j.path) for j in todo if j.slide_id in pending],
                        "not attempted: the batch stopped on a full disk",
                    )
                    break
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (the CLI turns it into Interrupted)
            result.interrupted = getattr(stop, "signal_name", "SIGINT")
            result.pending = _unfinished(todo, result)
            pending = set(result.pending)
            manifest.mark_pending(
                [(j.slide_id, j.path) for j in todo if j.slide_id in pending],
                f"interrupted ({result.interrupted}) before it finished: run the same command again to go on",
            )
            log.warning(
                "interrupted (%s): %d done, %d failed, %d pending; run the same command again to go on",
                result.interrupted,
                len(result.done),
                len(result.failed),
                len(result.pending),
            )
            _finish_batch(result, jobs, todo, cfg, t0)
            clean_partials(
                out
            )  # a write still in flight on a library's I/O thread (Zarr's) may land after the slide's own cleanup
            raise
        else:
            _finish_batch(result, jobs, todo, cfg, t0)
        finally:
            manifest.close()  # the journal: removed when the last snapshot holds it
    return result


def _checkpoint(out: Path, manifest: Manifest) -> None:
    """The user-facing files while a batch runs: the snapshot ``manifest.json`` (which empties
    the journal) and ``summary.csv``."""
    if _saving("manifest.json", manifest.save):
        _saving("summary.csv", write_summary_csv, out, manifest)


def _slide_log(out: Path, slide_id: str, outcome: SlideOutcome) -> str | None:
    """Write a slide's unexpected error, whole, to ``<out>/logs/<slide-id>.log``; the manifest
    points to it (relative to ``out``). None when it cannot be written (it is in run.log too)."""
    rel = f"{SLIDE_LOGS}/{slide_id}.log"
    text = (
        f"{now_iso()} {slide_id} ({outcome.path}) on {outcome.worker}\n{outcome.error}\n\n"
        f"{outcome.traceback}"
    )
    try:
        (out / SLIDE_LOGS).mkdir(exist_ok=True)
        write_text(out / rel, text)
    except (OSError, WsiOcelotError) as err:
        log.error("could not write %s (%s); the traceback is in %s", out / rel, err, LOG_NAME)
        return None
    return rel


def _unfinished(todo: Sequence[SlideJob], result: CohortResult) -> list[str]:
    finished = set(result.done) | set(result.failed)
    return [j.slide_id for j in todo if j.slide_id not in finished]


def _finish_batch(
    result: CohortResult,
    jobs: Sequence[SlideJob],
    todo: Sequence[SlideJob],
    cfg: CohortConfig,
    t0: float,
) -> None:
    """The batch's own files at its end (also when interrupted): manifest, summary, report."""
    out, manifest = result.out_dir, result.manifest
    result.wall_s = time.perf_counter() - t0
    manifest.meta["last_run"] = {
        "slides": len(jobs),
        "ran": len(todo),
        "done": len(result.done),
        "failed": len(result.failed),
        "skipped": len(result.skipped),
        "pending": len(result.pending),
        "not_run": list(result.input_errors),
        "wall_s": round(result.wall_s, 2),
    }
    if result.interrupted:
        manifest.meta["last_run"]["interrupted"] = result.interrupted
    manifest.meta["last_run"]["started"] = (manifest.meta.pop("current_run", None) or {}).get(
        "started"
    )
    manifest.meta["last_run"]["finished"] = now_iso()
    _saving("manifest.json", manifest.save)
    _saving("summary.csv", write_summary_csv, out, manifest)
    if cfg.report:
        _saving("report.html", write_report, out, manifest)
    log.info(
        "batch finished in %s: %d done, %d failed, %d skipped%s; summary %s, report %s",
        format_duration(result.wall_s),
        len(result.done),
        len(result.failed),
        len(result.skipped),
        f", {len(result.pending)} pending" if result.pending else "",
        out / "summary.csv",
        out / "report.html",
    )
