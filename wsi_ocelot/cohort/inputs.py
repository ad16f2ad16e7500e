"""What a cohort run processes: slide paths, folders and CSV manifests → a list of jobs.

A CSV manifest has a ``slide`` column (path, relative to the CSV's folder unless
absolute) and optional ``mpp`` (level-0 µm/px override) and ``id`` (output folder name)
columns. Slide ids must be unique across the whole batch: that is checked before any
work starts, because two slides writing into one folder would lose results.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wsi_ocelot.errors import ConfigError, WsiOcelotError
from wsi_ocelot.naming import safe_name, slide_id_for

log = logging.getLogger(__name__)

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm")
MANIFEST_EXTENSIONS = (".csv",)


@dataclass(frozen=True)
class SlideJob:
    """One slide of a batch: where it is, its output name, an optional MPP override."""

    slide_id: str
    path: str
    mpp: float | None = None
    source: str = "argument"  # where the job came from (argument, folder, or the CSV file)

    def to_dict(self) -> dict[str, object]:
        return {"slide_id": self.slide_id, "path": self.path, "mpp": self.mpp, "source": self.source}


def _safe_id(raw: str, where: str) -> str:
    sid = safe_name(raw)
    if not sid:
        raise ConfigError(where, f"the id {raw!r} is empty once made safe for a folder name", "use letters, digits, '.', '_' or '-'")
    return sid


def read_manifest_csv(path: str | os.PathLike[str]) -> list[SlideJob]:
    """Jobs from a CSV manifest (columns ``slide``, optional ``mpp`` and ``id``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(path, f"cannot read the manifest ({exc.strerror or exc})", "check the path and its permissions") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    if "slide" not in header:
        raise ConfigError(path, f"the manifest has no 'slide' column (columns: {', '.join(header) or 'none'})",
                          "add a header line 'slide,mpp,id' (mpp and id are optional)")
    jobs: list[SlideJob] = []
    for line_no, row in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        where = f"{path}:{line_no}"
        if not row.get("slide"):
            if any(row.values()):
                raise ConfigError(where, "the 'slide' cell is empty", "give the slide's path, or delete the line")
            continue
        slide = Path(row["slide"]).expanduser()
        if not slide.is_absolute():
            slide = path.parent / slide
        mpp: float | None = None
        if row.get("mpp"):
            try:
                mpp = float(row["mpp"])
            except ValueError:
                mpp = -1.0
            if not (0.01 <= mpp <= 100.0):
                raise ConfigError(where, f"mpp {row['mpp']!r} is not a µm/px value between 0.01 and 100", "write the level-0 microns per pixel, e.g. 0.25, or leave it empty")
        sid = _safe_id(row["id"], where) if row.get("id") else slide_id_for(slide)
        jobs.append(SlideJob(sid, str(slide), mpp, str(path)))
    if not jobs:
        log.warning("%s: the manifest lists no slides", path)
    return jobs


def _folder_jobs(folder: Path) -> list[SlideJob]:
    found = sorted(q for q in folder.rglob("*") if q.is_file() and q.suffix.lower() in SLIDE_EXTENSIONS and not q.name.startswith("."))
    if not found:
        log.warning("%s: no slides found in this folder (looked for %s)", folder, ", ".join(SLIDE_EXTENSIONS))
    return [SlideJob(slide_id_for(q), str(q), None, str(folder)) for q in found]


def collect_jobs(inputs: Sequence[str | os.PathLike[str]], *, mpp: float | None = None) -> list[SlideJob]:
    """Expand slide paths, folders (recursive, OpenSlide's extensions) and CSV manifests.

    Parameters
    ----------
    inputs
        Slide files, folders and CSV manifests (columns ``slide``, optional ``mpp`` and ``id``).
    mpp
        Overrides the MPP of every slide that has no per-slide value in a manifest.

    Returns
    -------
    list of SlideJob
        A path that does not exist stays in the list (it is reported as a failed slide);
        duplicate slide ids raise :class:`ConfigError` naming both paths.

    Examples
    --------
    >>> jobs = collect_jobs(["scans/", "cohort_B.csv"], mpp=None)   # doctest: +SKIP
    """
    jobs: list[SlideJob] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            jobs.extend(_folder_jobs(p))
        elif p.suffix.lower() in MANIFEST_EXTENSIONS:
            if not p.is_file():
                raise ConfigError(p, "the manifest does not exist", "check the path")
            jobs.extend(read_manifest_csv(p))
        else:
            jobs.append(SlideJob(slide_id_for(p), str(p), None, "argument"))
    if mpp is not None:
        jobs = [j if j.mpp is not None else SlideJob(j.slide_id, j.path, mpp, j.source) for j in jobs]
    check_unique(jobs)
    return jobs


def check_unique(jobs: Iterable[SlideJob]) -> None:
    """Raise if two jobs would write the same output folder (ids compared case-insensitively,
    as on macOS and Windows file systems)."""
    seen: dict[str, SlideJob] = {}
    for job in jobs:
        key = job.slide_id.lower()
        if key in seen:
            other = seen[key]
            if Path(other.path).resolve() == Path(job.path).resolve():
                raise WsiOcelotError(job.path, f"this slide is listed twice (from {other.source} and {job.source})",
                                     "list each slide once")
            raise ConfigError(job.path, f"slide id '{job.slide_id}' is also the id of {other.path}, so both would write <out>/{job.slide_id}/",
                              "give the slides distinct ids with an 'id' column in a CSV manifest, or rename one file")
        seen[key] = job
