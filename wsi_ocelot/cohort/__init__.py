"""Cohort batch runs: inputs, ``manifest.json`` and resume, Dask scale-out, reports."""

from wsi_ocelot.cohort.batch import CohortConfig, CohortResult, run_cohort
from wsi_ocelot.cohort.inputs import SlideJob, collect_jobs, read_manifest_csv
from wsi_ocelot.cohort.manifest import Manifest
from wsi_ocelot.cohort.report import rebuild_reports, write_report, write_summary_csv

__all__ = [
    "CohortConfig",
    "CohortResult",
    "Manifest",
    "SlideJob",
    "collect_jobs",
    "read_manifest_csv",
    "rebuild_reports",
    "run_cohort",
    "write_report",
    "write_summary_csv",
]
