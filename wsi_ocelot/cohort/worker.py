"""The per-slide task: the same function runs in-process and on a Dask worker.

It never raises for a bad slide: it returns a record (``status`` done or failed, with the
one-line error), so one slide cannot take the batch down and Dask does not retry a slide
that failed for a reason a retry cannot fix. The model is loaded once per process and kept
(a Dask worker loads it for its first slide and reuses it for the rest).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from wsi_ocelot.atomic import write_text
from wsi_ocelot.cohort.inputs import SlideJob
from wsi_ocelot.cohort.manifest import DONE, FAILED
from wsi_ocelot.errors import DiskFullError, WsiOcelotError
from wsi_ocelot.inference.engine import SlideRunner

log = logging.getLogger(__name__)

_RUNNERS: dict[tuple[str, Any], Any] = {}


def _worker_index() -> int | None:
    """This Dask worker's index (LocalCluster names workers 0, 1, ...), else None."""
    try:
        from distributed import (
            get_worker,  # deliberately deferred: Dask is imported only on a Dask worker
        )

        name = get_worker().name
    except (ImportError, ValueError):
        return None
    try:
        return int(name)
    except (TypeError, ValueError):
        return None


def _device_for_this_process(device: str) -> str:
    """One GPU per worker: on a multi-GPU box, worker *i* takes ``cuda:i mod n``."""
    if device not in ("auto", "cuda"):
        return device
    idx = _worker_index()
    if idx is None:
        return device
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{idx % n}" if n > 1 else device


def get_runner(model: str, config):
    """The :class:`SlideRunner` of this process for (model, config), loaded on first use."""
    if multiprocessing.current_process().daemon and config.workers > 0:
        # daemonic processes (Dask's default workers) cannot start DataLoader workers
        log.info("running inside a daemonic worker process: tile reading in-process (workers=0)")
        config = dataclasses.replace(config, workers=0)
    config = dataclasses.replace(config, device=_device_for_this_process(config.device))
    key = (model, config)
    runner = _RUNNERS.get(key)
    if runner is None:
        runner = SlideRunner(model, config)
        _RUNNERS[key] = runner
    return runner


def _where() -> str:
    idx = _worker_index()
    host = socket.gethostname()
    return f"{host}:{os.getpid()}" + (f" (dask worker {idx})" if idx is not None else "")


def run_slide_task(job: SlideJob, out_dir: str, model: str, config, *, torch_threads: int | None = None,
                   started_marker: str | None = None) -> dict[str, Any]:
    """The Dask task: :func:`process_slide` between two notes in the shared output folder.

    ``started_marker`` is written when the slide starts and ``<started_marker>.json`` (the record)
    when it ends. When a worker dies, the driver reads them to tell a slide that was only queued
    there (resubmitted, not an attempt) from one that was running (an attempt) and from one that
    had finished but whose result had not reached the scheduler yet (its record is used as is)."""
    if started_marker:
        with open(started_marker, "w", encoding="utf-8") as fh:
            fh.write(_where())
    rec = process_slide(job, out_dir, model, config, torch_threads=torch_threads)
    if started_marker:
        write_text(Path(started_marker + ".json"), json.dumps(rec, default=str))
    return rec


def process_slide(job: SlideJob, out_dir: str, model: str, config, *, torch_threads: int | None = None) -> dict[str, Any]:
    """Run one slide into ``out_dir/<slide-id>/`` and return its manifest record."""
    t0 = time.perf_counter()
    base: dict[str, Any] = {"path": job.path, "mpp_override": job.mpp, "worker": _where()}
    try:
        if torch_threads:
            if torch.get_num_threads() != torch_threads:
                torch.set_num_threads(torch_threads)
        runner = get_runner(model, config)
        res = runner.run(job.path, out_dir, mpp=job.mpp, slide_id=job.slide_id, overwrite=True)
    except WsiOcelotError as err:
        rec = {**base, "status": FAILED, "error": err.one_line(), "runtime_s": round(time.perf_counter() - t0, 3)}
        if isinstance(err, DiskFullError):
            rec["disk_full"] = True  # the batch stops: every later slide would fail the same way
        return rec
    except Exception as exc:  # a bug or an unforeseen fault: report it, keep the batch going
        msg = f"{job.path}: unexpected error ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). " \
              "Fix: see the traceback in the run's log file; report it if the slide opens in other viewers"
        return {**base, "status": FAILED, "error": msg, "runtime_s": round(time.perf_counter() - t0, 3),
                "traceback": traceback.format_exc()}
    return {**base, "status": DONE, "error": None, **res.record.manifest_fields(), "runtime_s": round(time.perf_counter() - t0, 3)}
