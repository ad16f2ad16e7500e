"""The per-slide task: the same function runs in-process and on a Dask worker.

It never raises for a bad slide: it returns a :class:`~wsi_ocelot.cohort.outcome.SlideOutcome`
(done, or failed with the one-line error), so one slide cannot take the batch down and Dask
does not retry a slide that failed for a reason a retry cannot fix. The model is loaded once per process and kept
(a Dask worker loads it for its first slide and reuses it for the rest).

A Dask worker started by ``dask worker`` or dask-jobqueue runs under a nanny, in a daemonic
process, which may not start processes of its own: there the tiles are read in the worker
process (``workers=0``) unless the workers are started with
``DASK_DISTRIBUTED__WORKER__DAEMON=False`` (as ``--scheduler local`` does). Such a worker also
starts with ``OMP_NUM_THREADS=1`` (Dask's default): torch uses one CPU thread per slide there
unless ``torch_threads`` (``--threads``) says otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import re
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from wsi_ocelot.atomic import write_text
from wsi_ocelot.cohort.inputs import SlideJob
from wsi_ocelot.cohort.outcome import SlideOutcome
from wsi_ocelot.errors import DiskFullError, SlideTaskError, WsiOcelotError
from wsi_ocelot.inference.engine import EngineConfig, SlideRunner
from wsi_ocelot.tiling.dataset import default_workers

log = logging.getLogger(__name__)

_RUNNERS: dict[tuple[str, EngineConfig], SlideRunner] = {}
SLIDE_LOGS = "logs"  # <out>/logs/<slide-id>.log: the traceback of a slide's unexpected error


def _worker_index() -> int | None:
    """This Dask worker's index, else None: LocalCluster names its workers 0, 1, ...;
    ``dask worker --nworkers N --name NAME`` (and dask-jobqueue with several processes per job)
    names them NAME-0, NAME-1, ... A worker named by its address has no index."""
    try:
        from distributed import (
            get_worker,  # deliberately deferred: Dask is imported only on a Dask worker
        )

        name = get_worker().name
    except (ImportError, ValueError):
        return None
    if isinstance(name, int):
        return name
    m = re.fullmatch(r"(?:.*-)?(\d+)", str(name))
    return int(m.group(1)) if m else None


def _device_for_this_process(device: str) -> str:
    """One GPU per worker: on a multi-GPU box, worker *i* takes ``cuda:i mod n``."""
    if device not in ("auto", "cuda"):
        return device
    idx = _worker_index()
    if idx is None:
        return device
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{idx % n}" if n > 1 else device


def _readers_for_this_process(config: EngineConfig) -> EngineConfig:
    """``config`` with the tile readers this process can start.

    ``workers=None`` means the machine's default (the engine picks it). A daemonic process (a
    Dask worker under a nanny: ``dask worker``, dask-jobqueue) may not start processes, so there
    the tiles are read in this process (``workers=0``), whatever was asked for."""
    if config.workers == 0 or not multiprocessing.current_process().daemon:
        return config
    return dataclasses.replace(config, workers=0)


def _note_readers(asked: int | None) -> None:
    """Say why a daemonic process reads tiles itself: a note for the default, a warning when
    readers were asked for."""
    hint = "start the Dask workers with DASK_DISTRIBUTED__WORKER__DAEMON=False in their environment"
    if asked is None:
        log.info(
            "a daemonic process (a Dask worker under a nanny): tiles are read in this process; "
            "%s to read them in %d processes",
            hint,
            default_workers(),
        )
    else:
        log.warning(
            "%d tile-reading processes were asked for, but this is a daemonic process (a Dask worker "
            "under a nanny), which cannot start them: tiles are read in this process. Fix: %s",
            asked,
            hint,
        )


def get_runner(model: str, config: EngineConfig) -> SlideRunner:
    """The :class:`SlideRunner` of this process for (model, config), loaded on first use.

    The config is first fitted to this process: its tile readers
    (:func:`_readers_for_this_process`) and, on a Dask worker of a multi-GPU machine, its GPU."""
    fitted = _readers_for_this_process(config)
    fitted = dataclasses.replace(fitted, device=_device_for_this_process(fitted.device))
    key = (model, fitted)
    runner = _RUNNERS.get(key)
    if runner is None:
        if fitted.workers != config.workers:
            _note_readers(config.workers)
        runner = SlideRunner(model, fitted)
        _RUNNERS[key] = runner
    return runner


def _where() -> str:
    idx = _worker_index()
    host = socket.gethostname()
    return f"{host}:{os.getpid()}" + (f" (dask worker {idx})" if idx is not None else "")


def run_slide_task(
    job: SlideJob,
    out_dir: str,
    model: str,
    config: EngineConfig,
    *,
    torch_threads: int | None = None,
    started_marker: str | None = None,
    process: Callable[..., SlideOutcome] | None = None,
) -> SlideOutcome:
    """The Dask task: :func:`process_slide` between two notes in the shared output folder.

    ``started_marker`` is written when the slide starts and ``<started_marker>.json`` (the
    outcome, :meth:`SlideOutcome.to_json`) when it ends. When a worker dies, the driver reads
    them to tell a slide that was only queued there (resubmitted, not an attempt) from one that
    was running (an attempt) and from one that had finished but whose result had not reached
    the scheduler yet (its outcome is used as is). ``process``: the per-slide function
    (default :func:`process_slide`; a benchmark of the driver passes a stand-in)."""
    if started_marker:
        with open(started_marker, "w", encoding="utf-8") as fh:
            fh.write(_where())
    outcome = (process or process_slide)(job, out_dir, model, config, torch_threads=torch_threads)
    if started_marker:
        write_text(Path(started_marker + ".json"), json.dumps(outcome.to_json(), default=str))
    return outcome


def process_slide(
    job: SlideJob,
    out_dir: str,
    model: str,
    config: EngineConfig,
    *,
    torch_threads: int | None = None,
) -> SlideOutcome:
    """Run one slide into ``out_dir/<slide-id>/`` and return its :class:`SlideOutcome`."""
    t0 = time.perf_counter()
    where = _where()
    setup_s: float | None = None  # loading the model and choosing its runtime (a new runner)

    def seconds() -> float:
        return round(time.perf_counter() - t0, 3)

    def failed(err: WsiOcelotError, **extra: Any) -> SlideOutcome:
        return SlideOutcome.failed(
            job.path,
            err.one_line(),
            runtime_s=seconds(),
            mpp_override=job.mpp,
            worker=where,
            setup_s=setup_s,
            **extra,
        )

    try:
        if torch_threads:
            if torch.get_num_threads() != torch_threads:
                torch.set_num_threads(torch_threads)
        t_setup = time.perf_counter()
        runner = get_runner(model, config)
        setup_s = round(time.perf_counter() - t_setup, 3)
        res = runner.run(job.path, out_dir, mpp=job.mpp, slide_id=job.slide_id, overwrite=True)
    except WsiOcelotError as err:
        # a full disk stops the batch: every later slide would fail the same way
        return failed(err, disk_full=isinstance(err, DiskFullError))
    except Exception as exc:  # a bug or an unforeseen fault: report it, keep the batch going
        first = str(exc).splitlines()[0] if str(exc) else ""
        log_file = Path(out_dir) / SLIDE_LOGS / (job.slide_id + ".log")
        task_err = SlideTaskError(
            job.path,
            f"unexpected error ({type(exc).__name__}: {first})",
            f"see the traceback in {log_file}; report it if the slide opens in other viewers",
        )
        return failed(task_err, traceback=traceback.format_exc())
    return SlideOutcome(
        path=job.path,
        status="done",
        runtime_s=seconds(),
        mpp_override=job.mpp,
        worker=where,
        record=res.record,
        setup_s=setup_s,
    )
