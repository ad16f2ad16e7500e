"""Fine-tuning on partial labels: cell masks through data, targets, loss and metric; ``--init``
(the parent's model, peaks and geometry kept, the parent and the data recorded); the few-labels
recipe (``configs/finetune.yaml``) and the model card's "validated on"."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.augment import AugmentConfig, PairSample, hflip, rot90, vflip
from training.data import OcelotDataset, choose_crop, collate, crop_pair, resize_pair
from training.losses import LossConfig, cell_loss, total_loss
from training.targets import CELL_IGNORE, disk_targets
from wsi_ocelot.config import GeometryConfig
from wsi_ocelot.errors import ConfigError
from wsi_ocelot.inference import PeakConfig
from wsi_ocelot.metrics import evaluate, points_in_mask
from wsi_ocelot.synthetic.dataset import SyntheticDatasetConfig, write_synthetic_dataset

# training runs: seconds each on a 2-core CPU (the quick loop leaves them to .ci/run)
pytestmark = pytest.mark.slow

torch.set_num_threads(1)

SIZE = 128  # px of the synthetic pairs (0.2 / 0.8 µm/px)
HALF = SIZE // 2
FINETUNE_YAML = Path(__file__).resolve().parents[1] / "configs" / "finetune.yaml"
PARENT_GEOMETRY = GeometryConfig(
    tile_size=SIZE, cell_margin=12, tissue_margin=20
)  # margins unlike geometry_for's (8 / 16)
PARENT_PEAKS = PeakConfig(min_distance=4, threshold=0.0, sigma=2.0)


def _add_half_masks(root: Path) -> None:
    """Make every pair of ``root`` labelled only in its left half: a cell_mask PNG (1 for
    x < HALF) and the ground-truth cells of the right half deleted (partial labels)."""
    for split in ("train", "val"):
        cells = root / "annotations" / split / "cell"
        (root / "annotations" / split / "cell_mask").mkdir(parents=True, exist_ok=True)
        for csv in sorted(cells.glob("*.csv")):
            mask = np.zeros((SIZE, SIZE), np.uint8)
            mask[:, :HALF] = 1
            Image.fromarray(mask).save(
                root / "annotations" / split / "cell_mask" / f"{csv.stem}.png"
            )
            rows = [line for line in csv.read_text().splitlines() if line.strip()]
            csv.write_text("".join(f"{r}\n" for r in rows if round(float(r.split(",")[0])) < HALF))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``plain``: synthetic pairs with the right half's cells deleted, no masks; ``masked``: the
    same files plus a left-half cell mask per pair (4 train, 2 val; no test split)."""
    base = tmp_path_factory.mktemp("finetune")
    masked = base / "masked"
    write_synthetic_dataset(
        masked,
        SyntheticDatasetConfig(
            seed=21,
            train=4,
            val=2,
            test=0,
            geometry=GeometryConfig(tile_size=SIZE, cell_margin=8, tissue_margin=16),
        ),
    )
    _add_half_masks(masked)
    plain = base / "plain"
    shutil.copytree(masked, plain)
    for split in ("train", "val"):
        shutil.rmtree(plain / "annotations" / split / "cell_mask")
    return {"masked": masked, "plain": plain}


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Pred-to-inter-2 checkpoint at the data's geometry, with its own margins and peak
    settings and a recorded training data name (as a model trained on OCELOT would have)."""
    from wsi_ocelot.model import ModelConfig, build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="resnet18", decoder_channels=32))
    with (
        torch.no_grad()
    ):  # an untrained head predicts "no cell" everywhere; tilt it so peaks appear
        model.cell.head[0].bias.copy_(torch.tensor([-1.0, 0.5, 0.5]))
    path = tmp_path_factory.mktemp("parent") / "parent.safetensors"
    return save_checkpoint(
        path,
        model,
        geometry=PARENT_GEOMETRY,
        peaks=PARENT_PEAKS,
        training={
            "dataset": "OCELOT stand-in",
            "data_root": "/data/ocelot",
            "config": {"disk_radius": 12.0},
        },
        metrics={"val_mF1": 0.5},
    )


# --------------------------------------------------------------------------- data and targets


def test_mask_moves_with_the_image_through_crops_flips_rotations_and_resize() -> None:
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(SIZE, SIZE, generator=g) < 0.3
    mask[:, :HALF] |= (
        torch.rand(SIZE, HALF, generator=g) < 0.5
    )  # asymmetric: a flip or rotation shows
    cell = torch.rand(3, SIZE, SIZE, generator=g) * 0.4
    cell[0] = mask.float()  # the mask drawn into the image: they must stay aligned
    s = PairSample(
        cell=cell,
        tissue=torch.rand(3, SIZE, SIZE, generator=g),
        offset=torch.tensor([0.5, 0.5], dtype=torch.float64),
        points=torch.zeros(0, 3),
        tissue_label=torch.ones(SIZE, SIZE, dtype=torch.long),
        cell_mask=mask,
    )
    outs = [hflip(s), vflip(s), rot90(s, 1), rot90(s, 3), vflip(rot90(hflip(s), 2))]
    box = choose_crop(SIZE, (0.5, 0.5), 64, 4, random=True, generator=g)
    outs.append(crop_pair(hflip(s), box, 4))
    for out in outs:
        assert out.cell_mask is not None and out.cell_mask.dtype == torch.bool
        assert torch.equal(out.cell_mask, out.cell[0] > 0.5)
    assert not torch.equal(hflip(s).cell_mask, s.cell_mask)
    half = dataclasses.replace(
        s,
        cell_mask=torch.zeros(SIZE, SIZE, dtype=torch.bool).index_fill_(
            1, torch.arange(HALF), True
        ),
    )
    small = resize_pair(half, 32)  # nearest neighbour: the left half stays the left half
    assert (
        small.cell_mask.shape == (32, 32)
        and small.cell_mask[:, :16].all()
        and not small.cell_mask[:, 16:].any()
    )


def test_masked_targets_are_ignored_outside_and_unchanged_inside(data: dict[str, Path]) -> None:
    masked = OcelotDataset(data["masked"], "train", disk_radius=6)
    plain = OcelotDataset(data["plain"], "train", disk_radius=6)
    assert masked.has_masks and masked.masked_pairs == 4 and masked.labelled_fraction() == 0.5
    assert not plain.has_masks and "cell_mask" not in plain[0]
    cells_inside = 0
    for i in range(len(masked)):
        a, b = masked[i], plain[i]
        assert a["cell_mask"][:, :HALF].all() and not a["cell_mask"][:, HALF:].any()
        assert (a["cell_target"][:, HALF:] == CELL_IGNORE).all()
        assert torch.equal(a["cell_target"][:, :HALF], b["cell_target"][:, :HALF])
        cells_inside += int((b["cell_target"][:, :HALF] > 0).sum())
    assert cells_inside > 0
    # the training path (random crops, flips, rotations, on uint8 items): mask, target and points stay aligned
    aug = OcelotDataset(
        data["masked"],
        "train",
        tile_size=64,
        random_crop=True,
        augment=AugmentConfig(jitter=0.0),
        disk_radius=6,
        device_augment=True,
    )
    for i in range(len(aug)):
        torch.manual_seed(i)
        item = aug[i]
        m = item["cell_mask"]
        assert m.shape == (64, 64) and torch.equal(item["cell_target"] == CELL_IGNORE, ~m)
        assert points_in_mask(
            item["points"].numpy(), m.numpy()
        ).all()  # every labelled cell lies inside
        assert torch.equal(item["cell_target"][m], disk_targets(item["points"], 64, 64, 6)[m])
    batch = collate([aug[0], aug[1]])
    assert batch["cell_mask"].shape == (2, 64, 64)


def test_masked_loss_outside_half_contributes_exactly_nothing(data: dict[str, Path]) -> None:
    ds = OcelotDataset(data["masked"], "train", disk_radius=6)
    batch = collate([ds[0], ds[1]])
    target = batch["cell_target"]
    cfg = LossConfig(dice_weight=0.5, tissue_weight=1.0, cell_class_weights=(0.25, 1.0, 1.0))
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, SIZE, SIZE, generator=g, requires_grad=True)
    loss = cell_loss(logits, target, cfg)
    loss.backward()
    assert (
        logits.grad is not None
        and (logits.grad[..., HALF:] == 0).all()
        and (logits.grad[..., :HALF] != 0).any()
    )
    # anything predicted outside the region: the loss does not move at all
    changed = logits.detach().clone()
    changed[..., HALF:] = 50 * torch.randn(2, 3, SIZE, SIZE - HALF, generator=g)
    assert torch.equal(cell_loss(changed, target, cfg), loss.detach())
    # = the loss of the labelled half alone (the unknown half adds neither pixels nor "no cell")
    inside = cell_loss(
        logits.detach()[..., :HALF].contiguous(), target[..., :HALF].contiguous(), cfg
    )
    assert torch.allclose(inside, loss.detach(), rtol=1e-6, atol=1e-7)
    # inside, a change does count
    moved = logits.detach().clone()
    moved[..., :HALF] += torch.randn(2, 3, SIZE, HALF, generator=g)
    assert not torch.allclose(cell_loss(moved, target, cfg), loss.detach())
    total, parts = total_loss(
        {"cell_logits": changed, "tissue_logits": torch.randn(2, 2, SIZE, SIZE, generator=g)},
        {"cell_target": target, "tissue_label": batch["tissue_label"]},
        cfg,
    )
    assert torch.isfinite(total) and torch.equal(parts["cell_loss"], loss.detach())
    # a batch labelled nowhere: zero, not NaN
    nowhere = torch.full_like(target, CELL_IGNORE)
    assert float(cell_loss(logits.detach(), nowhere, cfg)) == 0.0


# --------------------------------------------------------------------------- metric


def test_masked_metric_prediction_outside_changes_nothing_inside_does() -> None:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[:, :HALF] = True
    gt = [np.array([[10.0, 20.0, 1], [30.0, 90.0, 2]])]
    hit = np.array([[11.0, 21.0, 1, 0.9], [30.0, 88.0, 2, 0.8]])
    base = evaluate([hit], gt, masks=[mask])
    assert base.mf1 == 1.0
    outside = evaluate(
        [np.vstack([hit, [[100.0, 50.0, 1, 0.99], [HALF + 0.6, 10.0, 2, 0.7]]])], gt, masks=[mask]
    )
    assert outside.counts() == base.counts() and outside.mf1 == base.mf1
    inside = evaluate([np.vstack([hit, [[40.0, 50.0, 1, 0.99]]])], gt, masks=[mask])
    assert inside.counts()["BC"]["fp"] == 1 and inside.bc.precision < 1.0
    # without the mask the outside detection is a false positive
    assert evaluate([np.vstack([hit, [[100.0, 50.0, 1, 0.99]]])], gt).counts()["BC"]["fp"] == 1
    # a mask of None (labelled everywhere) changes nothing; masks must name ground-truth images
    assert evaluate([hit], gt, masks=[None]).counts() == evaluate([hit], gt).counts()
    with pytest.raises(ValueError, match="mask for image_1"):
        evaluate([hit], gt, masks={1: mask})


def test_evaluate_dataset_scores_within_masks_and_says_so(
    data: dict[str, Path],
    parent: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import wsi_ocelot.evaluation as ev
    from wsi_ocelot.cli import main as wsi_main
    from wsi_ocelot.datasets import list_pairs, read_cell_csv

    records = list_pairs(data["masked"], "val")
    gts = [read_cell_csv(r.cell_csv) for r in records]
    assert all(len(g) for g in gts)
    extra: dict[str, np.ndarray] = {}

    def fake_peaks(
        probs: torch.Tensor, cfg: PeakConfig
    ) -> list[torch.Tensor]:  # every GT cell found, plus `extra`
        out = []
        for g in gts[: probs.shape[0]]:
            rows = np.hstack([g, np.full((len(g), 1), 0.9)])
            out.append(torch.from_numpy(np.vstack([rows, extra.get("rows", np.zeros((0, 4)))])))
        return out

    monkeypatch.setattr(ev, "find_peaks", fake_peaks)
    kw = dict(device="cpu", batch_size=len(records))
    extra["rows"] = np.array([[100.0, 40.0, 1, 0.95], [120.0, 100.0, 2, 0.95]])  # outside the masks
    masked = ev.evaluate_dataset(parent, data["masked"], "val", **kw)
    plain = ev.evaluate_dataset(parent, data["plain"], "val", **kw)
    assert masked["overall"]["mF1"] == 1.0  # the detections outside the regions are not counted
    assert plain["overall"]["mF1"] < 1.0 and plain["masks"] is None
    m = masked["masks"]
    assert m["pairs"] == 2 and m["labelled_fraction"] == 0.5
    mpp = np.mean([r.cell_mpp for r in records])
    assert m["labelled_mm2"] == pytest.approx(2 * SIZE * HALF * mpp**2 / 1e6, rel=1e-3)
    extra["rows"] = np.array([[20.0, 40.0, 1, 0.95]])  # inside the masks, no cell there
    assert (
        ev.evaluate_dataset(parent, data["masked"], "val", **kw)["overall"]["BC"]["precision"] < 1.0
    )
    # the CLI's table says how the pairs were scored
    extra.clear()
    assert (
        wsi_main(
            [
                "evaluate",
                "--data",
                str(data["masked"]),
                "--split",
                "val",
                "--model",
                str(parent),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "2 of 2 pairs scored within region masks" in out and "mm²" in out and "population" in out


# --------------------------------------------------------------------------- --init and the recipe


def _finetune_cfg(data_root: Path, out: Path, parent: Path, **extra):  # noqa: ANN003, ANN202
    from training.train import load_config

    overrides = dict(
        data=str(data_root),
        out=str(out),
        init=str(parent),
        epochs=2,
        batch_size=2,
        tile_size=64,
        workers=0,
        device="cpu",
        cache=False,
        report={"grid": 0},
    )
    return load_config(FINETUNE_YAML, {**overrides, **extra})


def test_finetune_recipe_config() -> None:
    from training.train import load_config, lr_at

    cfg = load_config(FINETUNE_YAML)
    assert cfg.init == "demo" and cfg.lr <= 2e-4 and cfg.epochs <= 30 and cfg.augment.hed > 0
    assert (
        cfg.val_split == "val"
        and cfg.eval_every == 1
        and cfg.warmup_epochs >= 1
        and cfg.lr_schedule == "cosine"
    )
    assert cfg.encoder_lr_scale < 1.0 or cfg.freeze_encoder_epochs > 0
    lrs = [lr_at(cfg, e) for e in range(cfg.epochs)]
    assert lrs[0] < cfg.lr and max(lrs) == pytest.approx(cfg.lr) and lrs[-1] < 0.1 * cfg.lr
    with pytest.raises(ConfigError, match="warmup_epochs"):
        load_config(FINETUNE_YAML, {"warmup_epochs": -1})
    short = load_config(
        FINETUNE_YAML, {"epochs": 1}
    )  # a one-epoch smoke run: still warming up, no error
    assert lr_at(short, 0) == pytest.approx(cfg.lr / (cfg.warmup_epochs + 1))
    with pytest.raises(ConfigError, match="encoder_lr_scale"):
        load_config(FINETUNE_YAML, {"encoder_lr_scale": 2.0})


def test_init_keeps_geometry_records_parent_and_validation(
    data: dict[str, Path], parent: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from training.train import main
    from wsi_ocelot.evaluation import format_recorded, recorded_metrics
    from wsi_ocelot.model import read_checkpoint_info
    from wsi_ocelot.weights import file_sha256

    run = tmp_path / "ft"
    res = main(
        _finetune_cfg(data["masked"], run, parent, freeze_encoder_epochs=2, encoder_lr_scale=1.0)
    )
    assert res["epochs_done"] == 2 and res["best_mF1"] is not None
    p_info = read_checkpoint_info(parent)
    for name in ("best.safetensors", "last.safetensors"):
        info = read_checkpoint_info(run / name)
        assert info.geometry == PARENT_GEOMETRY  # the parent's geometry, margins included
        assert info.model == p_info.model and info.peaks == PARENT_PEAKS
        t = info.training
        assert t["parent"]["sha256"] == file_sha256(parent) and t["parent"]["path"] == str(
            parent.resolve()
        )
        assert t["parent"]["dataset"] == "OCELOT stand-in" and t["parent"]["init"] == str(parent)
        assert t["dataset"] == "wsi-ocelot synthetic" and t["data_root"] == str(
            data["masked"].resolve()
        )
        assert t["split_sizes"] == {"train": 4, "val": 2} and t["data_masks"] == {
            "train": 4,
            "val": 2,
        }
        assert t["validation"] == {
            "dataset": "wsi-ocelot synthetic",
            "root": str(data["masked"].resolve()),
            "split": "val",
            "pairs": 2,
            "masked_pairs": 2,
            "labelled_fraction": 0.5,
        }
        assert t["encoder_init"]["encoder_weights"] == "init"
        assert (
            t["parent"]["val_before"]["split"] == "val"
            and 0.0 <= t["parent"]["val_before"]["mF1"] <= 1.0
        )
    # training started from the parent's weights: the encoders were frozen for both epochs
    # (weights and BatchNorm statistics bit for bit the parent's), the decoders moved
    before, after = load_file(str(parent)), load_file(str(run / "last.safetensors"))
    enc = [k for k in before if k.startswith(("cell.encoder.", "tissue.encoder."))]
    assert enc and all(torch.equal(before[k], after[k]) for k in enc)
    assert any(
        not torch.equal(before[k], after[k]) for k in before if k.startswith("cell.decoder.")
    )
    hist = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h.get("encoders_frozen") for h in hist] == [True, True]
    assert hist[0]["lr"] < hist[1]["lr"]  # warm-up
    # the report states what it was validated on
    card = (run / "model_card.md").read_text()
    assert "Optimiser adamw at lr 0.0001 (cosine, 1 warm-up epoch(s))" in card
    assert (
        "Fine-tuned from" in card
        and "Before fine-tuning it scored val mF1" in card
        and "Validated on: wsi-ocelot synthetic, split `val`, 2 pairs, 2 of them scored within region masks"
        in card
    )
    text = format_recorded(recorded_metrics(run / "best.safetensors"))
    assert (
        "validated on: wsi-ocelot synthetic (2 pairs, masked)" in text
        and "fine-tuned from:" in text
    )
    assert (
        "2 of 2 pairs scored within region masks" in text
    )  # the card's val metric is the masked one
    assert "init: " in (run / "config.yaml").read_text()
    # --resume for a third epoch: the encoders are released (freeze_encoder_epochs 2), the parent record stays
    val_before = read_checkpoint_info(run / "last.safetensors").training["parent"]["val_before"]
    main(
        _finetune_cfg(
            data["masked"], run, parent, epochs=3, freeze_encoder_epochs=2, encoder_lr_scale=1.0
        ),
        resume=True,
    )
    third = load_file(str(run / "last.safetensors"))
    assert any(not torch.equal(before[k], third[k]) for k in enc if k.endswith(".weight"))
    t3 = read_checkpoint_info(run / "last.safetensors").training
    assert (
        t3["parent"]["val_before"] == val_before
        and t3["epoch"] == 3
        and t3["parent"]["sha256"] == file_sha256(parent)
    )
    assert [
        h.get("encoders_frozen")
        for h in map(json.loads, (run / "history.jsonl").read_text().splitlines())
    ] == [True, True, None]


def test_encoder_lr_scale_and_unfrozen_encoders_train(
    data: dict[str, Path], parent: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from training.train import encoders, main, make_optimizer
    from wsi_ocelot.model import load_model

    model, _ = load_model(parent)
    cfg = _finetune_cfg(data["masked"], tmp_path / "x", parent, encoder_lr_scale=0.1)
    opt = make_optimizer(model, cfg)
    enc_ids = {id(q) for m in encoders(model) for q in m.parameters()}
    assert [g["lr_scale"] for g in opt.param_groups] == [1.0, 0.1]
    assert {id(q) for q in opt.param_groups[1]["params"]} == enc_ids and not enc_ids & {
        id(q) for q in opt.param_groups[0]["params"]
    }
    run = tmp_path / "unfrozen"
    main(
        _finetune_cfg(
            data["masked"],
            run,
            parent,
            epochs=2,
            warmup_epochs=0,
            freeze_encoder_epochs=0,
            encoder_lr_scale=0.1,
            optimizer="adam",
            max_steps=2,
            report={"enabled": False},
        )
    )
    before, after = load_file(str(parent)), load_file(str(run / "last.safetensors"))
    assert any(
        not torch.equal(before[k], after[k])
        for k in before
        if k.startswith("cell.encoder.") and k.endswith(".weight")
    )
    state = json.loads((run / "last_state.json").read_text())
    assert [g["lr_scale"] for g in state["param_groups"]] == [1.0, 0.1]
    assert state["param_groups"][1]["lr"] == pytest.approx(0.1 * state["param_groups"][0]["lr"])


def test_init_geometry_mismatch_is_one_line(
    data: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from conftest import write_tiny_checkpoint

    from training.train import cli, main

    other = write_tiny_checkpoint(tmp_path / "p256.safetensors")  # 256 px tiles; the data has 128
    with pytest.raises(ConfigError) as err:
        main(_finetune_cfg(data["masked"], tmp_path / "bad", other))
    line = err.value.one_line()
    assert (
        "\n" not in line
        and "128 px tiles" in line
        and "256 px tiles" in line
        and str(data["masked"]) in line
    )
    assert "--like" in line and "wsi-ocelot tiles" in line
    assert not (tmp_path / "bad" / "last.safetensors").exists()
    args = [
        "--config",
        str(FINETUNE_YAML),
        "--data",
        str(data["masked"]),
        "--init",
        str(other),
        "--out",
        str(tmp_path / "bad2"),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--tile-size",
        "64",
    ]
    with caplog.at_level("ERROR"):
        assert cli(args) == 2
    assert any(
        "256 px tiles" in r.getMessage() and "--like" in r.getMessage() for r in caplog.records
    )


def test_init_model_conflict_and_missing_parent(
    data: dict[str, Path], parent: Path, tmp_path: Path
) -> None:
    from training.train import apply_init, load_config

    cfg = load_config(FINETUNE_YAML, {"init": str(parent), "encoder": "resnet50"})
    with pytest.raises(
        ConfigError,
        match="model differs from this --init checkpoint's \\(encoder 'resnet50' vs 'resnet18'\\)",
    ):
        apply_init(cfg)
    from wsi_ocelot.errors import CheckpointError

    with pytest.raises(CheckpointError):
        apply_init(load_config(FINETUNE_YAML, {"init": str(tmp_path / "nope.safetensors")}))
    same, p = apply_init(load_config(FINETUNE_YAML, {"init": str(parent)}))
    assert p is not None and same.model == p.info.model and same.peaks == PARENT_PEAKS


def test_model_card_names_the_optimizer_that_ran():
    """The model card says AdamW when AdamW ran (it said "Adam" whatever the optimizer)."""
    from training.report import card_markdown

    card = {
        "model": {"variant": "pred_to_inter2", "encoder": "resnet18"},
        "encoder_init": {"encoder_weights": None, "source": "random"},
        "geometry": {"cell_mpp": 0.2, "tissue_mpp": 0.8, "tile_size": 256, "context_factor": 4},
        "checkpoint": "best.safetensors",
        "data": {
            "dataset": "synthetic",
            "root": "data",
            "licence": "n/a",
            "mpp": {"cell": 0.2, "tissue": 0.8},
            "splits": {},
        },
        "best_epoch": 1,
        "best_val_mF1": 0.5,
        "metrics": {},
        "software": {"torch": "x"},
    }
    training = {
        "epochs": 2,
        "epochs_done": 2,
        "steps": 4,
        "batch_size": 2,
        "lr": 1e-4,
        "lr_schedule": "constant",
        "weight_decay": 0.01,
        "seed": 0,
        "tile_size": 256,
        "tile_mode": "crop",
        "amp": "auto",
        "device": "cpu",
        "augment": {},
    }
    assert ", AdamW lr 0.0001 " in card_markdown(
        {**card, "training": {**training, "optimizer": "adamw"}}
    )
    assert ", Adam lr 0.0001 " in card_markdown(
        {**card, "training": {**training, "optimizer": "adam"}}
    )
