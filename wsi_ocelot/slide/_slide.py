"""One public class, :class:`Slide`: an OpenSlide handle that knows its MPP and reads
any level-0 box at any target resolution.

Coordinates are level-0 pixels (x = column, y = row, origin top-left). Images are
``uint8`` arrays of shape ``(H, W, 3)``, RGB, composited on white.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import tifffile
from PIL import Image

from wsi_ocelot.errors import ConfigError, MppError, SlideFormatError, SlideNotFoundError
from wsi_ocelot.slide.tiff_reader import READERS, TiffLevelReader, open_tiff_reader

log = logging.getLogger(__name__)

#: What a user can pass to fix a missing MPP; used in every MPP error.
MPP_FIX = "pass --mpp X (µm per level-0 pixel, e.g. 0.25 for 40x, 0.5 for 20x), or an 'mpp' column in the manifest"

#: How the TIFF description of every slide ``wsi_ocelot.synthetic`` writes begins.
SYNTHETIC_DESCRIPTION = "wsi-ocelot synthetic H&E slide"

_MPP_RANGE = (0.02, 50.0)  # anything outside is metadata noise (e.g. 72 dpi defaults)

#: The level-0 µm/px a thumbnail assumes for a slide without MPP (opened for inspection).
PREVIEW_MPP = 0.25


@dataclass(frozen=True)
class MppInfo:
    """Microns per level-0 pixel and where the value came from.

    ``source`` is one of ``override``, ``openslide``, ``tiff-resolution``,
    ``objective-power``, or ``missing`` for a slide opened with ``require_mpp=False`` that
    has none: then ``x`` and ``y`` are NaN and ``problem`` / ``fix`` say why and what to do
    (:meth:`error` is the :class:`MppError` that opening it normally raises).
    """

    x: float
    y: float
    source: str
    problem: str | None = None
    fix: str | None = None

    @property
    def mean(self) -> float:
        return (self.x + self.y) / 2.0

    @property
    def missing(self) -> bool:
        """True when the slide has no usable MPP (opened with ``require_mpp=False``)."""
        return self.source == "missing"

    @classmethod
    def missing_because(cls, err: MppError) -> MppInfo:
        """The MPP of a slide whose resolution raised ``err``: missing, with its reason and fix."""
        return cls(math.nan, math.nan, "missing", err.problem, err.fix)

    def error(self, path: str | os.PathLike[str] | None) -> MppError:
        """The one-line :class:`MppError` of a missing MPP, naming ``path``."""
        return MppError(
            path,
            self.problem or "the slide has no microns-per-pixel in its metadata",
            self.fix or MPP_FIX,
        )


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _plausible(mpp: float | None) -> bool:
    return mpp is not None and _MPP_RANGE[0] <= mpp <= _MPP_RANGE[1]


def check_mpp(
    value: Any, where: str | os.PathLike[str] | None, what: str = "MPP override"
) -> float:
    """``value`` as a level-0 µm/px override, or :class:`MppError` naming ``where`` (a slide, a
    manifest line, or None for a flag): the one range for ``--mpp``, a manifest's ``mpp`` column
    and :func:`resolve_mpp`."""
    mpp = _float(value)
    if not _plausible(mpp):
        raise MppError(
            where,
            f"{what} {value!r} is not a µm/px value between {_MPP_RANGE[0]:g} and {_MPP_RANGE[1]:g}",
            "give the level-0 microns per pixel, e.g. 0.25 for 40x or 0.5 for 20x",
        )
    return mpp  # type: ignore[return-value]


def resolve_mpp(
    path: str | os.PathLike[str], properties: dict[str, str], override: float | None = None
) -> MppInfo:
    """Resolve level-0 MPP: override → ``openslide.mpp-x/y`` → TIFF resolution tags →
    objective power (with a warning) → :class:`MppError` naming the slide and the flag."""
    if override is not None:
        value = check_mpp(override, path)
        return MppInfo(value, value, "override")

    mx, my = _float(properties.get("openslide.mpp-x")), _float(properties.get("openslide.mpp-y"))
    if _plausible(mx):
        return MppInfo(mx, my if _plausible(my) else mx, "openslide")  # type: ignore[arg-type]

    unit = (properties.get("tiff.ResolutionUnit") or "").lower()
    factor = {"centimeter": 1e4, "inch": 25400.0, "millimeter": 1e3, "micrometer": 1.0}.get(unit)
    xres, yres = (
        _float(properties.get("tiff.XResolution")),
        _float(properties.get("tiff.YResolution")),
    )
    if factor and xres:
        tx = factor / xres
        ty = factor / yres if yres else tx
        if _plausible(tx):
            return MppInfo(tx, ty if _plausible(ty) else tx, "tiff-resolution")

    power = _float(properties.get("openslide.objective-power"))
    if power:
        guess = 10.0 / power
        log.warning(
            "%s: no MPP in the metadata; guessing %.3f µm/px from objective power %gx. Pass --mpp to be exact.",
            path,
            guess,
            power,
        )
        return MppInfo(guess, guess, "objective-power")

    raise MppError(
        path,
        "the slide has no microns-per-pixel in its metadata (no openslide.mpp-x, TIFF resolution or objective power)",
        MPP_FIX,
    )


#: What to do about a file that ends early; used in every truncation error.
TRUNCATED_FIX = (
    "the copy or download did not finish: copy the slide again and check that the transfer completed "
    "(the file's size should match the original's)"
)

_TIFF_BYTE_ORDER = {b"II": "<", b"MM": ">"}
_MAX_TIFF_DIRECTORIES = 100_000
_MAX_TIFF_TAGS = 4096  # more tags than this is not a directory (tifffile's limit too)


def _truncated(path: Path, size: int, what: str) -> SlideFormatError:
    return SlideFormatError(
        path, f"the file is truncated (incomplete): it is {size:,} bytes, but {what}", TRUNCATED_FIX
    )


class _Collect(logging.Filter):
    """Takes a logger's records off the terminal and keeps their text."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.messages.append(record.getMessage())
        return False


@contextmanager
def _quiet_tifffile(path: Path) -> Iterator[None]:
    """tifffile reports a malformed file on its own logger ("tifffile"), whose lines reach the
    terminal beside ours. While we probe a file we judge it ourselves and raise one line, so
    its messages go to our debug log instead."""
    tiff_log = logging.getLogger("tifffile")
    collect = _Collect()
    tiff_log.addFilter(collect)
    try:
        yield
    finally:
        tiff_log.removeFilter(collect)
        for message in collect.messages:
            log.debug("%s: tifffile: %s", path, message)


def _tiff_chain_truncation(path: Path, size: int) -> str | None:
    """Where the chain of image directories (IFDs) of a TIFF-based file runs past the file's
    end, in words; None when the file is not TIFF-based or its chain is whole.

    Reads only the header and each directory's tag count and next-directory offset. Scanners
    (Aperio's SVS among them) write the directories after the image data, so a copy cut short
    loses them first: tifffile then finds no pages and OpenSlide no slide, which looks like a
    renamed file. A chain that is malformed in another way (a loop, an absurd tag count) is
    not called truncated: OpenSlide judges it."""
    with open(path, "rb") as fh:
        head = fh.read(16)
        order = _TIFF_BYTE_ORDER.get(head[:2])
        if order is None or len(head) < 8:
            return None
        version = struct.unpack(order + "H", head[2:4])[0]
        if (
            version == 42
        ):  # classic TIFF; Hamamatsu NDPI keeps 64-bit next-directory offsets (read as tifffile does)
            ndpi = order == "<" and path.suffix.lower() == ".ndpi"
            first, count_fmt, tag_size, next_fmt = 4, "H", 12, "Q" if ndpi else "I"
        elif version == 43:  # BigTIFF
            first, count_fmt, tag_size, next_fmt = 8, "Q", 20, "Q"
        else:
            return None
        count_size, next_size = struct.calcsize(count_fmt), struct.calcsize(next_fmt)
        fh.seek(first)
        raw = fh.read(next_size)
        if len(raw) < next_size:
            return "its TIFF header is cut short"
        offset = struct.unpack(order + next_fmt, raw)[0]
        seen: set[int] = set()
        while offset and len(seen) < _MAX_TIFF_DIRECTORIES:
            if offset in seen:
                return None
            seen.add(offset)
            n = len(seen)
            if offset + count_size > size:
                return f"its TIFF directory {n} starts at byte {offset:,}"
            fh.seek(offset)
            count = struct.unpack(order + count_fmt, fh.read(count_size))[0]
            if count == 0 or count > _MAX_TIFF_TAGS:
                return None
            end = offset + count_size + count * tag_size + next_size
            if end > size:
                return f"its TIFF directory {n} runs to byte {end:,}"
            fh.seek(end - next_size)
            offset = struct.unpack(order + next_fmt, fh.read(next_size))[0]
    return None


def _check_tiff_chain(path: Path, size: int) -> None:
    """:func:`_tiff_chain_truncation` as the one-line error (a few small reads: cheap)."""
    try:
        cut = _tiff_chain_truncation(path, size)
    except (OSError, struct.error):  # unreadable: OpenSlide's open reports it
        cut = None
    if cut:
        raise _truncated(path, size, cut)


def _check_tiff_complete(path: Path) -> None:
    """For TIFF-based files, the chain of image directories and every tile/strip must lie
    inside the file (catches a copy cut short). tifffile's own complaints stay off the
    terminal (debug log)."""
    size = path.stat().st_size
    _check_tiff_chain(path, size)
    with _quiet_tifffile(path):
        try:
            with tifffile.TiffFile(path) as tif:
                for page in tif.pages:
                    offsets = getattr(page, "dataoffsets", ()) or ()
                    counts = getattr(page, "databytecounts", ()) or ()
                    if offsets and counts:
                        end = max(int(o) + int(c) for o, c in zip(offsets, counts, strict=False))
                        if end > size:
                            raise _truncated(path, size, f"its image data runs to byte {end:,}")
        except SlideFormatError:
            raise
        except Exception:  # not a TIFF tifffile understands (MRXS, some NDPI): OpenSlide decides
            return


class Slide:
    """A whole-slide image opened with OpenSlide, with a resolved MPP.

    Safe to send to tile-reader processes or Dask workers: pickling keeps the path
    and MPP, and each process opens its own handle on first use.

    ``reader`` picks the decoder of level regions: ``openslide`` (default, every format) or
    ``tifffile`` (tiled 8-bit RGB TIFF / SVS pyramids, the same pixels faster; requests it
    cannot answer exactly, and other formats, go through OpenSlide).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        mpp: float | None = None,
        reader: str = "openslide",
        *,
        require_mpp: bool = True,
    ):
        self.path = Path(path)
        self._mpp_override = mpp
        self._handle: Any = None
        self._pid: int | None = None
        if reader not in READERS:
            raise ConfigError(
                None, f"unknown slide reader {reader!r}", f"use one of {', '.join(READERS)}"
            )
        self.reader = reader
        self._tiff: TiffLevelReader | None = None
        self._tiff_pid: int | None = None
        _validate_path(self.path)
        osr = self._osr
        self.properties: dict[str, str] = dict(osr.properties)
        self.level_count: int = osr.level_count
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(osr.level_dimensions)
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in osr.level_downsamples)
        try:
            self.mpp_info = resolve_mpp(self.path, self.properties, mpp)
        except MppError as err:
            if require_mpp or mpp is not None:  # a bad --mpp is always an error
                raise
            self.mpp_info = MppInfo.missing_because(err)
        self._probe()

    # -- handle management -------------------------------------------------------------
    @property
    def _osr(self) -> Any:
        if self._handle is None or self._pid != os.getpid():
            try:
                self._handle = openslide.OpenSlide(str(self.path))
            except openslide.OpenSlideUnsupportedFormatError as err:
                raise SlideFormatError(
                    self.path,
                    "not a slide format OpenSlide can read",
                    "pass a whole-slide image (.svs, .tif/.tiff, .ndpi, .mrxs, .scn, ...); check the file is not renamed",
                ) from err
            except openslide.OpenSlideError as err:
                raise SlideFormatError(
                    self.path,
                    f"OpenSlide cannot read the file ({err})",
                    "the file is corrupt or truncated; copy or download it again",
                ) from err
            self._pid = os.getpid()
        return self._handle

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        state["_tiff"] = None
        state["_tiff_pid"] = None
        return state

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None
        if self._tiff is not None and self._tiff_pid == os.getpid():
            self._tiff.close()
        self._tiff = None

    def _drop_handle(self) -> None:
        """Forget this process's OpenSlide handle; the next read opens a fresh one."""
        handle, self._handle = self._handle, None
        if handle is not None and self._pid == os.getpid():
            try:
                handle.close()
            except Exception:  # noqa: BLE001 - a handle in OpenSlide's error state may refuse to close
                pass

    @property
    def _tiff_reader(self) -> TiffLevelReader | None:
        """This process's tifffile reader (``reader="tifffile"`` only; None where unusable)."""
        if self.reader != "tifffile":
            return None
        if self._tiff_pid != os.getpid():
            self._tiff = open_tiff_reader(self.path, self.level_dimensions)
            self._tiff_pid = os.getpid()
        return self._tiff

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        mpp = "missing" if self.mpp_info.missing else f"{self.mpp:.4f} [{self.mpp_info.source}]"
        return f"Slide({str(self.path)!r}, {w}x{h}, mpp={mpp}, levels={self.level_count})"

    def _probe(self) -> None:
        """Read the smallest level once so a corrupt file fails at open, not mid-run."""
        level = self.level_count - 1
        w, h = self.level_dimensions[level]
        if w * h > 16_000_000:  # a huge single-level file: probe a corner only
            w, h = min(w, 512), min(h, 512)
        self.read_region((0, 0), level, (w, h))

    # -- metadata ------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def mpp(self) -> float:
        """Level-0 µm/px (mean of x and y). Raises :class:`MppError` for a slide opened with
        ``require_mpp=False`` that has none."""
        if self.mpp_info.missing:
            raise self.mpp_info.error(self.path)
        return self.mpp_info.mean

    @property
    def vendor(self) -> str:
        return self.properties.get("openslide.vendor", "unknown")

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """``openslide.bounds-x/y/width/height`` (level-0 px), or the full image.
        QuPath's frame starts at ``bounds[:2]``."""
        w, h = self.dimensions
        p = self.properties
        try:
            return (
                int(p.get("openslide.bounds-x", 0)),
                int(p.get("openslide.bounds-y", 0)),
                int(p.get("openslide.bounds-width", w)),
                int(p.get("openslide.bounds-height", h)),
            )
        except ValueError:
            return (0, 0, w, h)

    @property
    def is_synthetic(self) -> bool:
        """True for a slide written by ``wsi_ocelot.synthetic`` (its TIFF description says so)."""
        return self.properties.get("tiff.ImageDescription", "").startswith(SYNTHETIC_DESCRIPTION)

    @property
    def stem(self) -> str:
        return (
            self.path.stem if self.path.suffix.lower() not in {".gz"} else Path(self.path.stem).stem
        )

    # -- reading -------------------------------------------------------------------------
    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """OpenSlide's ``read_region`` composited on white: ``(size[1], size[0], 3)`` uint8.

        ``location`` is level-0 px; out-of-slide areas come back white. With
        ``reader="tifffile"`` the region is decoded by tifffile where it can give the same
        pixels, else by OpenSlide."""
        fast = self._tiff_reader
        if fast is not None:
            try:
                region = fast.read(
                    (int(location[0]), int(location[1])),
                    int(level),
                    (int(size[0]), int(size[1])),
                    self.level_downsamples[int(level)],
                )
            except Exception as err:  # noqa: BLE001 - a tile tifffile cannot decode: OpenSlide decides
                log.debug(
                    "%s: tifffile failed at level %d, %s (%s); reading with OpenSlide",
                    self.path,
                    level,
                    location,
                    err,
                )
                region = None
            if region is not None:
                return region
        try:
            rgba = self._osr.read_region(
                (int(location[0]), int(location[1])), int(level), (int(size[0]), int(size[1]))
            )
        except openslide.OpenSlideError as err:
            self._drop_handle()  # OpenSlide's errors are sticky: every later read of this handle fails too
            raise SlideFormatError(
                self.path,
                f"reading failed at level {level}, {location} ({err})",
                "the file is corrupt or truncated; copy or download it again",
            ) from err
        return _composite_white(rgba)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The level with the largest downsample that is still ≤ ``downsample`` (never
        upsample from a coarse level when a finer one exists)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-6):
                best = i
        return best

    def read_box(self, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
        """Read the level-0 box ``(x, y, w, h)`` resized to ``size = (out_w, out_h)``.

        Reads from the best pyramid level and resamples with antialiasing; areas outside
        the slide are white. Returns ``(out_h, out_w, 3)`` uint8."""
        level, (x0, y0, lw, lh, fx, fy) = self._window(box, size)
        return self._resample(self.read_region((x0, y0), level, (lw, lh)), box, size, level, fx, fy)

    def read_boxes(
        self, boxes: np.ndarray, size: tuple[int, int], *, union: bool | None = None
    ) -> np.ndarray:
        """Read level-0 boxes ``(N, 4)`` resized to ``size``: ``(N, out_h, out_w, 3)`` uint8,
        each equal to :meth:`read_box` of that box.

        With the tifffile reader, boxes that share a pyramid level and start on whole pixels of
        it (integer boxes at level 0 always do) are cut from one region read over their union,
        so pixels shared by overlapping boxes are decoded once; the caller keeps the union
        small (a block of neighbouring tiles). OpenSlide reads them one by one: its own cache
        of decoded tiles already serves the overlap, and it paints a large region more slowly
        per pixel than a tile-sized one (``benchmarks/results/host.md``: one by one 1.04×
        the decode-once floor, by blocks 1.28×). ``union`` forces either way (None: the
        reader decides)."""
        boxes = np.asarray(boxes).reshape(-1, 4)
        out_w, out_h = int(size[0]), int(size[1])
        out = np.empty((len(boxes), out_h, out_w, 3), np.uint8)
        use_union = self._tiff_reader is not None if union is None else union
        if not (use_union and len(boxes) > 1 and self._cut_from_union(boxes, size, out)):
            for k, b in enumerate(boxes):
                out[k] = self.read_box(tuple(b), size)
        return out

    def _cut_from_union(self, boxes: np.ndarray, size: tuple[int, int], out: np.ndarray) -> bool:
        """Fill ``out`` with the boxes cut from one region read over their union; False (and
        nothing read) when they do not share a level or do not start on whole level pixels
        (OpenSlide's output at a fractional level position depends on the region read)."""
        wins = [self._window(b, size) for b in boxes]
        level = wins[0][0]
        d = self.level_downsamples[level]
        x0s = np.array([w[1][0] for w in wins], np.int64)
        y0s = np.array([w[1][1] for w in wins], np.int64)
        whole = np.concatenate([x0s / d, y0s / d])
        if any(w[0] != level for w in wins) or not np.allclose(
            whole, np.round(whole), rtol=0, atol=1e-9
        ):
            return False
        ux, uy = int(x0s.min()), int(y0s.min())
        ox, oy = (
            np.round((x0s - ux) / d).astype(np.int64),
            np.round((y0s - uy) / d).astype(np.int64),
        )  # starts in the union
        uw = int(max(ox[k] + wins[k][1][2] for k in range(len(boxes))))
        uh = int(max(oy[k] + wins[k][1][3] for k in range(len(boxes))))
        region = self.read_region((ux, uy), level, (uw, uh))
        for k, (b, (_, (_, _, lw, lh, fx, fy))) in enumerate(zip(boxes, wins, strict=True)):
            out[k] = self._resample(
                np.ascontiguousarray(region[oy[k] : oy[k] + lh, ox[k] : ox[k] + lw]),
                tuple(b),
                size,
                level,
                fx,
                fy,
            )
        return True

    def _window(
        self, box: tuple[float, float, float, float], size: tuple[int, int]
    ) -> tuple[int, tuple[int, int, int, int, float, float]]:
        """The pyramid level ``read_box`` reads a box from, and the level region
        ``(x0, y0, lw, lh, fx, fy)``: integer level-0 start, size in level px, sub-pixel
        start inside it (level px)."""
        x, y, w, h = (float(v) for v in box)
        out_w, out_h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0 or out_w <= 0 or out_h <= 0:
            raise ValueError(f"empty box {box} or size {size}")
        level = self.best_level_for_downsample(min(w / out_w, h / out_h))
        d = self.level_downsamples[level]
        x0, y0 = math.floor(x), math.floor(y)
        fx, fy = (x - x0) / d, (y - y0) / d
        return level, (x0, y0, max(1, math.ceil(fx + w / d)), max(1, math.ceil(fy + h / d)), fx, fy)

    def _resample(
        self,
        region: np.ndarray,
        box: tuple[float, float, float, float],
        size: tuple[int, int],
        level: int,
        fx: float,
        fy: float,
    ) -> np.ndarray:
        """A level region resized to ``size`` (bilinear with antialiasing), or as is when it
        already is the box at that size."""
        w, h = float(box[2]), float(box[3])
        out_w, out_h = int(size[0]), int(size[1])
        d = self.level_downsamples[level]
        lh, lw = region.shape[:2]
        if (
            lw == out_w
            and lh == out_h
            and fx == 0
            and fy == 0
            and abs(w / d - out_w) < 1e-9
            and abs(h / d - out_h) < 1e-9
        ):
            return region
        im = Image.fromarray(region)
        im = im.resize(
            (out_w, out_h), Image.Resampling.BILINEAR, box=(fx, fy, fx + w / d, fy + h / d)
        )
        return np.asarray(im)

    def read_at_mpp(self, box: tuple[float, float, float, float], target_mpp: float) -> np.ndarray:
        """Read the level-0 box at ``target_mpp`` µm/px (output size = box size × mpp / target)."""
        x, y, w, h = box
        scale = self.mpp / target_mpp
        return self.read_box(box, (max(1, round(w * scale)), max(1, round(h * scale))))

    def thumbnail(self, mpp: float = 8.0, max_size: int = 4096) -> tuple[np.ndarray, float]:
        """The whole slide at about ``mpp`` µm/px (capped at ``max_size`` on the long
        side). Returns ``(image, downsample)`` with ``downsample`` = level-0 px per
        thumbnail px. A slide without MPP (``require_mpp=False``) is taken as
        :data:`PREVIEW_MPP` µm/px here (the finest common scan: the thumbnail is not coarser
        than asked)."""
        w, h = self.dimensions
        level0_mpp = PREVIEW_MPP if self.mpp_info.missing else self.mpp
        ds = max(mpp / level0_mpp, max(w, h) / max_size, 1.0)
        tw, th = max(1, round(w / ds)), max(1, round(h / ds))
        img = self.read_box((0, 0, w, h), (tw, th))
        return img, w / tw


def _composite_white(rgba: Image.Image) -> np.ndarray:
    """OpenSlide's RGBA region (straight alpha: transparent where nothing was scanned) on
    white, as RGB. Pillow's ``alpha_composite`` gives exactly ``round((c·a + 255·(255 − a)) / 255)``
    (checked for every value and alpha in ``tests/test_slide.py``) several times faster than
    NumPy in uint16. The array is the caller's (writable)."""
    if rgba.mode != "RGBA":
        return np.array(rgba.convert("RGB"))
    lo, _ = rgba.getchannel("A").getextrema()
    if lo == 255:  # opaque: most of a scanned slide
        return np.array(rgba.convert("RGB"))
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.array(Image.alpha_composite(white, rgba).convert("RGB"))


def _check_file(path: Path) -> int | None:
    """The file exists, is not a folder (but a MIRAX data folder beside its ``.mrxs``), is not
    empty and can be read; returns its size (None for the MIRAX folder)."""
    if not path.exists():
        raise SlideNotFoundError(
            path, "no such file", "check the path (and that the drive or share is mounted)"
        )
    if path.is_dir():
        if any(p.suffix.lower() == ".mrxs" for p in path.parent.glob(path.name + ".mrxs")):
            return None
        raise SlideNotFoundError(
            path,
            "is a directory, not a slide file",
            "pass the slide file itself; `wsi-ocelot run` takes folders and searches them",
        )
    size = path.stat().st_size
    if size == 0:
        raise SlideFormatError(
            path, "the file is empty (0 bytes)", "copy or download the slide again"
        )
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as err:
        raise SlideNotFoundError(
            path, f"cannot read the file ({err.strerror})", "check the file permissions"
        ) from err
    return size


def _validate_path(path: Path) -> None:
    if _check_file(path) is not None:
        _check_tiff_complete(path)


def check_slide_file(path: str | os.PathLike[str]) -> None:
    """The cheap checks of an input before a batch starts (no pixels read, no MPP needed): the
    file exists, is readable and non-empty, is not cut short, and OpenSlide recognises its
    format. Raises the same one-line errors as :func:`open_slide` (:class:`SlideNotFoundError`,
    :class:`SlideFormatError`); damage inside a recognised slide is found when it runs."""
    path = Path(path)
    size = _check_file(path)
    if size is None:
        return
    _check_tiff_chain(
        path, size
    )  # a TIFF cut short is not recognised either: say it is truncated, not renamed
    if openslide.OpenSlide.detect_format(str(path)) is None:
        raise SlideFormatError(
            path,
            "not a slide format OpenSlide can read",
            "pass a whole-slide image (.svs, .tif/.tiff, .ndpi, .mrxs, .scn, .dcm, ...)",
        )


def open_slide(
    path: str | os.PathLike[str],
    mpp: float | None = None,
    reader: str = "openslide",
    *,
    require_mpp: bool = True,
) -> Slide:
    """Open a whole-slide image.

    Parameters
    ----------
    path
        Any file OpenSlide reads (.svs, .tif/.tiff, .ndpi, .mrxs, .scn, ...).
    mpp
        µm per level-0 pixel, overriding the metadata (needed when the file has none).
    reader
        ``"openslide"`` (default, every format) or ``"tifffile"`` (tiled TIFF / SVS decoded
        with tifffile: the same pixels, faster).
    require_mpp
        True (default): a slide whose MPP cannot be resolved raises :class:`MppError`.
        False opens it for inspection (``wsi-ocelot info``): ``.mpp_info.missing`` is then
        True with the reason in ``.mpp_info.problem``, ``.mpp`` and every read at an MPP
        raise the same :class:`MppError`, and everything else works. An invalid ``mpp``
        override raises either way.

    Returns
    -------
    Slide
        With ``.mpp``, ``.dimensions``, ``.read_box(box, size)``, ``.read_at_mpp(box, mpp)``,
        ``.thumbnail()``; a context manager.

    Examples
    --------
    >>> with open_slide("CMU-1-Small-Region.svs") as s:      # doctest: +SKIP
    ...     tile = s.read_at_mpp((0, 0, 2048, 2048), 0.5)   # (1024, 1024, 3) uint8
    """
    return Slide(path, mpp=mpp, reader=reader, require_mpp=require_mpp)
