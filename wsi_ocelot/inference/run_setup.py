"""How slides are run: :class:`EngineConfig` (the user's choices) and :class:`LoadedModel`
(what a :class:`~wsi_ocelot.inference.engine.SlideRunner` loaded once for all its slides), the
two things every slide's :class:`~wsi_ocelot.inference.slide_run.SlideRun` is given
(docs/architecture.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from wsi_ocelot.config import GeometryConfig, PeakConfig
from wsi_ocelot.constants import CELL_TABLE_FORMATS, DEFAULT_MAX_UNREADABLE, NGFF_VERSIONS, READERS
from wsi_ocelot.errors import ConfigError
from wsi_ocelot.inference.predictor import Predictor, default_batch_size
from wsi_ocelot.inference.runtimes.select import check_runtime_options
from wsi_ocelot.inference.runtimes.spec import RuntimeChoice
from wsi_ocelot.model import CheckpointInfo
from wsi_ocelot.tiling.dataset import default_workers

__all__ = ["DUPLICATE_UM", "EngineConfig", "LoadedModel"]

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


@dataclass(frozen=True)
class LoadedModel:
    """The runner's model, ready for slides: the checkpoint (``path``, its ``info`` and the
    demo-weights ``note``), the geometry and peak finding it runs with (``geometry`` with
    ``cell_margin`` overridden by the config), the predictor on ``device`` with the
    ``runtime`` chosen, whether it has a tissue branch and whether it runs two passes."""

    path: str
    note: str | None
    info: CheckpointInfo
    geometry: GeometryConfig
    peaks: PeakConfig
    predictor: Predictor
    device: torch.device
    runtime: RuntimeChoice
    has_tissue: bool
    two_pass: bool

    @property
    def mode(self) -> str:
        """``two-pass`` or ``per-tile``."""
        return "two-pass" if self.two_pass else "per-tile"
