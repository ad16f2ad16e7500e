"""Augmentations that keep the cell patch, its tissue context and the offset consistent.

A :class:`PairSample` holds one cell/tissue pair as tensors:

- ``cell``: float ``(3, H, W)`` in [0, 1], cell-patch pixels;
- ``tissue``: float ``(3, Ht, Wt)`` in [0, 1], tissue-patch pixels;
- ``offset``: float64 ``(2,)`` = (x, y), the centre of the cell patch relative to the
  tissue patch (``patch_x_offset``, ``patch_y_offset`` in OCELOT's metadata);
- ``points``: float32 ``(N, 3)`` = (x, y, class), x = column, y = row in cell-patch
  pixels (pixel centres at integers), class 1 = BC, 2 = TC;
- ``tissue_label``: long ``(Ht, Wt)``, OCELOT values 1 = BG, 2 = CA, 255 = unknown;
- ``cell_target``: optional long ``(H, W)`` disk target (transformed like ``cell``);
- ``cell_mask``: optional bool ``(H, W)``, True where every cell is marked (inside an
  annotated region), False where the cell labels are unknown; None = labelled everywhere.
  Transformed like ``cell``, so it stays aligned with the image and the target.

Geometric transforms (flips, 90° rotations) act on both images, the points, the labels
and the offset, so that after every transform the cell patch still equals the region of
the tissue patch centred at ``offset`` (of width ``Wt / context_factor``), upsampled.
Pixel coordinates use the index convention: a horizontal flip maps column ``x`` to
``W - 1 - x``; relative offsets are continuous, so the same flip maps ``ox`` to ``1 - ox``.

Colour jitter is pixel-wise (brightness, contrast about 0.5, saturation, hue) with the
same parameters on both images, so it commutes with cropping and resampling and keeps
the pair consistent too.

Stain augmentation (:mod:`training.stain`) follows the same rule: the cell patch and its
tissue context are the same slide region under the same staining, so the HED jitter uses
the same (scale, shift) on both images (it is pixel-wise too). Blur is a scanner focus
effect, physical in µm: σ px on the cell image is σ / ``context_factor`` px on the tissue
image. Noise is per pixel with the same σ on both images (independent draws). Order:
HED jitter → colour jitter → blur → noise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from training.stain import gaussian_blur, gaussian_noise, hed_jitter
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
    cell_mask: Tensor | None = None


def _maybe(t: Tensor | None, fn: Callable[[Tensor], Tensor]) -> Tensor | None:
    """``fn(t)``, or None for an absent cell-frame map (target, mask)."""
    return None if t is None else fn(t)


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation. Probabilities in [0, 1]; jitter strengths are half-ranges.

    ``brightness`` b: factor in [1 - b, 1 + b]; ``contrast`` c: factor in [1 - c, 1 + c]
    about 0.5; ``saturation`` s: factor in [1 - s, 1 + s]; ``hue`` h: shift in [-h, h]
    (h ≤ 0.5, fraction of the colour circle).

    Stain (:mod:`training.stain`): with probability ``hed``, every stain amount (H, E, D,
    optical density) becomes ``alpha · s + beta`` with alpha in [1 - ``hed_scale``,
    1 + ``hed_scale``] and beta in [-``hed_shift``, ``hed_shift``] per channel (Tellez et al.
    2018's "HED-light" is 0.05 / 0.05, the defaults). With probability ``blur``, a Gaussian
    blur of σ in [``blur_sigma``] cell px (tissue: σ / context factor); with probability
    ``noise``, Gaussian noise of σ in [0, ``noise_std``] (intensity in [0, 1]). All three
    are off (probability 0) unless configured; the paper configs turn ``hed`` on.
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
    hed: float = 0.0
    hed_scale: float = 0.05
    hed_shift: float = 0.05
    blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    noise: float = 0.0
    noise_std: float = 0.03

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip", "jitter", "hed", "blur", "noise"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(
                    None,
                    f"augment.{name} must be a probability in [0, 1], got {value}",
                    f"set augment.{name} between 0 and 1",
                )
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(
                    None,
                    f"augment.{name} must be in [0, 1), got {value}",
                    f"set augment.{name} to e.g. 0.1",
                )
        if not 0.0 <= self.hue <= 0.5:
            raise ConfigError(
                None,
                f"augment.hue must be in [0, 0.5], got {self.hue}",
                "set augment.hue to e.g. 0.02",
            )
        if not 0.0 <= self.hed_scale < 1.0 or not 0.0 <= self.hed_shift <= 1.0:
            raise ConfigError(
                None,
                f"augment.hed_scale must be in [0, 1) and hed_shift in [0, 1], got {self.hed_scale}, {self.hed_shift}",
                "use e.g. hed_scale: 0.05, hed_shift: 0.05",
            )
        if len(self.blur_sigma) != 2 or not 0.0 <= self.blur_sigma[0] <= self.blur_sigma[1] <= 10.0:
            raise ConfigError(
                None,
                f"augment.blur_sigma must be [low, high] px with 0 ≤ low ≤ high ≤ 10, got {self.blur_sigma}",
                "use e.g. blur_sigma: [0.1, 1.0]",
            )
        if not 0.0 <= self.noise_std <= 0.5:
            raise ConfigError(
                None,
                f"augment.noise_std must be in [0, 0.5], got {self.noise_std}",
                "use e.g. noise_std: 0.03",
            )


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
        cell_target=_maybe(s.cell_target, lambda t: t.flip(-1)),
        cell_mask=_maybe(s.cell_mask, lambda t: t.flip(-1)),
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
        cell_target=_maybe(s.cell_target, lambda t: t.flip(-2)),
        cell_mask=_maybe(s.cell_mask, lambda t: t.flip(-2)),
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
            raise ValueError(
                f"rot90 needs square images, the {name} image is {tuple(img.shape[-2:])}"
            )
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
            cell_target=_maybe(out.cell_target, lambda t: torch.rot90(t, 1, dims=(-2, -1))),
            cell_mask=_maybe(out.cell_mask, lambda t: torch.rot90(t, 1, dims=(-2, -1))),
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
    return dataclasses.replace(
        s, cell=_jitter_image(s.cell, params), tissue=_jitter_image(s.tissue, params)
    )


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


@dataclass(frozen=True)
class StainParams:
    """One draw of the stain/scanner augmentation (:mod:`training.stain`): HED ``scale`` and
    ``shift`` per stain (H, E, D), blur σ in cell px (0 = none), noise σ (0 = none) and the
    seed of its noise."""

    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)
    blur_sigma: float = 0.0
    noise_std: float = 0.0
    noise_seed: int = 0

    def as_tensor(self) -> Tensor:
        """``(9,)`` float32 = scale (3), shift (3), blur σ, noise σ, noise seed."""
        return torch.tensor(
            [*self.scale, *self.shift, self.blur_sigma, self.noise_std, float(self.noise_seed)],
            dtype=torch.float32,
        )

    @staticmethod
    def from_tensor(row: Tensor) -> StainParams:
        v = [float(x) for x in row.double().cpu().tolist()]
        return StainParams(
            scale=(v[0], v[1], v[2]),
            shift=(v[3], v[4], v[5]),
            blur_sigma=v[6],
            noise_std=v[7],
            noise_seed=int(v[8]),
        )


#: :meth:`StainParams.as_tensor` of the draw that changes nothing.
IDENTITY_STAIN = (1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
_NOISE_SEEDS = 2**24  # exactly representable in float32


def sample_stain(
    cfg: AugmentConfig, generator: torch.Generator | None = None
) -> StainParams | None:
    """Draw the stain/scanner augmentation from ``cfg`` (None when none of it was drawn)."""

    def coin(p: float) -> bool:
        return p > 0 and float(torch.rand((), generator=generator)) < p

    params = StainParams()
    if coin(cfg.hed):
        scale = tuple(_uniform(1 - cfg.hed_scale, 1 + cfg.hed_scale, generator) for _ in range(3))
        shift = tuple(_uniform(-cfg.hed_shift, cfg.hed_shift, generator) for _ in range(3))
        params = dataclasses.replace(params, scale=scale, shift=shift)  # type: ignore[arg-type]
    if coin(cfg.blur):
        params = dataclasses.replace(
            params, blur_sigma=_uniform(cfg.blur_sigma[0], cfg.blur_sigma[1], generator)
        )
    if coin(cfg.noise):
        params = dataclasses.replace(
            params,
            noise_std=_uniform(0.0, cfg.noise_std, generator),
            noise_seed=int(torch.randint(0, _NOISE_SEEDS, (), generator=generator)),
        )
    return None if params == StainParams() else params


def stain_hed(s: PairSample, p: StainParams) -> PairSample:
    """The HED jitter of ``p``, the same on the cell and the tissue image (same slide, same stain)."""
    if p.scale == (1.0, 1.0, 1.0) and p.shift == (0.0, 0.0, 0.0):
        return s
    return dataclasses.replace(
        s, cell=hed_jitter(s.cell, p.scale, p.shift), tissue=hed_jitter(s.tissue, p.scale, p.shift)
    )


def stain_optics(s: PairSample, p: StainParams, context_factor: int) -> PairSample:
    """Blur (σ on the cell image, σ / ``context_factor`` on the tissue image: the same
    physical blur) and noise (same σ, independent draws) of ``p``."""
    cell, tissue = s.cell, s.tissue
    if p.blur_sigma > 0:
        cell, tissue = (
            gaussian_blur(cell, p.blur_sigma),
            gaussian_blur(tissue, p.blur_sigma / context_factor),
        )
    if p.noise_std > 0:
        cell, tissue = (
            gaussian_noise(cell, p.noise_std, p.noise_seed),
            gaussian_noise(tissue, p.noise_std, p.noise_seed + 1),
        )
    return dataclasses.replace(s, cell=cell, tissue=tissue)


def random_augment(
    s: PairSample,
    cfg: AugmentConfig,
    generator: torch.Generator | None = None,
    *,
    context_factor: int = 4,
) -> PairSample:
    """Random flips, a random multiple of 90°, (with probability ``cfg.jitter``) colour
    jitter and the configured stain augmentation (HED → colour jitter → blur → noise).

    Uses ``generator`` (or torch's global RNG, which DataLoader seeds per worker).
    """
    s, params, stain = random_augment_geometry(s, cfg, generator)
    if stain is not None:
        s = stain_hed(s, stain)
    if params is not None:
        s = color_jitter(s, params)
    if stain is not None:
        s = stain_optics(s, stain, context_factor)
    return s


#: (brightness, contrast, saturation, hue) that change nothing.
IDENTITY_JITTER = (1.0, 1.0, 1.0, 0.0)


def random_augment_geometry(
    s: PairSample, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> tuple[PairSample, JitterParams | None, StainParams | None]:
    """:func:`random_augment` with the colour and stain augmentation drawn but not applied:
    returns the geometrically augmented sample, the jitter parameters (None when no jitter
    was drawn) and the stain parameters (None when none), for :func:`apply_jitter` and
    :func:`apply_stain` on the model's device. Same random draws, same order."""
    if not cfg.enabled:
        return s, None, None

    def coin(p: float) -> bool:
        return p > 0 and float(torch.rand((), generator=generator)) < p

    if coin(cfg.hflip):
        s = hflip(s)
    if coin(cfg.vflip):
        s = vflip(s)
    if cfg.rot90:
        s = rot90(s, int(torch.randint(0, 4, (), generator=generator)))
    params = sample_jitter(cfg, generator) if coin(cfg.jitter) else None
    return s, params, sample_stain(cfg, generator)


def _changed_rows(params: Tensor, identity) -> list[int]:
    """The samples (rows of ``params``) whose parameters are not ``identity``: only they change."""
    ident = torch.tensor(identity, device=params.device, dtype=params.dtype)
    return (params != ident).any(dim=1).nonzero().flatten().tolist()


def apply_stain(
    cell: Tensor, tissue: Tensor, stain: Tensor, *, phase: str, context_factor: int = 4
) -> tuple[Tensor, Tensor]:
    """Per-sample stain augmentation of float batches ``(B, 3, H, W)`` in [0, 1]; ``stain``
    is ``(B, 9)`` rows of :meth:`StainParams.as_tensor`. ``phase`` ``"hed"`` applies the
    HED jitter (before :func:`apply_jitter`), ``"optics"`` blur and noise (after it), as
    :func:`random_augment` does. Runs wherever the tensors are."""
    rows = _changed_rows(stain, IDENTITY_STAIN)
    if not rows:
        return cell, tissue
    cell, tissue = cell.clone(), tissue.clone()
    for i in rows:
        p = StainParams.from_tensor(stain[i])
        pair = PairSample(
            cell=cell[i],
            tissue=tissue[i],
            offset=torch.zeros(2),
            points=torch.zeros(0, 3),
            tissue_label=torch.zeros(0),
        )
        pair = stain_hed(pair, p) if phase == "hed" else stain_optics(pair, p, context_factor)
        cell[i], tissue[i] = pair.cell, pair.tissue
    return cell, tissue


def apply_jitter(cell: Tensor, tissue: Tensor, jitter: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample colour jitter of float batches ``(B, 3, H, W)`` in [0, 1]; ``jitter`` is
    ``(B, 4)`` = (brightness, contrast, saturation, hue) as :func:`color_jitter` applies
    them (the same parameters on a sample's cell and tissue image). Runs wherever the
    tensors are (the GPU in training)."""
    rows = _changed_rows(jitter, IDENTITY_JITTER)
    if not rows:
        return cell, tissue
    cell, tissue = cell.clone(), tissue.clone()
    values = jitter[rows].double().cpu().tolist()
    for i, (b, c, sat, h) in zip(rows, values, strict=True):
        p = JitterParams(brightness=b, contrast=c, saturation=sat, hue=h)
        cell[i] = _jitter_image(cell[i], p)
        tissue[i] = _jitter_image(tissue[i], p)
    return cell, tissue


def footprint(
    offset: Tensor | tuple[float, float], tissue_size: int, context_factor: int
) -> tuple[float, float, float]:
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
