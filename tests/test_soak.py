"""The soak run (benchmarks/soak.py) at small scale: a cohort with every kind of faulty slide,
SIGKILLed once and resumed; every good slide done exactly once with the clean run's outputs,
every faulty one failed with its reason, done with its count or named as not run (not a slide),
no partial folders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


@pytest.mark.slow
def test_soak_small_cohort_killed_once_and_resumed(tmp_path):
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    # one slide of each fault and as many good ones: killed at 0.32 of the clean run's time (seed 3)
    r = soak.soak(tmp_path, n=2 * len(soak.FAULTS), kills=1, seed=3)
    assert r["runs"][0]["killed"] and len(r["runs"]) == 2
    assert r["problems"] == [] and r["ok"]
    assert r["by_kind"]["good"] == 5 and all(r["by_kind"][k] == 1 for k in soak.FAULTS)
    # no MPP fails; a missing and a truncated file are not slides: named once as not run
    assert r["identical_to_clean"] == r["done"] == 7 and r["failed"] == 1 and r["not_run"] == 2
    assert all(n > 0 for n in r["unreadable_tiles"].values()) and not r["partial_folders"]
