"""Stain and scanner appearance augmentation: HED jitter, Gaussian blur, Gaussian noise.

HED colour deconvolution (Ruifrok & Johnston 2001, the matrix of ``skimage.color``): the
optical density ``OD = -ln(max(rgb, 1e-6))`` of every pixel is the stain amounts times the
stain vectors, ``OD = s @ RGB_FROM_HED`` with ``s = (haematoxylin, eosin, DAB)`` per pixel.
The jitter (Tellez et al. 2018, "HED" augmentation) changes each stain's amount,
``s' = alpha · s + beta`` per channel, and maps back; output RGB is clipped to [0, 1]
(``OD' ≥ 0``). Stain amounts here are in plain OD units (``skimage.color.rgb2hed`` returns
the same divided by ``-ln(1e-6)`` ≈ 13.8, and clipped at 0). With alpha = 1 and beta = 0
the image comes back unchanged (up to float rounding): the decomposition is not clipped.

Everything is torch on whatever device the image is on; images are float ``(..., 3, H, W)``
in [0, 1].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Rows: the RGB optical densities of haematoxylin, eosin and DAB (``skimage.color.rgb_from_hed``).
RGB_FROM_HED: tuple[tuple[float, float, float], ...] = (
    (0.65, 0.70, 0.29),
    (0.07, 0.99, 0.11),
    (0.27, 0.57, 0.78),
)
_EPS = 1e-6


def _matrices(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    rgb_from_hed = torch.tensor(RGB_FROM_HED, dtype=torch.float64)
    hed_from_rgb = torch.linalg.inv(rgb_from_hed)
    return rgb_from_hed.to(device, dtype), hed_from_rgb.to(device, dtype)


def rgb_to_hed(img: Tensor) -> Tensor:
    """``(..., 3, H, W)`` RGB in [0, 1] → stain amounts ``(..., 3, H, W)`` (H, E, D; OD units, not clipped)."""
    _, hed_from_rgb = _matrices(img.device, img.dtype)
    od = -torch.log(img.clamp(min=_EPS))
    return torch.einsum("...chw,cd->...dhw", od, hed_from_rgb)


def hed_to_rgb(stains: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hed`; RGB clipped to [0, 1]."""
    rgb_from_hed, _ = _matrices(stains.device, stains.dtype)
    od = torch.einsum("...dhw,dc->...chw", stains, rgb_from_hed)
    return torch.exp(-od).clamp(0.0, 1.0)


def hed_jitter(
    img: Tensor,
    scale: Tensor | tuple[float, float, float],
    shift: Tensor | tuple[float, float, float],
) -> Tensor:
    """Each stain's amount ``s → scale · s + shift`` (``(3,)`` each, H, E, D) of a ``(3, H, W)`` image."""
    s = rgb_to_hed(img)
    scale_t = torch.as_tensor(scale, dtype=s.dtype, device=s.device).view(3, 1, 1)
    shift_t = torch.as_tensor(shift, dtype=s.dtype, device=s.device).view(3, 1, 1)
    return hed_to_rgb(s * scale_t + shift_t)


def gaussian_blur(img: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(3, H, W)`` (kernel radius ⌈3σ⌉, reflect padding); σ in px, ≤ 0.05 is a no-op."""
    if sigma <= 0.05:
        return img
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, img.shape[-1] - 1, img.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, device=img.device, dtype=img.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    out = img.unsqueeze(0)
    out = torch.nn.functional.pad(out, (radius, radius, 0, 0), mode="reflect")
    out = torch.nn.functional.conv2d(out, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    out = torch.nn.functional.pad(out, (0, 0, radius, radius), mode="reflect")
    out = torch.nn.functional.conv2d(out, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return out.squeeze(0)


def gaussian_noise(img: Tensor, std: float, seed: int) -> Tensor:
    """``img`` + N(0, std²) per pixel and channel (drawn on the CPU from ``seed``, so every
    device gives the same noise), clipped to [0, 1]."""
    if std <= 0:
        return img
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(img.shape, generator=g, dtype=torch.float32).to(img.device, img.dtype)
    return (img + std * noise).clamp(0.0, 1.0)
