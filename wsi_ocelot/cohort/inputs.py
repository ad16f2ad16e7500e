"""What a cohort run processes: slide paths, folders and CSV manifests → a list of jobs.

A CSV manifest has a ``slide`` column (path, relative to the CSV's folder unless
absolute) and optional ``mpp`` (level-0 µm/px override) and ``id`` (output folder name)
columns. Slide ids must be unique across the whole batch: that is checked before any
work starts, because two slides writing into one folder would lose results.

A DICOM whole-slide image is a *series* of ``.dcm`` files (one per pyramid level, plus
label / overview / thumbnail), and OpenSlide opens the whole slide from any one of them.
So ``.dcm`` inputs are grouped by SeriesInstanceUID (read from the header only), wherever
they came from (folders, files named directly, manifest rows, or several folders): a series
is **one** job. A ``.dcm`` named directly or in a manifest also brings in the files of its
series that lie beside it (the ones OpenSlide reads). The job's path is the series' level-0
VOLUME instance (the largest TotalPixelMatrixColumns × Rows); its id is, in this order, the
manifest's ``id``, the files' common stem without the instance suffix (``boxes_0.dcm`` +
``boxes_1.dcm`` → ``boxes``), the ContainerIdentifier (the slide's barcode), the folder's
name; a series of one file keeps the file's stem, and a series whose id would clash with
another job's falls back to its level-0 file's stem. A ``.dcm`` that is not readable DICOM,
or a series with no whole-slide image instance, stays a job of its own (the run reports why).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wsi_ocelot.errors import ConfigError, WsiOcelotError
from wsi_ocelot.naming import safe_name, slide_id_for
from wsi_ocelot.slide import check_mpp

log = logging.getLogger(__name__)

SLIDE_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
)
MANIFEST_EXTENSIONS = (".csv",)
DICOM_EXTENSION = ".dcm"

#: SOP class of VL Whole Slide Microscopy Image Storage (the instances OpenSlide reads).
WSI_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.77.1.6"
_HEADER_TAGS = [
    "SOPClassUID",
    "SeriesInstanceUID",
    "ImageType",
    "TotalPixelMatrixColumns",
    "TotalPixelMatrixRows",
    "ContainerIdentifier",
]
_INSTANCE_SUFFIX = re.compile(r"[._-]\d+$")  # boxes_0, scan-12, slide.3
_UID_LIKE = re.compile(r"^[0-9.]*$")  # 1.2.840.113654.2: a UID, not a name


@dataclass(frozen=True)
class SlideJob:
    """One slide of a batch: where it is, its output name, an optional MPP override."""

    slide_id: str
    path: str
    mpp: float | None = None
    source: str = "argument"  # where the job came from (argument, folder, or the CSV file)

    def to_dict(self) -> dict[str, object]:
        return {
            "slide_id": self.slide_id,
            "path": self.path,
            "mpp": self.mpp,
            "source": self.source,
        }


def _safe_id(raw: str, where: str) -> str:
    sid = safe_name(raw)
    if not sid:
        raise ConfigError(
            where,
            f"the id {raw!r} is empty once made safe for a folder name",
            "use letters, digits, '.', '_' or '-'",
        )
    return sid


@dataclass(frozen=True)
class _Entry:
    """One input before DICOM series are grouped: the job it would be on its own, where it
    came from (``folder``, ``argument`` or ``manifest``), ``where`` to name in errors
    (the manifest line), and whether its id was given (a manifest's ``id`` column)."""

    job: SlideJob
    kind: str
    where: str
    explicit_id: bool = False


def read_manifest_csv(path: str | os.PathLike[str]) -> list[SlideJob]:
    """Jobs from a CSV manifest (columns ``slide``, optional ``mpp`` and ``id``), one per row
    (DICOM series are grouped by :func:`collect_jobs`, not here)."""
    return [e.job for e in _manifest_entries(path)]


def _manifest_entries(path: str | os.PathLike[str]) -> list[_Entry]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(
            path,
            f"cannot read the manifest ({exc.strerror or exc})",
            "check the path and its permissions",
        ) from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    if "slide" not in header:
        raise ConfigError(
            path,
            f"the manifest has no 'slide' column (columns: {', '.join(header) or 'none'})",
            "add a header line 'slide,mpp,id' (mpp and id are optional)",
        )
    jobs: list[_Entry] = []
    for line_no, row in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        where = f"{path}:{line_no}"
        if not row.get("slide"):
            if any(row.values()):
                raise ConfigError(
                    where, "the 'slide' cell is empty", "give the slide's path, or delete the line"
                )
            continue
        slide = Path(row["slide"]).expanduser()
        if not slide.is_absolute():
            slide = path.parent / slide
        mpp = (
            check_mpp(row["mpp"], where, "mpp") if row.get("mpp") else None
        )  # the one range, as for --mpp
        sid = _safe_id(row["id"], where) if row.get("id") else slide_id_for(slide)
        jobs.append(
            _Entry(
                SlideJob(sid, str(slide), mpp, str(path)), "manifest", where, bool(row.get("id"))
            )
        )
    if not jobs:
        log.warning("%s: the manifest lists no slides", path)
    return jobs


def _folder_jobs(folder: Path) -> list[SlideJob]:
    found = sorted(
        q
        for q in folder.rglob("*")
        if q.is_file() and q.suffix.lower() in SLIDE_EXTENSIONS and not q.name.startswith(".")
    )
    if not found:
        log.warning(
            "%s: no slides found in this folder (looked for %s)",
            folder,
            ", ".join(SLIDE_EXTENSIONS),
        )
    return [SlideJob(slide_id_for(q), str(q), None, str(folder)) for q in found]


@dataclass(frozen=True)
class DicomHeader:
    """What grouping needs from the header of a ``.dcm`` file."""

    series_uid: str
    wsi: bool  # a VL Whole Slide Microscopy Image instance: what OpenSlide reads
    volume: (
        bool  # a pyramid level (ImageType ``.../VOLUME/...``), not a label, overview or thumbnail
    )
    pixels: int  # TotalPixelMatrixColumns × TotalPixelMatrixRows (0 when absent)
    container_id: str  # ContainerIdentifier, the slide's barcode ('' when absent)


def read_dicom_header(path: str | os.PathLike[str]) -> DicomHeader | None:
    """The grouping fields of a DICOM file, read from its header only (no pixel data).

    Returns
    -------
    DicomHeader or None
        None when the file is not readable DICOM or has no SeriesInstanceUID: such a file
        is a job of its own, and opening it reports what is wrong.
    """
    import pydicom  # only runs that see a .dcm pay for the import

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        series = str(ds.get("SeriesInstanceUID", "") or "").strip()
        if not series:
            log.debug("%s: no SeriesInstanceUID; not grouped with other DICOM files", path)
            return None
        meta = getattr(ds, "file_meta", None)
        sop = str(
            (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
            or ds.get("SOPClassUID", "")
            or ""
        ).strip()
        raw_type = ds.get("ImageType") or []
        image_type = [
            str(v).strip().upper() for v in ([raw_type] if isinstance(raw_type, str) else raw_type)
        ]
        cols, rows = ds.get("TotalPixelMatrixColumns"), ds.get("TotalPixelMatrixRows")
        pixels = int(cols) * int(rows) if cols is not None and rows is not None else 0
        container = str(ds.get("ContainerIdentifier", "") or "").strip()
    except Exception as exc:  # noqa: BLE001 - not DICOM, truncated, malformed: the run reports it
        log.debug(
            "%s: not readable as DICOM (%s: %s); kept as a slide of its own",
            path,
            type(exc).__name__,
            exc,
        )
        return None
    return DicomHeader(
        series,
        sop == WSI_SOP_CLASS_UID,
        len(image_type) > 2 and image_type[2] == "VOLUME",
        pixels,
        container,
    )


def _key(path: Path) -> Path:
    """One key per file, however it was named (relative, absolute, through a link)."""
    try:
        return path.resolve()
    except OSError:
        return Path(os.path.abspath(path))


def _dicom_siblings(folder: Path, cache: dict[Path, list[Path]]) -> list[Path]:
    """The ``.dcm`` files directly in ``folder`` (where OpenSlide looks for a series' files)."""
    if folder not in cache:
        try:
            cache[folder] = sorted(
                q
                for q in folder.iterdir()
                if q.suffix.lower() == DICOM_EXTENSION
                and not q.name.startswith(".")
                and q.is_file()
            )
        except OSError:
            cache[folder] = []
    return cache[folder]


def _series_id(
    members: Sequence[Path], level0: Path, header: DicomHeader, volume: Sequence[Path]
) -> str:
    """A series' slide id: the files' common stem without the instance suffix, else the
    ContainerIdentifier, else the folder's name, else the level-0 file's stem."""
    stems = {_INSTANCE_SUFFIX.sub("", p.stem) for p in (volume or members)}
    if len(stems) == 1:
        name = safe_name(stems.pop())
        if name and not _UID_LIKE.match(name):
            return name
    for raw in (header.container_id, _key(level0).parent.name):
        name = safe_name(raw)
        if name:
            return name
    return slide_id_for(level0)


@dataclass
class _Series:
    """The files of one DICOM series among the inputs, and the job they become."""

    uid: str
    entries: list[int]  # indices of the inputs that are files of the series
    members: list[Path]  # every file of the series (inputs and the files beside named ones)
    level0: Path
    job: SlideJob
    computed_id: bool  # False when a manifest gave the id


def _group_dicom_series(entries: Sequence[_Entry]) -> list[SlideJob]:
    """The jobs of ``entries`` with each DICOM series' files merged into one job (at the place
    of its first file); see the module docstring."""
    headers: dict[Path, DicomHeader | None] = {}

    def header(p: Path) -> DicomHeader | None:
        k = _key(p)
        if k not in headers:
            headers[k] = read_dicom_header(p)
        return headers[k]

    by_uid: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        p = Path(e.job.path)
        if p.suffix.lower() == DICOM_EXTENSION and p.is_file() and (h := header(p)) is not None:
            by_uid.setdefault(h.series_uid, []).append(i)
    if not by_uid:
        return [e.job for e in entries]

    folders: dict[Path, list[Path]] = {}
    series: list[_Series] = []
    for uid, idx in by_uid.items():
        found: dict[Path, Path] = {}
        for i in idx:
            p = Path(entries[i].job.path)
            found.setdefault(_key(p), p)
        for i in idx:  # a file named directly brings the files OpenSlide reads with it
            if entries[i].kind != "folder":
                for q in _dicom_siblings(Path(entries[i].job.path).parent, folders):
                    h = header(q)
                    if h is not None and h.series_uid == uid:
                        found.setdefault(_key(q), q)
        members = sorted(found.values(), key=str)
        of = {
            p: h for p in members if (h := header(p)) is not None
        }  # every member has one (cached)
        wsi = [p for p in members if of[p].wsi]
        if not wsi:  # not a whole-slide image: each file stays a job, and the run says why
            continue
        volume = [p for p in wsi if of[p].volume]
        level0 = max(volume or wsi, key=lambda p: of[p].pixels)

        rows = [entries[i] for i in idx if entries[i].kind == "manifest"]
        if len({(e.job.slide_id if e.explicit_id else None, e.job.mpp) for e in rows}) > 1:
            raise ConfigError(
                rows[-1].where,
                f"this row and {rows[0].where} name files of one DICOM slide (series {uid}) "
                "but give it different ids or MPPs",
                "give each DICOM slide one row (any one of its .dcm files)",
            )
        first = rows[0] if rows else entries[idx[0]]
        if rows and rows[0].explicit_id:
            sid, computed = rows[0].job.slide_id, False
        elif len(members) == 1:
            sid, computed = slide_id_for(level0), True
        else:
            sid, computed = _series_id(members, level0, of[level0], volume), True
        job = SlideJob(sid, str(level0), first.job.mpp if rows else None, first.job.source)
        series.append(_Series(uid, idx, members, level0, job, computed))

    # a computed id that another job also has (two rescans with one barcode, boxes.svs beside
    # boxes_0.dcm + boxes_1.dcm) gives way to the level-0 file's stem
    grouped = {i for s in series for i in s.entries}
    ids = Counter(
        [e.job.slide_id.lower() for i, e in enumerate(entries) if i not in grouped]
        + [s.job.slide_id.lower() for s in series]
    )
    for s in series:
        if s.computed_id and ids[s.job.slide_id.lower()] > 1:
            own = slide_id_for(s.level0)
            if own.lower() != s.job.slide_id.lower():
                log.info(
                    "DICOM series %s: the id %s is taken by another slide; using its level-0 file's stem %s",
                    s.uid,
                    s.job.slide_id,
                    own,
                )
                s.job = SlideJob(own, s.job.path, s.job.mpp, s.job.source)

    at_first = {s.entries[0]: s for s in series}
    jobs: list[SlideJob] = []
    for i, e in enumerate(entries):
        if i in at_first:
            s = at_first[i]
            jobs.append(s.job)
            if len(s.members) > 1:
                log.info(
                    "grouped %d DICOM files of series %s into one slide %s",
                    len(s.members),
                    s.uid,
                    s.job.slide_id,
                )
            places = sorted({str(_key(p).parent) for p in s.members})
            if len(places) > 1:
                log.warning(
                    "%s: DICOM series %s lies in %d folders (%s); OpenSlide reads only the files beside this "
                    "level-0 file, so the others are not used",
                    s.level0,
                    s.uid,
                    len(places),
                    ", ".join(places),
                )
        elif i not in grouped:
            jobs.append(e.job)
    return jobs


def collect_jobs(
    inputs: Sequence[str | os.PathLike[str]], *, mpp: float | None = None
) -> list[SlideJob]:
    """Expand slide paths, folders (recursive, OpenSlide's extensions) and CSV manifests.

    The ``.dcm`` files of one DICOM series become one job (see the module docstring).

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
    entries: list[_Entry] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            entries.extend(_Entry(j, "folder", str(p)) for j in _folder_jobs(p))
        elif p.suffix.lower() in MANIFEST_EXTENSIONS:
            if not p.is_file():
                raise ConfigError(p, "the manifest does not exist", "check the path")
            entries.extend(_manifest_entries(p))
        else:
            entries.append(
                _Entry(SlideJob(slide_id_for(p), str(p), None, "argument"), "argument", str(p))
            )
    jobs = _group_dicom_series(entries)
    if mpp is not None:
        mpp = check_mpp(mpp, None, "--mpp")
        jobs = [
            j if j.mpp is not None else SlideJob(j.slide_id, j.path, mpp, j.source) for j in jobs
        ]
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
                raise WsiOcelotError(
                    job.path,
                    f"this slide is listed twice (from {other.source} and {job.source})",
                    "list each slide once",
                )
            raise ConfigError(
                job.path,
                f"slide id '{job.slide_id}' is also the id of {other.path}, so both would write <out>/{job.slide_id}/",
                "give the slides distinct ids with an 'id' column in a CSV manifest, or rename one file",
            )
        seen[key] = job
