"""Cohort batch runs: inputs, ``manifest.json`` and resume, Dask scale-out, reports.

The names below are imported when first used, so that the light modules of the package
(``report``, ``manifest``, ``status``) load without torch, which ``batch`` and ``worker`` bring."""

from __future__ import annotations

from wsi_ocelot.lazy import lazy_exports

#: public name → the module that defines it
_API = {
    "CohortConfig": "wsi_ocelot.cohort.batch",
    "CohortResult": "wsi_ocelot.cohort.batch",
    "run_cohort": "wsi_ocelot.cohort.batch",
    "SlideJob": "wsi_ocelot.cohort.inputs",
    "collect_jobs": "wsi_ocelot.cohort.inputs",
    "read_manifest_csv": "wsi_ocelot.cohort.inputs",
    "Manifest": "wsi_ocelot.cohort.manifest",
    "rebuild_reports": "wsi_ocelot.cohort.report",
    "write_report": "wsi_ocelot.cohort.report",
    "write_summary_csv": "wsi_ocelot.cohort.report",
}

__all__ = sorted(_API)


__getattr__, __dir__ = lazy_exports(__name__, _API)  # deferred: batch and worker import torch
