"""The fast data path of training/: the process-wide decoded-pair cache, its threaded
preload, uint8 items with the colour jitter applied on the model's device, and the
study's test scoring from the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_training import make_fake_ocelot

from training.augment import IDENTITY_JITTER, AugmentConfig, apply_jitter
from training.data import OcelotDataset, clear_cache, collate
from training.evaluate_data import forward

# training runs: seconds each on a 2-core CPU (the quick loop leaves them to .ci/run)
pytestmark = pytest.mark.slow

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_ocelot(tmp_path_factory.mktemp("ocelot_fast"), n_train=6)


class _Echo(torch.nn.Module):
    needs_tissue_label = False

    def forward(
        self,
        cell: torch.Tensor,
        tissue: torch.Tensor,
        offset: torch.Tensor,
        tissue_label: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        return {"cell": cell, "tissue": tissue}


@pytest.mark.parametrize("tile", [(None, "crop"), (32, "crop"), (32, "resize")])
def test_device_augment_matches_cpu_augment(root: Path, tile: tuple[int | None, str]) -> None:
    size, mode = tile
    aug = AugmentConfig(
        jitter=1.0,
        brightness=0.3,
        contrast=0.3,
        saturation=0.3,
        hue=0.1,
        hed=1.0,
        blur=1.0,
        noise=1.0,
    )
    kw = dict(tile_size=size, tile_mode=mode, random_crop=True, augment=aug, disk_radius=3)
    cpu = OcelotDataset(root, "train", **kw)
    dev = OcelotDataset(root, "train", cache=True, device_augment=True, **kw)
    for i in range(len(cpu)):
        torch.manual_seed(100 + i)
        a = cpu[i]
        torch.manual_seed(100 + i)
        b = dev[i]
        assert (
            b["cell"].dtype == torch.uint8
            and b["tissue"].dtype == torch.uint8
            and b["jitter"].shape == (4,)
            and b["stain"].shape == (9,)
        )
        for key in ("offset", "cell_target", "tissue_label", "points"):
            assert torch.equal(a[key], b[key]), key
        batch = collate([b, b])
        out = forward(_Echo(), batch, torch.device("cpu"))
        assert out["cell"].dtype == torch.float32
        # the same draws (colour, HED, blur, noise): only the float32 rounding of the parameters differs
        assert torch.allclose(out["cell"][0], a["cell"], atol=2e-3) and torch.allclose(
            out["tissue"][1], a["tissue"], atol=2e-3
        )


def test_apply_jitter_identity_rows_untouched() -> None:
    cell = torch.rand(3, 3, 8, 8)
    tissue = torch.rand(3, 3, 8, 8)
    jitter = torch.tensor([IDENTITY_JITTER, (1.2, 0.9, 1.1, 0.05), IDENTITY_JITTER])
    c2, t2 = apply_jitter(cell, tissue, jitter)
    assert torch.equal(c2[0], cell[0]) and torch.equal(t2[2], tissue[2])
    assert not torch.allclose(c2[1], cell[1])
    c3, _ = apply_jitter(cell, tissue, torch.tensor([IDENTITY_JITTER] * 3))
    assert c3 is cell


def test_shared_cache_and_preload(root: Path) -> None:
    clear_cache()
    a = OcelotDataset(root, "train", tile_size=32, tile_mode="resize", cache=True)
    assert a.preload(threads=3) == len(a)
    b = OcelotDataset(root, "train", tile_size=32, tile_mode="resize", cache=True)
    assert b.preload() == 0  # shared: nothing left to decode
    c = OcelotDataset(root, "train", tile_size=None, cache=True)
    assert c.preload(threads=1) == len(c)  # another size, another entry
    plain = OcelotDataset(root, "train", tile_size=32, tile_mode="resize")
    assert plain.preload() == 0
    torch.manual_seed(0)
    x = plain[1]
    torch.manual_seed(0)
    y = b[1]
    assert torch.allclose(x["cell"], y["cell"], atol=0.5 / 255 + 1e-6)  # cached as uint8
    clear_cache()


def test_reproduce_cached_scoring_matches_package_evaluator(root: Path, tmp_path: Path) -> None:
    """A tiny study end to end (2 variants × 2 seeds, cached data) and the cached test
    scorer against ``wsi_ocelot.evaluation.evaluate_dataset`` on the same checkpoint."""
    import json

    from training.reproduce import cli, score_split_cached
    from training.train import load_config
    from wsi_ocelot.evaluation import evaluate_dataset

    out = tmp_path / "study"
    args = [
        "--data",
        str(root),
        "--out",
        str(out),
        "--variants",
        "cell_only",
        "pred_to_inter2",
        "--seeds",
        "0",
        "1",
        "--max-steps",
        "3",
        "--epochs",
        "1",
        "--tile-size",
        "32",
        "--tile-mode",
        "resize",
        "--encoder",
        "resnet18",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--cache",
        "--device",
        "cpu",
        "--test-split",
        "val",
        "--set",
        "model.decoder_channels=32",
        "--lr",
        "1e-3",
        "--encoder-weights",
        "none",
        "--no-estimate",
        "--set",
        "augment.hed=0",
        "--set",
        "augment.blur=0",
        "--set",
        "augment.noise=0",
        "--set",
        "report.grid=0",
    ]
    assert cli(args) == 0
    table = json.loads((out / "synthetic_table5.json").read_text())
    assert set(table["variants"]) == {"cell_only", "pred_to_inter2"}
    for v in table["variants"].values():
        assert len(v["seeds"]) == 2 and v["ci95"] is not None and 0.0 <= v["mean"] <= 1.0
    run = out / "pred_to_inter2_seed1"
    cfg = load_config(run / "config.yaml")
    cached = score_split_cached(
        run / "best.safetensors", str(root), "val", cfg, device="cpu", batch_size=2
    )
    ref = evaluate_dataset(run / "best.safetensors", root, "val", device="cpu", batch_size=2)
    assert cached["num_images"] == ref["num_images"] == 2
    assert cached["radius_px"] == pytest.approx(ref["radius_px"])
    assert cached["overall"]["mF1"] == pytest.approx(ref["overall"]["mF1"], abs=0.02)
    assert json.loads((run / "result.json").read_text())["test_mF1"] == cached["overall"]["mF1"]
