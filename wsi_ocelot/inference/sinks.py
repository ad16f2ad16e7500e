"""Where a slide's cells go: every consumer of the engine's detections is a :class:`CellSink`
that takes :class:`~wsi_ocelot.cells.CellBatch` es (docs/architecture.md). Thin adapters over
the writers in ``outputs/`` and the purity counter; the run sends each batch to all of them,
in order, on the writer thread."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from wsi_ocelot.cells import CellBatch
from wsi_ocelot.outputs import CellsGeoJSONWriter, CellsTableWriter, PredictionStore
from wsi_ocelot.purity import PurityCounter

__all__ = ["CellSink", "CellsTableSink", "GeoJSONSink", "PuritySink", "ZarrCellsSink"]


class CellSink(Protocol):
    """One consumer of a slide's cells: ``write`` each batch (level-0 px), then ``close`` when
    every cell was written, or ``abort`` when the slide failed (a no-op after ``close``)."""

    def write(self, cells: CellBatch) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class GeoJSONSink:
    """``cells.geojson`` (QuPath points), streamed (``outputs/geojson.py``)."""

    def __init__(self, writer: CellsGeoJSONWriter):
        self.writer = writer

    def write(self, cells: CellBatch) -> None:
        self.writer.write(cells.x, cells.y, cells.cls, np.clip(cells.prob, 0.0, 1.0))

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


class ZarrCellsSink:
    """The ``cells`` columns of ``predictions.zarr`` (``outputs/zarr_store.py``). The store
    also holds the tissue map and the run's attributes, so the run closes it; ``close`` writes
    the cells still buffered."""

    def __init__(self, store: PredictionStore):
        self.store = store

    def write(self, cells: CellBatch) -> None:
        self.store.append_cells(
            cells.x.astype(np.float32),
            cells.y.astype(np.float32),
            cells.cls,
            cells.prob.astype(np.float32),
        )

    def close(self) -> None:
        self.store.flush()

    def abort(self) -> None:
        """Nothing to undo: the store goes with the slide's unfinished folder."""


class CellsTableSink:
    """``cells.parquet`` / ``cells.csv``, with the cancer-area flag (``outputs/cells_table.py``)."""

    def __init__(self, writer: CellsTableWriter):
        self.writer = writer

    def write(self, cells: CellBatch) -> None:
        self.writer.write(cells.x, cells.y, cells.cls, cells.prob, cells.in_cancer_area)

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


class PuritySink:
    """The slide's purity counts and heat map (``purity/purity.py``), read by the finish."""

    def __init__(self, counter: PurityCounter):
        self.counter = counter

    def write(self, cells: CellBatch) -> None:
        self.counter.add_cells(cells)

    def close(self) -> None:
        """Nothing to close: the counter is read when the run finishes."""

    def abort(self) -> None:
        """Nothing to undo."""
