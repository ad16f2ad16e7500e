"""Model family: every variant builds and trains; two-pass equals training forward; alignment."""

from __future__ import annotations

import pytest
import torch

from wsi_ocelot.errors import ConfigError
from wsi_ocelot.model import VARIANTS, ModelConfig, build_model, crop_tissue, place_in_tissue
from wsi_ocelot.model.align import tissue_label_onehot

torch.set_num_threads(1)

TINY = {"encoder": "resnet18", "decoder_channels": 32, "share_channels": 8}
INJECTION = ["pred_to_input", "pred_to_inter1", "pred_to_inter2", "pred_to_output"]
OFFSETS = torch.tensor([[0.125, 0.625], [0.625, 0.125]])


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: build_model(ModelConfig(variant=name, **TINY)) for name in VARIANTS}


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    cell = torch.rand(2, 3, 64, 64, generator=g)
    tissue = torch.rand(2, 3, 64, 64, generator=g)
    label = torch.randint(1, 3, (2, 64, 64), generator=g)
    label[:, :8] = 255
    return cell, tissue, label


def test_variants_are_the_papers_table5() -> None:
    assert list(VARIANTS) == [
        "cell_only",
        "pred_to_input",
        "pred_to_inter1",
        "pred_to_inter2",
        "pred_to_output",
        "feature_sharing",
        "tissue_label_leaking",
    ]
    assert ModelConfig().variant == "pred_to_inter2"
    assert ModelConfig().encoder == "resnet34"


def test_unknown_variant_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        ModelConfig(variant="pred_to_everything")
    for name in VARIANTS:
        assert name in str(err.value)
    with pytest.raises(ConfigError):
        build_model("nope")


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
@pytest.mark.parametrize("name", list(VARIANTS))
def test_forward_backward_finite(models, pair, name: str) -> None:
    model = models[name].train()
    cell, tissue, label = pair
    model.zero_grad()
    out = model(cell, tissue, OFFSETS, tissue_label=label)
    assert out["cell_logits"].shape == (2, 3, 64, 64)
    has_tissue = name not in ("cell_only", "tissue_label_leaking")
    if has_tissue:
        assert out["tissue_logits"].shape == (2, 2, 64, 64)
    else:
        assert out["tissue_logits"] is None
    loss = out["cell_logits"].logsumexp(1).mean()
    if has_tissue:
        loss = loss + out["tissue_logits"].logsumexp(1).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
@pytest.mark.parametrize("name", INJECTION)
def test_cell_loss_reaches_tissue_branch(models, pair, name: str) -> None:
    model = models[name].train()
    cell, tissue, _ = pair
    model.zero_grad()
    model(cell, tissue, OFFSETS)["cell_logits"].pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.tissue.parameters())
    model.eval()


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
@pytest.mark.parametrize("name", [*INJECTION, "cell_only"])
def test_two_pass_equals_training_forward(models, pair, name: str) -> None:
    model = models[name].eval()
    assert model.supports_two_pass
    cell, tissue, _ = pair
    with torch.no_grad():
        ref = model(cell, tissue, OFFSETS)["cell_logits"]
        if model.has_tissue_branch:
            probs = model.tissue_probs(tissue)
            assert probs.shape == (2, 2, 64, 64)
            torch.testing.assert_close(probs.sum(1), torch.ones(2, 64, 64))
            crop = crop_tissue(probs, OFFSETS, model.config.context_factor)
        else:
            crop = None
        two = model.cell_logits_from_tissue(cell, crop)
    torch.testing.assert_close(two, ref, rtol=1e-5, atol=1e-5)


def test_injection_uses_the_offset(models, pair) -> None:
    model = models["pred_to_input"].eval()
    cell, tissue, _ = pair
    with torch.no_grad():
        a = model(cell, tissue, OFFSETS)["cell_logits"]
        b = model(cell, tissue, OFFSETS.flip(0))["cell_logits"]
    assert not torch.allclose(a, b)


def test_crop_size_given_by_engine_is_resized(models, pair) -> None:
    model = models["pred_to_inter2"].eval()
    cell, tissue, _ = pair
    with torch.no_grad():
        probs = model.tissue_probs(tissue)
        out = model.cell_logits_from_tissue(cell, crop_tissue(probs, OFFSETS, 4, (64, 64)))
    assert out.shape == (2, 3, 64, 64)


def test_feature_sharing_has_no_two_pass(models, pair) -> None:
    model = models["feature_sharing"]
    assert model.supports_two_pass is False
    cell, tissue, _ = pair
    with pytest.raises(NotImplementedError):
        model.cell_logits_from_tissue(cell, torch.zeros(2, 2, 16, 16))
    with pytest.raises(NotImplementedError):
        model.tissue_probs(tissue)


def test_label_leaking_needs_labels_and_uses_them(models, pair) -> None:
    model = models["tissue_label_leaking"].eval()
    assert model.needs_tissue_label and not model.supports_two_pass
    cell, tissue, label = pair
    with pytest.raises(ValueError, match="tissue_label"):
        model(cell, tissue, OFFSETS)
    with torch.no_grad():
        a = model(cell, None, OFFSETS, tissue_label=label)["cell_logits"]
        b = model(cell, None, OFFSETS, tissue_label=3 - label.clamp(max=2))["cell_logits"]
    assert not torch.allclose(a, b)


def test_tissue_label_onehot() -> None:
    label = torch.tensor([[[1, 2, 255]]])
    assert tissue_label_onehot(label, 2).tolist() == [[[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]]]


def test_bad_inputs_are_value_errors(models, pair) -> None:
    model = models["pred_to_inter2"]
    cell, tissue, _ = pair
    with pytest.raises(ValueError, match="multiples of 16"):
        model(cell[..., :60, :60], tissue, OFFSETS)
    with pytest.raises(ValueError, match="offset"):
        model(cell, tissue, OFFSETS[:1])
    with pytest.raises(ValueError, match="tissue_crop"):
        model.cell_logits_from_tissue(cell, torch.zeros(2, 3, 16, 16))


def test_normalisation_buffers_not_in_state_dict(models) -> None:
    model = models["pred_to_inter2"]
    keys = model.state_dict().keys()
    assert "mean" not in keys and "std" not in keys
    torch.testing.assert_close(model.mean.flatten(), torch.tensor(ModelConfig().mean))


# ---------------------------------------------------------------- alignment


def _ramp(h: int, w: int) -> torch.Tensor:
    """(1, 2, h, w): channel 0 = column index, channel 1 = row index (linear: bilinear is exact)."""
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    return torch.stack([xs, ys]).unsqueeze(0)


def test_crop_native_size_is_the_exact_subregion() -> None:
    probs = torch.rand(2, 2, 64, 64)
    out = crop_tissue(probs, OFFSETS, 4)
    assert out.shape == (2, 2, 16, 16)
    # offset (0.125, 0.625): columns 0..16, rows 32..48; (0.625, 0.125): columns 32..48, rows 0..16
    torch.testing.assert_close(out[0], probs[0, :, 32:48, 0:16])
    torch.testing.assert_close(out[1], probs[1, :, 0:16, 32:48])


def test_crop_upsampled_is_subpixel_aligned() -> None:
    ramp = _ramp(64, 64).expand(2, -1, -1, -1)
    off = torch.tensor([[0.5, 0.5], [0.3, 0.7]])
    out = crop_tissue(ramp, off, 4, (64, 64))
    for i in range(2):
        cx, cy = off[i].tolist()
        j = torch.arange(64, dtype=torch.float32)
        # output px j centre → tissue coordinate (in tissue px, pixel-centre convention)
        x_exp = (cx - 1 / 8) * 64 + (j + 0.5) / 4 - 0.5
        y_exp = (cy - 1 / 8) * 64 + (j + 0.5) / 4 - 0.5
        torch.testing.assert_close(out[i, 0, 5], x_exp, rtol=0, atol=1e-4)
        torch.testing.assert_close(out[i, 1, :, 5], y_exp, rtol=0, atol=1e-4)


def test_crop_near_border_is_zero_padded() -> None:
    probs = torch.ones(1, 2, 64, 64)
    out = crop_tissue(probs, torch.tensor([[0.0, 1.0]]), 4)
    assert out.shape == (1, 2, 16, 16)
    # centre on the bottom-left corner: the left half (x) and the bottom half (y) fall outside
    assert out[0, :, :8, 8:].eq(1).all()
    assert out[0, :, :, :8].eq(0).all() and out[0, :, 8:, :].eq(0).all()
    border = crop_tissue(probs, torch.tensor([[0.0, 1.0]]), 4, padding_mode="border")
    assert border.eq(1).all()


def test_place_in_tissue_inverts_crop() -> None:
    cell_map = torch.rand(2, 3, 64, 64)
    placed = place_in_tissue(cell_map, OFFSETS, 4, (64, 64))
    assert placed.shape == (2, 3, 64, 64)
    pooled = torch.nn.functional.avg_pool2d(cell_map, 4)
    torch.testing.assert_close(placed[0, :, 32:48, 0:16], pooled[0])
    torch.testing.assert_close(placed[1, :, 0:16, 32:48], pooled[1])
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[32:48, 0:16] = True
    assert placed[0][:, ~mask].eq(0).all()
    torch.testing.assert_close(crop_tissue(placed, OFFSETS, 4), pooled)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["pred_to_inter2", "pred_to_input", "feature_sharing"])
def test_cuda_forward_two_pass_and_bf16(name: str) -> None:
    torch.manual_seed(0)
    dev = "cuda"
    model = build_model(ModelConfig(variant=name)).to(dev).eval()  # full-size ResNet-34
    cell = torch.rand(2, 3, 512, 512, device=dev)
    tissue = torch.rand(2, 3, 512, 512, device=dev)
    off = OFFSETS.to(dev)
    with torch.no_grad():
        ref = model(cell, tissue, off)["cell_logits"]
        if model.supports_two_pass:
            crop = crop_tissue(model.tissue_probs(tissue), off, 4)
            torch.testing.assert_close(
                model.cell_logits_from_tissue(cell, crop), ref, rtol=1e-4, atol=1e-4
            )
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = model(cell, tissue, off)["cell_logits"]
    assert torch.isfinite(half).all()
    assert (half.float() - ref).abs().max() < 0.5
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(cell, tissue, off)
    loss = out["cell_logits"].float().logsumexp(1).mean()
    if out["tissue_logits"] is not None:
        loss = loss + out["tissue_logits"].float().logsumexp(1).mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
