"""DICOM whole-slide images: a series of ``.dcm`` files (one per pyramid level) is one slide.

The series are written by :func:`wsi_ocelot.synthetic.dicom.write_dicom_series` and opened
with OpenSlide (openslide-bin 4.x reads DICOM WSI through libdicom). Issue 19, item 6:
before the grouping in ``wsi_ocelot/cohort/inputs.py``, a folder holding ``boxes_0.dcm`` and
``boxes_1.dcm`` gave two jobs (``boxes_0`` and ``boxes_1``) for the one slide, so a run
wrote two result folders; ``test_folder_gives_one_job_per_series`` is the test that fails
on that code (and so are the other ``collect_jobs`` tests that expect one job per series).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from wsi_ocelot.cohort import collect_jobs
from wsi_ocelot.cohort.inputs import read_dicom_header
from wsi_ocelot.errors import ConfigError
from wsi_ocelot.slide import open_slide
from wsi_ocelot.synthetic import make_synthetic_slide
from wsi_ocelot.synthetic.dicom import WSI_SOP_CLASS_UID, write_dicom_series

MPP = 0.25
SIZE = (1024, 768)  # (W, H) level 0


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """Synthetic H&E, 1024 × 768 at 0.25 µm/px."""
    return make_synthetic_slide(mpp=MPP, size=SIZE, seed=19).render((0, 0, *SIZE))


@pytest.fixture(scope="module")
def series(tmp_path_factory, image) -> list[Path]:
    """``boxes_0.dcm`` (level 0), ``boxes_1.dcm`` (2× smaller) and ``boxes_label.dcm`` (a label
    with more pixels than level 0, which must not be taken for it), alone in a folder."""
    label = np.full((600, 2048, 3), 230, np.uint8)
    return write_dicom_series(
        tmp_path_factory.mktemp("dicom") / "scan",
        image,
        MPP,
        levels=2,
        tile=256,
        stem="boxes",
        label=label,
        container_id="BC-0019",
    )


def _copy(files: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(f, folder / f.name)) for f in files]


def _other_series(folder: Path, stem: str = "other", **kw) -> list[Path]:
    img = np.full((256, 384, 3), 180, np.uint8)
    img[64:192, 96:288] = (150, 60, 160)
    return write_dicom_series(folder, img, 0.5, levels=2, tile=128, stem=stem, **kw)


# -- (a) OpenSlide reads the series from any of its files -----------------------------------
def test_openslide_opens_the_series_from_either_file(series, image):
    level0, level1, _label = series
    seen = []
    for path in (level0, level1):
        with openslide.OpenSlide(str(path)) as osr:
            assert osr.properties["openslide.vendor"] == "dicom"
            assert osr.level_count == 2
            assert osr.level_dimensions == (SIZE, (SIZE[0] // 2, SIZE[1] // 2))
            assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(MPP)
            assert float(osr.properties["openslide.mpp-y"]) == pytest.approx(MPP)
            assert "label" in osr.associated_images
            region = np.asarray(osr.read_region((0, 0), 0, SIZE).convert("RGB")).astype(np.int16)
            seen.append(region)
            err = np.abs(region - image.astype(np.int16))
            assert err.mean() < 3.0 and np.percentile(err, 99) < 20  # JPEG q90, 4:2:2 chroma
            small = np.asarray(
                osr.read_region((0, 0), 1, (SIZE[0] // 2, SIZE[1] // 2)).convert("RGB")
            ).astype(np.int16)
            assert np.abs(small - image[::2, ::2].astype(np.int16)).mean() < 8.0
    assert np.array_equal(seen[0], seen[1])


def test_uncompressed_series_reads_back_exactly(tmp_path):
    rng = np.random.default_rng(6)
    img = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)  # edge frames are partial
    paths = write_dicom_series(tmp_path, img, 0.5, levels=3, tile=128, stem="raw", codec="raw")
    with openslide.OpenSlide(str(paths[-1])) as osr:
        assert osr.level_dimensions == ((500, 300), (250, 150), (125, 75))
        assert np.array_equal(
            np.asarray(osr.read_region((0, 0), 0, (500, 300)).convert("RGB")), img
        )


# -- (b) a folder: one job per series --------------------------------------------------------
def test_folder_gives_one_job_per_series(series, caplog):
    # Fails before the grouping: two jobs, boxes_0 and boxes_1 (the label too, as boxes_label).
    with caplog.at_level(logging.INFO, logger="wsi_ocelot.cohort.inputs"):
        jobs = collect_jobs([series[0].parent])
    assert len(jobs) == 1
    assert jobs[0].slide_id == "boxes"
    assert Path(jobs[0].path) == series[0]  # the level-0 VOLUME instance, not the larger label
    assert jobs[0].source == str(series[0].parent)
    uid = read_dicom_header(series[0]).series_uid
    assert f"grouped 3 DICOM files of series {uid} into one slide boxes" in caplog.text


# -- (c) files named directly, with or without their folder ---------------------------------
def test_named_files_and_their_folder_give_one_job(series):
    folder = series[0].parent
    jobs = collect_jobs([folder, series[1], series[0]])
    assert [(j.slide_id, Path(j.path)) for j in jobs] == [("boxes", series[0])]
    # one file named alone brings the series' files beside it (the ones OpenSlide reads)
    jobs = collect_jobs([series[1]], mpp=0.3)
    assert [(j.slide_id, Path(j.path), j.mpp, j.source) for j in jobs] == [
        ("boxes", series[0], 0.3, "argument")
    ]


def test_manifest_row_names_the_series(series, tmp_path):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"slide,mpp,id\n{series[1]},0.26,patient7\n", encoding="utf-8")
    jobs = collect_jobs([series[0].parent, manifest])
    assert [(j.slide_id, Path(j.path), j.mpp, j.source) for j in jobs] == [
        ("patient7", series[0], 0.26, str(manifest))
    ]
    manifest.write_text(f"slide,id\n{series[0]},a\n{series[1]},b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="one DICOM slide") as exc:
        collect_jobs([manifest])
    assert "\n" not in exc.value.one_line() and f"{manifest}:3" in exc.value.one_line()


def test_series_split_over_two_folders_is_one_job(series, tmp_path, caplog):
    _copy(series[:1], tmp_path / "a")
    _copy(series[1:], tmp_path / "b")
    with caplog.at_level(logging.INFO, logger="wsi_ocelot.cohort.inputs"):
        jobs = collect_jobs([tmp_path / "b", tmp_path / "a"])
    assert [(j.slide_id, Path(j.path)) for j in jobs] == [("boxes", tmp_path / "a" / "boxes_0.dcm")]
    assert "lies in 2 folders" in caplog.text


# -- (d) two series in one folder ------------------------------------------------------------
def test_two_series_in_one_folder_give_two_jobs(series, tmp_path):
    _copy(series, tmp_path)
    other = _other_series(tmp_path)
    jobs = collect_jobs([tmp_path])
    assert [(j.slide_id, Path(j.path)) for j in jobs] == [
        ("boxes", tmp_path / "boxes_0.dcm"),
        ("other", other[0]),
    ]
    for job in jobs:  # and OpenSlide keeps them apart too
        with openslide.OpenSlide(job.path) as osr:
            assert osr.level_count == 2 and osr.dimensions == (
                (1024, 768) if job.slide_id == "boxes" else (384, 256)
            )


def test_uid_named_files_are_named_by_barcode_then_folder(tmp_path):
    def uid_named(folder: Path, **kw) -> list[Path]:
        paths = _other_series(folder, stem="tmp", **kw)
        return [
            p.rename(folder / f"{read_dicom_header(p).series_uid}.{k + 1}.dcm")
            for k, p in enumerate(paths)
        ]

    first = uid_named(tmp_path / "case_a", container_id="S24-1234 A1")
    assert [j.slide_id for j in collect_jobs([tmp_path / "case_a"])] == ["S24-1234_A1"]
    uid_named(tmp_path / "case_b", container_id="")
    assert [j.slide_id for j in collect_jobs([tmp_path / "case_b"])] == ["case_b"]
    # a rescan with the same barcode: both series fall back to their level-0 file's stem
    rescan = uid_named(tmp_path / "case_a", container_id="S24-1234 A1")
    jobs = collect_jobs([tmp_path / "case_a"])
    assert sorted(j.slide_id for j in jobs) == sorted([first[0].stem, rescan[0].stem])


# -- (e) files that are not a readable DICOM WSI stay jobs of their own ---------------------
def test_unreadable_dcm_stays_its_own_job(series, tmp_path):
    _copy(series, tmp_path)
    (tmp_path / "broken.dcm").write_bytes(b"this is not DICOM" * 10)
    (tmp_path / "cut.dcm").write_bytes(
        series[0].read_bytes()[:200]
    )  # truncated inside the file meta
    assert (
        read_dicom_header(tmp_path / "broken.dcm") is None
        and read_dicom_header(tmp_path / "cut.dcm") is None
    )
    jobs = collect_jobs([tmp_path])
    assert sorted(j.slide_id for j in jobs) == ["boxes", "broken", "cut"]
    with openslide.OpenSlide(
        str(tmp_path / "boxes_1.dcm")
    ) as osr:  # OpenSlide skips them beside the series
        assert osr.level_count == 2


def test_dicom_that_is_not_a_slide_stays_its_own_job(series, tmp_path):
    _copy(series, tmp_path)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(tmp_path / "photo.dcm", enforce_file_format=True)
    header = read_dicom_header(tmp_path / "photo.dcm")
    assert header is not None and not header.wsi
    assert sorted(j.slide_id for j in collect_jobs([tmp_path])) == ["boxes", "photo"]
    assert pydicom.dcmread(series[0], stop_before_pixels=True).SOPClassUID == WSI_SOP_CLASS_UID


# -- (f) the package's own slide API -----------------------------------------------------------
def test_open_slide_reads_the_series(series, image):
    with open_slide(series[1]) as slide:
        assert slide.dimensions == SIZE and slide.level_count == 2 and slide.vendor == "dicom"
        assert slide.mpp == pytest.approx(MPP) and slide.mpp_info.source == "openslide"
        tile = slide.read_box((256, 128, 512, 512), (256, 256))  # 2× down: from level 1
        assert tile.shape == (256, 256, 3) and tile.dtype == np.uint8
        expected = np.asarray(image[128:640, 256:768].reshape(256, 2, 256, 2, 3).mean(axis=(1, 3)))
        assert np.abs(tile.astype(np.float64) - expected).mean() < 8.0
        region = slide.read_region((100, 50), 0, (300, 200))
        assert (
            np.abs(region.astype(np.int16) - image[50:250, 100:400].astype(np.int16)).mean() < 3.0
        )
