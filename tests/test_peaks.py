"""Peak finding: blobs → centres and classes; plateaus, min_distance, threshold, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_ocelot.errors import ConfigError
from wsi_ocelot.inference import PeakConfig, find_peaks, gaussian_blur

torch.set_num_threads(1)


def _probs(fg: torch.Tensor, tc_share: torch.Tensor | float = 0.0) -> torch.Tensor:
    """(B, H, W) foreground → (B, 3, H, W) probabilities: bg = 1 − fg, split into BC/TC by ``tc_share``."""
    tc = fg * tc_share
    return torch.stack([1.0 - fg, fg - tc, tc], dim=1)


def _blobs(h: int, w: int, centres: list[tuple[int, int, int]], sigma: float = 2.5) -> torch.Tensor:
    """(1, 3, H, W) with a Gaussian blob of peak 0.95 per (x, y, class)."""
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    fg = torch.zeros(h, w)
    tc = torch.zeros(h, w)
    for x, y, cls in centres:
        g = 0.95 * torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
        fg = torch.maximum(fg, g)
        if cls == 2:
            tc = torch.maximum(tc, g)
    return torch.stack([1 - fg, fg - tc, tc]).unsqueeze(0)


def _rows(t: torch.Tensor) -> list[tuple[float, ...]]:
    return sorted(tuple(round(v, 4) for v in r) for r in t.tolist())


def test_gaussian_blobs_give_their_centres_and_classes() -> None:
    centres = [(10, 12, 1), (40, 15, 2), (25, 45, 2), (52, 50, 1)]
    probs = _blobs(64, 64, centres)
    (pts,) = find_peaks(probs, PeakConfig())
    assert pts.shape == (4, 4) and pts.dtype == torch.float32
    assert sorted((int(x), int(y), int(c)) for x, y, c, _ in pts.tolist()) == sorted(centres)
    torch.testing.assert_close(pts[:, 3], torch.full((4,), 0.95))


def test_plateau_gives_one_peak() -> None:
    fg = torch.zeros(1, 32, 32)
    fg[0, 10, 10] = fg[0, 10, 11] = 0.8  # two equal adjacent maxima
    for sigma in (0.0, 2.0):
        (pts,) = find_peaks(_probs(fg, 1.0), PeakConfig(sigma=sigma))
        assert pts.shape[0] == 1
        assert pts[0, 1:3].tolist() == [10.0, 2.0]
        if sigma == 0:
            assert pts[0, 0] == 10.0  # exact tie: the first in raster order wins


def test_long_plateau_is_resolved_greedily() -> None:
    fg = torch.zeros(1, 16, 32)
    fg[0, 8, 4:14] = 0.9  # ten equal pixels in a row, min_distance 3
    (pts,) = find_peaks(_probs(fg), PeakConfig(sigma=0.0, min_distance=3))
    assert pts[:, 0].tolist() == [4.0, 8.0, 12.0]


def test_min_distance_is_respected() -> None:
    fg = torch.zeros(1, 40, 40)
    fg[0, 20, 20] = 0.9
    fg[0, 20, 25] = 0.8  # 5 px away
    assert find_peaks(_probs(fg), PeakConfig(sigma=0.0, min_distance=3))[0].shape[0] == 2
    (pts,) = find_peaks(_probs(fg), PeakConfig(sigma=0.0, min_distance=5))
    assert pts[:, :2].tolist() == [[20.0, 20.0]]


def test_threshold_is_respected() -> None:
    fg = torch.zeros(1, 40, 40)
    fg[0, 10, 10] = 0.3
    fg[0, 30, 30] = 0.7
    cfg = PeakConfig(sigma=0.0, threshold=0.5, drop_background=False)
    (pts,) = find_peaks(_probs(fg), cfg)
    assert pts[:, :2].tolist() == [[30.0, 30.0]]
    assert (
        find_peaks(_probs(fg), PeakConfig(sigma=0.0, threshold=0.0, drop_background=False))[
            0
        ].shape[0]
        == 2
    )


def test_background_dominated_peaks_are_dropped() -> None:
    probs = torch.zeros(1, 3, 32, 32)
    probs[:, 0] = 1.0
    probs[0, :, 8, 8] = torch.tensor([0.4, 0.3, 0.3])  # bg 0.4 >= max(BC, TC) 0.3 → dropped
    probs[0, :, 24, 24] = torch.tensor([0.4, 0.1, 0.5])  # kept, TC, 0.5
    (pts,) = find_peaks(probs, PeakConfig(sigma=0.0))
    assert _rows(pts) == [(24.0, 24.0, 2.0, 0.5)]


def test_empty_map_gives_empty_tensors() -> None:
    probs = torch.zeros(2, 3, 32, 32)
    probs[:, 0] = 1.0
    out = find_peaks(probs, PeakConfig())
    assert [t.shape for t in out] == [(0, 4), (0, 4)]


def test_core_box_keeps_only_peaks_inside() -> None:
    probs = _blobs(64, 64, [(10, 10, 1), (40, 40, 2), (32, 10, 1)])
    (pts,) = find_peaks(probs, PeakConfig(), core=(16, 0, 48, 48))
    assert sorted(pts[:, :2].tolist()) == [[32.0, 10.0], [40.0, 40.0]]
    (pts,) = find_peaks(probs, PeakConfig(), core=(0, 0, 32, 64))  # half-open: x = 32 is outside
    assert pts[:, :2].tolist() == [[10.0, 10.0]]


def _random_probs(b: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, 3, h, w, generator=g) * 3
    logits = torch.nn.functional.avg_pool2d(logits, 5, stride=1, padding=2)
    return logits.softmax(1)


def test_batched_equals_per_image() -> None:
    probs = _random_probs(3, 48, 40, seed=0)
    cfg = PeakConfig()
    batched = find_peaks(probs, cfg)
    assert len(batched) == 3
    for i in range(3):
        (single,) = find_peaks(probs[i : i + 1], cfg)
        torch.testing.assert_close(batched[i], single)
    assert sum(t.shape[0] for t in batched) > 0
    # the device's whole-batch computation, run on the CPU, gives the same peaks
    for core in (None, (5.0, 4.0, 30.0, 33.0)):
        a, b = (
            find_peaks(probs, cfg, core=core, per_image=True),
            find_peaks(probs, cfg, core=core, per_image=False),
        )
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y)


def test_blur_matches_scipy() -> None:
    ndi = pytest.importorskip("scipy.ndimage")
    x = torch.rand(2, 40, 50, dtype=torch.float64)
    ours = gaussian_blur(x, 3.0)
    ref = np.stack([ndi.gaussian_filter(a, 3.0, mode="mirror", truncate=4.0) for a in x.numpy()])
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-10)


def _skimage_like(fg: np.ndarray, d: int, thr: float) -> list[tuple[int, int]]:
    """skimage.feature.peak_local_max(fg, min_distance=d, threshold_abs=thr, exclude_border=0), as (x, y)."""
    from scipy import ndimage as ndi

    cand = (fg == ndi.maximum_filter(fg, size=2 * d + 1, mode="nearest")) & (fg > thr)
    coords = np.argwhere(cand)
    order = np.argsort(-fg[cand], kind="stable")
    kept: list[np.ndarray] = []
    for i in order:
        c = coords[i]
        if all(np.abs(c - k).max() > d for k in kept):
            kept.append(c)
    return sorted((int(c[1]), int(c[0])) for c in kept)


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
@pytest.mark.parametrize("d", [1, 3, 6])
def test_nms_matches_reference_algorithm(d: int) -> None:
    pytest.importorskip("scipy")
    probs = _random_probs(2, 64, 64, seed=d)
    probs = (probs * 8).round() / 8  # quantise to create many ties/plateaus
    probs = probs / probs.sum(1, keepdim=True)
    cfg = PeakConfig(sigma=0.0, min_distance=d, drop_background=False)
    for i, pts in enumerate(find_peaks(probs, cfg)):
        fg = (1.0 - probs[i, 0]).numpy()
        got = sorted((int(x), int(y)) for x, y in pts[:, :2].tolist())
        assert got == _skimage_like(fg, d, 0.0)


def test_bad_config_and_input() -> None:
    with pytest.raises(ConfigError):
        PeakConfig(min_distance=0)
    with pytest.raises(ConfigError):
        PeakConfig(threshold=1.5)
    with pytest.raises(ConfigError):
        PeakConfig(sigma=-1)
    with pytest.raises(ValueError, match="cell_probs"):
        find_peaks(torch.zeros(1, 2, 8, 8), PeakConfig())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu() -> None:
    probs = _random_probs(4, 512, 512, seed=7)
    cfg = PeakConfig()
    gpu = find_peaks(probs.cuda(), cfg)
    cpu = find_peaks(probs, cfg)
    assert all(g.device.type == "cuda" for g in gpu)
    for g, c in zip(gpu, cpu, strict=True):
        # the blur's fused multiply-adds may round differently by an ulp; the peaks agree
        assert g.shape == c.shape
        torch.testing.assert_close(g.cpu(), c)


# -- the fast formulation against the straightforward one it replaced ------------------------


def _reference_find_peaks(
    cell_probs: torch.Tensor, cfg: PeakConfig, core=None
) -> list[torch.Tensor]:
    """The original formulation: blur as shifted adds with temporaries, 2-D max-pool NMS,
    dense greedy tie rounds over the whole map, then the core filter."""
    import math

    import torch.nn.functional as F

    def blur(x):
        radius = min(max(1, math.ceil(cfg.truncate * cfg.sigma)), x.shape[-2] - 1, x.shape[-1] - 1)
        t = torch.arange(-radius, radius + 1, dtype=torch.float64)
        k = torch.exp(-0.5 * (t / cfg.sigma) ** 2)
        wts = (k / k.sum()).tolist()
        y = x.unsqueeze(1)
        for dim, pad in ((3, (radius, radius, 0, 0)), (2, (0, 0, radius, radius))):
            padded = F.pad(y, pad, mode="reflect")
            n = y.shape[dim]
            acc = padded.narrow(dim, 0, n) * wts[0]
            for i in range(1, 2 * radius + 1):
                acc = acc + padded.narrow(dim, i, n) * wts[i]
            y = acc
        return y.squeeze(1)

    def maxw(x, d):
        return F.max_pool2d(x.unsqueeze(1), kernel_size=2 * d + 1, stride=1, padding=d).squeeze(1)

    probs = cell_probs.float()
    b, _, h, w = probs.shape
    bg = probs[:, 0]
    cls_prob, cls_idx = probs[:, 1:3].max(dim=1)
    fg = blur(1.0 - bg) if cfg.sigma > 0 else 1.0 - bg
    d = cfg.min_distance
    cand = (fg == maxw(fg, d)) & (fg > cfg.threshold)
    prio = -torch.arange(h * w, dtype=torch.float64).view(1, h, w).expand(b, h, w)
    kept, undecided = torch.zeros_like(cand), cand.clone()
    while bool(undecided.any()):
        p = torch.where(undecided, prio, torch.tensor(-math.inf, dtype=torch.float64))
        new = undecided & (p == maxw(p, d))
        kept |= new
        undecided &= ~(maxw(new.float(), d) > 0)
    if cfg.drop_background:
        kept &= bg < cls_prob
    if core is not None:
        x0, y0, x1, y1 = core
        ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
        kept &= (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    bi, yi, xi = kept.nonzero(as_tuple=True)
    pts = torch.stack(
        [xi.float(), yi.float(), (cls_idx[bi, yi, xi] + 1).float(), cls_prob[bi, yi, xi]], 1
    )
    return list(torch.split(pts, torch.bincount(bi, minlength=b).tolist()))


def _cell_like_probs(b: int, size: int, seed: int) -> torch.Tensor:
    """Softmax maps like a trained cell branch's: near-saturated background (1 − P(no cell)
    a few float32 ulps, so equal neighbours — plateaus — abound without blur) and blobs of
    both classes."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.full((b, 3, size, size), -8.0)
    logits[:, 0] = 8.6
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32),
        torch.arange(size, dtype=torch.float32),
        indexing="ij",
    )
    for i in range(b):
        n = size * size // 400
        cx, cy = torch.rand(n, generator=g) * size, torch.rand(n, generator=g) * size
        cls = torch.randint(1, 3, (n,), generator=g)
        for x, y, c in zip(cx.tolist(), cy.tolist(), cls.tolist(), strict=True):
            blob = 24.0 * torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 3.0**2))
            logits[i, c] = torch.maximum(logits[i, c], blob - 8.0)
    logits += 0.3 * torch.randn(logits.shape, generator=g)
    return logits.softmax(1)


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
@pytest.mark.parametrize("sigma", [0.0, 3.0])
def test_fast_peaks_equal_the_original_formulation(sigma: float) -> None:
    cfg = PeakConfig(sigma=sigma)
    for probs in (_cell_like_probs(3, 160, seed=1), _random_probs(2, 96, 80, seed=3)):
        new, ref = find_peaks(probs, cfg), _reference_find_peaks(probs, cfg)
        assert sum(len(t) for t in ref) > 0
        for a, r in zip(new, ref, strict=True):
            assert a.shape == r.shape
            torch.testing.assert_close(a, r)


@pytest.mark.parametrize("core", [(40, 40, 120, 120), (0, 30.5, 100.2, 160), (13, 0, 160, 17)])
def test_core_only_computation_equals_full_map_then_filter(core) -> None:
    probs = _cell_like_probs(2, 160, seed=5)
    for cfg in (PeakConfig(), PeakConfig(sigma=0.0), PeakConfig(min_distance=5, sigma=2.0)):
        new, ref = find_peaks(probs, cfg, core=core), _reference_find_peaks(probs, cfg, core=core)
        for a, r in zip(new, ref, strict=True):
            assert a.shape == r.shape
            torch.testing.assert_close(a, r)


def test_blur_close_to_the_original_and_to_float64() -> None:
    x = torch.rand(2, 70, 90)
    ref64 = gaussian_blur(x.double(), 3.0)
    torch.testing.assert_close(gaussian_blur(x, 3.0).double(), ref64, rtol=0, atol=1e-6)
