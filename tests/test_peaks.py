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
        torch.testing.assert_close(g.cpu(), c, rtol=0, atol=0)  # blur and NMS are device-exact
