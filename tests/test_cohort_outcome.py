"""The typed record a slide's task hands the batch driver (cohort/outcome.py): the manifest
entries it gives are those the dicts of earlier versions gave, key for key and in order; it
survives pickling (Dask) and the task's JSON note; its errors are WsiOcelotError one-liners."""

from __future__ import annotations

import dataclasses
import json
import pickle
from typing import Any

import pytest

from wsi_ocelot.cohort.outcome import SlideOutcome
from wsi_ocelot.errors import DiskFullError, SlideTaskError, WsiOcelotError
from wsi_ocelot.purity import PurityResult, SlideRecord

PATH = "/data/slides/case_0.svs"
BATCH: dict[str, Any] = {
    "model": "/models/best.safetensors",
    "model_sha256": "ab" * 32,
    "identity": {"size": 10, "mtime_ns": 1, "head_sha256": "cd" * 32},
}


def _record() -> SlideRecord:
    purity = PurityResult(
        n_cells=120,
        n_tc=30,
        n_bc=90,
        purity=0.25,
        purity_reason=None,
        n_cells_in_cancer_area=40,
        n_tc_in_cancer_area=20,
        n_bc_in_cancer_area=20,
        purity_in_cancer_area=0.5,
        purity_in_cancer_area_reason=None,
        tissue_area_mm2=1.5,
        cancer_area_mm2=0.25,
        mpp=0.25,
    )
    return SlideRecord(
        slide=PATH,
        purity=purity,
        mpp_source="openslide.mpp-x",
        model={"variant": "source"},
        mode="two-pass",
        device="cpu",
        runtime={"runtime": "torch", "precision": "fp32", "threads": 2},
        n_cell_tiles=4,
        n_tissue_tiles=1,
        n_unreadable_tiles=0,
        runtime_s={"total": 1.23456, "cells": 0.5},
        model_note="synthetic-only weights",
    )


def _old_done(rec: SlideRecord, attempts: int | None) -> dict[str, Any]:
    """What worker.process_slide and run_cohort built for a done slide before the record had a type."""
    d: dict[str, Any] = {
        "path": PATH,
        "mpp_override": 0.5,
        "worker": "host:1",
        "status": "done",
        "error": None,
        **rec.manifest_fields(),
        "runtime_s": 2.5,
    }
    if attempts is not None:
        d.setdefault("attempts", attempts)
    d.update(path=PATH, **BATCH)
    return d


@pytest.mark.parametrize("attempts", [None, 1])
def test_a_done_slide_gives_the_entry_earlier_versions_wrote(attempts: int | None) -> None:
    rec = _record()
    outcome = SlideOutcome(
        path=PATH,
        status="done",
        runtime_s=2.5,
        mpp_override=0.5,
        worker="host:1",
        record=rec,
        attempts=attempts,
    )
    entry = outcome.manifest_entry(**BATCH)
    old = _old_done(rec, attempts)
    assert list(entry) == list(old)
    assert json.dumps(entry, indent=2) == json.dumps(old, indent=2)


def test_a_failed_slide_with_a_traceback_gives_the_entry_earlier_versions_wrote() -> None:
    outcome = SlideOutcome.failed(
        PATH,
        "boom",
        runtime_s=0.1,
        mpp_override=None,
        worker="host:1",
        traceback="Traceback ...",
        attempts=2,
    )
    entry = dataclasses.replace(outcome, log="logs/case_0.log").manifest_entry(**BATCH)
    old = {
        "path": PATH,
        "mpp_override": None,
        "worker": "host:1",
        "status": "failed",
        "error": "boom",
        "runtime_s": 0.1,
        "attempts": 2,
        "log": "logs/case_0.log",
        **BATCH,
    }
    assert json.dumps(entry) == json.dumps(old)
    assert "traceback" not in entry and "disk_full" not in entry


def test_an_outcome_the_driver_made_keeps_its_shorter_entry() -> None:
    """The driver's own failures (no space before the slide started, a worker that died on
    every attempt) never had ``mpp_override`` or ``worker``, and put ``runtime_s`` first."""
    err = DiskFullError.under("/out", "No space left on device before case_0 could start")
    entry = SlideOutcome.failed(PATH, err.one_line(), runtime_s=0.0, disk_full=True).manifest_entry(
        **BATCH
    )
    old = {"path": PATH, "status": "failed", "runtime_s": 0.0, "error": err.one_line(), **BATCH}
    assert json.dumps(entry) == json.dumps(old)
    died = SlideOutcome.failed(PATH, "died", attempts=2).manifest_entry(**BATCH)
    assert list(died) == ["path", "status", "runtime_s", "error", "attempts", *BATCH]


def test_the_outcome_pickles_and_round_trips_through_the_task_note() -> None:
    for outcome in (
        SlideOutcome(path=PATH, status="done", runtime_s=1.0, worker="h:1", record=_record()),
        SlideOutcome.failed(PATH, "x", runtime_s=1.0, worker="h:1", traceback="tb", disk_full=True),
    ):
        assert pickle.loads(pickle.dumps(outcome)) == outcome
        note = json.loads(json.dumps(outcome.to_json(), default=str))
        back = SlideOutcome.from_json(note)
        assert back == outcome
        assert back.manifest_entry(**BATCH) == outcome.manifest_entry(**BATCH)


def test_status_and_record_must_agree() -> None:
    with pytest.raises(ValueError):
        SlideOutcome(path=PATH, status="done")
    with pytest.raises(ValueError):
        SlideOutcome(path=PATH, status="failed", record=_record())
    with pytest.raises(ValueError):
        SlideOutcome(path=PATH, status="skipped")  # type: ignore[arg-type]


def test_the_batch_errors_are_the_lines_earlier_versions_formatted_by_hand() -> None:
    err = SlideTaskError(
        PATH,
        "the Dask worker running this slide died 2 time(s) (KilledWorker)",
        "check the worker logs (memory, GPU driver); run the slide alone to see its error",
    )
    assert isinstance(err, WsiOcelotError)
    assert err.one_line() == (
        f"{PATH}: the Dask worker running this slide died 2 time(s) (KilledWorker). Fix: check the "
        "worker logs (memory, GPU driver); run the slide alone to see its error"
    )
    unexpected = SlideTaskError(
        PATH,
        "unexpected error (ZeroDivisionError: division by zero)",
        "see the traceback in out/logs/case_0.log; report it if the slide opens in other viewers",
    )
    assert unexpected.one_line() == (
        f"{PATH}: unexpected error (ZeroDivisionError: division by zero). Fix: see the traceback "
        "in out/logs/case_0.log; report it if the slide opens in other viewers"
    )
    assert pickle.loads(pickle.dumps(unexpected)).one_line() == unexpected.one_line()
