"""One slide's result record: ``purity.json`` is its JSON; the cohort's manifest entry, the
``summary.csv`` row and the report's row are derived from it (docs/formats.md)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from wsi_ocelot.purity.purity import PurityResult

__all__ = ["SUMMARY_COLUMNS", "SlideRecord"]

#: ``summary.csv``'s columns, in order (``slide_id``, ``path``, ``status`` and ``error`` come from the cohort).
SUMMARY_COLUMNS = (
    "slide_id",
    "path",
    "status",
    "mpp",
    "mpp_source",
    "n_cells",
    "n_tc",
    "n_bc",
    "purity",
    "purity_in_cancer_area",
    "tissue_area_mm2",
    "cancer_area_mm2",
    "n_unreadable_tiles",
    "runtime_s",
    "model_note",
    "error",
)

_PURITY_KEYS = tuple(f.name for f in fields(PurityResult))


@dataclass(frozen=True)
class SlideRecord:
    """What the engine found on one slide and how it ran.

    ``purity`` holds the counts, purities (with reasons when undefined) and areas; the
    rest is provenance: the slide's path, where its MPP came from, the model, the path the
    engine took (``two-pass`` / ``per-tile``), the device, tile counts and the seconds per
    stage (``runtime_s``, with ``total``). ``n_unreadable_tiles``: tiles the slide would not
    give (corrupt image data; they gave no detections and their area is out of
    ``tissue_area_mm2``). ``model_note`` is the caveat every output of these weights carries
    (the demo weights: synthetic-only), or None. ``runtime``: what ran the forward pass
    (runtime, precision, version, processor, threads, why, fidelity; docs/runtimes.md)."""

    slide: str
    purity: PurityResult
    mpp_source: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    mode: str | None = None
    device: str | None = None
    runtime: dict[str, Any] = field(default_factory=dict)
    n_cell_tiles: int | None = None
    n_tissue_tiles: int | None = None
    n_unreadable_tiles: int = 0
    runtime_s: dict[str, float] = field(default_factory=dict)
    model_note: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The body of ``purity.json``: ``slide``, the :class:`PurityResult` fields, then the provenance."""
        return {
            "slide": self.slide,
            **self.purity.to_dict(),
            "mpp_source": self.mpp_source,
            "model": dict(self.model),
            "model_note": self.model_note,
            "mode": self.mode,
            "device": self.device,
            "runtime": self.runtime.get("runtime"),
            "precision": self.runtime.get("precision"),
            "runtime_detail": dict(self.runtime),
            "n_cell_tiles": self.n_cell_tiles,
            "n_tissue_tiles": self.n_tissue_tiles,
            "n_unreadable_tiles": self.n_unreadable_tiles,
            "runtime_s": dict(self.runtime_s),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SlideRecord:
        """Read back :meth:`to_json` (missing keys of older files become None)."""
        return cls(
            slide=str(data.get("slide", "")),
            purity=PurityResult(**{k: data.get(k) for k in _PURITY_KEYS}),  # type: ignore[arg-type]
            mpp_source=data.get("mpp_source"),
            model=dict(data.get("model") or {}),
            mode=data.get("mode"),
            device=data.get("device"),
            runtime=dict(data.get("runtime_detail") or {}),
            n_cell_tiles=data.get("n_cell_tiles"),
            n_tissue_tiles=data.get("n_tissue_tiles"),
            n_unreadable_tiles=int(data.get("n_unreadable_tiles") or 0),
            runtime_s=dict(data.get("runtime_s") or {}),
            model_note=data.get("model_note"),
        )

    def manifest_fields(self) -> dict[str, Any]:
        """The fields a cohort's ``manifest.json`` keeps for a finished slide (and from which
        ``summary.csv`` and ``report.html`` are built)."""
        p = self.purity
        return {
            "mpp": p.mpp,
            "mpp_source": self.mpp_source,
            "n_cells": p.n_cells,
            "n_tc": p.n_tc,
            "n_bc": p.n_bc,
            "purity": p.purity,
            "purity_reason": p.purity_reason,
            "purity_in_cancer_area": p.purity_in_cancer_area,
            "tissue_area_mm2": p.tissue_area_mm2,
            "cancer_area_mm2": p.cancer_area_mm2,
            "n_unreadable_tiles": self.n_unreadable_tiles,
            "mode": self.mode,
            "device": self.device,
            "runtime": self.runtime.get("runtime"),
            "precision": self.runtime.get("precision"),
            "model_note": self.model_note,
            "timings": {k: round(v, 3) for k, v in self.runtime_s.items()},
        }

    def summary_row(self) -> dict[str, Any]:
        """The ``summary.csv`` fields this record knows (see :data:`SUMMARY_COLUMNS`)."""
        m = self.manifest_fields()
        return {
            "path": self.slide,
            **{k: m[k] for k in SUMMARY_COLUMNS if k in m},
            "purity_reason": m["purity_reason"],
            "runtime_s": self.runtime_s.get("total"),
        }
