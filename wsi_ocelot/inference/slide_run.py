"""One slide's run: its plan, its passes and its finish (docs/architecture.md).

A :class:`SlideRun` is made per slide by the :class:`~wsi_ocelot.inference.engine.SlideRunner`
(which keeps the model and the result folder's lifecycle), so a runner shared by threads never
mixes two slides. Made, it has planned the slide (tissue mask, stain check, tiles) and opened
its outputs: ``predictions.zarr``, the tissue-map writer and the cell sinks. :meth:`SlideRun.run`
runs the passes and the finish:

1. **tissue pass** — context-resolution tiles over the tissue, batched through the tissue
   branch; each tile's core goes into the slide-level cancer-area map, cross-faded with its
   neighbours (``tissue_map.py``, :class:`~wsi_ocelot.inference.tissue_map.BlendedTissueMap`);
2. **cell pass** — overlapping cell tiles; for each, the matching crop of the tissue map goes
   into the cell branch; peaks are found on the device, only those inside the tile's own core
   (with the reach across shared borders) are kept (``borders.py``);

or, for ``feature_sharing`` checkpoints and under ``per_tile=True``, the **per-tile pass**: each
cell tile with its own context read from the slide, the map written core by core
(:class:`~wsi_ocelot.inference.tissue_map.CoreTissueMap`).

Reading runs in worker processes (``tiling/dataset.py``); the main thread feeds the device;
what is done with a batch's results runs on the writer thread (``background.py``): points to
level-0 px, the border buffer, then each :class:`~wsi_ocelot.cells.CellBatch` to every
:class:`~wsi_ocelot.inference.sinks.CellSink` (purity, GeoJSON, Zarr, the cells table).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from wsi_ocelot.cells import CellBatch
from wsi_ocelot.constants import CANCER_AREA_THRESHOLD, CELL_TABLE_FORMATS, PURITY_GRID_UM
from wsi_ocelot.inference.background import BackgroundWriter
from wsi_ocelot.inference.borders import (
    BorderBuffer,
    cores_in_tile_px,
    in_core,
    points_to_level0,
    reach_cores,
)
from wsi_ocelot.inference.peaks import find_peaks
from wsi_ocelot.inference.predictor import with_oom_retry
from wsi_ocelot.inference.run_metadata import run_attributes
from wsi_ocelot.inference.run_setup import DUPLICATE_UM, EngineConfig, LoadedModel
from wsi_ocelot.inference.sinks import (
    CellSink,
    CellsTableSink,
    GeoJSONSink,
    PuritySink,
    ZarrCellsSink,
)
from wsi_ocelot.inference.tissue_map import (
    BlendedTissueMap,
    CoreTissueMap,
    MapWindow,
    TissueMap,
    TissueMapWriter,
    coarse_map,
    crops_from_map,
)
from wsi_ocelot.inference.unreadable import UnreadableTiles
from wsi_ocelot.outputs import (
    CellsGeoJSONWriter,
    CellsTableWriter,
    PredictionStore,
    polygons_from_map,
    write_overview,
    write_tissue_geojson,
)
from wsi_ocelot.outputs.overview import DEMO_WEIGHTS_BANNER
from wsi_ocelot.purity import PurityCounter, SlideRecord
from wsi_ocelot.slide import Slide
from wsi_ocelot.slide.mask import tissue_mask_from_image
from wsi_ocelot.slide.stain_check import classify_stain, require_brightfield
from wsi_ocelot.tiling import BlockBatches, TileDataset, plan_tiles
from wsi_ocelot.tiling.dataset import read_batches

log = logging.getLogger(__name__)

__all__ = ["SlideRun"]


class _Timer:
    """Seconds per stage, added up from any thread (stages on the writer thread overlap the
    main thread's, so the stages may add up to more than the total)."""

    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            with self._lock:
                self.t[name] += dt


def _timed(it: Iterator[Any], timer: _Timer, name: str = "read") -> Iterator[Any]:
    """``it``'s items, the wait for each counted as ``name``."""
    it = iter(it)
    while True:
        with timer(name):
            try:
                item = next(it)
            except StopIteration:
                return
        yield item


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    # disable=None: tqdm's own "only on a terminal" (no bars in log files, pipes or a batch's run.log)
    return tqdm(
        total=total,
        desc=desc,
        unit="tile",
        disable=None if enabled else True,
        leave=False,
        dynamic_ncols=True,
    )


def _to_host(t: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start copying a device tensor to the host; the event (CUDA only) marks when it is there."""
    if t.device.type != "cuda":
        return t, None
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    ev = torch.cuda.Event()
    ev.record()
    return host, ev


def _host_points(pts: list[torch.Tensor]) -> list[np.ndarray]:
    """Per-tile peak tensors (N, 4) on any device → float64 numpy arrays, in one transfer."""
    counts = [len(p) for p in pts]
    allp = torch.cat(pts) if pts else torch.zeros((0, 4))
    host = allp.detach().to("cpu").numpy().astype(np.float64)
    return list(np.split(host, np.cumsum(counts)[:-1])) if counts else []


class SlideRun:
    """One slide's run with a loaded model: made, it has planned the slide (failing a slide
    that is not brightfield H&E before any model work) and opened its outputs in ``work``;
    :meth:`run` runs the passes and the finish and returns the slide's record.

    Parameters
    ----------
    model
        The runner's :class:`~wsi_ocelot.inference.run_setup.LoadedModel`.
    config
        The runner's resolved :class:`~wsi_ocelot.inference.run_setup.EngineConfig`.
    slide
        The open slide.
    work
        The (hidden) folder the outputs are written into.
    sid
        The slide's id.
    """

    def __init__(
        self, model: LoadedModel, config: EngineConfig, slide: Slide, work: Path, sid: str
    ) -> None:
        self.model, self.config, self.slide, self.work, self.sid = model, config, slide, work, sid
        self.timer = _Timer()
        with self.timer("plan"):
            thumb, ds = slide.thumbnail()
            self.mask = tissue_mask_from_image(thumb, ds)
            self.stain = classify_stain(thumb, self.mask.mask)
            if config.stain_check:
                # a fluorescence or IHC slide fails here, not as "no tissue"
                require_brightfield(slide.path, self.stain)
            self.plan = plan_tiles(slide, model.geometry, self.mask)
        W, H = slide.dimensions
        T = model.geometry.tile_size
        scale = (
            self.plan.tissue.tile_l0 / T
            if len(self.plan.tissue)
            else model.geometry.tissue_mpp / slide.mpp
        )
        self.tmap = TissueMap(W, H, scale)
        self.grid_px = PURITY_GRID_UM / slide.mpp
        self.counter = PurityCounter(
            W, H, self.grid_px
        )  # purity and its heat map, fed as cells come
        self.origin = (slide.bounds[0], slide.bounds[1]) if config.qupath_crop else (0, 0)
        # cells closer than 3 µm (OCELOT's matching radius) from two tiles are one cell
        self.border = BorderBuffer(DUPLICATE_UM / slide.mpp, config.border_reach_um / slide.mpp)
        # where each cell tile keeps its detections: its core, reaching across shared borders
        self.keep = reach_cores(self.plan.cells.cores, config.border_reach_um / slide.mpp, W, H)
        self._rows_after: np.ndarray | None = None  # see _set_order
        self._position = np.zeros(0, np.int64)
        self._done_row = -1
        self._dropped = 0  # border duplicates dropped so far
        n_tissue = len(self.plan.tissue) if model.two_pass and model.has_tissue else 0
        self.unreadable = UnreadableTiles(
            slide.path,
            self.mask,
            {"cell": len(self.plan.cells), "tissue": n_tissue},
            config.max_unreadable,
        )
        self.store = PredictionStore(work / "predictions.zarr", mode="w")
        try:
            self.tissue_map = self._open_tissue_map()
            self.sinks = self._open_sinks()
        except BaseException:
            self.store.close()
            raise
        try:
            self.writer = BackgroundWriter(config.writer_depth, inline=not config.background_writer)
        except BaseException:
            for sink in self.sinks:
                sink.abort()
            self.store.close()
            raise

    def _open_tissue_map(self) -> TissueMapWriter | None:
        """The map in ``predictions.zarr`` and its writer (None for a model without a tissue branch)."""
        if not self.model.has_tissue:
            return None
        tmap, mpp, plan = self.tmap, self.slide.mpp, self.plan
        self.store.create_tissue_map(
            tmap.height,
            tmap.width,
            tmap.scale * mpp,
            chunk=self.config.tissue_chunk,
            level0_downsample=tmap.scale,
            slide_mpp=mpp,
            ngff=self.config.ngff,
        )
        if self.model.two_pass:
            W, H = self.slide.dimensions
            return BlendedTissueMap(plan.tissue, tmap, self.store, W, H)
        return CoreTissueMap(plan.cells, plan.contexts, tmap, self.store)

    def _open_sinks(self) -> list[CellSink]:
        """Where the cells go: purity, ``cells.geojson``, ``predictions.zarr``, the cells table."""
        cfg = self.config
        sinks: list[CellSink] = [PuritySink(self.counter)]
        try:
            name = "cells.geojson.gz" if cfg.geojson_gzip else "cells.geojson"
            gj = CellsGeoJSONWriter(self.work / name, gzip=cfg.geojson_gzip, origin=self.origin)
            sinks += [GeoJSONSink(gj), ZarrCellsSink(self.store)]
            if cfg.cells_table:  # streamed like the GeoJSON, row for row
                path = self.work / CELL_TABLE_FORMATS[cfg.cells_table]
                sinks.append(CellsTableSink(CellsTableWriter(path, mpp=self.slide.mpp)))
        except BaseException:
            for sink in sinks:
                sink.abort()
            raise
        return sinks

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per stage so far."""
        return dict(self.timer.t)

    # ------------------------------------------------------------------------------------
    def run(self) -> SlideRecord:
        """The passes, the border buffer's last cells, the sinks closed, then the finish;
        returns the slide's record. On an error every sink is aborted; the store is closed
        either way."""
        try:
            with self.writer:  # on an error: what is queued is skipped, the thread stopped
                self.passes()
                self.writer.drain()
            self._flush_border()
            with self.timer("write"):
                for sink in self.sinks:
                    sink.close()
            return self.finish()
        except BaseException:
            for sink in self.sinks:
                sink.abort()
            raise
        finally:
            self.store.close()

    def passes(self) -> None:
        """The tissue pass and the cell pass (or the per-tile pass), writing cells as they come."""
        if self.model.two_pass:
            if self.model.has_tissue:
                self.tissue_pass()
            self.cell_pass()
        else:
            self.per_tile_pass()

    def tissue_pass(self) -> None:
        """Tissue branch over the tissue grid; each tile's core goes into the map (on the
        writer thread)."""
        grid, timer, blend = self.plan.tissue, self.timer, self.tissue_map
        assert blend is not None  # two-pass with a tissue branch

        def add(idx: np.ndarray, probs: torch.Tensor, ready: torch.cuda.Event | None) -> None:
            if ready is not None:
                ready.synchronize()
            with timer("write"):
                blend.aggregate(idx, probs)

        bar = _progress(len(grid), "tissue pass", self.config.progress)
        # one reader more than the cell pass: here the main process only runs the tissue branch on
        # one context per batch (no peaks, no cells to write), so reading is what the pass waits for
        readers = self.config.workers + 1 if self.config.workers else 0
        for batch in self._batches(self._blocks(grid), readers):
            bad = self._count_unreadable("tissue", grid, batch, batch["index"].numpy())
            with timer("tissue pass"):
                probs = with_oom_retry(self.model.predictor.tissue_probs, batch["cell"])[
                    :, 1
                ].float()
                if bad.any():
                    # an unreadable tile holds no cancer area
                    probs[torch.from_numpy(bad).to(probs.device)] = 0.0
                host, ready = _to_host(probs)
            self.writer.submit(add, batch["index"].numpy(), host, ready)
            bar.update(len(batch["index"]))
        self.writer.drain()  # the cell pass reads the finished map
        blend.finalize()
        bar.close()

    def cell_pass(self) -> None:
        """Cell branch over the cell grid, with each tile's crop of the tissue map. The
        next batch's crops are read while the device runs this one."""
        grid, timer, tmap, model = self.plan.cells, self.timer, self.tmap, self.model
        T, f = model.geometry.tile_size, model.geometry.context_factor
        n_crop = max(1, round(T / f))
        dataset = self._blocks(grid)
        self._set_order(
            np.concatenate(dataset.batches) if dataset.batches else np.zeros(0, np.int64)
        )

        def prepare(batch: dict[str, Any] | None) -> tuple[Any, ...] | None:
            if batch is None:
                return None
            idx = batch["index"].numpy()
            crop = window = None
            if model.has_tissue:
                with timer("read"):
                    crop, window = crops_from_map(
                        self.store, tmap, grid.boxes[idx], n_crop, dataset.blocks(idx), model.device
                    )
            return batch, idx, crop, window

        bar = _progress(len(grid), "cell pass", self.config.progress)
        batches = self._batches(dataset)
        nxt = prepare(next(batches, None))
        while nxt is not None:
            batch, idx, crop, window = nxt
            with timer("cell pass"):
                probs = with_oom_retry(model.predictor.cell_probs, batch["cell"], crop)
            nxt = prepare(next(batches, None))  # overlaps the device's work on this batch
            pts = self._peaks(probs, idx)
            self._drop_unreadable(batch, idx, pts)
            self.writer.submit(self._emit, pts, idx, window)
            bar.update(len(idx))
        bar.close()

    def per_tile_pass(self) -> None:
        """The paper's path: every cell tile with its own context. The tissue map is filled
        from each context's prediction over the tile's core."""
        grid, timer, plan, model = self.plan.cells, self.timer, self.plan, self.model
        T, tissue_map = model.geometry.tile_size, self.tissue_map

        def place(
            idx: np.ndarray,
            pts: list[np.ndarray],
            ca_probs: torch.Tensor | None,
            ready: torch.cuda.Event | None,
        ) -> None:
            window = None
            if ca_probs is not None and tissue_map is not None:
                if ready is not None:
                    ready.synchronize()
                with timer("write"):
                    window = tissue_map.aggregate(idx, ca_probs)
            self._emit(pts, idx, window)

        self._set_order(np.arange(len(grid)))
        bar = _progress(len(grid), "per-tile pass", self.config.progress)
        for batch in self._batches(TileDataset(self.slide, grid.boxes, T, plan.contexts)):
            idx = batch["index"].numpy()
            with timer("cell pass"):
                cell_probs, tissue_probs = with_oom_retry(
                    model.predictor.per_tile, batch["cell"], batch["context"], batch["offset"]
                )
            pts = self._peaks(cell_probs, idx)
            bad = self._drop_unreadable(batch, idx, pts)
            host = ready = None
            if tissue_probs is not None:
                ca = tissue_probs[:, 1].float()
                if bad.any():
                    ca[torch.from_numpy(bad).to(ca.device)] = 0.0
                host, ready = _to_host(ca)
            self.writer.submit(place, idx, pts, host, ready)
            bar.update(len(idx))
        self.writer.drain()
        if tissue_map is not None:
            tissue_map.finalize()
        bar.close()

    def finish(self) -> SlideRecord:
        """Tissue outputs, the overview, purity and the run's attributes; returns the slide's record."""
        slide, work, timer, tmap, model = self.slide, self.work, self.timer, self.tmap, self.model
        W, H = slide.dimensions
        mpp = slide.mpp
        with timer("write"):
            ca_geom = None
            if model.has_tissue:
                coarse, k = coarse_map(self.store, tmap)
                ca_geom = polygons_from_map(
                    coarse,
                    threshold=CANCER_AREA_THRESHOLD,
                    scale=tmap.scale * k,
                    min_area=(20.0 / mpp) ** 2,
                )
            write_tissue_geojson(work / "tissue.geojson", ca_geom, origin=self.origin)
            thumb, ds = slide.thumbnail(
                mpp=max(1.0, max(W, H) * mpp / 1200.0)
            )  # ~1200 px on the long side
            write_overview(
                work / "overview.png",
                thumb,
                ds,
                ca_geometry=ca_geom,
                purity=self.counter.grid(),
                purity_cell_size=self.grid_px,
                banner=DEMO_WEIGHTS_BANNER if model.note else None,
            )
        tissue_mm2 = (
            float(self.unreadable.tissue_pixels()) * (self.mask.downsample * mpp) ** 2 / 1e6
        )
        ca_mm2 = (
            self.tissue_map.ca_pixels * (tmap.scale * mpp) ** 2 / 1e6
            if self.tissue_map is not None
            else None
        )
        purity = self.counter.result(
            tissue_area_mm2=round(tissue_mm2, 6),
            cancer_area_mm2=None if ca_mm2 is None else round(ca_mm2, 6),
            mpp=mpp,
            cancer_area_known=model.has_tissue,
            no_cancer_area_reason="the model has no tissue branch",
            no_tissue=self.plan.mask.fraction == 0 or len(self.plan.cells) == 0,
        )
        record = SlideRecord(
            slide=str(slide.path),
            purity=purity,
            mpp_source=slide.mpp_info.source,
            model={
                "path": model.path,
                "variant": model.info.model.variant,
                "encoder": model.info.model.encoder,
            },
            mode=model.mode,
            device=str(model.device),
            runtime=model.runtime.to_json(),
            n_cell_tiles=len(self.plan.cells),
            n_tissue_tiles=len(self.plan.tissue) if model.two_pass and model.has_tissue else 0,
            n_unreadable_tiles=self.unreadable.n,
            model_note=model.note,
        )
        self.store.set_attrs(
            run_attributes(model, self.config, slide, self.sid, record, self.timings)
        )
        return record

    # -- reading -------------------------------------------------------------------------
    def _readers(self, dataset: BlockBatches | TileDataset, readers: int | None = None) -> int:
        """Reader processes for ``dataset``: ``readers`` (None: ``config.workers``), fewer when
        there is too little to read (a BlockBatches item is a whole batch)."""
        cfg = self.config
        assert cfg.workers is not None and cfg.batch_size is not None  # resolved by the runner
        readers = cfg.workers if readers is None else readers
        blocks = isinstance(dataset, BlockBatches)
        spare = len(dataset) - 1 if blocks else len(dataset) // max(cfg.batch_size, 1)
        return min(readers, max(0, spare))

    def _batches(
        self, dataset: BlockBatches | TileDataset, readers: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """The dataset's batches, read in reader processes that are replaced when they die."""
        assert self.config.batch_size is not None  # resolved by the runner
        return _timed(
            read_batches(
                dataset,
                readers=self._readers(dataset, readers),
                batch_size=self.config.batch_size,
                prefetch=self.config.prefetch,
                pin_memory=self.model.device.type == "cuda",
            ),
            self.timer,
        )

    def _blocks(self, grid: Any) -> BlockBatches:
        return BlockBatches(
            self.slide,
            grid.boxes,
            grid.rows,
            grid.cols,
            self.model.geometry.tile_size,
            self.config.batch_size,
        )

    def _count_unreadable(
        self, kind: str, grid: Any, batch: dict[str, Any], idx: np.ndarray
    ) -> np.ndarray:
        """Count the batch's unreadable tiles (``idx`` into ``grid``) of pass ``kind`` with their
        reasons (a cell tile's core also leaves the tissue area); returns which they are."""
        bad = batch["unreadable"].numpy().astype(bool).reshape(-1)
        if bad.any():
            reasons = [e for e, b in zip(batch["errors"], bad, strict=True) if b]
            self.unreadable.add(
                kind,
                grid.boxes[idx[bad]],
                reasons,
                cores=grid.cores[idx[bad]] if kind == "cell" else None,
            )
        return bad

    def _drop_unreadable(
        self, batch: dict[str, Any], idx: np.ndarray, pts: list[np.ndarray]
    ) -> np.ndarray:
        """Empty the points of the batch's unreadable cell tiles (in place) and count them;
        returns which tiles were unreadable."""
        bad = self._count_unreadable("cell", self.plan.cells, batch, idx)
        for k in np.flatnonzero(bad):
            pts[k] = pts[k][:0]
        return bad

    # -- cells ---------------------------------------------------------------------------
    def _peaks(self, probs: torch.Tensor, idx: np.ndarray) -> list[np.ndarray]:
        """The cell tiles ``idx``'s peaks (N, 4: x, y, class, prob in tile px) on the host,
        searched only in and around the tiles' cores."""
        T = self.model.geometry.tile_size
        with self.timer("post-processing"):
            core = cores_in_tile_px(self.plan.cells.boxes[idx], self.keep[idx], T)
            return _host_points(find_peaks(probs, self.model.peaks, core=core))

    def _set_order(self, order: np.ndarray) -> None:
        """The order the cell tiles are emitted in: after each batch, the grid rows whose
        tiles are all done follow from it, and the border buffer lets go of what they settle."""
        order = np.asarray(order, np.int64)
        rows = self.plan.cells.rows[order]
        after = np.full(len(order) + 1, np.iinfo(np.int64).max)
        if len(order):
            # the lowest row still to come, from each position on
            after[:-1] = np.minimum.accumulate(rows[::-1])[::-1]
        self._position = np.empty(len(order), np.int64)
        self._position[order] = np.arange(len(order))
        self._rows_after = after

    def _emit(self, pts: list[np.ndarray], idx: np.ndarray, window: MapWindow | None) -> None:
        """(writer thread) A batch's peaks (tile px) of the cell tiles ``idx`` → level-0 points
        where each tile keeps them (its core with the reach, :func:`reach_cores`); points near or
        beyond a core border wait in the border buffer, the rest go to the sinks."""
        T = self.model.geometry.tile_size
        grid = self.plan.cells
        boxes, cores, reach, rows = grid.boxes[idx], grid.cores[idx], self.keep[idx], grid.rows[idx]
        with self.timer("post-processing"):
            keep: list[np.ndarray] = []
            flags: list[np.ndarray] = []  # (filled only where the window tells the cancer area)
            for k, tile_pts in enumerate(pts):
                p = points_to_level0(tile_pts, boxes[k], T)
                p = p[in_core(p, reach[k])]
                inside = window.in_cancer_area(k, p) if window is not None else None
                p, inside = self.border.split(p, inside, cores[k], int(rows[k]))
                keep.append(p)
                if inside is not None:
                    flags.append(inside)
            p = np.concatenate(keep) if keep else np.zeros((0, 4))
            inside_all = (
                None if window is None else (np.concatenate(flags) if flags else np.zeros(0, bool))
            )
        self._send(p, inside_all)
        if self._rows_after is not None and len(idx):
            # every row below the lowest to come
            done = int(self._rows_after[int(self._position[idx].max()) + 1]) - 1
            if done > self._done_row:
                self._done_row = done
                with self.timer("post-processing"):
                    p, inside, dropped = self.border.release(done)
                self._dropped += dropped
                self._send(p, inside)

    def _flush_border(self) -> None:
        """The border buffer's last cells, every tile being done."""
        with self.timer("post-processing"):
            p, inside, dropped = self.border.resolve()
        dropped += self._dropped
        if dropped:
            log.info(
                "%d cell(s) seen by two neighbouring tiles on their shared border reported once",
                dropped,
            )
        self._send(p, inside)

    def _send(self, p: np.ndarray, inside: np.ndarray | None) -> None:
        """Level-0 points (N, 4) and their cancer-area flags → one batch to every sink."""
        if not len(p):
            return
        cells = CellBatch.from_array(p, inside)
        with self.timer("write"):
            for sink in self.sinks:
                sink.write(cells)
