"""A torch Dataset for data in the OCELOT release layout.

::

    ROOT/metadata.json                              sample_pairs: {id: {patch_x_offset, ...}}
    ROOT/images/{split}/cell/NNN.jpg                cell patch (x_s), cell-MPP px
    ROOT/images/{split}/tissue/NNN.jpg              tissue patch (x_l), tissue-MPP px
    ROOT/annotations/{split}/cell/NNN.csv           "x,y,class" lines, no header, may be empty
    ROOT/annotations/{split}/tissue/NNN.png         1 = BG, 2 = CA, 255 = unknown
    ROOT/annotations/{split}/cell_mask/NNN.png      optional: 1 where every cell is marked, 0 unknown

Partial labels: a pair with a ``cell_mask`` (a dataset built from annotated regions) is
labelled only inside it. The mask is read with the pair, cropped, resized (nearest) and
flipped/rotated with the cell image, and the disk target is
:data:`~training.targets.CELL_IGNORE` outside it, so the loss neither rewards nor punishes what
the model predicts there; items also carry the mask (``cell_mask``) for the validation metric,
which drops predictions outside it (:func:`wsi_ocelot.metrics.evaluate`'s ``masks``).

The tissue patch covers ``context_factor`` (4) × the cell patch's field of view and the
cell patch's centre lies at ``(patch_x_offset, patch_y_offset)`` of it, so the cell patch
is the tissue region ``[ox·S - S/8, ox·S + S/8)`` (S = tissue size, factor 4), upsampled.
Cell and tissue images must have the same size in pixels (1024 in the release).

Tile-size reduction (``tile_size`` T, for CPU budgets) comes in two exact modes:

``crop`` (default; keeps the resolution, i.e. the MPPs)
    A T×T crop of the cell image at a top-left corner that is a multiple of the context
    factor (so its footprint starts on a whole tissue pixel), and a T×T crop of the
    tissue image that contains the footprint of that cell crop (T/4 tissue px). The
    tissue crop therefore again covers 4× the cell crop's field of view, the scale the
    model assumes, and the offset is recomputed exactly:
    ``new_ox = (footprint_centre_x - tissue_crop_x0) / T``. Points are shifted by the
    crop corner and those outside it dropped; the tissue label is cropped with the image.
    Training crops are random (cell corner and tissue corner); evaluation crops are
    deterministic (centred cell crop, tissue crop centred on its footprint as far as the
    image allows).
``resize``
    Both images are resized to T×T (antialiased bilinear; the tissue label by nearest
    neighbour). The offset is unchanged, points scale as ``x' = (x + 0.5)·T/S - 0.5``,
    and the effective MPPs grow by S/T (recorded in the checkpoint geometry).

Every problem with the files raises :class:`~wsi_ocelot.errors.DatasetError` naming the
file, the problem and the fix.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from training.augment import (
    IDENTITY_JITTER,
    IDENTITY_STAIN,
    AugmentConfig,
    PairSample,
    footprint,
    random_augment,
    random_augment_geometry,
)
from training.targets import disk_targets, mask_cell_target
from wsi_ocelot.datasets.ocelot import (  # noqa: E402,F401  (re-exported: the readers live in the package)
    _LAYOUT_FIX,
    CELL_CLASSES,
    SPLITS,
    TISSUE_VALUES,
    PairRecord,
    list_pairs,
    read_cell_csv,
    read_cell_mask,
    read_metadata,
    read_rgb,
    read_tissue_png,
)
from wsi_ocelot.errors import DatasetError

log = logging.getLogger(__name__)
TILE_MODES = ("crop", "resize")
#: Decoded pairs (uint8) per (root, split, metadata stamp, resize size): see OcelotDataset.
_SHARED_CACHE: dict[tuple[Any, ...], dict[int, PairSample]] = {}


def _shared_cache(key: tuple[Any, ...]) -> dict[int, PairSample]:
    return _SHARED_CACHE.setdefault(key, {})


def clear_cache() -> None:
    """Drop every cached pair of this process."""
    _SHARED_CACHE.clear()


@dataclass(frozen=True)
class CropBox:
    """Top-left corners of a ``size``×``size`` cell crop and tissue crop (pixels of each image)."""

    cell_x0: int
    cell_y0: int
    tissue_x0: int
    tissue_y0: int
    size: int


def _tissue_range(fp0: float, fp_w: float, size: int, image: int) -> tuple[int, int]:
    """Integer tissue-crop corners in ``[lo, hi]`` whose crop contains ``[fp0, fp0 + fp_w]``."""
    lo = max(0, math.ceil(fp0 + fp_w - size - 1e-9))
    hi = min(image - size, math.floor(fp0 + 1e-9))
    if lo > hi:  # footprint not inside the image (inconsistent offset): centre on it, clamped
        c = min(max(round(fp0 + fp_w / 2 - size / 2), 0), image - size)
        return c, c
    return lo, hi


def choose_crop(
    image_size: int,
    offset: tuple[float, float],
    size: int,
    context_factor: int,
    *,
    random: bool,
    generator: torch.Generator | None = None,
) -> CropBox:
    """Pick a cell crop and a tissue crop of ``size`` px that keep the pair consistent.

    The cell corner is a multiple of ``context_factor``; the tissue crop contains the cell
    crop's footprint (``size / context_factor`` tissue px). ``random=False`` gives the
    deterministic centred crop used for evaluation.
    """
    if size % context_factor:
        raise ValueError(
            f"tile size {size} is not a multiple of the context factor {context_factor}"
        )
    if size > image_size:
        raise ValueError(f"tile size {size} exceeds the image size {image_size}")
    steps = (image_size - size) // context_factor  # cell corners 0, cf, …, steps·cf
    fp_x0, fp_y0, _ = footprint(offset, image_size, context_factor)
    fp_w = size / context_factor  # the cell crop's footprint, tissue px

    def rand_int(lo: int, hi: int) -> int:
        return lo + int(torch.randint(0, hi - lo + 1, (), generator=generator))

    corners = []
    for full_fp0 in (fp_x0, fp_y0):
        c0 = context_factor * (rand_int(0, steps) if random else steps // 2)
        fp0 = full_fp0 + c0 / context_factor
        lo, hi = _tissue_range(fp0, fp_w, size, image_size)
        t0 = rand_int(lo, hi) if random else min(max(round(fp0 + fp_w / 2 - size / 2), lo), hi)
        corners.append((c0, t0))
    return CropBox(
        cell_x0=corners[0][0],
        cell_y0=corners[1][0],
        tissue_x0=corners[0][1],
        tissue_y0=corners[1][1],
        size=size,
    )


def crop_pair(s: PairSample, box: CropBox, context_factor: int) -> PairSample:
    """Apply ``box`` to a full-size pair; the new offset is exact (see the module docstring)."""
    t = box.size
    s_img = s.tissue.shape[-1]
    fp_x0, fp_y0, _ = footprint(s.offset, s_img, context_factor)
    cx = fp_x0 + (box.cell_x0 + t / 2) / context_factor  # cell-crop centre, tissue px
    cy = fp_y0 + (box.cell_y0 + t / 2) / context_factor
    offset = torch.tensor([(cx - box.tissue_x0) / t, (cy - box.tissue_y0) / t], dtype=torch.float64)
    pts = s.points.clone()
    pts[:, 0] -= box.cell_x0
    pts[:, 1] -= box.cell_y0
    keep = (pts[:, 0] >= -0.5) & (pts[:, 0] < t - 0.5) & (pts[:, 1] >= -0.5) & (pts[:, 1] < t - 0.5)
    cs = (slice(box.cell_y0, box.cell_y0 + t), slice(box.cell_x0, box.cell_x0 + t))
    ts = (slice(box.tissue_y0, box.tissue_y0 + t), slice(box.tissue_x0, box.tissue_x0 + t))
    return PairSample(
        cell=s.cell[(..., *cs)],
        tissue=s.tissue[(..., *ts)],
        offset=offset,
        points=pts[keep],
        tissue_label=s.tissue_label[ts],
        cell_target=None if s.cell_target is None else s.cell_target[cs],
        cell_mask=None if s.cell_mask is None else s.cell_mask[cs],
    )


def resize_pair(s: PairSample, size: int) -> PairSample:
    """Resize both images to ``size`` px (labels by nearest neighbour); offset unchanged."""
    h = s.cell.shape[-1]
    scale = size / h

    def rs(img: Tensor) -> Tensor:
        return F.interpolate(
            img[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )[0].clamp_(0, 1)

    label = F.interpolate(
        s.tissue_label[None, None].float(), size=(size, size), mode="nearest-exact"
    )[0, 0].long()
    mask = None if s.cell_mask is None else resize_mask(s.cell_mask, size)
    pts = s.points.clone()
    pts[:, :2] = (pts[:, :2] + 0.5) * scale - 0.5
    return PairSample(
        cell=rs(s.cell),
        tissue=rs(s.tissue),
        offset=s.offset.clone(),
        points=pts,
        tissue_label=label,
        cell_target=None,
        cell_mask=mask,
    )


def resize_mask(mask: Tensor, size: int) -> Tensor:
    """A bool cell mask resized to ``size`` px by nearest neighbour (as the tissue label)."""
    return (
        F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest-exact")[0, 0] > 0.5
    )


# --------------------------------------------------------------------------- dataset


class OcelotDataset(Dataset[dict[str, Any]]):
    """One split of an OCELOT-layout dataset.

    Items are dicts: ``cell`` float ``(3, T, T)`` in [0, 1]; ``tissue`` float ``(3, T, T)``;
    ``offset`` float32 ``(2,)`` (x, y); ``cell_target`` long ``(T, T)`` disks 0/1/2;
    ``tissue_label`` long ``(T, T)`` OCELOT values 1/2/255; ``points`` float32 ``(N, 3)``
    (x, y, class) in model-input px; ``id``; ``organ`` (str or None). T is the image size,
    or ``tile_size`` when given.

    ``disk_radius`` is in original cell-image px; in ``resize`` mode it is scaled with the
    image (see :attr:`scale`).

    ``device_augment``: items carry ``cell``/``tissue`` as uint8 (4× less to move between
    processes) after the geometric augmentation, plus ``jitter`` float32 ``(4,)`` =
    (brightness, contrast, saturation, hue) drawn from ``augment`` (identity when not
    drawn) and ``stain`` float32 ``(9,)`` (:class:`training.augment.StainParams`);
    :func:`training.evaluate_data.forward` converts and augments them on the model's
    device (:func:`training.augment.apply_stain`, :func:`~training.augment.apply_jitter`).
    Same draws as the default path, where the workers do all of it on the CPU.

    When any pair of the split has a cell mask (:attr:`has_masks`), ``cell_target`` is
    :data:`~training.targets.CELL_IGNORE` outside each pair's mask and items carry
    ``cell_mask`` bool ``(T, T)`` (all True for a pair without a mask).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        tile_size: int | None = None,
        tile_mode: str = "crop",
        random_crop: bool = False,
        augment: AugmentConfig | None = None,
        disk_radius: float = 5.0,
        context_factor: int = 4,
        cache: bool = False,
        device_augment: bool = False,
    ) -> None:
        if tile_mode not in TILE_MODES:
            raise ValueError(f"tile_mode must be one of {TILE_MODES}, got {tile_mode!r}")
        self.root = Path(root)
        self.split = split
        self.records = list_pairs(self.root, split)
        self.tile_size = tile_size
        self.tile_mode = tile_mode
        self.random_crop = random_crop
        self.augment = augment
        self.disk_radius = disk_radius
        self.context_factor = context_factor
        self.device_augment = device_augment
        # read every CSV now: a malformed file fails at start-up, not hours into training
        self._points = [read_cell_csv(r.cell_csv) for r in self.records]
        self.has_masks = any(r.cell_mask is not None for r in self.records)
        first = self.records[0].cell_image
        with Image.open(first) as im:
            self.image_size = int(im.size[0])
        # ``cache``: keep each decoded pair (after the deterministic resize in ``resize``
        # mode) as uint8 in memory, so later epochs skip JPEG decoding. The cache is shared
        # by every dataset of this process on the same files and size (a study's runs, the
        # training and the test scoring), and :meth:`preload` fills it before DataLoader
        # workers start, so they inherit it instead of each decoding every pair again.
        self.cache = cache
        self._cache: dict[int, PairSample] = _shared_cache(self._cache_key()) if cache else {}
        if tile_size is not None:
            if tile_size > self.image_size:
                raise DatasetError(
                    first,
                    f"tile_size {tile_size} is larger than the images ({self.image_size} px)",
                    f"use a tile size ≤ {self.image_size}",
                )
            if tile_mode == "crop" and tile_size % context_factor:
                raise DatasetError(
                    None,
                    f"tile_size {tile_size} is not a multiple of the context factor {context_factor}",
                    "use a multiple of 32, e.g. 256 or 512",
                )

    def __len__(self) -> int:
        return len(self.records)

    @property
    def out_size(self) -> int:
        """Side of the model-input images in px."""
        return self.tile_size or self.image_size

    @property
    def scale(self) -> float:
        """Model-input px per original cell px (1 unless ``tile_mode='resize'``)."""
        if self.tile_size is not None and self.tile_mode == "resize":
            return self.tile_size / self.image_size
        return 1.0

    @property
    def organs(self) -> list[str | None]:
        return [r.organ for r in self.records]

    @property
    def masked_pairs(self) -> int:
        """How many pairs carry a cell mask (are labelled only inside annotated regions)."""
        return sum(r.cell_mask is not None for r in self.records)

    def labelled_fraction(self) -> float | None:
        """The labelled share of the masked pairs' cell images (mean of their masks), or None
        without masks. Reads the mask PNGs (small; call it once)."""
        masks = [read_cell_mask(r.cell_mask) for r in self.records if r.cell_mask is not None]
        return (
            None if not masks else float(sum(m.sum() for m in masks) / sum(m.size for m in masks))
        )

    def mpp(self) -> tuple[float, float] | None:
        """Mean ``resized_mpp`` of cell and tissue patches from the metadata (original px), if present."""
        cells = [r.cell_mpp for r in self.records if r.cell_mpp is not None]
        tissues = [r.tissue_mpp for r in self.records if r.tissue_mpp is not None]
        if not cells or not tissues:
            return None
        return sum(cells) / len(cells), sum(tissues) / len(tissues)

    def load_pair(self, index: int) -> PairSample:
        """The full-size pair ``index`` (no crop, no augmentation, no disk target)."""
        r = self.records[index]
        cell = read_rgb(r.cell_image)
        tissue = read_rgb(r.tissue_image)
        label = read_tissue_png(r.tissue_png)
        h, w = cell.shape[:2]
        if h != w or tissue.shape[:2] != (h, w):
            raise DatasetError(
                r.tissue_image,
                f"cell image is {w}×{h} px and tissue image {tissue.shape[1]}×{tissue.shape[0]} px; expected equal square sizes",
                "use pairs as in the OCELOT release (both 1024×1024)",
            )
        if h != self.image_size:
            raise DatasetError(
                r.cell_image,
                f"image is {w}×{h} px but the split's first image is {self.image_size} px",
                "use one image size per split",
            )
        if label.shape != tissue.shape[:2]:
            raise DatasetError(
                r.tissue_png,
                f"tissue annotation is {label.shape[1]}×{label.shape[0]} px, the tissue image {tissue.shape[1]}×{tissue.shape[0]}",
                "use the annotation that belongs to this image",
            )
        mask = None
        if r.cell_mask is not None:
            mask = read_cell_mask(r.cell_mask, shape=(h, w))
        return PairSample(
            cell=torch.from_numpy(cell).permute(2, 0, 1).float().div_(255.0),
            tissue=torch.from_numpy(tissue).permute(2, 0, 1).float().div_(255.0),
            offset=torch.tensor(r.offset, dtype=torch.float64),
            points=torch.from_numpy(self._points[index].copy()),
            tissue_label=torch.from_numpy(label).long(),
            cell_mask=None if mask is None else torch.from_numpy(mask),
        )

    def _cache_key(self) -> tuple[Any, ...]:
        meta = self.root / "metadata.json"
        stamp = meta.stat().st_mtime_ns if meta.is_file() else None
        resized = (
            self.tile_size
            if self.tile_size is not None
            and self.tile_size != self.image_size
            and self.tile_mode == "resize"
            else None
        )
        return (os.fspath(self.root.resolve()), self.split, stamp, resized)

    def _decode(self, index: int) -> PairSample:
        """The full pair, resized in ``resize`` mode, as uint8 images (the cached form)."""
        s = self.load_pair(index)
        if (
            self.tile_size is not None
            and self.tile_size != self.image_size
            and self.tile_mode == "resize"
        ):
            s = resize_pair(s, self.tile_size)
        return PairSample(
            cell=(s.cell * 255.0).round_().to(torch.uint8),
            tissue=(s.tissue * 255.0).round_().to(torch.uint8),
            offset=s.offset.clone(),
            points=s.points.clone(),
            tissue_label=s.tissue_label.to(torch.uint8),
            cell_target=None,
            cell_mask=s.cell_mask,
        )

    def preload(self, threads: int | None = None) -> int:
        """Decode every pair not yet in the cache, ``threads`` at a time (default: the CPUs,
        at most 16); returns how many were decoded. Call it before the DataLoader starts its
        workers. A no-op without ``cache``."""
        if not self.cache:
            return 0
        todo = [i for i in range(len(self)) if i not in self._cache]
        if not todo:
            return 0
        n = threads or min(
            16,
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1),
        )
        if n <= 1 or len(todo) == 1:
            for i in todo:
                self._cache[i] = self._decode(i)
        else:
            from concurrent.futures import ThreadPoolExecutor

            torch_threads = torch.get_num_threads()
            torch.set_num_threads(1)  # parallel over pairs, not inside each resize
            try:
                with ThreadPoolExecutor(max_workers=n) as pool:
                    for i, pair in zip(todo, pool.map(self._decode, todo), strict=True):
                        self._cache[i] = pair
            finally:
                torch.set_num_threads(torch_threads)
        return len(todo)

    def _base_pair(self, index: int, *, uint8: bool = False) -> PairSample:
        """The full pair, resized in ``resize`` mode (deterministic, so cacheable); images
        float in [0, 1], or uint8 with ``uint8=True``."""
        c = self._cache.get(index) if self.cache else None
        if c is None:
            c = self._decode(index)
            if self.cache:
                self._cache[index] = c
        if uint8:
            return PairSample(
                cell=c.cell,
                tissue=c.tissue,
                offset=c.offset.clone(),
                points=c.points.clone(),
                tissue_label=c.tissue_label.long(),
                cell_target=None,
                cell_mask=c.cell_mask,
            )
        return PairSample(
            cell=c.cell.float().div_(255.0),
            tissue=c.tissue.float().div_(255.0),
            offset=c.offset.clone(),
            points=c.points.clone(),
            tissue_label=c.tissue_label.long(),
            cell_target=None,
            cell_mask=c.cell_mask,
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self._base_pair(index, uint8=self.device_augment)
        if (
            self.tile_size is not None
            and self.tile_size != self.image_size
            and self.tile_mode == "crop"
        ):
            box = choose_crop(
                self.image_size,
                (float(s.offset[0]), float(s.offset[1])),
                self.tile_size,
                self.context_factor,
                random=self.random_crop,
            )
            s = crop_pair(s, box, self.context_factor)
        jitter = stain = None
        if self.device_augment:
            jitter = torch.tensor(IDENTITY_JITTER, dtype=torch.float32)
            stain = torch.tensor(IDENTITY_STAIN, dtype=torch.float32)
            if self.augment is not None:
                s, params, stain_params = random_augment_geometry(s, self.augment)
                if params is not None:
                    jitter = torch.tensor(
                        [params.brightness, params.contrast, params.saturation, params.hue],
                        dtype=torch.float32,
                    )
                if stain_params is not None:
                    stain = stain_params.as_tensor()
        elif self.augment is not None:
            s = random_augment(s, self.augment, context_factor=self.context_factor)
        size = s.cell.shape[-1]
        target = mask_cell_target(
            disk_targets(s.points, size, size, max(1.0, self.disk_radius * self.scale)), s.cell_mask
        )
        r = self.records[index]
        mask = None
        if self.has_masks:  # every item of a masked split carries one, so batches stack
            mask = (
                s.cell_mask.contiguous()
                if s.cell_mask is not None
                else torch.ones(size, size, dtype=torch.bool)
            )
        return {
            "cell": s.cell.contiguous(),
            "tissue": s.tissue.contiguous(),
            "offset": s.offset.float(),
            "cell_target": target,
            "tissue_label": s.tissue_label.contiguous(),
            "points": s.points,
            "id": r.id,
            "organ": r.organ,
            **({"cell_mask": mask} if mask is not None else {}),
            **({"jitter": jitter} if jitter is not None else {}),
            **({"stain": stain} if stain is not None else {}),
        }


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors; ``points``, ``id`` and ``organ`` stay lists (variable length)."""
    out: dict[str, Any] = {}
    for key in (
        "cell",
        "tissue",
        "offset",
        "cell_target",
        "tissue_label",
        "cell_mask",
        "jitter",
        "stain",
    ):
        if key in batch[0]:
            out[key] = torch.stack([b[key] for b in batch])
    for key in ("points", "id", "organ"):
        out[key] = [b[key] for b in batch]
    return out
