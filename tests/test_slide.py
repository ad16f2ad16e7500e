from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
from helpers import run_cli

from wsi_ocelot.errors import MppError, SlideFormatError, SlideNotFoundError
from wsi_ocelot.slide import open_slide, resolve_mpp
from wsi_ocelot.slide.mask import tissue_mask_from_image
from wsi_ocelot.synthetic.tiff import write_pyramidal_tiff


# -- MPP resolution order ------------------------------------------------------------------
def test_mpp_override_wins():
    info = resolve_mpp(
        "s.svs", {"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.25"}, override=0.5
    )
    assert (info.x, info.source) == (0.5, "override")


def test_mpp_from_openslide_then_tiff_then_objective(caplog):
    assert (
        resolve_mpp(
            "s",
            {
                "openslide.mpp-x": "0.24",
                "openslide.mpp-y": "0.26",
                "tiff.XResolution": "1000",
                "tiff.ResolutionUnit": "centimeter",
            },
        ).source
        == "openslide"
    )
    info = resolve_mpp(
        "s",
        {
            "tiff.XResolution": "40000",
            "tiff.YResolution": "40000",
            "tiff.ResolutionUnit": "centimeter",
            "openslide.objective-power": "20",
        },
    )
    assert info.source == "tiff-resolution" and info.x == pytest.approx(0.25)
    inch = resolve_mpp("s", {"tiff.XResolution": "101600", "tiff.ResolutionUnit": "inch"})
    assert inch.x == pytest.approx(0.25)
    with caplog.at_level(logging.WARNING):
        obj = resolve_mpp(
            "s.svs",
            {
                "tiff.XResolution": "72",
                "tiff.ResolutionUnit": "inch",
                "openslide.objective-power": "40",
            },
        )
    assert obj.source == "objective-power" and obj.x == pytest.approx(0.25)
    assert "objective power" in caplog.text and "--mpp" in caplog.text


def test_mpp_missing_is_an_error_naming_slide_and_flag():
    with pytest.raises(MppError) as err:
        resolve_mpp("/data/s1.tiff", {})
    msg = str(err.value)
    assert "/data/s1.tiff" in msg and "--mpp" in msg and "\n" not in msg


@pytest.mark.parametrize("bad", [0, -1, float("nan"), 1e6])
def test_mpp_override_invalid(bad):
    with pytest.raises(MppError):
        resolve_mpp("s", {}, override=bad)


# -- reading --------------------------------------------------------------------------------
def test_read_box_level0_exact(pattern_slide):
    s = open_slide(pattern_slide)
    ref = s.read_region((0, 0), 0, s.dimensions)
    out = s.read_box((100, 200, 300, 150), (300, 150))
    assert np.array_equal(out, ref[200:350, 100:400])


def test_read_box_pads_white_outside(pattern_slide):
    s = open_slide(pattern_slide)
    w, h = s.dimensions
    out = s.read_box((-100, -50, 200, 100), (200, 100))
    assert out.shape == (100, 200, 3)
    assert (out[:50] == 255).all() and (out[:, :100] == 255).all()
    ref = s.read_region((0, 0), 0, (100, 50))
    assert np.array_equal(out[50:, 100:], ref)
    far = s.read_box((w + 10, h + 10, 64, 64), (32, 32))
    assert far.shape == (32, 32, 3) and (far == 255).all()


def test_best_level_never_upsamples(pattern_slide):
    s = open_slide(pattern_slide)
    assert s.level_downsamples[:3] == (1.0, 2.0, 4.0)
    assert s.best_level_for_downsample(1.0) == 0
    assert s.best_level_for_downsample(1.9) == 0
    assert s.best_level_for_downsample(2.0) == 1
    assert s.best_level_for_downsample(3.99) == 1
    assert s.best_level_for_downsample(4.0) == 2


def test_read_at_other_mpp_matches_resized_level0(pattern_slide):
    from PIL import Image

    s = open_slide(pattern_slide)
    box = (256, 256, 800, 800)
    out = s.read_at_mpp(box, 1.0)  # 4x coarser, read from level 2
    assert out.shape == (200, 200, 3)
    ref = np.asarray(
        Image.fromarray(s.read_region((256, 256), 0, (800, 800))).resize(
            (200, 200), Image.Resampling.BOX
        )
    )
    # level 2 is a box-filtered pyramid of level 0: same content up to resampling noise
    assert np.abs(out.astype(int) - ref).mean() < 6
    up = s.read_at_mpp((256, 256, 100, 100), 0.125)  # upsampling from level 0
    assert up.shape == (200, 200, 3)


def test_transparent_regions_composite_on_white_exactly():
    """OpenSlide gives straight RGBA, transparent where nothing was scanned: on white, every
    (value, alpha) pair is round((c·a + 255·(255 − a)) / 255), and the array is writable."""
    from PIL import Image

    from wsi_ocelot.slide._slide import _composite_white

    a, c = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    rgba = np.stack([c, 255 - c, (c * 7) % 256, a], axis=-1).astype(np.uint8)
    out = _composite_white(Image.fromarray(rgba, "RGBA"))
    rgb, alpha = rgba[..., :3].astype(np.int64), a[..., None]
    expected = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    np.testing.assert_array_equal(out, expected)
    assert out.flags.writeable
    opaque = rgba.copy()
    opaque[..., 3] = 255
    np.testing.assert_array_equal(
        _composite_white(Image.fromarray(opaque, "RGBA")), opaque[..., :3]
    )


def test_thumbnail_and_repr(pattern_slide):
    s = open_slide(pattern_slide)
    img, ds = s.thumbnail(mpp=2.0)
    assert img.shape[1] == round(s.dimensions[0] / 8) and ds == pytest.approx(
        s.dimensions[0] / img.shape[1]
    )
    assert "mpp=0.2500" in repr(s)


def test_slide_pickles_and_reopens(pattern_slide):
    s = open_slide(pattern_slide)
    a = s.read_box((10, 10, 64, 64), (64, 64))
    t = pickle.loads(pickle.dumps(s))
    assert t._handle is None
    assert np.array_equal(t.read_box((10, 10, 64, 64), (64, 64)), a)


# -- bad files ------------------------------------------------------------------------------
def test_missing_and_directory(tmp_path):
    with pytest.raises(SlideNotFoundError, match="no such file"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(SlideNotFoundError, match="directory"):
        open_slide(tmp_path)
    assert issubclass(SlideNotFoundError, FileNotFoundError)


def test_empty_text_and_truncated(tmp_path, pattern_slide):
    (tmp_path / "zero.svs").write_bytes(b"")
    with pytest.raises(SlideFormatError, match="empty"):
        open_slide(tmp_path / "zero.svs")
    (tmp_path / "notes.tiff").write_text("not a slide\n")
    with pytest.raises(SlideFormatError, match="OpenSlide"):
        open_slide(tmp_path / "notes.tiff")
    data = pattern_slide.read_bytes()
    (tmp_path / "cut.tiff").write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideFormatError, match="truncated"):
        open_slide(tmp_path / "cut.tiff")


def test_no_mpp_then_override(tmp_path):
    p = tmp_path / "nompp.tiff"
    write_pyramidal_tiff(p, np.full((300, 300, 3), 200, np.uint8), None)
    with pytest.raises(MppError, match="--mpp"):
        open_slide(p)
    assert open_slide(p, mpp=0.3).mpp == pytest.approx(0.3)


# -- tissue mask ----------------------------------------------------------------------------
def _he_canvas(h=200, w=300):
    img = np.full((h, w, 3), 245, np.uint8)
    rng = np.random.default_rng(0)
    img += rng.integers(0, 6, img.shape, dtype=np.uint8)
    return img


def test_mask_white_glass_is_empty():
    m = tissue_mask_from_image(_he_canvas(), 16.0)
    assert m.fraction == 0.0


def test_mask_finds_tissue_and_ignores_pen_and_black_border():
    img = _he_canvas()
    yy, xx = np.mgrid[0:200, 0:300]
    blob = (yy - 100) ** 2 + (xx - 120) ** 2 < 60**2
    img[blob] = (215, 130, 185)  # pink H&E
    img[20:26, 200:290] = (30, 90, 200)  # blue pen stroke
    img[:, 292:] = 0  # black scan border
    m = tissue_mask_from_image(img, 16.0)
    assert abs(m.mask.sum() - blob.sum()) / blob.sum() < 0.1
    assert not m.mask[20:26, 210:280].any()
    assert not m.mask[:, 293:].any()
    assert m.touches((120 * 16, 100 * 16, 16, 16)) and not m.touches((280 * 16, 180 * 16, 64, 64))


def test_mask_on_real_slide(cmu_slide):
    from wsi_ocelot.slide import tissue_mask

    m = tissue_mask(open_slide(cmu_slide))
    assert 0.2 < m.fraction < 0.6


# -- a copy cut short (issue 19: "a truncated SVS is diagnosed as 'renamed?'") ----------------
def _write_tiff_directories_last(path, img: np.ndarray, mpp: float = 0.5, tile: int = 256) -> None:
    """A tiled, uncompressed RGB TIFF laid out as Aperio lays out an SVS: the image data first,
    the image directory (IFD) at the end of the file, so a copy cut short loses the directory."""
    import struct

    h, w = img.shape[:2]
    body = bytearray(
        b"II*\0\0\0\0\0"
    )  # classic little-endian TIFF; the first-IFD offset is patched below
    offsets, counts = [], []
    for r in range(0, h, tile):
        for c in range(0, w, tile):
            t = np.full((tile, tile, 3), 255, np.uint8)
            part = img[r : r + tile, c : c + tile]
            t[: part.shape[0], : part.shape[1]] = part
            offsets.append(len(body))
            counts.append(t.nbytes)
            body += t.tobytes()

    def put(data: bytes) -> int:
        body.extend(b"\0" * (len(body) % 2))
        at = len(body)
        body.extend(data)
        return at

    ppcm = round(1e4 / mpp)
    bps, xres, yres = (
        put(struct.pack("<3H", 8, 8, 8)),
        put(struct.pack("<2I", ppcm, 1)),
        put(struct.pack("<2I", ppcm, 1)),
    )
    n = len(offsets)
    toff = put(struct.pack(f"<{n}I", *offsets)) if n > 1 else offsets[0]
    tcnt = put(struct.pack(f"<{n}I", *counts)) if n > 1 else counts[0]
    short, long_, rational = 3, 4, 5
    tags = [
        (256, long_, 1, w),
        (257, long_, 1, h),
        (258, short, 3, bps),
        (259, short, 1, 1),
        (262, short, 1, 2),
        (277, short, 1, 3),
        (282, rational, 1, xres),
        (283, rational, 1, yres),
        (284, short, 1, 1),
        (296, short, 1, 3),
        (322, short, 1, tile),
        (323, short, 1, tile),
        (324, long_, n, toff),
        (325, long_, n, tcnt),
    ]
    ifd = put(struct.pack("<H", len(tags)))
    for code, kind, count, value in tags:
        value_bytes = (
            struct.pack("<HH", value, 0)
            if kind == short and count == 1
            else struct.pack("<I", value)
        )
        body += struct.pack("<HHI", code, kind, count) + value_bytes
    body += struct.pack("<I", 0)
    body[4:8] = struct.pack("<I", ifd)
    path.write_bytes(bytes(body))


def _assert_truncated_quietly(path, caplog) -> None:
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(SlideFormatError) as err:
            open_slide(path)
    msg = str(err.value)
    assert (
        "truncated" in msg
        and "renamed" not in msg
        and str(path) in msg
        and "copy the slide again" in msg
        and "\n" not in msg
    )
    # tifffile's own complaint ("invalid offset to first page ...") is no longer on the terminal
    assert not [r for r in caplog.records if r.name == "tifffile" and r.levelno >= logging.WARNING]
    from wsi_ocelot.slide import check_slide_file

    with pytest.raises(
        SlideFormatError, match="truncated"
    ):  # the batch's cheap pre-check says the same
        check_slide_file(path)


def test_truncated_tiff_with_directories_last(tmp_path, caplog):
    # Fails on the old code: "not a slide format OpenSlide can read ... check the file is not
    # renamed", and tifffile's "invalid offset to first page" line reached the terminal.
    whole = tmp_path / "whole.tiff"
    yy, xx = np.mgrid[0:600, 0:700]
    img = np.stack([(xx * 7 // 13) % 256, (yy * 5 // 11) % 256, ((xx + yy) // 9) % 256], -1).astype(
        np.uint8
    )
    _write_tiff_directories_last(whole, img)
    assert np.array_equal(
        open_slide(whole).read_region((0, 0), 0, (700, 600)), img
    )  # a valid slide when whole
    data = whole.read_bytes()
    for frac in (0.5, 0.99):
        cut = tmp_path / f"cut{frac}.tiff"
        cut.write_bytes(data[: int(len(data) * frac)])
        _assert_truncated_quietly(cut, caplog)


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_truncated_tiff_cli_says_so_in_one_line(tmp_path):
    # Fails on the old code: two lines on stderr (tifffile's and ours), the second saying "renamed".

    whole = tmp_path / "whole.tiff"
    _write_tiff_directories_last(whole, np.full((300, 300, 3), (215, 130, 185), np.uint8))
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(whole.read_bytes()[:100_000])
    proc = run_cli("info", str(cut), timeout=300)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "truncated" in lines[0] and "Fix:" in lines[0], proc.stderr


@pytest.mark.real_slides
@pytest.mark.parametrize("frac", [0.5, 0.9, 0.01])
def test_truncated_svs_is_named_truncated(cmu_slide, tmp_path, caplog, frac):
    # Fails on the old code (issue 19): a cut CMU-1-Small-Region.svs was "not a slide format
    # OpenSlide can read ... check the file is not renamed", plus a stray tifffile line.
    data = cmu_slide.read_bytes()
    cut = tmp_path / "trunc.svs"
    cut.write_bytes(data[: int(len(data) * frac)])
    _assert_truncated_quietly(cut, caplog)


def test_tiff_chain_check_passes_whole_files(pattern_slide, synth_05):
    from wsi_ocelot.slide._slide import _tiff_chain_truncation

    for p in (pattern_slide, synth_05):
        assert _tiff_chain_truncation(p, p.stat().st_size) is None


# -- opening a slide without MPP for inspection (issue 19: "`info` refuses a slide without MPP") --
def test_open_without_mpp_for_inspection(tmp_path):
    # Fails on the old code: open_slide had no require_mpp and raised MppError.
    p = tmp_path / "nompp.tiff"
    write_pyramidal_tiff(p, np.full((300, 300, 3), (215, 130, 185), np.uint8), None)
    with open_slide(p, require_mpp=False) as s:
        assert s.mpp_info.missing and s.mpp_info.source == "missing"
        assert "microns-per-pixel" in s.mpp_info.problem and "--mpp" in s.mpp_info.fix
        assert s.dimensions == (300, 300) and "mpp=missing" in repr(s)
        img, ds = s.thumbnail()  # everything that needs no MPP still works
        assert img.ndim == 3 and ds >= 1
        with pytest.raises(
            MppError, match="--mpp"
        ) as err:  # what needs it says so, in the usual one line
            _ = s.mpp
        assert str(p) in str(err.value)
        with pytest.raises(MppError):
            s.read_at_mpp((0, 0, 100, 100), 1.0)
        s2 = pickle.loads(pickle.dumps(s))
        assert s2.mpp_info.missing
    with pytest.raises(
        MppError, match="not a µm/px value|invalid"
    ):  # a bad override is an error either way
        open_slide(p, mpp=-1, require_mpp=False)
    assert not open_slide(p, mpp=0.3, require_mpp=False).mpp_info.missing
