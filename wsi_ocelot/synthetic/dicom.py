"""Write a synthetic DICOM whole-slide image series that OpenSlide opens.

One VL Whole Slide Microscopy Image Storage instance (SOP class
``1.2.840.10008.5.1.4.1.1.77.1.6``) per pyramid level, as a scanner or converter writes
them: ``<stem>_0.dcm`` (level 0, ImageType ``ORIGINAL\\PRIMARY\\VOLUME\\NONE``),
``<stem>_1.dcm``, ... (each 2× smaller, ``DERIVED\\PRIMARY\\VOLUME\\RESAMPLED``) and,
when asked for, ``<stem>_label.dcm`` (``ORIGINAL\\PRIMARY\\LABEL\\NONE``). All files of a
series share StudyInstanceUID, SeriesInstanceUID and FrameOfReferenceUID; OpenSlide,
given any one of them, reads the others from the same folder.

Each level is ``TILED_FULL`` (frames row by row, edge frames padded with white) with
``TotalPixelMatrixColumns/Rows`` giving the level's size and the pixel spacing (mm) in
the shared functional groups, which OpenSlide reports as ``openslide.mpp-x/y``. Frames
are JPEG baseline (``YBR_FULL_422``, encoded with Pillow, encapsulated) or, with
``codec="raw"``, uncompressed RGB in explicit VR little endian (exact pixels).

Used by the tests of DICOM series handling (``tests/test_dicom_series.py``).
"""

from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path
from typing import TypedDict

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

log = logging.getLogger(__name__)

#: SOP class of VL Whole Slide Microscopy Image Storage.
WSI_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.77.1.6"

#: How the SeriesDescription of every series written here begins.
SYNTHETIC_SERIES_DESCRIPTION = "wsi-ocelot synthetic DICOM WSI"

_CODECS = ("jpeg", "raw")
_DATE, _TIME = "20240101", "120000"  # fixed: the same arguments and series_uid give the same files


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Level 0 and each 2× smaller level (sizes rounded up), box-filtered from level 0."""
    h, w = image.shape[:2]
    im = Image.fromarray(image)
    out = [image]
    for k in range(1, levels):
        f = 2**k
        out.append(
            np.asarray(im.resize((math.ceil(w / f), math.ceil(h / f)), Image.Resampling.BOX))
        )
    return out


def _frames(img: np.ndarray, tile: int) -> list[np.ndarray]:
    """The ``tile × tile`` frames of ``img`` row by row (TILED_FULL order), edges padded white."""
    h, w = img.shape[:2]
    frames = []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            part = img[y : y + tile, x : x + tile]
            if part.shape[:2] != (tile, tile):
                padded = np.full((tile, tile, 3), 255, np.uint8)
                padded[: part.shape[0], : part.shape[1]] = part
                part = padded
            frames.append(np.ascontiguousarray(part))
    return frames


def _jpeg(frame: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    # subsampling=1 is 4:2:2 (chroma halved across), what YBR_FULL_422 says
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality, subsampling=1)
    data = buf.getvalue()
    return data + b"\x00" if len(data) % 2 else data  # DICOM items have even length


def _common(ds: Dataset, uids: dict[str, str], container_id: str, description: str) -> None:
    """Patient, study, series, frame of reference, equipment and specimen: the same in
    every instance of the series."""
    ds.SOPClassUID = WSI_SOP_CLASS_UID
    ds.PatientName = "Synthetic^Slide"
    ds.PatientID = "SYNTHETIC"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = uids["study"]
    ds.StudyDate = _DATE
    ds.StudyTime = _TIME
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.Modality = "SM"
    ds.SeriesInstanceUID = uids["series"]
    ds.SeriesNumber = 1
    ds.SeriesDescription = description
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.Manufacturer = "wsi-ocelot"
    ds.ManufacturerModelName = "synthetic"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = "wsi-ocelot"
    ds.ContentDate = _DATE
    ds.ContentTime = _TIME
    ds.AcquisitionDateTime = _DATE + _TIME
    ds.AcquisitionContextSequence = Sequence()
    ds.ContainerIdentifier = container_id
    ds.IssuerOfTheContainerIdentifierSequence = Sequence()
    ds.ContainerTypeCodeSequence = Sequence([_code("433466003", "SCT", "Microscope slide")])
    specimen = Dataset()
    specimen.SpecimenIdentifier = container_id
    specimen.SpecimenUID = uids["specimen"]
    specimen.IssuerOfTheSpecimenIdentifierSequence = Sequence()
    specimen.SpecimenPreparationSequence = Sequence()
    ds.SpecimenDescriptionSequence = Sequence([specimen])


def _optical_path(mpp: float) -> Sequence:
    path = Dataset()
    path.OpticalPathIdentifier = "1"
    path.IlluminationTypeCodeSequence = Sequence(
        [_code("111744", "DCM", "Brightfield illumination")]
    )
    path.IlluminationColorCodeSequence = Sequence([_code("414298005", "SCT", "Full Spectrum")])
    path.ObjectiveLensPower = f"{10.0 / mpp:.4g}"  # 0.25 µm/px ↔ 40x, as scanners label it
    return Sequence([path])


class _SeriesArgs(TypedDict):
    """The arguments of :func:`_instance` every instance of a series shares."""

    mpp: float
    codec: str
    quality: int
    uids: dict[str, str]
    container_id: str
    description: str


def _instance(
    img: np.ndarray,
    *,
    image_type: list[str],
    instance_number: int,
    tile_w: int,
    tile_h: int,
    spacing_mm: float,
    mpp: float,
    codec: str,
    quality: int,
    uids: dict[str, str],
    sop_uid: UID,
    container_id: str,
    description: str,
) -> Dataset:
    """One tiled instance of ``img`` (frames of ``tile_w × tile_h``)."""
    h, w = img.shape[:2]
    if tile_w == w and tile_h == h:
        frames = [np.ascontiguousarray(img)]
    else:
        frames = _frames(img, tile_w)
    syntax = JPEGBaseline8Bit if codec == "jpeg" else ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(WSI_SOP_CLASS_UID)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    _common(ds, uids, container_id, description)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = instance_number

    ds.ImageType = image_type
    ds.DimensionOrganizationType = "TILED_FULL"
    org = Dataset()
    org.DimensionOrganizationUID = uids["dimension"]
    ds.DimensionOrganizationSequence = Sequence([org])
    ds.NumberOfFrames = len(frames)
    ds.Rows = tile_h
    ds.Columns = tile_w
    ds.TotalPixelMatrixColumns = w
    ds.TotalPixelMatrixRows = h
    ds.TotalPixelMatrixFocalPlanes = 1
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = 0
    origin.YOffsetInSlideCoordinateSystem = 0
    ds.TotalPixelMatrixOriginSequence = Sequence([origin])
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    ds.ImagedVolumeWidth = w * spacing_mm
    ds.ImagedVolumeHeight = h * spacing_mm
    ds.ImagedVolumeDepth = 0.001
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.VolumetricProperties = "VOLUME"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    is_label = image_type[2] == "LABEL"
    ds.SpecimenLabelInImage = "YES" if is_label else "NO"
    ds.BurnedInAnnotation = "YES" if is_label else "NO"
    ds.NumberOfOpticalPaths = 1
    ds.OpticalPathSequence = _optical_path(mpp)

    pixel = Dataset()
    pixel.PixelSpacing = [spacing_mm, spacing_mm]  # row spacing, column spacing (mm)
    pixel.SliceThickness = 0.001
    frame_type = Dataset()
    frame_type.FrameType = image_type
    optical = Dataset()
    optical.OpticalPathIdentifier = "1"
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([pixel])
    shared.WholeSlideMicroscopyImageFrameTypeSequence = Sequence([frame_type])
    shared.OpticalPathIdentificationSequence = Sequence([optical])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    if codec == "jpeg":
        encoded = [_jpeg(f, quality) for f in frames]
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ratio = sum(f.nbytes for f in frames) / max(1, sum(len(e) for e in encoded))
        ds.LossyImageCompressionRatio = f"{ratio:.4g}"
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PhotometricInterpretation = "RGB"
        ds.LossyImageCompression = "00"
        ds.PixelData = b"".join(
            f.tobytes() for f in frames
        )  # 3 · 8-bit samples per pixel: even length
        ds["PixelData"].VR = "OB"
    return ds


def write_dicom_series(
    folder: str | os.PathLike[str],
    image: np.ndarray,
    mpp: float,
    *,
    levels: int = 2,
    tile: int = 256,
    stem: str = "slide",
    series_uid: str | None = None,
    codec: str = "jpeg",
    quality: int = 90,
    container_id: str | None = None,
    label: np.ndarray | None = None,
    description: str = SYNTHETIC_SERIES_DESCRIPTION,
) -> list[Path]:
    """Write ``image`` as a DICOM WSI series, one instance file per pyramid level.

    Parameters
    ----------
    folder
        Where the files go (created if needed). OpenSlide finds the files of a series
        only when they lie in one folder.
    image
        Level 0, ``(H, W, 3)`` uint8 RGB.
    mpp
        µm per level-0 pixel (written as PixelSpacing in mm).
    levels
        Pyramid levels; level *k* is ``ceil(W / 2**k) × ceil(H / 2**k)``.
    tile
        Frame width and height in px.
    stem
        File names are ``<stem>_<level>.dcm`` (and ``<stem>_label.dcm``).
    series_uid
        SeriesInstanceUID; None makes a new random one. The other UIDs (study, frame of
        reference, instances) are derived from it, so the same arguments and
        ``series_uid`` give byte-identical files.
    codec
        ``"jpeg"`` (baseline, ``YBR_FULL_422``) or ``"raw"`` (uncompressed RGB, exact).
    quality
        JPEG quality (1–95).
    container_id
        ContainerIdentifier (the slide's barcode); default ``stem``.
    label
        An optional label image ``(h, w, 3)`` uint8, written as a one-frame LABEL instance.
    description
        SeriesDescription.

    Returns
    -------
    list of Path
        The files written: levels 0, 1, ... then the label.

    Examples
    --------
    >>> paths = write_dicom_series("scans", img, 0.25, levels=3, stem="case7")   # doctest: +SKIP
    >>> openslide.OpenSlide(str(paths[1])).level_count                              # doctest: +SKIP
    3
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if not (mpp > 0 and math.isfinite(mpp)):
        raise ValueError(f"mpp must be a positive number of µm/px, got {mpp}")
    if codec not in _CODECS:
        raise ValueError(f"codec must be one of {', '.join(_CODECS)}, got {codec!r}")
    if tile < 16:
        raise ValueError(f"tile must be at least 16 px, got {tile}")
    h, w = image.shape[:2]
    if levels < 1 or min(h, w) < 2 ** (levels - 1):
        raise ValueError(
            f"{levels} levels need an image of at least {2 ** max(0, levels - 1)} px a side, got {w}x{h}"
        )
    if label is not None:
        label = np.asarray(label)
        if label.ndim != 3 or label.shape[2] != 3 or label.dtype != np.uint8:
            raise ValueError(f"label must be (h, w, 3) uint8, got {label.shape} {label.dtype}")

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    series = series_uid or generate_uid()
    uids: dict[str, str] = {
        k: generate_uid(entropy_srcs=[series, k])
        for k in ("study", "frame", "specimen", "dimension")
    }
    uids["series"] = series
    container = container_id if container_id is not None else stem
    common: _SeriesArgs = {
        "mpp": mpp,
        "codec": codec,
        "quality": quality,
        "uids": uids,
        "container_id": container,
        "description": description,
    }

    paths: list[Path] = []
    for k, img in enumerate(_pyramid(image, levels)):
        image_type = (
            ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
            if k == 0
            else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
        )
        ds = _instance(
            img,
            image_type=image_type,
            instance_number=k + 1,
            tile_w=tile,
            tile_h=tile,
            spacing_mm=mpp * 2**k / 1000.0,
            sop_uid=generate_uid(entropy_srcs=[series, "level", str(k)]),
            **common,
        )
        paths.append(out / f"{stem}_{k}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    if label is not None:
        lh, lw = label.shape[:2]
        ds = _instance(
            label,
            image_type=["ORIGINAL", "PRIMARY", "LABEL", "NONE"],
            instance_number=levels + 1,
            tile_w=lw,
            tile_h=lh,
            spacing_mm=mpp / 1000.0,
            sop_uid=generate_uid(entropy_srcs=[series, "label"]),
            **common,
        )
        paths.append(out / f"{stem}_label.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    log.debug("wrote DICOM series %s (%d files) to %s", series, len(paths), out)
    return paths
