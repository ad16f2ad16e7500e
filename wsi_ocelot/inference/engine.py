"""The slide engine: one slide in, a complete result folder out (docs/architecture.md).

Two passes for the tissue-prediction injection models:

1. **tissue pass** — context-resolution tiles over the tissue, batched through the tissue
   branch; each tile's core is written into the slide-level cancer-area probability map in
   Zarr, cross-faded with its neighbours (``tissue_map.py``);
2. **cell pass** — overlapping cell tiles; for each, the matching crop of the tissue map
   goes into the cell branch; peaks are found on the device, only those inside the tile's
   own core are kept and streamed to the cell table (``borders.py``).

Reading and decoding run in worker processes, a batch of neighbouring tiles cut from one
region read once (``tiling/dataset.py``). The main thread only feeds the device: while the
device runs a batch, it reads the next batch's tissue crops; everything done with a batch's
results (points to the slide, the border buffer, purity counts, GeoJSON and Zarr writes,
tissue-map blending) runs on a writer thread behind a bounded queue (``background.py``).

``feature_sharing`` checkpoints (which cannot be split) and every checkpoint under
``per_tile=True`` use the paper's per-tile path: each cell tile with its own context read
from the slide. Outputs appear atomically: everything is written into a hidden folder that
is renamed to ``<out>/<slide-id>`` at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from wsi_ocelot.atomic import partial_folder, publish_folder, write_json
from wsi_ocelot.errors import ConfigError, DiskFullError, WsiOcelotError, disk_full_reason
from wsi_ocelot.inference.background import BackgroundWriter
from wsi_ocelot.inference.borders import (
    BorderBuffer,
    cores_in_tile_px,
    in_core,
    points_to_level0,
    reach_cores,
)
from wsi_ocelot.inference.peaks import find_peaks
from wsi_ocelot.inference.predictor import (
    Predictor,
    default_batch_size,
    with_oom_retry,
)
from wsi_ocelot.inference.run_metadata import run_attributes
from wsi_ocelot.inference.runtimes.select import check_runtime_options, choose_runtime
from wsi_ocelot.inference.runtimes.select import describe as describe_runtime
from wsi_ocelot.inference.tissue_map import (
    BlendedTissueMap,
    MapWindow,
    TissueMap,
    coarse_map,
    core_block,
    crops_from_map,
)
from wsi_ocelot.inference.unreadable import DEFAULT_MAX_UNREADABLE, UnreadableTiles
from wsi_ocelot.model import load_model
from wsi_ocelot.model.device import resolve_device
from wsi_ocelot.naming import slide_id_for
from wsi_ocelot.outputs import (
    CELL_TABLE_FORMATS,
    NGFF_VERSIONS,
    CellsGeoJSONWriter,
    CellsTableWriter,
    PredictionStore,
    polygons_from_map,
    write_overview,
    write_tissue_geojson,
)
from wsi_ocelot.outputs.overview import DEMO_WEIGHTS_BANNER
from wsi_ocelot.purity import PurityCounter, SlideRecord
from wsi_ocelot.slide import READERS, Slide, open_slide
from wsi_ocelot.slide.mask import tissue_mask_from_image
from wsi_ocelot.slide.stain_check import classify_stain, require_brightfield
from wsi_ocelot.tiling import BlockBatches, TileDataset, plan_tiles
from wsi_ocelot.tiling.dataset import default_workers, read_batches
from wsi_ocelot.weights import resolve_model, weights_note

log = logging.getLogger(__name__)

PURITY_GRID_UM = 100.0  # side of a purity heat-map square, µm
DUPLICATE_UM = 3.0  # two tiles' detections closer than this across a core border are one cell


@dataclass(frozen=True)
class EngineConfig:
    """How a slide is run (the model decides the geometry).

    ``batch_size`` and ``workers`` of None are chosen for the machine: the batch from the
    device (:func:`~wsi_ocelot.inference.predictor.default_batch_size`), the tile-reading
    processes from the cores available (:func:`~wsi_ocelot.tiling.dataset.default_workers`); the
    tissue pass, where the main process mostly waits for reads, uses one more (none when 0).
    ``reader`` decodes slide regions: ``openslide`` (default) or ``tifffile`` (tiled TIFF /
    SVS, the same pixels faster). ``border_reach_um``: how far beyond its core a tile's
    detections are kept (cells seen by two tiles are then reported once, the stronger); 0
    keeps strict cores, which loses cells that both tiles place on the other's side.
    ``writer_depth`` is how many batches of results may wait for the writer thread;
    ``background_writer=False`` writes them in the main thread. ``max_unreadable`` is the
    fraction of a pass's tiles that may be unreadable (corrupt image data, read twice) before
    the slide fails; below it each such tile costs only itself (``unreadable.py``). ``ngff``: the
    OME-NGFF version of ``tissue.ome.zarr`` ("0.4" on Zarr v2, what QuPath and napari open; "0.5" on
    Zarr v3). ``cells_table``: also write the cells as ``cells.parquet`` ("parquet") or ``cells.csv``
    ("csv"), streamed beside the GeoJSON; None writes no table. ``stain_check``: fail a slide that
    is not brightfield H&E (fluorescence or dark field, IHC; ``slide/stain_check.py``) with one
    line, right after its tissue mask, before any model work; False runs it anyway. ``runtime``
    and ``precision``: what runs the forward pass (``inference/runtimes/``, docs/runtimes.md):
    ``auto`` takes the fastest path that keeps the fidelity gate for this model on this CPU
    (bf16 autocast on CUDA); ``torch`` + ``fp32`` is the plain eager path. ``threads``: the
    runtime's intra-op threads (None: torch's current count).

    Examples
    --------
    >>> EngineConfig(device="cuda", reader="tifffile", geojson_gzip=True, cells_table="parquet")   # doctest: +SKIP
    """

    device: str = "auto"
    batch_size: int | None = None
    workers: int | None = None
    prefetch: int = 2
    amp: bool = True
    channels_last: bool = True
    per_tile: bool = False
    geojson_gzip: bool = False
    qupath_crop: bool = True  # subtract openslide.bounds-x/y in GeoJSON (QuPath's default frame)
    progress: bool = True
    tissue_chunk: int = 512
    cell_margin: int | None = (
        None  # overlap of cell tiles in cell px; None = the checkpoint's geometry
    )
    reader: str = "openslide"
    border_reach_um: float = DUPLICATE_UM
    writer_depth: int = 4
    background_writer: bool = True
    max_unreadable: float = DEFAULT_MAX_UNREADABLE
    ngff: str = "0.4"
    cells_table: str | None = None
    stain_check: bool = True
    runtime: str = "auto"
    precision: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        check_runtime_options(self.runtime, self.precision)
        if self.threads is not None and self.threads < 1:
            raise ConfigError(
                None,
                f"threads must be >= 1, got {self.threads}",
                "use 1 or more, or leave it unset",
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(
                None,
                f"batch_size must be >= 1, got {self.batch_size}",
                "use e.g. 8 on a CPU, 16-32 on a GPU, or leave it unset",
            )
        if self.workers is not None and self.workers < 0:
            raise ConfigError(
                None,
                f"workers must be >= 0, got {self.workers}",
                "use 0 (read in the main process) or more, or leave it unset",
            )
        if not 0.0 <= self.border_reach_um <= DUPLICATE_UM:
            raise ConfigError(
                None,
                f"border_reach_um must be in [0, {DUPLICATE_UM}], got {self.border_reach_um}",
                f"use {DUPLICATE_UM} (default) or 0 for strict tile cores",
            )
        if not 0.0 <= self.max_unreadable <= 1.0:
            raise ConfigError(
                None,
                f"max_unreadable must be a fraction in [0, 1], got {self.max_unreadable}",
                f"use e.g. {DEFAULT_MAX_UNREADABLE} (default), 0 to fail on any unreadable tile, 1 to never fail",
            )
        if self.reader not in READERS:
            raise ConfigError(
                None, f"unknown reader {self.reader!r}", f"use one of {', '.join(READERS)}"
            )
        if self.ngff not in NGFF_VERSIONS:
            raise ConfigError(
                None,
                f"unknown OME-NGFF version {self.ngff!r} for the tissue map",
                f"use one of {', '.join(NGFF_VERSIONS)}",
            )
        if self.cells_table is not None and self.cells_table not in CELL_TABLE_FORMATS:
            raise ConfigError(
                None,
                f"unknown cells table format {self.cells_table!r}",
                f"use one of {', '.join(CELL_TABLE_FORMATS)}, or leave it unset for none",
            )

    def resolved(self, device: torch.device) -> EngineConfig:
        """This config with the machine's defaults filled in for ``device``."""
        return dataclasses.replace(
            self,
            batch_size=self.batch_size or default_batch_size(device),
            workers=default_workers() if self.workers is None else self.workers,
        )


@dataclass
class SlideResult:
    """What :func:`run_slide` produced for one slide: its folder, the seconds per stage and
    its record."""

    slide_id: str
    out_dir: Path
    timings: dict[str, float]
    record: SlideRecord

    @property
    def purity(self) -> dict[str, Any]:
        """The record as written to ``purity.json``."""
        return self.record.to_json()

    @property
    def n_cells(self) -> int:
        return self.record.purity.n_cells

    @property
    def mode(self) -> str:
        """``two-pass`` or ``per-tile``."""
        return self.record.mode or ""


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


def _progress(total: int, desc: str, enabled: bool):
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


class _SlideRun:
    """The state of one slide's run: its outputs, counts, border buffer and writer thread.
    Made per slide, so a runner shared by threads never mixes two slides."""

    def __init__(self, runner: SlideRunner, slide: Slide, work: Path, sid: str):
        cfg = runner.config
        self.runner, self.slide, self.work, self.sid = runner, slide, work, sid
        self.timer = _Timer()
        with self.timer("plan"):
            thumb, ds = slide.thumbnail()
            self.mask = tissue_mask_from_image(thumb, ds)
            self.stain = classify_stain(thumb, self.mask.mask)
            if cfg.stain_check:
                require_brightfield(
                    slide.path, self.stain
                )  # a fluorescence or IHC slide fails here, not as "no tissue"
            self.plan = plan_tiles(slide, runner.geometry, self.mask)
        W, H = slide.dimensions
        T = runner.geometry.tile_size
        scale = (
            self.plan.tissue.tile_l0 / T
            if len(self.plan.tissue)
            else runner.geometry.tissue_mpp / slide.mpp
        )
        self.tmap = TissueMap(W, H, scale)
        self.grid_px = PURITY_GRID_UM / slide.mpp
        self.counter = PurityCounter(
            W, H, self.grid_px
        )  # purity and its heat map, fed as cells are written
        self.origin = (slide.bounds[0], slide.bounds[1]) if cfg.qupath_crop else (0, 0)
        # cells closer than 3 µm (OCELOT's matching radius) from two tiles are one cell
        self.border = BorderBuffer(DUPLICATE_UM / slide.mpp, cfg.border_reach_um / slide.mpp)
        # where each cell tile keeps its detections: its core, reaching across shared borders
        self.keep = reach_cores(self.plan.cells.cores, cfg.border_reach_um / slide.mpp, W, H)
        self._rows_after: np.ndarray | None = None  # see set_order
        self._done_row = -1
        self._dropped = 0  # border duplicates dropped so far
        self.ca_pixels = 0
        n_tissue = len(self.plan.tissue) if runner.two_pass and runner.has_tissue else 0
        self.unreadable = UnreadableTiles(
            slide.path,
            self.mask,
            {"cell": len(self.plan.cells), "tissue": n_tissue},
            cfg.max_unreadable,
        )
        self.store: PredictionStore | None = None
        self.gj: CellsGeoJSONWriter | None = None
        self.table: CellsTableWriter | None = None  # cells.parquet / cells.csv when asked for

    def set_order(self, order: np.ndarray) -> None:
        """The order the cell tiles are emitted in: after each batch, the grid rows whose
        tiles are all done follow from it, and the border buffer lets go of what they settle."""
        order = np.asarray(order, np.int64)
        rows = self.plan.cells.rows[order]
        after = np.full(len(order) + 1, np.iinfo(np.int64).max)
        if len(order):
            after[:-1] = np.minimum.accumulate(rows[::-1])[
                ::-1
            ]  # the lowest row still to come, from each position on
        self._position = np.empty(len(order), np.int64)
        self._position[order] = np.arange(len(order))
        self._rows_after = after

    # -- writer-thread jobs ------------------------------------------------------------------
    def emit(self, pts: list[np.ndarray], idx: np.ndarray, window: MapWindow | None) -> None:
        """A batch's peaks (tile px) of the cell tiles ``idx`` → level-0 points where each
        tile keeps them (its core with the reach, :func:`reach_cores`); points near or beyond
        a core border wait in the border buffer, the rest are counted and written."""
        T = self.runner.geometry.tile_size
        grid = self.plan.cells
        boxes, cores, reach, rows = grid.boxes[idx], grid.cores[idx], self.keep[idx], grid.rows[idx]
        with self.timer("post-processing"):
            keep, flags = [], []
            for k, tile_pts in enumerate(pts):
                p = points_to_level0(tile_pts, boxes[k], T)
                p = p[in_core(p, reach[k])]
                inside = window.in_cancer_area(k, p) if window is not None else None
                p, inside = self.border.split(p, inside, cores[k], int(rows[k]))
                keep.append(p)
                flags.append(inside)
            p = np.concatenate(keep) if keep else np.zeros((0, 4))
            inside_all = (
                None if window is None else (np.concatenate(flags) if flags else np.zeros(0, bool))
            )
        self.write_points(p, inside_all)
        if self._rows_after is not None and len(idx):
            done = (
                int(self._rows_after[int(self._position[idx].max()) + 1]) - 1
            )  # every row below the lowest to come
            if done > self._done_row:
                self._done_row = done
                with self.timer("post-processing"):
                    p, inside, dropped = self.border.release(done)
                self._dropped += dropped
                self.write_points(p, inside)

    def write_points(self, p: np.ndarray, inside: np.ndarray | None) -> None:
        with self.timer("post-processing"):
            self.counter.add(p[:, 0], p[:, 1], p[:, 2], inside)
        if len(p):
            with self.timer("write"):
                self.gj.write(
                    p[:, 0], p[:, 1], p[:, 2].astype(np.uint8), np.clip(p[:, 3], 0.0, 1.0)
                )
                self.store.append_cells(
                    p[:, 0].astype(np.float32),
                    p[:, 1].astype(np.float32),
                    p[:, 2].astype(np.uint8),
                    p[:, 3].astype(np.float32),
                )
                if self.table is not None:
                    self.table.write(p[:, 0], p[:, 1], p[:, 2].astype(np.uint8), p[:, 3], inside)

    def flush_border(self) -> None:
        with self.timer("post-processing"):
            p, inside, dropped = self.border.resolve()
        dropped += self._dropped
        if dropped:
            log.info(
                "%d cell(s) seen by two neighbouring tiles on their shared border reported once",
                dropped,
            )
        self.write_points(p, inside)


def _host_points(pts: list[torch.Tensor]) -> list[np.ndarray]:
    """Per-tile peak tensors (on any device) → float64 numpy arrays, in one transfer."""
    counts = [len(p) for p in pts]
    allp = torch.cat(pts) if pts else torch.zeros((0, 4))
    host = allp.detach().to("cpu").numpy().astype(np.float64)
    return list(np.split(host, np.cumsum(counts)[:-1])) if counts else []


class SlideRunner:
    """Runs slides with one loaded model (load it once, run many slides).

    Parameters
    ----------
    model_path
        A checkpoint (``.safetensors``) or ``"demo"`` (the shipped synthetic-data weights).
    config
        An :class:`EngineConfig`; the defaults fit the machine.

    Examples
    --------
    >>> runner = SlideRunner("demo", EngineConfig(device="cpu"))   # doctest: +SKIP
    >>> result = runner.run("slide.svs", "results")                # doctest: +SKIP
    >>> result.record.purity.purity                                # doctest: +SKIP
    """

    def __init__(self, model_path: str | os.PathLike[str], config: EngineConfig = EngineConfig()):
        model_path = resolve_model(model_path)  # "demo" → the shipped weights
        self.device = resolve_device(config.device)
        self.config = config.resolved(self.device)
        self.model_path = str(model_path)
        self.model_note = weights_note(model_path)  # the demo weights: synthetic-only
        self._warned_demo = (
            False  # the demo-weights warning: once per runner (a batch), not per slide
        )
        model, info = load_model(model_path, device="cpu")
        if getattr(model, "needs_tissue_label", False):
            raise WsiOcelotError(
                model_path,
                "this is a tissue-label-leaking model, which needs tissue labels as input",
                "use it for analysis with `wsi-ocelot evaluate --data`; run slides with an injection model",
            )
        self.info = info
        self.geometry = info.geometry
        if config.cell_margin is not None:
            self.geometry = dataclasses.replace(info.geometry, cell_margin=config.cell_margin)
        self.peaks = info.peaks
        self.has_tissue = bool(getattr(model, "has_tissue_branch", False))
        self.two_pass = bool(getattr(model, "supports_two_pass", True)) and not config.per_tile
        self.runtime, backend = choose_runtime(
            model,
            info,
            self.model_path,
            self.device,
            config.runtime,
            config.precision,
            two_pass=self.two_pass,
            amp=config.amp,
            threads=config.threads,
        )
        log.info("the forward pass runs in %s", describe_runtime(self.runtime))
        self.predictor = Predictor(
            model,
            self.device,
            amp=config.amp and self.runtime.precision == "bf16",
            channels_last=config.channels_last,
            backend=backend,
            cpu_bf16=self.runtime.precision == "bf16" and self.device.type == "cpu",
        )
        log.info(
            "model %s (%s, encoder %s) on %s, %s path, batch %d, %d reader process(es), %s reader",
            Path(model_path).name,
            info.model.variant,
            info.model.encoder,
            self.device,
            "two-pass" if self.two_pass else "per-tile",
            self.config.batch_size,
            self.config.workers,
            self.config.reader,
        )

    # ------------------------------------------------------------------------------------
    def run(
        self,
        slide_path: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        *,
        mpp: float | None = None,
        slide_id: str | None = None,
        overwrite: bool = True,
    ) -> SlideResult:
        """Process one slide into ``out_dir/<slide-id>/`` (atomically) and return a summary."""
        t_start = time.perf_counter()
        out_root = Path(out_dir)
        sid = slide_id or slide_id_for(slide_path)
        final = out_root / sid
        if final.exists() and not overwrite:
            raise WsiOcelotError(
                final, "the output folder exists", "pass --overwrite, or choose another --out"
            )
        try:
            return self._run(slide_path, out_root, sid, mpp, t_start)
        except Exception as err:
            reason = disk_full_reason(err)
            if reason and not isinstance(err, DiskFullError):
                raise DiskFullError.under(
                    out_root,
                    f"{reason} while writing the results of {sid} (its unfinished folder was removed)",
                ) from err
            raise

    def _run(
        self,
        slide_path: str | os.PathLike[str],
        out_root: Path,
        sid: str,
        mpp: float | None,
        t_start: float,
    ) -> SlideResult:
        final = out_root / sid
        out_root.mkdir(parents=True, exist_ok=True)
        work = partial_folder(out_root, sid)
        try:
            with open_slide(slide_path, mpp=mpp, reader=self.config.reader) as slide:
                if self.model_note and not slide.is_synthetic:
                    self._warn_demo(slide.path)
                run = _SlideRun(self, slide, work, sid)
                self._passes(run)
                record = self._finish(run)
            timings = {**run.timer.t, "total": time.perf_counter() - t_start}
            record = dataclasses.replace(
                record, runtime_s={k: round(v, 3) for k, v in timings.items()}
            )
            write_json(work / "purity.json", record.to_json())
            publish_folder(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        p = record.purity
        log.info(
            "%s: %d cells, purity %s, %.1f s -> %s",
            sid,
            p.n_cells,
            "n/a" if p.purity is None else f"{p.purity:.3f}",
            timings["total"],
            final,
        )
        return SlideResult(sid, final, timings, record)

    def _warn_demo(self, path: Path) -> None:
        """The demo weights on a real slide: a warning once (the note is in every output anyway)."""
        if self._warned_demo:
            log.debug("%s: demo weights on a slide that is not synthetic (warned once)", path)
            return
        self._warned_demo = True
        log.warning(
            "the demo weights were trained on synthetic slides only; %s is not synthetic, so its cells and purity mean "
            "nothing (every output says so). Train on your data (training/README.md) and pass --model PATH",
            path,
        )

    # ------------------------------------------------------------------------------------
    def _passes(self, run: _SlideRun) -> None:
        """The tissue pass and the cell pass (or the per-tile pass), writing cells as they come."""
        cfg, timer, tmap = self.config, run.timer, run.tmap
        run.store = store = PredictionStore(run.work / "predictions.zarr", mode="w")
        try:
            if self.has_tissue:
                store.create_tissue_map(
                    tmap.height,
                    tmap.width,
                    tmap.scale * run.slide.mpp,
                    chunk=cfg.tissue_chunk,
                    level0_downsample=tmap.scale,
                    slide_mpp=run.slide.mpp,
                    ngff=cfg.ngff,
                )
            cells_name = "cells.geojson.gz" if cfg.geojson_gzip else "cells.geojson"
            with (
                CellsGeoJSONWriter(
                    run.work / cells_name, gzip=cfg.geojson_gzip, origin=run.origin
                ) as gj,
                ExitStack() as tables,
                BackgroundWriter(cfg.writer_depth, inline=not cfg.background_writer) as writer,
            ):
                run.gj = gj
                if cfg.cells_table:  # streamed like the GeoJSON, row for row
                    run.table = tables.enter_context(
                        CellsTableWriter(
                            run.work / CELL_TABLE_FORMATS[cfg.cells_table], mpp=run.slide.mpp
                        )
                    )
                if self.two_pass:
                    if self.has_tissue:
                        self._tissue_pass(run, writer)
                    self._cell_pass(run, writer)
                else:
                    self._per_tile_pass(run, writer)
                writer.drain()
                run.flush_border()
                with timer("write"):
                    store.flush()
        except BaseException:
            store.close()
            raise

    def _finish(self, run: _SlideRun) -> SlideRecord:
        """Tissue outputs, the overview, purity and the run's attributes; returns the slide's record."""
        slide, work, timer, tmap, store = run.slide, run.work, run.timer, run.tmap, run.store
        W, H = slide.dimensions
        mpp = slide.mpp
        mode = "two-pass" if self.two_pass else "per-tile"
        try:
            with timer("write"):
                ca_geom = None
                if self.has_tissue:
                    coarse, k = coarse_map(store, tmap)
                    ca_geom = polygons_from_map(
                        coarse, threshold=0.5, scale=tmap.scale * k, min_area=(20.0 / mpp) ** 2
                    )
                write_tissue_geojson(work / "tissue.geojson", ca_geom, origin=run.origin)
                thumb, ds = slide.thumbnail(
                    mpp=max(1.0, max(W, H) * mpp / 1200.0)
                )  # ~1200 px on the long side
                write_overview(
                    work / "overview.png",
                    thumb,
                    ds,
                    ca_geometry=ca_geom,
                    purity=run.counter.grid(),
                    purity_cell_size=run.grid_px,
                    banner=DEMO_WEIGHTS_BANNER if self.model_note else None,
                )
            tissue_mm2 = (
                float(run.unreadable.tissue_pixels()) * (run.mask.downsample * mpp) ** 2 / 1e6
            )
            ca_mm2 = run.ca_pixels * (tmap.scale * mpp) ** 2 / 1e6 if self.has_tissue else None
            purity = run.counter.result(
                tissue_area_mm2=round(tissue_mm2, 6),
                cancer_area_mm2=None if ca_mm2 is None else round(ca_mm2, 6),
                mpp=mpp,
                cancer_area_known=self.has_tissue,
                no_cancer_area_reason="the model has no tissue branch",
                no_tissue=run.plan.mask.fraction == 0 or len(run.plan.cells) == 0,
            )
            record = SlideRecord(
                slide=str(slide.path),
                purity=purity,
                mpp_source=slide.mpp_info.source,
                model={
                    "path": self.model_path,
                    "variant": self.info.model.variant,
                    "encoder": self.info.model.encoder,
                },
                mode=mode,
                device=str(self.device),
                runtime=self.runtime.to_json(),
                n_cell_tiles=len(run.plan.cells),
                n_tissue_tiles=len(run.plan.tissue) if self.two_pass and self.has_tissue else 0,
                n_unreadable_tiles=run.unreadable.n,
                model_note=self.model_note,
            )
            store.set_attrs(run_attributes(self, run, record, dict(timer.t)))
        finally:
            store.close()
        return record

    # ------------------------------------------------------------------------------------
    def _readers(self, dataset: BlockBatches | TileDataset, readers: int | None = None) -> int:
        """Reader processes for ``dataset``: ``readers`` (None: ``config.workers``), fewer when
        there is too little to read (a BlockBatches item is a whole batch)."""
        cfg = self.config
        readers = cfg.workers if readers is None else readers
        blocks = isinstance(dataset, BlockBatches)
        spare = len(dataset) - 1 if blocks else len(dataset) // max(cfg.batch_size, 1)
        return min(readers, max(0, spare))

    def _batches(
        self, run: _SlideRun, dataset: BlockBatches | TileDataset, readers: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """The dataset's batches, read in reader processes that are replaced when they die."""
        return _timed(
            read_batches(
                dataset,
                readers=self._readers(dataset, readers),
                batch_size=self.config.batch_size,
                prefetch=self.config.prefetch,
                pin_memory=self.device.type == "cuda",
            ),
            run.timer,
        )

    @staticmethod
    def _count_unreadable(
        run: _SlideRun, kind: str, grid, batch: dict[str, Any], idx: np.ndarray
    ) -> np.ndarray:
        """Count the batch's unreadable tiles (``idx`` into ``grid``) of pass ``kind`` with their
        reasons (a cell tile's core also leaves the tissue area); returns which they are."""
        bad = batch["unreadable"].numpy().astype(bool).reshape(-1)
        if bad.any():
            reasons = [e for e, b in zip(batch["errors"], bad, strict=True) if b]
            run.unreadable.add(
                kind,
                grid.boxes[idx[bad]],
                reasons,
                cores=grid.cores[idx[bad]] if kind == "cell" else None,
            )
        return bad

    def _drop_unreadable(
        self, run: _SlideRun, batch: dict[str, Any], idx: np.ndarray, pts: list[np.ndarray]
    ) -> np.ndarray:
        """Empty the points of the batch's unreadable cell tiles (in place) and count them;
        returns which tiles were unreadable."""
        bad = self._count_unreadable(run, "cell", run.plan.cells, batch, idx)
        for k in np.flatnonzero(bad):
            pts[k] = pts[k][:0]
        return bad

    def _blocks(self, slide: Slide, grid) -> BlockBatches:
        return BlockBatches(
            slide, grid.boxes, grid.rows, grid.cols, self.geometry.tile_size, self.config.batch_size
        )

    def _tissue_pass(self, run: _SlideRun, writer: BackgroundWriter) -> None:
        """Tissue branch over the tissue grid; each tile's core goes into the map (on the
        writer thread)."""
        grid, timer = run.plan.tissue, run.timer
        W, H = run.slide.dimensions
        blend = BlendedTissueMap(grid, run.tmap, run.store, W, H)

        def add(idx: np.ndarray, probs: torch.Tensor, ready: torch.cuda.Event | None) -> None:
            if ready is not None:
                ready.synchronize()
            with timer("write"):
                for k, i in enumerate(idx.tolist()):
                    blend.add(int(grid.rows[i]), int(grid.cols[i]), probs[k], grid.boxes[i])

        bar = _progress(len(grid), "tissue pass", self.config.progress)
        # one reader more than the cell pass: here the main process only runs the tissue branch on
        # one context per batch (no peaks, no cells to write), so reading is what the pass waits for
        readers = self.config.workers + 1 if self.config.workers else 0
        for batch in self._batches(run, self._blocks(run.slide, grid), readers):
            bad = self._count_unreadable(run, "tissue", grid, batch, batch["index"].numpy())
            with timer("tissue pass"):
                probs = with_oom_retry(self.predictor.tissue_probs, batch["cell"])[:, 1].float()
                if bad.any():
                    probs[torch.from_numpy(bad).to(probs.device)] = (
                        0.0  # an unreadable tile holds no cancer area
                    )
                host, ready = _to_host(probs)
            writer.submit(add, batch["index"].numpy(), host, ready)
            bar.update(len(batch["index"]))
        writer.drain()  # the cell pass reads the finished map
        blend.close()
        bar.close()
        run.ca_pixels += blend.ca_pixels

    def _cell_pass(self, run: _SlideRun, writer: BackgroundWriter) -> None:
        """Cell branch over the cell grid, with each tile's crop of the tissue map. The
        next batch's crops are read while the device runs this one."""
        grid, timer, tmap = run.plan.cells, run.timer, run.tmap
        T, f = self.geometry.tile_size, self.geometry.context_factor
        n_crop = max(1, round(T / f))
        dataset = self._blocks(run.slide, grid)
        run.set_order(np.concatenate(dataset.batches) if dataset.batches else np.zeros(0, np.int64))

        def prepare(batch: dict[str, Any] | None) -> tuple[Any, ...] | None:
            if batch is None:
                return None
            idx = batch["index"].numpy()
            crop = window = None
            if self.has_tissue:
                with timer("read"):
                    crop, window = crops_from_map(
                        run.store, tmap, grid.boxes[idx], n_crop, dataset.blocks(idx), self.device
                    )
            return batch, idx, crop, window

        bar = _progress(len(grid), "cell pass", self.config.progress)
        batches = self._batches(run, dataset)
        nxt = prepare(next(batches, None))
        while nxt is not None:
            batch, idx, crop, window = nxt
            with timer("cell pass"):
                probs = with_oom_retry(self.predictor.cell_probs, batch["cell"], crop)
            nxt = prepare(next(batches, None))  # overlaps the device's work on this batch
            with timer("post-processing"):
                pts = _host_points(
                    find_peaks(
                        probs, self.peaks, core=cores_in_tile_px(grid.boxes[idx], run.keep[idx], T)
                    )
                )
            self._drop_unreadable(run, batch, idx, pts)
            writer.submit(run.emit, pts, idx, window)
            bar.update(len(idx))
        bar.close()

    def _per_tile_pass(self, run: _SlideRun, writer: BackgroundWriter) -> None:
        """The paper's path: every cell tile with its own context. The tissue map is filled
        from each context's prediction over the tile's core."""
        grid, timer, tmap, plan = run.plan.cells, run.timer, run.tmap, run.plan
        T = self.geometry.tile_size

        def place(
            idx: np.ndarray, pts: list[np.ndarray], ca_probs: torch.Tensor | None, ready
        ) -> None:
            cores, ctx = grid.cores[idx], plan.contexts[idx]
            window = None
            if ca_probs is not None:
                if ready is not None:
                    ready.synchronize()
                values, origins = [], np.zeros((len(idx), 2), np.int64)
                with timer("write"):
                    for k in range(len(idx)):
                        # this tile's core in the map, sampled from its own context's prediction
                        placed = core_block(ca_probs[k], ctx[k], cores[k], tmap)
                        if placed is None:
                            values.append(np.zeros((1, 1), np.uint8))
                            origins[k] = (0, 0)
                            continue
                        mx0, my0, block = placed
                        run.store.write_tissue_block(my0, mx0, block)
                        run.ca_pixels += int((block >= 128).sum())
                        values.append(block)
                        origins[k] = (mx0, my0)
                window = MapWindow(tmap.scale, values, origins, np.arange(len(idx)))
            run.emit(pts, idx, window)

        run.set_order(np.arange(len(grid)))
        bar = _progress(len(grid), "per-tile pass", self.config.progress)
        for batch in self._batches(run, TileDataset(run.slide, grid.boxes, T, plan.contexts)):
            idx = batch["index"].numpy()
            with timer("cell pass"):
                cell_probs, tissue_probs = with_oom_retry(
                    self.predictor.per_tile, batch["cell"], batch["context"], batch["offset"]
                )
            with timer("post-processing"):
                pts = _host_points(
                    find_peaks(
                        cell_probs,
                        self.peaks,
                        core=cores_in_tile_px(grid.boxes[idx], run.keep[idx], T),
                    )
                )
            bad = self._drop_unreadable(run, batch, idx, pts)
            host = ready = None
            if tissue_probs is not None:
                ca = tissue_probs[:, 1].float()
                if bad.any():
                    ca[torch.from_numpy(bad).to(ca.device)] = 0.0
                host, ready = _to_host(ca)
            writer.submit(place, idx, pts, host, ready)
            bar.update(len(idx))
        bar.close()


def run_slide(
    slide_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    config: EngineConfig = EngineConfig(),
    *,
    mpp: float | None = None,
) -> SlideResult:
    """Load ``model_path`` and run one slide into ``out_dir/<slide-id>/``.

    Parameters
    ----------
    slide_path
        The slide file.
    out_dir
        The output folder; the slide's folder appears in it when complete.
    model_path
        A checkpoint or ``"demo"``.
    config
        An :class:`EngineConfig`.
    mpp
        µm per level-0 pixel, overriding the slide's metadata.

    Returns
    -------
    SlideResult
        The folder, the cell count, timings and the slide's record (``purity.json``).

    Examples
    --------
    >>> res = run_slide("slide.svs", "results", "demo", EngineConfig(device="cpu"))  # doctest: +SKIP
    """
    return SlideRunner(model_path, config).run(slide_path, out_dir, mpp=mpp)
