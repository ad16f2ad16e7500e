"""Reader processes (``tiling.dataset.read_batches``, issue 23): public APIs only (torch's
process-wide SIGCHLD state is left alone), batches in order and bit-identical to reading in
this process, a dead reader replaced, a batch that kills every reader that touches it read
alone and then delivered white, too many deaths fail the slide in one line, and no reader
process left behind after a pass, an error, Ctrl-C or the main process's SIGKILL."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import die_in_readers

from wsi_ocelot.errors import SlideFormatError
from wsi_ocelot.slide import open_slide
from wsi_ocelot.tiling import BlockBatches, TileDataset, make_grid, read_batches
from wsi_ocelot.tiling import dataset as ds

T = 128
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def blocks(pattern_slide) -> BlockBatches:
    s = open_slide(pattern_slide)
    g = make_grid(*s.dimensions, s.mpp, 0.2, T, 16)
    return BlockBatches(s, g.boxes, g.rows, g.cols, T, 4)


@pytest.fixture()
def reference(blocks) -> list[dict]:
    return list(read_batches(blocks, readers=0))


def _gone(pid: int) -> bool:
    """The process has ended (reaped, or a zombie nobody reaps)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _assert_no_readers() -> None:
    assert mp.active_children() == []


def _same(got: list[dict], want: list[dict], lost: set[int] = frozenset()) -> None:
    assert len(got) == len(want)
    for b, (g, w) in enumerate(zip(got, want, strict=True)):
        assert list(g) == list(w)  # same keys, same order
        assert torch.equal(g["index"], w["index"])
        if b in lost:
            assert g["unreadable"].all() and (g["cell"] == 255).all()
            assert all("its reader process died" in e for e in g["errors"])
        else:
            assert torch.equal(g["cell"], w["cell"]) and not g["unreadable"].any()
            assert g["errors"] == w["errors"]


def test_importing_and_reading_leave_torch_signal_state_alone(pattern_slide):
    # in a fresh interpreter: other tests may run DataLoaders, which set it legitimately
    code = textwrap.dedent(
        f"""
        import signal
        from torch.utils.data._utils import signal_handling as sh
        before = (sh._SIGCHLD_handler_set, signal.getsignal(signal.SIGCHLD))
        import wsi_ocelot.tiling
        from wsi_ocelot.tiling import dataset
        from wsi_ocelot.slide import open_slide
        from wsi_ocelot.tiling import BlockBatches, make_grid, read_batches
        after_import = (sh._SIGCHLD_handler_set, signal.getsignal(signal.SIGCHLD))
        s = open_slide({str(pattern_slide)!r})
        g = make_grid(*s.dimensions, s.mpp, 0.2, 128, 16)
        n = sum(len(b["index"]) for b in read_batches(
            BlockBatches(s, g.boxes, g.rows, g.cols, 128, 4), readers=2))
        assert n == len(g), n
        after_pass = (sh._SIGCHLD_handler_set, signal.getsignal(signal.SIGCHLD))
        assert before[0] is False, before
        assert after_import == before and after_pass == before, (before, after_import, after_pass)
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def test_source_has_no_torch_internals():
    text = Path(ds.__file__).read_text(encoding="utf-8")
    assert (
        "_utils" not in text and "signal_handling" not in text and "DataLoader worker" not in text
    )


@pytest.mark.parametrize("readers", [1, 3])
def test_batches_in_order_and_bit_identical(blocks, reference, readers):
    got = list(read_batches(blocks, readers=readers, prefetch=2))
    _same(got, reference)
    _assert_no_readers()


def test_tile_dataset_batches_collated_like_in_process(pattern_slide):
    s = open_slide(pattern_slide)
    g = make_grid(*s.dimensions, s.mpp, 0.2, T, 16)
    tiles = TileDataset(s, g.boxes[:10], T, g.boxes[:10], np.full((10, 2), 0.25, np.float32))
    want = list(read_batches(tiles, readers=0, batch_size=4))
    got = list(read_batches(tiles, readers=2, batch_size=4))
    assert [len(b["index"]) for b in got] == [4, 4, 2]
    for g_, w in zip(got, want, strict=True):
        assert list(g_) == list(w)
        for k, v in w.items():
            if isinstance(v, torch.Tensor):
                assert g_[k].dtype == v.dtype and torch.equal(g_[k], v), k
            else:
                assert g_[k] == v, k
    _assert_no_readers()


@pytest.mark.slow  # SIGKILLs a process
def test_a_reader_killed_mid_pass_is_replaced(blocks, reference, caplog):
    it = read_batches(blocks, readers=2, prefetch=2)
    got = [next(it)]
    victims = [p.pid for p in mp.active_children()]
    assert len(victims) == 2
    os.kill(victims[0], signal.SIGKILL)
    with caplog.at_level(logging.WARNING, logger="wsi_ocelot"):
        got += list(it)
    _same(got, reference)
    assert any("SIGKILL" in r.getMessage() for r in caplog.records)
    _assert_no_readers()
    assert all(_gone(pid) for pid in victims)


def test_a_batch_that_dies_once_is_read_again_alone(blocks, reference, monkeypatch, tmp_path):
    die_in_readers(
        monkeypatch, BlockBatches, lambda _, i: i == 2, times=1, marker_dir=tmp_path, code=3
    )
    got = list(read_batches(blocks, readers=2))
    assert (tmp_path / "death-0").exists()
    _same(got, reference)
    _assert_no_readers()


def test_a_batch_that_kills_every_reader_is_delivered_white(
    blocks, reference, monkeypatch, tmp_path, caplog
):
    die_in_readers(
        monkeypatch, BlockBatches, lambda _, i: i == 2, times=50, marker_dir=tmp_path, code=3
    )
    with caplog.at_level(logging.WARNING, logger="wsi_ocelot"):
        got = list(read_batches(blocks, readers=2))
    assert len(list(tmp_path.iterdir())) == 2  # its reader, then the one that read it alone
    _same(got, reference, lost={2})
    assert all("exited with code 3" in e for e in got[2]["errors"])
    assert any("count as unreadable" in r.getMessage() for r in caplog.records)
    _assert_no_readers()


def test_per_tile_batch_that_kills_every_reader_is_delivered_white(
    pattern_slide, monkeypatch, tmp_path
):
    s = open_slide(pattern_slide)
    g = make_grid(*s.dimensions, s.mpp, 0.2, T, 16)
    tiles = TileDataset(s, g.boxes[:12], T, g.boxes[:12])
    want = list(read_batches(tiles, readers=0, batch_size=4))
    die_in_readers(
        monkeypatch, TileDataset, lambda _, i: i == 5, times=50, marker_dir=tmp_path, code=3
    )
    got = list(read_batches(tiles, readers=1, batch_size=4))
    assert [b["index"].tolist() for b in got] == [b["index"].tolist() for b in want]
    assert got[1]["unreadable"].all() and (got[1]["context"] == 255).all()
    for b in (0, 2):
        assert torch.equal(got[b]["cell"], want[b]["cell"]) and not got[b]["unreadable"].any()
    _assert_no_readers()


def test_too_many_deaths_fail_the_slide_in_one_line(blocks, monkeypatch, tmp_path):
    die_in_readers(
        monkeypatch, BlockBatches, lambda _, i: True, times=10_000, marker_dir=tmp_path, code=3
    )
    with pytest.raises(SlideFormatError) as exc:
        list(read_batches(blocks, readers=2, max_deaths=3))
    msg = exc.value.one_line()
    assert "\n" not in msg and str(blocks.slide.path) in msg
    assert "tile-reading processes died 4 times" in msg and "exited with code 3" in msg
    _assert_no_readers()


def test_an_error_in_a_reader_is_raised_and_ends_every_reader(blocks, monkeypatch):
    parent = os.getpid()
    orig = BlockBatches.__getitem__

    def getitem(self, i):
        if os.getpid() != parent and i == 3:
            raise OSError(5, "input/output error on the slide's disk")
        return orig(self, i)

    monkeypatch.setattr(BlockBatches, "__getitem__", getitem)
    with pytest.raises(OSError, match="input/output error") as exc:
        list(read_batches(blocks, readers=2))
    assert any("tile-reader process" in n for n in exc.value.__notes__)
    _assert_no_readers()


def test_leaving_a_pass_early_ends_every_reader(blocks):
    it = read_batches(blocks, readers=2)
    next(it)
    pids = [p.pid for p in mp.active_children()]
    assert len(pids) == 2
    it.close()
    _assert_no_readers()
    assert all(_gone(pid) for pid in pids)


def _mark_reads(monkeypatch, marker_dir: Path, slow: int | None = None) -> None:
    """Each BlockBatches item read (in any process) leaves the file ``read-<i>`` in ``marker_dir``
    once it is read; item ``slow`` takes half a second longer."""
    orig = BlockBatches.__getitem__

    def getitem(self, i):
        if i == slow:
            time.sleep(0.5)
        batch = orig(self, i)
        (marker_dir / f"read-{i}").touch()
        return batch

    monkeypatch.setattr(BlockBatches, "__getitem__", getitem)


def _appears(path: Path, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            return True
        time.sleep(0.02)
    return False


def test_a_batch_taken_in_early_frees_its_slot_for_the_next_at_once(blocks, monkeypatch, tmp_path):
    """Batch 1 read before batch 0 (two readers, batch 0 slow) is taken in with it: when batch 1
    is handed out, batch 2 is already asked for (it used to wait until the consumer asked for
    batch 2, a whole read later)."""
    assert len(blocks) >= 3
    _mark_reads(monkeypatch, tmp_path, slow=0)
    it = read_batches(blocks, readers=2, prefetch=1)
    next(it), next(it)
    assert _appears(tmp_path / "read-2", timeout=5.0)
    it.close()
    _assert_no_readers()


@pytest.mark.slow  # SIGKILLs a process
def test_ctrl_c_while_waiting_ends_every_reader(blocks, monkeypatch):
    parent = os.getpid()
    orig = BlockBatches.__getitem__

    def slow(self, i):
        if os.getpid() != parent and i >= 1:
            time.sleep(30)
        return orig(self, i)

    monkeypatch.setattr(BlockBatches, "__getitem__", slow)
    # Python raises KeyboardInterrupt only where SIGINT was not ignored at its start, and a
    # shell ignores it in what it starts in the background (`pytest ... &`): ask for it here
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        it = read_batches(blocks, readers=2)
        next(it)
        pids = [p.pid for p in mp.active_children()]
        timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            next(it)
        timer.join()
    finally:
        signal.signal(signal.SIGINT, before)
    assert time.monotonic() - t0 < 10  # the readers were killed, not waited for
    _assert_no_readers()
    assert all(_gone(pid) for pid in pids)


@pytest.mark.slow  # SIGKILLs a process
def test_no_orphans_when_the_main_process_is_killed(pattern_slide, tmp_path):
    code = textwrap.dedent(
        f"""
        import multiprocessing as mp, os, sys, time
        from wsi_ocelot.slide import open_slide
        from wsi_ocelot.tiling import BlockBatches, make_grid, read_batches
        parent = os.getpid()
        orig = BlockBatches.__getitem__
        def slow(self, i):
            if os.getpid() != parent and i >= 1:
                time.sleep(5)
            return orig(self, i)
        BlockBatches.__getitem__ = slow
        s = open_slide({str(pattern_slide)!r})
        g = make_grid(*s.dimensions, s.mpp, 0.2, 128, 16)
        it = read_batches(BlockBatches(s, g.boxes, g.rows, g.cols, 128, 4), readers=2)
        next(it)
        print(" ".join(str(p.pid) for p in mp.active_children()), flush=True)
        next(it)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(_gone(p) for p in pids):
            time.sleep(0.2)
        assert all(_gone(p) for p in pids), "reader processes outlived the main process"
    finally:
        proc.kill()
        proc.wait(timeout=30)
