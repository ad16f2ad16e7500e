"""Augmentations that keep the cell patch, its tissue context and the offset consistent.

A :class:`PairSample` holds one cell/tissue pair as tensors:

- ``cell``: float ``(3, H, W)`` in [0, 1], cell-patch pixels;
- ``tissue``: float ``(3, Ht, Wt)`` in [0, 1], tissue-patch pixels;
- ``offset``: float64 ``(2,)`` = (x, y), the centre of the cell patch relative to the
  tissue patch (``patch_x_offset``, ``patch_y_offset`` in OCELOT's metadata);
- ``points``: float32 ``(N, 3)`` = (x, y, class), x = column, y = row in cell-patch
  pixels (pixel centres at integers), class 1 = BC, 2 = TC;
- ``tissue_label``: long ``(Ht, Wt)``, OCELOT values 1 = BG, 2 = CA, 255 = unknown;
- ``cell_target``: optional long ``(H, W)`` disk target (transformed like ``cell``).

Geometric transforms (flips, 90° rotations) act on both images, the points, the labels
and the offset, so that after every transform the cell patch still equals the region of
the tissue patch centred at ``offset`` (of width ``Wt / context_factor``), upsampled.
Pixel coordinates use the index convention: a horizontal flip maps column ``x`` to
``W - 1 - x``; relative offsets are continuous, so the same flip maps ``ox`` to ``1 - ox``.

Colour jitter is pixel-wise (brightness, contrast about 0.5, saturation, hue) with the
same parameters on both images, so it commutes with cropping and resampling and keeps
the pair consistent too.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from wsi_ocelot.errors import ConfigError


@dataclass(frozen=True)
class PairSample:
    """One cell/tissue pair; see the module docstring for shapes and units."""

    cell: Tensor
    tissue: Tensor
    offset: Tensor
    points: Tensor
    tissue_label: Tensor
    cell_target: Tensor | None = None


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation. Probabilities in [0, 1]; jitter strengths are half-ranges.

    ``brightness`` b: factor in [1 - b, 1 + b]; ``contrast`` c: factor in [1 - c, 1 + c]
    about 0.5; ``saturation`` s: factor in [1 - s, 1 + s]; ``hue`` h: shift in [-h, h]
    (h ≤ 0.5, fraction of the colour circle).
    """

    enabled: bool = True
    hflip: float = 0.5
    vflip: float = 0.5
    rot90: bool = True
    jitter: float = 0.8
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip", "jitter"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(None, f"augment.{name} must be a probability in [0, 1], got {value}", f"set augment.{name} between 0 and 1")
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(None, f"augment.{name} must be in [0, 1), got {value}", f"set augment.{name} to e.g. 0.1")
        if not 0.0 <= self.hue <= 0.5:
            raise ConfigError(None, f"augment.hue must be in [0, 0.5], got {self.hue}", "set augment.hue to e.g. 0.02")


# --------------------------------------------------------------------------- geometry


def hflip(s: PairSample) -> PairSample:
    """Mirror left-right: images and labels flip along width, x → W-1-x, ox → 1-ox."""
    w = s.cell.shape[-1]
    points = s.points.clone()
    points[:, 0] = (w - 1) - points[:, 0]
    return PairSample(
        cell=s.cell.flip(-1),
        tissue=s.tissue.flip(-1),
        offset=torch.stack([1.0 - s.offset[0], s.offset[1]]),
        points=points,
        tissue_label=s.tissue_label.flip(-1),
        cell_target=None if s.cell_target is None else s.cell_target.flip(-1),
    )


def vflip(s: PairSample) -> PairSample:
    """Mirror top-bottom: y → H-1-y, oy → 1-oy."""
    h = s.cell.shape[-2]
    points = s.points.clone()
    points[:, 1] = (h - 1) - points[:, 1]
    return PairSample(
        cell=s.cell.flip(-2),
        tissue=s.tissue.flip(-2),
        offset=torch.stack([s.offset[0], 1.0 - s.offset[1]]),
        points=points,
        tissue_label=s.tissue_label.flip(-2),
        cell_target=None if s.cell_target is None else s.cell_target.flip(-2),
    )


def rot90(s: PairSample, k: int = 1) -> PairSample:
    """Rotate by ``k`` × 90° counter-clockwise (``torch.rot90`` on (H, W)); square images only.

    One step maps pixel (x, y) → (y, W-1-x) and the offset (ox, oy) → (oy, 1-ox).
    """
    k %= 4
    if k == 0:
        return s
    for name, img in (("cell", s.cell), ("tissue", s.tissue)):
        if img.shape[-1] != img.shape[-2]:
            raise ValueError(f"rot90 needs square images, the {name} image is {tuple(img.shape[-2:])}")
    out = s
    for _ in range(k):
        w = out.cell.shape[-1]
        points = out.points.clone()
        points[:, 0] = out.points[:, 1]
        points[:, 1] = (w - 1) - out.points[:, 0]
        out = PairSample(
            cell=torch.rot90(out.cell, 1, dims=(-2, -1)),
            tissue=torch.rot90(out.tissue, 1, dims=(-2, -1)),
            offset=torch.stack([out.offset[1], 1.0 - out.offset[0]]),
            points=points,
            tissue_label=torch.rot90(out.tissue_label, 1, dims=(-2, -1)),
            cell_target=None if out.cell_target is None else torch.rot90(out.cell_target, 1, dims=(-2, -1)),
        )
    return out


# --------------------------------------------------------------------------- colour


@dataclass(frozen=True)
class JitterParams:
    """One draw of colour-jitter parameters (factors; ``hue`` a shift in [-0.5, 0.5])."""

    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0


def _jitter_image(img: Tensor, p: JitterParams) -> Tensor:
    """Pixel-wise colour jitter of a float ``(3, H, W)`` image in [0, 1]."""
    out = img
    if p.brightness != 1.0:
        out = (out * p.brightness).clamp_(0.0, 1.0)
    if p.contrast != 1.0:  # about a fixed 0.5 pivot (not the image mean) so it stays pixel-wise
        out = ((out - 0.5) * p.contrast + 0.5).clamp_(0.0, 1.0)
    if p.saturation != 1.0:
        out = TF.adjust_saturation(out, p.saturation)
    if p.hue != 0.0:
        out = TF.adjust_hue(out, p.hue)
    return out


def color_jitter(s: PairSample, params: JitterParams) -> PairSample:
    """Apply the same pixel-wise colour jitter to the cell and the tissue image."""
    return dataclasses.replace(s, cell=_jitter_image(s.cell, params), tissue=_jitter_image(s.tissue, params))


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def sample_jitter(cfg: AugmentConfig, generator: torch.Generator | None = None) -> JitterParams:
    """Draw jitter parameters from the ranges in ``cfg``."""
    return JitterParams(
        brightness=_uniform(1 - cfg.brightness, 1 + cfg.brightness, generator),
        contrast=_uniform(1 - cfg.contrast, 1 + cfg.contrast, generator),
        saturation=_uniform(1 - cfg.saturation, 1 + cfg.saturation, generator),
        hue=_uniform(-cfg.hue, cfg.hue, generator),
    )


def random_augment(s: PairSample, cfg: AugmentConfig, generator: torch.Generator | None = None) -> PairSample:
    """Random flips, a random multiple of 90° and (with probability ``cfg.jitter``) colour jitter.

    Uses ``generator`` (or torch's global RNG, which DataLoader seeds per worker).
    """
    s, params = random_augment_geometry(s, cfg, generator)
    return s if params is None else color_jitter(s, params)


#: (brightness, contrast, saturation, hue) that change nothing.
IDENTITY_JITTER = (1.0, 1.0, 1.0, 0.0)


def random_augment_geometry(s: PairSample, cfg: AugmentConfig, generator: torch.Generator | None = None) -> tuple[PairSample, JitterParams | None]:
    """:func:`random_augment` with the colour jitter drawn but not applied: returns the
    geometrically augmented sample and the jitter parameters (None when no jitter was
    drawn), for :func:`apply_jitter` on the model's device. Same random draws, same order."""
    if not cfg.enabled:
        return s, None

    def coin(p: float) -> bool:
        return p > 0 and float(torch.rand((), generator=generator)) < p

    if coin(cfg.hflip):
        s = hflip(s)
    if coin(cfg.vflip):
        s = vflip(s)
    if cfg.rot90:
        s = rot90(s, int(torch.randint(0, 4, (), generator=generator)))
    params = sample_jitter(cfg, generator) if coin(cfg.jitter) else None
    return s, params


def apply_jitter(cell: Tensor, tissue: Tensor, jitter: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample colour jitter of float batches ``(B, 3, H, W)`` in [0, 1]; ``jitter`` is
    ``(B, 4)`` = (brightness, contrast, saturation, hue) as :func:`color_jitter` applies
    them (the same parameters on a sample's cell and tissue image). Runs wherever the
    tensors are (the GPU in training)."""
    ident = torch.tensor(IDENTITY_JITTER, device=jitter.device, dtype=jitter.dtype)
    rows = (jitter != ident).any(dim=1).nonzero().flatten().tolist()
    if not rows:
        return cell, tissue
    cell = cell.clone()
    tissue = tissue.clone()
    values = jitter[rows].double().cpu().tolist()
    for i, (b, c, sat, h) in zip(rows, values, strict=True):
        p = JitterParams(brightness=b, contrast=c, saturation=sat, hue=h)
        cell[i] = _jitter_image(cell[i], p)
        tissue[i] = _jitter_image(tissue[i], p)
    return cell, tissue


def footprint(offset: Tensor | tuple[float, float], tissue_size: int, context_factor: int) -> tuple[float, float, float]:
    """The cell patch's region in tissue pixels: ``(x0, y0, width)`` (continuous, top-left corner).

    ``width = tissue_size / context_factor``; the region is centred at ``offset * tissue_size``.
    """
    ox, oy = (float(v) for v in offset)
    width = tissue_size / context_factor
    x0 = ox * tissue_size - width / 2
    y0 = oy * tissue_size - width / 2
    if not (math.isfinite(x0) and math.isfinite(y0)):
        raise ValueError(f"offset {ox, oy} is not finite")
    return x0, y0, width
