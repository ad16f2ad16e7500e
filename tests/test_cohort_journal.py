"""The manifest's journal (issue #22 item 2): a slide's state change costs O(1) in the cohort's
size, loads replay it (a torn last line ignored, replay idempotent), ``wsi-ocelot status`` sees
it while a batch runs, and ``manifest.json`` / ``summary.csv`` are whole after the batch."""

from __future__ import annotations

import csv
import errno
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from wsi_ocelot.cohort import CohortConfig, collect_jobs, run_cohort
from wsi_ocelot.cohort import journal as journal_mod
from wsi_ocelot.cohort import manifest as manifest_mod
from wsi_ocelot.cohort.journal import JOURNAL_NAME, Journal, read_journal
from wsi_ocelot.cohort.manifest import Manifest
from wsi_ocelot.cohort.status import batch_status, format_status
from wsi_ocelot.errors import ConfigError
from wsi_ocelot.inference.engine import EngineConfig
from wsi_ocelot.synthetic import write_synthetic_slide

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cohort_scale.py"


def _entry(i: int, status: str = "done") -> dict:
    return {
        "path": f"/data/cohort/slide_{i:05d}.svs",
        "status": status,
        "error": None if status == "done" else "not brightfield H&E. Fix: check the stain",
        "mpp": 0.2527,
        "n_cells": 123_456,
        "purity": 0.4123,
        "runtime_s": 97.4,
        "identity": {"size": 123, "mtime_ns": 1, "head_sha256": "ab" * 32},
    }


def _cohort(out: Path, n: int) -> Manifest:
    m = Manifest(out, {f"s_{i:05d}": _entry(i) for i in range(n)}, {"model": "demo"})
    m.save()
    return m


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    monkeypatch.setattr(journal_mod, "FSYNC", False)  # the tests' disk: no power cuts here


def test_a_state_change_costs_the_same_bytes_at_any_cohort_size(tmp_path):
    """Marking a slide running and recording it appends one line each, the same bytes whether the
    cohort has 10 or 5,000 slides, and leaves manifest.json untouched."""
    costs = {}
    for n in (10, 5000):
        m = _cohort(tmp_path / str(n), n)
        before = os.stat(m.path)
        m.mark_running("new_00001", "/data/cohort/new_00001.svs")
        running = m.journal_bytes_written
        m.record("new_00001", _entry(1))
        costs[n] = (running, m.journal_bytes_written - running)
        after = os.stat(m.path)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert m.journal_lines == 2 and not m.checkpoint_due()
        assert m.journal_path.stat().st_size == sum(costs[n])
        m.close()
    assert costs[10] == costs[5000] and all(0 < c < 1000 for c in costs[10])


def test_snapshots_stay_in_proportion_to_the_changes(tmp_path):
    """With a snapshot whenever one is due, 3 changes per slide over 2,000 slides (starting from
    an empty manifest) take a handful of snapshots, not one per change: amortised O(1)."""
    m = Manifest(tmp_path)
    m.save()
    snapshots = 0
    written = 0
    for i in range(2000):
        sid = f"s_{i:05d}"
        m.mark_running(sid, f"/x/{sid}.svs")
        m.record(sid, _entry(i, "failed"))
        m.record(sid, _entry(i))
        if m.checkpoint_due():
            m.save()
            snapshots += 1
            written += m.path.stat().st_size
        assert m.journal_lines <= max(journal_mod.COMPACT_FLOOR, len(m.slides)) + 3
    assert snapshots <= 12, snapshots
    per_change = written / (3 * 2000)
    assert per_change < 3 * m.path.stat().st_size / len(m.slides)  # a few entries' worth per change
    m.close()
    assert Manifest.load(tmp_path).slides == m.slides


def test_the_journal_is_replayed_on_load_and_a_torn_last_line_ignored(tmp_path):
    m = _cohort(tmp_path, 3)
    m.mark_running("s_00001", "/x/s_00001.svs")
    m.record("s_00002", _entry(2, "failed"))
    m.close()  # the lines stay: no snapshot holds them
    with open(tmp_path / JOURNAL_NAME, "ab") as fh:  # a kill in the middle of an append
        fh.write(b'{"seq": 99, "slide_id": "s_00000", "record": {"status": "fa')
    got = Manifest.load(tmp_path)
    assert got.slides["s_00001"]["status"] == "running"
    assert got.slides["s_00002"]["status"] == "failed"
    assert got.slides["s_00000"]["status"] == "done"  # the torn line changed nothing
    assert got.counts() == {"done": 1, "failed": 1, "running": 1}
    # the next writer cuts the torn line off before it appends
    got.record("s_00001", _entry(1))
    got.close()
    lines = (tmp_path / JOURNAL_NAME).read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(x) for x in lines[:-1]) and len(lines) == 4
    assert Manifest.load(tmp_path).counts() == {"done": 2, "failed": 1, "running": 0}


def test_a_kill_between_the_snapshot_and_emptying_the_journal_loads_the_same(tmp_path):
    """Replay is idempotent: lines the snapshot already holds are skipped by their seq, even where
    a later change was made in memory only (a slide marked pending before the last snapshot)."""
    m = _cohort(tmp_path, 2)
    m.mark_running("s_00001", "/x/s_00001.svs")
    m.record("s_00000", _entry(0, "failed"))
    journal = (tmp_path / JOURNAL_NAME).read_bytes()
    m.mark_pending([("s_00001", "/x/s_00001.svs")], "interrupted (SIGTERM)")
    m.save()  # the snapshot, then the journal emptied ...
    m.close()
    assert not (tmp_path / JOURNAL_NAME).exists()
    (tmp_path / JOURNAL_NAME).write_bytes(journal)  # ... as if the kill came before that
    got = Manifest.load(tmp_path)
    assert got.slides == m.slides and got.slides["s_00001"]["status"] == "pending"
    got.record("s_00001", _entry(1))  # and the changes after it go on from the snapshot's seq
    got.close()
    assert Manifest.load(tmp_path).counts() == {"done": 1, "failed": 1, "running": 0}


def test_a_load_racing_a_compaction_reads_again(tmp_path, monkeypatch):
    """A reader that read the old snapshot, then the journal after the writer emptied it, would
    miss the changes in between: it sees the snapshot's file replaced and reads again."""
    writer = _cohort(tmp_path, 2)
    writer.record("s_00001", _entry(1, "failed"))
    real = manifest_mod.read_journal
    calls = []

    def racing(path):
        calls.append(path)
        if len(calls) == 1:
            writer.save()  # the compaction lands between the reader's two reads
        return real(path)

    monkeypatch.setattr(manifest_mod, "read_journal", racing)
    got = Manifest.load(tmp_path)
    assert len(calls) == 2 and got.slides["s_00001"]["status"] == "failed"
    writer.close()


def test_a_damaged_journal_line_is_a_one_line_error(tmp_path):
    _cohort(tmp_path, 1)
    (tmp_path / JOURNAL_NAME).write_text('{"seq": 1, "slide_id": "a", "record": 3}\n{"seq": 2}\n')
    with pytest.raises(ConfigError) as info:
        Manifest.load(tmp_path)
    line = info.value.one_line()
    assert "\n" not in line and JOURNAL_NAME in line and "line 1" in line and "Fix:" in line


def test_a_failed_append_is_cut_back_to_the_last_whole_line(tmp_path):
    """A full disk in the middle of an append leaves no torn line for the next one to follow."""
    j = Journal.open(tmp_path / JOURNAL_NAME)
    j.append(1, "a", {"status": "done"})
    real_write = j._fh.write

    def half_then_enospc(data):
        real_write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    j._fh.write = half_then_enospc
    with pytest.raises(OSError):
        j.append(2, "b", {"status": "done"})
    j._fh.write = real_write
    j.append(3, "c", {"status": "failed"})
    j.close()
    assert [s for s, _, _ in read_journal(tmp_path / JOURNAL_NAME)] == [1, 3]


def test_a_run_killed_before_any_snapshot_resumes_from_the_journal(tmp_path):
    """Slides recorded only in the journal (the driver SIGKILLed: no snapshot, no close) count
    as done for the next run."""
    m = _cohort(tmp_path, 0)
    for i in range(3):
        sid = f"s_{i:05d}"
        (tmp_path / sid).mkdir()
        (tmp_path / sid / "purity.json").write_text("{}")
        m.mark_running(sid, f"/data/cohort/slide_{i:05d}.svs")
        m.record(sid, {**_entry(i), "identity": None})
    del m  # killed: the journal file is all that is left
    got = Manifest.load(tmp_path)
    assert all(got.resume(f"s_{i:05d}", f"/data/cohort/slide_{i:05d}.svs").done for i in range(3))


# -- the driver with the benchmark's stand-in task ---------------------------------------------------
def _bench():
    spec = importlib.util.spec_from_file_location("bench_cohort_scale", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_status_during_a_run_sees_the_journal_and_files_are_whole_after(
    tiny_ckpt, tmp_path, monkeypatch
):
    """A batch of 60 slides with the stand-in task (every 50th fails), checkpoints every few
    changes: `wsi-ocelot status` after each slide counts it (journal included), with throughput
    and ETA; at the end manifest.json holds every slide, the journal is gone, summary.csv has
    every row."""
    bench = _bench()
    n = 60
    monkeypatch.setattr(manifest_mod, "COMPACT_FLOOR", 16)
    src = write_synthetic_slide(tmp_path / "src" / "one.tiff", mpp=0.25, size=(256, 256), seed=1)
    del src
    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(n):
        os.link(tmp_path / "src" / "one.tiff", slides / f"s_{i}.tiff")
    Image.new("RGB", (120, 60), (230, 200, 220)).save(tmp_path / "overview.png")
    out = tmp_path / "out"
    seen = []

    def on_record(job, outcome):
        st = batch_status(out)
        seen.append((st.running, st.run_finished, st.counts.get("failed", 0), job.slide_id))
        if st.run_finished == 55:
            text = format_status(st)
            assert "a batch is running" in text and "slides/hour" in text and "ETA" in text
            assert "s_49" in text  # the failed slide, with its error

    res = run_cohort(
        collect_jobs([slides]),
        out,
        CohortConfig(model=str(tiny_ckpt), engine=EngineConfig(device="cpu"), report=False),
        on_record=on_record,
        process=bench.standin_process,
    )
    assert len(res.done) == n - 1 and res.failed == ["s_49"]
    assert [s[1] for s in seen] == list(range(1, n + 1)) and all(s[0] for s in seen)
    at = [s[3] for s in seen].index("s_49")  # status counts the failure from its own record on
    assert [s[2] for s in seen] == [0] * at + [1] * (n - at)
    assert not (out / JOURNAL_NAME).exists()
    snapshot = json.loads((out / "manifest.json").read_text())
    assert len(snapshot["slides"]) == n and snapshot["journal_seq"] == 2 * n
    assert snapshot["last_run"]["done"] == n - 1
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n and sum(r["status"] == "failed" for r in rows) == 1
    after = batch_status(out)
    assert not after.running and after.counts == {"done": n - 1, "failed": 1, "running": 0}
    assert "last run: 59 done, 1 failed" in format_status(after)
    shutil.rmtree(out / "s_0")  # a rerun redoes only what is missing
    again = run_cohort(
        collect_jobs([slides]),
        out,
        CohortConfig(model=str(tiny_ckpt), engine=EngineConfig(device="cpu"), report=False),
        process=bench.standin_process,
    )
    assert sorted(again.done) == ["s_0"] and again.failed == ["s_49"]


def test_the_eta_leaves_out_the_first_slides_runtime_build(caplog):
    """The first slide of a process loads the model and, on a new checkpoint or machine, builds
    its runtime cache (a minute or more on 2 cores): its progress line says how much of its time
    that was, and the batch's ETA leaves those one-off seconds out."""
    import logging
    import time

    from wsi_ocelot.cohort import batch
    from wsi_ocelot.cohort.outcome import SlideOutcome

    progress = batch._Progress(total=10, skipped=0)
    progress.t0 = time.perf_counter() - 130.0  # the first slide: 100 s of setup, 30 s of slide
    first = SlideOutcome.failed("/s0.svs", "boom", runtime_s=130.0, worker="h:1", setup_s=100.0)
    with caplog.at_level(logging.INFO, logger="wsi_ocelot.cohort.batch"):
        progress.update("s0", first)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[1/10]")]
    assert "(130.0 s, 100 s of it loading the model and choosing its runtime)" in line, line
    assert line.endswith("ETA 4 min 30 s"), line  # 9 slides of 30 s, not of 130
    caplog.clear()
    second = SlideOutcome.failed("/s1.svs", "boom", runtime_s=30.0, worker="h:1", setup_s=0.001)
    progress.t0 -= 30.0
    with caplog.at_level(logging.INFO, logger="wsi_ocelot.cohort.batch"):
        progress.update("s1", second)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[2/10]")]
    assert "(30.0 s)" in line and line.endswith("ETA 4 min 00 s"), line
