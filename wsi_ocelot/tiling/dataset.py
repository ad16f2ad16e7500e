"""Torch datasets of aligned tiles read from one slide, and the reader processes that read them.

:class:`TileDataset` reads every tile (and its context) on its own: the paper's per-tile
path. :class:`BlockBatches` serves whole batches of neighbouring tiles, each batch cut
from one region read over the tiles' union (:meth:`Slide.read_boxes`), so the overlap
between tiles is decoded once: the engine's two-pass path.

:func:`read_batches` reads a pass's batches in reader processes (forked, one torch thread
each; the :class:`Slide` re-opens its handle once per process), so tile reading and decoding
run beside the model, never in front of it. Each reader has ``prefetch`` batches in flight;
batches are delivered in order. A reader writes a batch's tensors into one of its own
shared-memory slots (anonymous shared mappings made before the fork: the kernel frees them
with the last process that maps them, so nothing is left behind on any path, not even a
SIGKILL) and sends only their layout through its pipe; the main process copies them out
(into pinned memory on CUDA) and the slot is reused. Only public APIs are used: a reader's
death is seen on its process sentinel (:func:`multiprocessing.connection.wait`); torch's
DataLoader and its process-wide signal handling are not involved.

A tile the slide will not give (a corrupt stored tile: OpenSlide raises) is read once more,
then delivered white and flagged: batches carry ``unreadable`` (bool per tile) and ``errors``
(the reason, "" for good tiles), and the engine drops its detections. A reader process that
dies (a codec that crashes) is replaced; the batch it was reading is read again alone, in a
process of its own, and if that dies too, its tiles are delivered white and flagged. More
than :data:`MAX_READER_DEATHS` deaths in one pass fail the slide.
"""

from __future__ import annotations

import heapq
import logging
import math
import mmap
import multiprocessing as mp
import os
import pickle
import signal
import traceback
from collections import deque
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from wsi_ocelot.errors import SlideFormatError
from wsi_ocelot.slide import Slide

log = logging.getLogger(__name__)

#: Reader processes that may die during one pass before the slide fails.
MAX_READER_DEATHS = 8


def read_tile(slide: Slide, box: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """The level-0 ``box`` read at ``size`` (``(h, w, 3)`` uint8) and "" or, when the slide
    fails to give it twice in a row, a white tile and the reason."""
    x, y, w, h = (int(v) for v in box)
    b = (x, y, w, h)
    for attempt in (1, 2):
        try:
            return slide.read_box(b, size), ""
        except SlideFormatError as err:
            if attempt == 2:
                return np.full((int(size[1]), int(size[0]), 3), 255, np.uint8), err.problem
            log.debug("%s: reading box %s failed (%s); retrying once", slide.path, b, err.problem)
    raise AssertionError("unreachable")  # pragma: no cover


class TileDataset(Dataset):
    """Items ``{"cell": (3, T, T) uint8, "context": (3, T, T) uint8, "offset": (2,)
    float32, "box": (4,) int64 level-0 x, y, w, h of the cell tile, "index": int}``.

    ``cell_boxes`` (N, 4) are level-0 boxes resized to ``tile_size``; ``context_boxes``
    (N, 4) (optional) likewise, with ``offsets`` (N, 2) the cell centre's relative
    position in its context. Without context boxes only ``cell`` is returned (the
    tissue pass uses this with its own boxes)."""

    def __init__(
        self,
        slide: Slide,
        cell_boxes: np.ndarray,
        tile_size: int,
        context_boxes: np.ndarray | None = None,
        offsets: np.ndarray | None = None,
    ):
        self.slide = slide
        self.cell_boxes = np.asarray(cell_boxes, dtype=np.int64).reshape(-1, 4)
        self.tile_size = int(tile_size)
        self.context_boxes = (
            None
            if context_boxes is None
            else np.asarray(context_boxes, dtype=np.int64).reshape(-1, 4)
        )
        if self.context_boxes is not None and len(self.context_boxes) != len(self.cell_boxes):
            raise ValueError("cell_boxes and context_boxes differ in length")
        n = len(self.cell_boxes)
        self.offsets = (
            np.full((n, 2), 0.5, np.float32)
            if offsets is None
            else np.asarray(offsets, np.float32).reshape(n, 2)
        )

    def __len__(self) -> int:
        return len(self.cell_boxes)

    def _read(self, box: np.ndarray) -> tuple[torch.Tensor, str]:
        img, err = read_tile(self.slide, box, (self.tile_size, self.tile_size))
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), err

    def __getitem__(self, i: int) -> dict[str, Any]:
        cell, err = self._read(self.cell_boxes[i])
        item: dict[str, Any] = {
            "cell": cell,
            "box": torch.from_numpy(self.cell_boxes[i].copy()),
            "index": i,
        }
        if self.context_boxes is not None:
            item["context"], ctx_err = self._read(self.context_boxes[i])
            item["offset"] = torch.from_numpy(self.offsets[i].copy())
            err = err or (f"its context: {ctx_err}" if ctx_err else "")
        item["unreadable"], item["errors"] = bool(err), err
        return item

    def lost_batch(self, items: range, reason: str) -> dict[str, Any]:
        """A batch of the tiles ``items``, white and flagged unreadable with ``reason`` (their
        reader died on them)."""
        T = self.tile_size
        white = torch.full((3, T, T), 255, dtype=torch.uint8)
        lost = []
        for i in items:
            item: dict[str, Any] = {
                "cell": white,
                "box": torch.from_numpy(self.cell_boxes[i].copy()),
                "index": i,
                "unreadable": True,
                "errors": reason,
            }
            if self.context_boxes is not None:
                item["context"], item["offset"] = white, torch.from_numpy(self.offsets[i].copy())
            lost.append(item)
        return default_collate(lost)


def block_shape(batch_size: int) -> tuple[int, int]:
    """Rows × columns of a block of ``batch_size`` grid tiles, as square as the size allows
    (8 → 2 × 4, 16 → 4 × 4, 32 → 4 × 8)."""
    b = max(1, int(batch_size))
    rows = max(d for d in range(1, int(b**0.5) + 1) if b % d == 0)
    return rows, b // rows


def block_ids(rows: np.ndarray, cols: np.ndarray, batch_size: int) -> np.ndarray:
    """The block (of :func:`block_shape` tiles for ``batch_size``) each grid tile lies in, as
    one int64 per tile: tiles with the same id are neighbours read together."""
    br, bc = block_shape(batch_size)
    return (np.asarray(rows, np.int64) // br) * (1 << 32) + np.asarray(cols, np.int64) // bc


def plan_batches(rows: np.ndarray, cols: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Group grid tiles (their row and column indices) into batches of at most
    ``batch_size`` neighbouring tiles: the grid is cut into blocks of :func:`block_shape`
    tiles, taken row by row, each block's tiles in raster order. A full block is one batch;
    blocks cut short by the tissue's edge are packed whole into batches while they fit, so
    a block is never split between two batches. Returns index arrays into the grid."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    if not len(rows):
        return []
    br, bc = block_shape(batch_size)
    order = np.lexsort((cols, rows, cols // bc, rows // br))
    block = block_ids(rows, cols, batch_size)[order]
    starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]])
    bounds = np.r_[starts, len(order)]
    batches: list[np.ndarray] = []
    cur: list[np.ndarray] = []
    n = 0
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if n + (b - a) > batch_size and cur:
            batches.append(np.concatenate(cur))
            cur, n = [], 0
        cur.append(order[a:b])
        n += b - a
    if cur:
        batches.append(np.concatenate(cur))
    return batches


class BlockBatches(Dataset):
    """Items are whole batches ``{"cell": (n, 3, T, T) uint8, "index": (n,) int64,
    "unreadable": (n,) bool, "errors": n strings}`` of the tiles ``batches[i]`` (indices into
    ``boxes``), read block by block: the tiles of a batch that lie in one block of
    :func:`block_shape` are cut from one region read over their union. A block that fails is
    read again tile by tile (:func:`read_tile`), so a corrupt stored tile costs only the tiles
    over it. Read in reader processes with :func:`read_batches`."""

    def __init__(
        self,
        slide: Slide,
        boxes: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        tile_size: int,
        batch_size: int,
    ):
        self.slide = slide
        self.boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        self.rows, self.cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        self.tile_size = int(tile_size)
        self.batch_size = int(batch_size)
        self.batches = plan_batches(self.rows, self.cols, batch_size)

    def blocks(self, idx: np.ndarray) -> np.ndarray:
        """The block id (:func:`block_ids`) of the tiles ``idx``."""
        return block_ids(self.rows[idx], self.cols[idx], self.batch_size)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        idx = self.batches[i]
        T = self.tile_size
        out = np.empty((len(idx), T, T, 3), np.uint8)
        errors = [""] * len(idx)
        block_id = self.blocks(idx)
        for b in np.unique(block_id):
            sel = np.flatnonzero(block_id == b)
            try:
                out[sel] = self.slide.read_boxes(self.boxes[idx[sel]], (T, T))
            except (
                SlideFormatError
            ):  # a bad stored tile somewhere in the block: find which tiles it costs
                for k in sel:
                    out[k], errors[k] = read_tile(self.slide, self.boxes[idx[k]], (T, T))
        cell = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
        return {
            "cell": cell,
            "index": torch.from_numpy(idx.copy()),
            "unreadable": torch.tensor([bool(e) for e in errors], dtype=torch.bool),
            "errors": errors,
        }

    def lost_batch(self, items: range, reason: str) -> dict[str, Any]:
        """The batch ``items[0]``, white and flagged unreadable with ``reason`` (its reader died on it)."""
        idx = self.batches[items[0]]
        T = self.tile_size
        return {
            "cell": torch.full((len(idx), 3, T, T), 255, dtype=torch.uint8),
            "index": torch.from_numpy(idx.copy()),
            "unreadable": torch.ones(len(idx), dtype=torch.bool),
            "errors": [reason] * len(idx),
        }


def default_workers() -> int:
    """Tile-reading processes for this machine: the cores this process may use, less one
    for the main process, at most 16 (reading a 1024² tile costs a few core-ms, so 16
    readers feed a fast GPU; ``benchmarks/results/host.md``), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(16, cores - 1))


# -- reading a pass's batches in reader processes ------------------------------------------------
_ALIGN = 64  # byte alignment of each tensor in a shared-memory slot
_SLOT_SPARE = 1 << 20  # room in a slot beyond the tiles, for the small tensors (indices, boxes)
_POLL_S = 1.0  # how often an idle reader checks that the main process is still there


class _Batches:
    """The batches of a pass, numbered from 0: a :class:`BlockBatches` item is a batch; a
    :class:`TileDataset`'s items are taken ``batch_size`` at a time."""

    def __init__(self, dataset: TileDataset | BlockBatches, batch_size: int) -> None:
        self.dataset = dataset
        self.blocks = isinstance(dataset, BlockBatches)
        self.batch_size = 1 if self.blocks else max(1, int(batch_size))
        self.n = len(dataset) if self.blocks else math.ceil(len(dataset) / self.batch_size)

    def __len__(self) -> int:
        return self.n

    def items(self, b: int) -> range:
        """The dataset's items in batch ``b``."""
        return range(b * self.batch_size, min(len(self.dataset), (b + 1) * self.batch_size))

    def read(self, b: int) -> dict[str, Any]:
        if isinstance(self.dataset, BlockBatches):
            return self.dataset[b]
        return default_collate([self.dataset[i] for i in self.items(b)])

    def lost(self, b: int, reason: str) -> dict[str, Any]:
        """Batch ``b`` white, its tiles flagged unreadable with ``reason``."""
        return self.dataset.lost_batch(self.items(b), reason)

    def slot_bytes(self) -> int:
        """Bytes of shared memory that hold any one batch's tensors."""
        ds = self.dataset
        tile = 3 * ds.tile_size**2
        if isinstance(ds, BlockBatches):
            most = max((len(b) for b in ds.batches), default=1)
        else:
            most = self.batch_size * (1 if ds.context_boxes is None else 2)
        return most * tile + _SLOT_SPARE


def _pack(batch: dict[str, Any], slot: mmap.mmap) -> dict[str, Any]:
    """``batch`` as a message for the main process: its tensors written into ``slot`` as far
    as they fit (``"shm"``: key, dtype, shape, byte offset), the rest pickled (``"rest"``)."""
    placed: list[tuple[str, str, tuple[int, ...], int]] = []
    rest: dict[str, Any] = {}
    offset = 0
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.device.type == "cpu":
            arr = value.numpy()
            if offset + arr.nbytes <= len(slot):
                dst = np.ndarray(arr.shape, arr.dtype, buffer=slot, offset=offset)
                dst[...] = arr
                del dst
                placed.append((key, arr.dtype.str, arr.shape, offset))
                offset += -(-arr.nbytes // _ALIGN) * _ALIGN
                continue
        rest[key] = value
    return {"shm": placed, "rest": rest}


def _pin(value: Any) -> Any:
    return value.pin_memory() if isinstance(value, torch.Tensor) else value


def _unpack(msg: dict[str, Any], slot: mmap.mmap, pin: bool) -> dict[str, Any]:
    """The batch of :func:`_pack`'s message, its tensors copied out of ``slot`` (into pinned
    memory when ``pin``), in the batch's own key order."""
    out: dict[str, Any] = {}
    for key, dtype, shape, offset in msg["shm"]:
        src = np.ndarray(shape, np.dtype(dtype), buffer=slot, offset=offset)
        view = torch.from_numpy(src)
        out[key] = torch.empty(view.shape, dtype=view.dtype, pin_memory=pin).copy_(view)
        del view, src  # the slot's memory is exported no longer
    for key, value in msg["rest"].items():
        out[key] = _pin(value) if pin else value
    return out


def _portable(err: BaseException) -> BaseException:
    """``err``, or a RuntimeError naming it where it does not survive pickling."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # noqa: BLE001 - any exception class may refuse to pickle
        return RuntimeError(f"{type(err).__name__}: {err}")
    return err


def _reader_main(
    source: _Batches, conn: Connection, main_end: Connection, slots: list[mmap.mmap], main_pid: int
) -> None:
    """A reader process: reads the batches asked for on ``conn``, one at a time, into the slot
    named with each, and answers with the batch's layout. Ends when the pipe closes, when
    asked (None) or when the main process is gone."""
    main_end.close()  # the main process's end, inherited by the fork
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    # One thread per reader: the readers are many, and torch/OpenCV would otherwise
    # oversubscribe the cores.
    torch.set_num_threads(1)
    while True:
        try:
            if not conn.poll(_POLL_S):
                if os.getppid() != main_pid:
                    return
                continue
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        b, slot = task
        try:
            msg: tuple[Any, ...] = ("batch", b, _pack(source.read(b), slots[slot]))
        except Exception as err:  # noqa: BLE001 - any error reading is raised in the main process
            msg = ("error", b, _portable(err), traceback.format_exc())
        try:
            conn.send(msg)
        except (OSError, ValueError):
            return


def _how_it_ended(proc: mp.process.BaseProcess) -> str:
    code = proc.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class _Reader:
    """One reader process with its pipe, its ``slots`` shared-memory slots and the batches it
    was asked for, in order (it reads them in that order)."""

    def __init__(self, source: _Batches, slots: int, slot_bytes: int, solo: bool = False) -> None:
        ctx = mp.get_context("fork")
        self.solo = solo
        # anonymous shared mappings, inherited by the fork: no name to unlink, ever
        self.slots = [mmap.mmap(-1, slot_bytes) for _ in range(slots)]
        self.free = list(range(slots))
        self.tasks: deque[tuple[int, int]] = deque()
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=_reader_main,
            args=(source, child, self.conn, self.slots, os.getpid()),
            name="wsi-ocelot-reader",
            daemon=True,
        )
        self.proc.start()
        child.close()
        self.pid = self.proc.pid

    def ask(self, b: int) -> None:
        slot = self.free.pop()
        self.tasks.append((b, slot))
        try:
            self.conn.send((b, slot))
        except OSError:  # it died; its sentinel tells
            pass

    def release(self) -> None:
        """Ask the process to end (it may be busy; it ends when it asks for its next batch).
        Asked in words: readers forked later hold copies of this pipe's end, so closing it is
        not an end of file the reader would see."""
        if not self.conn.closed:
            try:
                self.conn.send(None)
            except OSError:  # it has ended already
                pass
            self.conn.close()

    def stop(self, kill: bool) -> None:
        """End the process (at once when ``kill``, else when it has read what it was asked
        for) and let go of its slots."""
        if kill and self.proc.is_alive():
            self.proc.kill()
        self.release()
        self.proc.join(timeout=None if kill else 5.0)
        if self.proc.is_alive():  # pragma: no cover - a reader stuck in a codec
            self.proc.kill()
            self.proc.join()
        self.proc.close()
        for slot in self.slots:
            try:
                slot.close()
            except BufferError:  # pragma: no cover - still exported; freed with its last view
                pass


class _ReaderPool:
    """The reader processes of one pass and the batches between them and the consumer."""

    def __init__(
        self, source: _Batches, readers: int, prefetch: int, pin: bool, max_deaths: int
    ) -> None:
        self.source, self.pin, self.max_deaths = source, pin, max_deaths
        self.prefetch = max(1, int(prefetch))
        # batches asked for and not yet delivered, at most (received ones wait in self.done)
        self.window = max(1, readers) * self.prefetch
        self.slot_bytes = source.slot_bytes()
        self.readers: list[_Reader] = []
        self.solos: list[_Reader] = []
        self.retry: list[int] = []  # batches to ask for again (a heap)
        self.next_new = 0
        self.done: dict[int, dict[str, Any]] = {}
        self.deaths = 0

    def start(self, readers: int) -> None:
        for _ in range(readers):
            self.readers.append(_Reader(self.source, self.prefetch, self.slot_bytes))

    def batches(self) -> Iterator[dict[str, Any]]:
        for b in range(len(self.source)):
            # asked each time, not only when ``b`` is still to come: a batch taken in with an
            # earlier one (readers answer out of order) frees its slot for the next batch now
            self._ask(b)
            while b not in self.done:
                self._wait()
                self._ask(b)
            yield self.done.pop(b)

    def _ask(self, first: int) -> None:
        """Hand out batches, lowest first, while the window from ``first`` and free slots allow."""
        n = len(self.source)
        while True:
            if self.retry:
                b = self.retry[0]
            elif self.next_new < n:
                b = self.next_new
            else:
                return
            if b >= first + self.window:
                return
            free = [r for r in self.readers if r.free]
            if not free:
                return
            min(free, key=lambda r: len(r.tasks)).ask(b)
            if self.retry and self.retry[0] == b:
                heapq.heappop(self.retry)
            else:
                self.next_new += 1

    def _wait(self) -> None:
        """Wait for any reader's answer or end, and take in what came."""
        live = self.readers + self.solos
        by_obj: dict[Any, _Reader] = {}
        for r in live:
            by_obj[r.proc.sentinel] = r
            if r.tasks:
                by_obj[r.conn] = r
        ready = wait(list(by_obj))
        seen: list[_Reader] = []
        for obj in ready:
            if by_obj[obj] not in seen:
                seen.append(by_obj[obj])
        for r in seen:
            alive = self._take(r)
            if not alive or r.proc.sentinel in ready:
                self._died(r)
            elif r.solo and not r.tasks:
                self.solos.remove(r)
                r.stop(kill=False)

    def _take(self, r: _Reader) -> bool:
        """Take in what ``r`` has sent; False when its pipe broke (it died). An error raised
        while reading is raised here."""
        while r.tasks:
            try:
                if not r.conn.poll():
                    return True
                kind, b, payload, *tb = r.conn.recv()
            except (EOFError, OSError, pickle.UnpicklingError):
                return False
            if kind == "error":
                payload.add_note(f"raised in tile-reader process {r.pid}:\n{tb[0]}")
                raise payload
            want, slot = r.tasks.popleft()
            if b != want:  # pragma: no cover - a reader answers in the order asked
                raise RuntimeError(f"tile reader answered batch {b}, expected {want}")
            self.done[b] = _unpack(payload, r.slots[slot], self.pin)
            r.free.append(slot)
        return True

    def _died(self, r: _Reader) -> None:
        """``r`` died: replace it; the batch it was reading is read again alone, or, when it
        was already alone, delivered white and flagged."""
        r.proc.join(timeout=5.0)
        how = f"reader process {r.pid} {_how_it_ended(r.proc)}"
        tasks = [b for b, _ in r.tasks]
        (self.solos if r.solo else self.readers).remove(r)
        r.stop(kill=True)
        self.deaths += 1
        path = self.source.dataset.slide.path
        if self.deaths > self.max_deaths:
            raise SlideFormatError(
                path,
                f"tile-reading processes died {self.deaths} times while reading it ({how})",
                "check that the slide opens in a viewer; re-export or re-scan it",
            )
        items = self.source.items(tasks[0]) if tasks else range(0)
        if r.solo and tasks:  # this batch kills every reader that touches it
            log.warning(
                "%s: items %d-%d of this pass killed their reader process twice (%s); their tiles count as unreadable",
                path,
                items.start,
                items.stop - 1,
                how,
            )
            self.done[tasks[0]] = self.source.lost(tasks[0], f"its reader process died ({how})")
            return
        log.warning(
            "%s: a tile-reading process died (%s); a new one takes its place%s",
            path,
            how,
            f", and items {items.start}-{items.stop - 1} are read again alone" if tasks else "",
        )
        self.readers.append(_Reader(self.source, self.prefetch, self.slot_bytes))
        if tasks:
            solo = _Reader(self.source, 1, self.slot_bytes, solo=True)
            self.solos.append(solo)
            solo.ask(tasks[0])
            for b in tasks[1:]:  # asked for after the one it died on: not read yet
                heapq.heappush(self.retry, b)

    def close(self, kill: bool) -> None:
        for r in self.readers + self.solos:  # all asked first, so they end side by side
            if kill:
                r.proc.kill()
            else:
                r.release()
        for r in self.readers + self.solos:
            r.stop(kill)
        self.readers, self.solos = [], []
        self.done.clear()


def read_batches(
    dataset: TileDataset | BlockBatches,
    *,
    readers: int,
    batch_size: int = 8,
    prefetch: int = 2,
    pin_memory: bool = False,
    max_deaths: int = MAX_READER_DEATHS,
) -> Iterator[dict[str, Any]]:
    """The dataset's batches in order, read in ``readers`` processes (0 = in this process),
    each with ``prefetch`` batches in flight; tensors in pinned memory when ``pin_memory``.

    A :class:`BlockBatches` item is a batch; a :class:`TileDataset`'s items are collated
    ``batch_size`` at a time. A reader that dies (a codec crash) is replaced, and the batch it
    was reading is read again alone in a new process; if that dies too, the batch is delivered
    white and flagged unreadable (``lost_batch``). More than ``max_deaths`` deaths in one pass and the
    slide fails (:class:`SlideFormatError`). Every reader has ended when the iterator is
    exhausted, closed, or left by an exception (KeyboardInterrupt included)."""
    source = _Batches(dataset, batch_size)
    if readers > 0 and "fork" not in mp.get_all_start_methods():  # pragma: no cover - Windows
        log.warning("no fork() on this platform: tiles are read in this process")
        readers = 0
    if readers <= 0 or not len(source):
        for b in range(len(source)):
            batch = source.read(b)
            yield {k: _pin(v) for k, v in batch.items()} if pin_memory else batch
        return
    pool = _ReaderPool(source, int(readers), prefetch, pin_memory, max_deaths)
    finished = False
    try:
        pool.start(int(readers))
        yield from pool.batches()
        finished = True
    finally:
        pool.close(kill=not finished)
