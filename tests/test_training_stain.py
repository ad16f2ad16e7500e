"""Stain augmentation (training.stain, training.augment): HED jitter, blur, noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.augment import (
    AugmentConfig,
    PairSample,
    StainParams,
    random_augment,
    sample_stain,
    stain_hed,
    stain_optics,
)
from training.stain import gaussian_blur, hed_jitter, hed_to_rgb, rgb_to_hed
from wsi_ocelot.errors import ConfigError

# training runs: seconds each on a 2-core CPU (the quick loop leaves them to .ci/run)
pytestmark = pytest.mark.slow

torch.set_num_threads(1)
LOG_ADJUST = -math.log(1e-6)  # skimage.color.rgb2hed divides the optical density by this


def he_image(size: int = 32, seed: int = 0) -> torch.Tensor:
    """An H&E-like float64 (3, size, size) image: stain amounts of haematoxylin and eosin mixed."""
    g = torch.Generator().manual_seed(seed)
    h = 0.1 + 0.6 * torch.rand(size, size, generator=g, dtype=torch.float64)
    e = 0.1 + 0.5 * torch.rand(size, size, generator=g, dtype=torch.float64)
    stains = torch.stack([h, e, torch.zeros_like(h)])
    return hed_to_rgb(stains)


def test_hed_matches_skimage_and_round_trips() -> None:
    skc = pytest.importorskip("skimage.color")
    img = he_image()
    ours = rgb_to_hed(img)
    ref = skc.rgb2hed(img.permute(1, 2, 0).numpy())
    assert np.allclose((ours / LOG_ADJUST).clamp(min=0).permute(1, 2, 0).numpy(), ref, atol=1e-10)
    assert torch.allclose(hed_to_rgb(ours), img, atol=1e-12)
    assert torch.equal(
        hed_jitter(img, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)).round(decimals=9), img.round(decimals=9)
    )


def test_hed_jitter_keeps_range_shape_and_changes_stains_within_bounds() -> None:
    cfg = AugmentConfig(hed=1.0, hed_scale=0.1, hed_shift=0.05)
    img = he_image(48, seed=1)
    s0 = rgb_to_hed(img)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = sample_stain(cfg, g)
        assert p is not None and p.blur_sigma == 0 and p.noise_std == 0
        assert all(0.9 <= a <= 1.1 for a in p.scale) and all(-0.05 <= b <= 0.05 for b in p.shift)
        out = hed_jitter(img, p.scale, p.shift)
        assert out.shape == img.shape and out.dtype == img.dtype
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        s1 = rgb_to_hed(out)
        inside = (out > 1e-6).all(0) & (out < 1.0).all(
            0
        )  # pixels that the [0, 1] clip did not touch
        assert inside.float().mean() > 0.9
        for c in range(3):  # every stain amount moved exactly by the drawn scale and shift
            want = s0[c] * p.scale[c] + p.shift[c]
            assert torch.allclose(s1[c][inside], want[inside], atol=1e-9)
        # and by no more than the configured bounds allow
        delta = (s1 - s0)[:, inside].abs()
        assert bool((delta <= 0.1 * s0[:, inside].abs() + 0.05 + 1e-9).all())
    assert (
        AugmentConfig().hed == 0.0 and sample_stain(AugmentConfig(), g) is None
    )  # off unless configured


def test_same_stain_on_cell_and_tissue_and_physical_blur() -> None:
    cell, tissue = he_image(32, 2).float(), he_image(32, 3).float()
    s = PairSample(
        cell=cell,
        tissue=tissue,
        offset=torch.tensor([0.5, 0.5], dtype=torch.float64),
        points=torch.zeros(0, 3),
        tissue_label=torch.ones(32, 32, dtype=torch.long),
    )
    p = StainParams(scale=(1.08, 0.95, 1.0), shift=(0.03, -0.02, 0.0), blur_sigma=2.0)
    out = stain_hed(s, p)
    assert torch.allclose(out.cell, hed_jitter(cell, p.scale, p.shift)) and torch.allclose(
        out.tissue, hed_jitter(tissue, p.scale, p.shift)
    )
    blurred = stain_optics(s, p, context_factor=4)
    assert torch.allclose(blurred.cell, gaussian_blur(cell, 2.0)) and torch.allclose(
        blurred.tissue, gaussian_blur(tissue, 0.5)
    )
    assert blurred.cell.std() < cell.std()  # blur smooths
    noisy = stain_optics(s, StainParams(noise_std=0.02, noise_seed=5), context_factor=4)
    assert 0.01 < float((noisy.cell - cell).std()) < 0.03 and not torch.equal(
        noisy.cell - cell, noisy.tissue - tissue
    )


def test_random_augment_with_stain_keeps_range_and_shape() -> None:
    cfg = AugmentConfig(hed=1.0, blur=1.0, noise=1.0, jitter=1.0)
    s = PairSample(
        cell=he_image(32, 4).float(),
        tissue=he_image(32, 5).float(),
        offset=torch.tensor([0.125, 0.625], dtype=torch.float64),
        points=torch.zeros(0, 3),
        tissue_label=torch.ones(32, 32, dtype=torch.long),
    )
    out = random_augment(s, cfg, torch.Generator().manual_seed(1))
    for a, b in ((out.cell, s.cell), (out.tissue, s.tissue)):
        assert (
            a.shape == b.shape
            and float(a.min()) >= 0
            and float(a.max()) <= 1
            and not torch.equal(a, b)
        )


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"hed": 1.5}, "augment.hed"),
        ({"hed_scale": 1.0}, "hed_scale"),
        ({"blur_sigma": (2.0, 1.0)}, "blur_sigma"),
        ({"noise_std": 0.9}, "noise_std"),
    ],
)
def test_stain_config_errors(bad: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AugmentConfig(**bad)
