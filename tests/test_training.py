"""Tests of ``training/``: OCELOT-layout loader, targets, augmentation, losses, training runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.augment import (
    AugmentConfig,
    JitterParams,
    PairSample,
    color_jitter,
    footprint,
    hflip,
    random_augment,
    rot90,
    vflip,
)
from training.data import (
    OcelotDataset,
    choose_crop,
    collate,
    crop_pair,
    list_pairs,
    read_cell_csv,
    resize_pair,
)
from training.losses import LossConfig, cell_loss, masked_ce, tissue_loss, total_loss
from training.targets import disk_targets, tissue_target
from wsi_ocelot.errors import DatasetError

# training runs: seconds each on a 2-core CPU (the quick loop leaves them to .ci/run)
pytestmark = pytest.mark.slow

torch.set_num_threads(1)

SIZE = 64
ORGANS = ("kidney", "bladder")


def _write_pair(
    root: Path,
    split: str,
    id_: str,
    rng: np.random.Generator,
    *,
    n_points: int,
    mostly_unknown: bool,
) -> None:
    for sub in ("cell", "tissue"):
        (root / "images" / split / sub).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(
        root / "images" / split / "cell" / f"{id_}.jpg"
    )
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(
        root / "images" / split / "tissue" / f"{id_}.jpg"
    )
    label = np.where(rng.random((SIZE, SIZE)) < 0.5, 1, 2).astype(np.uint8)
    if mostly_unknown:
        label[:, : SIZE - 4] = 255
    else:
        label[:4, :4] = 255
    Image.fromarray(label).save(root / "annotations" / split / "tissue" / f"{id_}.png")
    lines = [
        f"{int(x)},{int(y)},{int(c)}"
        for x, y, c in zip(
            rng.integers(0, SIZE, n_points),
            rng.integers(0, SIZE, n_points),
            rng.integers(1, 3, n_points),
            strict=True,
        )
    ]
    (root / "annotations" / split / "cell" / f"{id_}.csv").write_text(
        "".join(line + "\n" for line in lines)
    )


def make_fake_ocelot(root: Path, n_train: int = 4, n_val: int = 2, seed: int = 0) -> Path:
    """A tiny dataset in the OCELOT release layout: 64×64 images, random points and masks."""
    rng = np.random.default_rng(seed)
    pairs = {}
    ids = [(f"{i:03d}", "train") for i in range(1, n_train + 1)] + [
        (f"{i:03d}", "val") for i in range(401, 401 + n_val)
    ]
    for k, (id_, split) in enumerate(ids):
        _write_pair(root, split, id_, rng, n_points=0 if k == 0 else 12, mostly_unknown=k == 1)
        ox, oy = (0.125, 0.625) if k % 2 else (0.625, 0.125)
        pairs[id_] = {
            "slide_name": f"slide{k}",
            "cell": {
                "x_start": 0,
                "y_start": 0,
                "x_end": 320,
                "y_end": 320,
                "resized_mpp_x": 0.194,
                "resized_mpp_y": 0.194,
            },
            "tissue": {
                "x_start": 0,
                "y_start": 0,
                "x_end": 1280,
                "y_end": 1280,
                "resized_mpp_x": 0.776,
                "resized_mpp_y": 0.776,
            },
            "patch_x_offset": ox,
            "patch_y_offset": oy,
            "mpp_x": 0.25,
            "mpp_y": 0.25,
            "organ": ORGANS[k % 2],
            "subset": split,
        }
    meta = {"general_info": {}, "label_info": {}, "field_description": {}, "sample_pairs": pairs}
    (root / "metadata.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="session")
def ocelot_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_ocelot(tmp_path_factory.mktemp("ocelot"))


# --------------------------------------------------------------------------- loader


def test_dataset_items(ocelot_root: Path) -> None:
    ds = OcelotDataset(ocelot_root, "train", disk_radius=3)
    assert len(ds) == 4 and ds.image_size == SIZE
    assert ds.organs == ["kidney", "bladder", "kidney", "bladder"]
    item = ds[0]
    assert item["cell"].shape == (3, SIZE, SIZE) and item["cell"].dtype == torch.float32
    assert 0.0 <= float(item["cell"].min()) and float(item["cell"].max()) <= 1.0
    assert item["tissue"].shape == (3, SIZE, SIZE)
    assert item["points"].shape == (0, 3)  # the empty CSV
    assert int(item["cell_target"].max()) == 0
    assert torch.allclose(item["offset"], torch.tensor([0.625, 0.125]))
    assert set(torch.unique(item["tissue_label"]).tolist()) <= {1, 2, 255}
    item1 = ds[1]
    assert item1["points"].shape == (12, 3)
    assert (item1["tissue_label"] == 255).float().mean() > 0.9  # the mostly-unknown mask
    batch = collate([ds[i] for i in range(3)])
    assert batch["cell"].shape == (3, 3, SIZE, SIZE) and batch["offset"].shape == (3, 2)
    assert len(batch["points"]) == 3 and batch["id"] == ["001", "002", "003"]
    mpp = ds.mpp()
    assert mpp is not None and mpp == pytest.approx((0.194, 0.776))


def test_dataset_tile_crop_and_resize(ocelot_root: Path) -> None:
    ds = OcelotDataset(ocelot_root, "train", tile_size=32, random_crop=True)
    for i in range(len(ds)):
        item = ds[i]
        assert item["cell"].shape == (3, 32, 32) and item["tissue_label"].shape == (32, 32)
        p = item["points"]
        assert ((p[:, :2] >= -0.5) & (p[:, :2] < 31.5)).all()
    rs = OcelotDataset(ocelot_root, "val", tile_size=32, tile_mode="resize")
    assert rs.scale == 0.5 and rs[0]["cell"].shape == (3, 32, 32)
    assert torch.allclose(rs[0]["offset"], torch.tensor([0.625, 0.125]))


def _break(root: Path, tmp: Path) -> Path:
    dst = tmp / "copy"
    shutil.copytree(root, dst)
    return dst


def test_dataset_errors(ocelot_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset root not found"):
        list_pairs(tmp_path / "nope", "train")
    root = _break(ocelot_root, tmp_path)
    (root / "annotations" / "train" / "cell" / "003.csv").write_text("1,2,1\n3,4\n")
    with pytest.raises(DatasetError, match=r"003\.csv: line 2"):
        OcelotDataset(root, "train")
    (root / "annotations" / "train" / "cell" / "003.csv").write_text("1,2,7\n")
    with pytest.raises(DatasetError, match="class '7'"):
        OcelotDataset(root, "train")
    (root / "annotations" / "train" / "cell" / "003.csv").write_text("x,y,class\n")
    with pytest.raises(DatasetError, match="non-numeric"):
        OcelotDataset(root, "train")
    (root / "annotations" / "train" / "cell" / "003.csv").unlink()
    with pytest.raises(DatasetError, match=r"003\.csv: cell annotation of pair 003 not found"):
        OcelotDataset(root, "train")
    meta = json.loads((root / "metadata.json").read_text())
    del meta["sample_pairs"]["402"]
    (root / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="metadata.json: no sample_pairs entry for pair '402'"):
        list_pairs(root, "val")
    (root / "metadata.json").write_text("{}")
    with pytest.raises(DatasetError, match="metadata.json: no 'sample_pairs'"):
        list_pairs(root, "val")
    (root / "metadata.json").unlink()
    with pytest.raises(DatasetError, match="metadata.json not found"):
        list_pairs(root, "val")
    shutil.rmtree(root / "annotations" / "val" / "tissue")
    with pytest.raises(
        DatasetError, match=r"val/tissue: folder of tissue annotations for split 'val' not found"
    ):
        list_pairs(root, "val")


def test_bad_tissue_png(ocelot_root: Path, tmp_path: Path) -> None:
    root = _break(ocelot_root, tmp_path)
    Image.fromarray(np.full((SIZE, SIZE), 7, np.uint8)).save(
        root / "annotations" / "val" / "tissue" / "401.png"
    )
    ds = OcelotDataset(root, "val")
    with pytest.raises(DatasetError, match=r"401\.png: tissue annotation holds value\(s\) \[7\]"):
        ds[0]


def test_read_cell_csv_blank_lines(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_text("10,20,1\n\n30,40,2\n")
    assert read_cell_csv(p).tolist() == [[10, 20, 1], [30, 40, 2]]
    p.write_text("")
    assert read_cell_csv(p).shape == (0, 3)


# --------------------------------------------------------------------------- augmentation

CF = 4


def _up(x: torch.Tensor, f: int = CF) -> torch.Tensor:
    return x.repeat_interleave(f, dim=-1).repeat_interleave(f, dim=-2)


def _label_of(tissue: torch.Tensor) -> torch.Tensor:
    """A label map that is a pixel-wise function of the tissue image (so it can be checked)."""
    lab = torch.where(tissue[0] > 0.5, 2, 1)
    return torch.where(tissue[1] > 0.9, 255, lab).long()


def synthetic_pair(seed: int, size: int = SIZE) -> PairSample:
    """A tissue image, and the cell patch cut exactly from its ×4 upsampled version."""
    g = torch.Generator().manual_seed(seed)
    tissue = torch.rand(3, size, size, generator=g)
    fp = size // CF
    fx0, fy0 = (int(v) for v in torch.randint(0, size - fp + 1, (2,), generator=g))
    offset = torch.tensor([(fx0 + fp / 2) / size, (fy0 + fp / 2) / size], dtype=torch.float64)
    cell = _up(tissue)[:, CF * fy0 : CF * fy0 + size, CF * fx0 : CF * fx0 + size]
    n = 6
    points = torch.stack(
        [
            torch.randint(0, size, (n,), generator=g).float(),
            torch.randint(0, size, (n,), generator=g).float(),
            torch.randint(1, 3, (n,), generator=g).float(),
        ],
        1,
    )
    return PairSample(
        cell=cell.clone(),
        tissue=tissue,
        offset=offset,
        points=points,
        tissue_label=_label_of(tissue),
    )


def assert_consistent(s: PairSample, *, check_label: bool = True) -> None:
    size = s.tissue.shape[-1]
    x0, y0, w = footprint(s.offset, size, CF)
    assert abs(x0 - round(x0)) < 1e-9 and abs(y0 - round(y0)) < 1e-9 and w == round(w)
    x0, y0, w = round(x0), round(y0), round(w)
    region = s.tissue[:, y0 : y0 + w, x0 : x0 + w]
    assert torch.allclose(_up(region), s.cell, atol=1e-6), (
        "cell patch is not the tissue region at the offset"
    )
    if check_label:
        assert torch.equal(s.tissue_label, _label_of(s.tissue))


def _dots(points: torch.Tensor, size: int) -> torch.Tensor:
    img = torch.zeros(3, size, size)
    for x, y, c in points.tolist():
        img[:, int(y), int(x)] = c / 2
    return img


def assert_points_follow_image(s: PairSample) -> None:
    """With a cell image holding a dot per point, the points must sit on the dots."""
    vals = s.cell[0]
    assert int((vals > 0).sum()) == len(s.points)
    for x, y, c in s.points.tolist():
        assert float(vals[int(round(y)), int(round(x))]) == pytest.approx(c / 2)


TRANSFORMS = {
    "hflip": hflip,
    "vflip": vflip,
    "rot90": lambda s: rot90(s, 1),
    "rot180": lambda s: rot90(s, 2),
    "rot270": lambda s: rot90(s, 3),
    "hflip+rot90": lambda s: rot90(hflip(s), 1),
    "vflip+rot270+hflip": lambda s: hflip(rot90(vflip(s), 3)),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_geometric_transforms_keep_pair_consistent(name: str) -> None:
    fn = TRANSFORMS[name]
    for seed in range(3):
        s = synthetic_pair(seed)
        assert_consistent(s)
        out = fn(s)
        assert_consistent(out)
        # points move with the image
        dotted = PairSample(
            cell=_dots(s.points, SIZE),
            tissue=s.tissue,
            offset=s.offset,
            points=s.points,
            tissue_label=s.tissue_label,
        )
        assert_points_follow_image(fn(dotted))


def test_transforms_move_cell_targets_with_points() -> None:
    pts = torch.tensor([[5.0, 7.0, 1.0], [30.0, 12.0, 2.0], [50.0, 50.0, 1.0], [12.0, 44.0, 2.0]])
    s = synthetic_pair(0)
    s = PairSample(
        cell=s.cell,
        tissue=s.tissue,
        offset=s.offset,
        points=pts,
        tissue_label=s.tissue_label,
        cell_target=disk_targets(pts, SIZE, SIZE, 3),
    )
    for fn in TRANSFORMS.values():
        out = fn(s)
        assert out.cell_target is not None
        assert torch.equal(out.cell_target, disk_targets(out.points, SIZE, SIZE, 3))


def test_offset_examples() -> None:
    s = synthetic_pair(1)
    ox, oy = s.offset.tolist()
    assert hflip(s).offset.tolist() == pytest.approx([1 - ox, oy])
    assert vflip(s).offset.tolist() == pytest.approx([ox, 1 - oy])
    assert rot90(s, 1).offset.tolist() == pytest.approx([oy, 1 - ox])


def test_color_jitter_same_on_both_images() -> None:
    s = synthetic_pair(2)
    out = color_jitter(s, JitterParams(brightness=1.1, contrast=0.9, saturation=1.2, hue=0.03))
    assert not torch.allclose(out.cell, s.cell)
    assert_consistent(out, check_label=False)
    assert torch.equal(out.tissue_label, s.tissue_label)


def test_random_augment_consistent() -> None:
    cfg = AugmentConfig()
    for seed in range(8):
        s = synthetic_pair(seed)
        g = torch.Generator().manual_seed(seed)
        out = random_augment(s, cfg, g)
        assert_consistent(out, check_label=False)


def test_crop_keeps_geometry_exact() -> None:
    for seed in range(6):
        s = synthetic_pair(seed)
        dotted_cell = _dots(s.points, SIZE)
        g = torch.Generator().manual_seed(seed)
        for random in (True, False):
            box = choose_crop(SIZE, tuple(s.offset.tolist()), 32, CF, random=random, generator=g)
            out = crop_pair(s, box, CF)
            assert out.cell.shape[-1] == out.tissue.shape[-1] == 32
            assert_consistent(out)
            assert_consistent(rot90(hflip(out), 1))
            dots = crop_pair(
                PairSample(
                    cell=dotted_cell,
                    tissue=s.tissue,
                    offset=s.offset,
                    points=s.points,
                    tissue_label=s.tissue_label,
                ),
                box,
                CF,
            )
            assert_points_follow_image(dots)


def test_crop_of_release_offsets() -> None:
    # release geometry: 1024 px, offsets 0.125/0.625 → the cell covers tissue [0,256) or [512,768)
    for off in ((0.125, 0.125), (0.625, 0.125), (0.625, 0.625)):
        box = choose_crop(1024, off, 256, CF, random=False)
        x0 = off[0] * 1024 - 128 + (box.cell_x0 + 128) / 4
        assert box.cell_x0 % CF == 0 and box.tissue_x0 <= x0 - 32 and x0 + 32 <= box.tissue_x0 + 256


def test_resize_maps_points() -> None:
    s = synthetic_pair(3)
    out = resize_pair(s, 32)
    assert out.cell.shape == (3, 32, 32) and torch.equal(out.offset, s.offset)
    assert torch.allclose(out.points[:, :2], (s.points[:, :2] + 0.5) / 2 - 0.5)
    assert set(torch.unique(out.tissue_label).tolist()) <= {1, 2, 255}


# --------------------------------------------------------------------------- targets


def test_disk_targets() -> None:
    t = disk_targets(torch.tensor([[10.0, 10.0, 1.0]]), 32, 32, 3)
    assert t.dtype == torch.long and t.shape == (32, 32)
    assert int((t == 1).sum()) == 29  # lattice points with x²+y² ≤ 9
    assert int(t[10, 13]) == 1 and int(t[10, 14]) == 0 and int(t[13, 10]) == 1
    assert int(disk_targets(torch.zeros(0, 3), 8, 8, 3).sum()) == 0
    # overlapping disks: every pixel takes the class of its nearest centre
    pts = torch.tensor([[10.0, 10.0, 1.0], [14.0, 10.0, 2.0]])
    t = disk_targets(pts, 32, 32, 5)
    assert (
        int(t[10, 11]) == 1 and int(t[10, 13]) == 2 and int(t[10, 18]) == 2 and int(t[10, 6]) == 1
    )
    assert int(t[10, 5]) == 1 and int(t[10, 4]) == 0
    # points outside the image are ignored
    assert int(disk_targets(torch.tensor([[-20.0, 5.0, 1.0]]), 8, 8, 3).sum()) == 0


def test_tissue_target() -> None:
    lab = torch.tensor([[1, 2], [255, 1]])
    assert tissue_target(lab).tolist() == [[0, 1], [255, 0]]


# --------------------------------------------------------------------------- losses


def test_tissue_loss_all_unknown_is_finite() -> None:
    logits = torch.randn(2, 2, 16, 16, requires_grad=True)
    label = torch.full((2, 16, 16), 255, dtype=torch.long)
    loss = tissue_loss(logits, label)
    assert torch.isfinite(loss) and float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # and inside a full loss
    out = {"cell_logits": torch.randn(2, 3, 16, 16, requires_grad=True), "tissue_logits": logits}
    batch = {"cell_target": torch.zeros(2, 16, 16, dtype=torch.long), "tissue_label": label}
    total, parts = total_loss(out, batch, LossConfig(dice_weight=1.0))
    assert torch.isfinite(total) and set(parts) == {"cell_loss", "tissue_loss", "loss"}


def test_losses_match_torch_where_defined() -> None:
    logits = torch.randn(2, 2, 8, 8)
    label = torch.randint(1, 3, (2, 8, 8))
    label[0, :4] = 255
    ref = torch.nn.functional.cross_entropy(logits, tissue_target(label), ignore_index=255)
    assert torch.allclose(tissue_loss(logits, label), ref)
    c = torch.randn(2, 3, 8, 8)
    tgt = torch.randint(0, 3, (2, 8, 8))
    w = (0.2, 1.0, 1.5)
    ref = torch.nn.functional.cross_entropy(c, tgt, weight=torch.tensor(w))
    assert torch.allclose(cell_loss(c, tgt, LossConfig(cell_class_weights=w)), ref)
    assert torch.allclose(
        masked_ce(c, tgt, ignore_index=-100), torch.nn.functional.cross_entropy(c, tgt)
    )
    # tissue logits at another resolution are resized to the label
    assert torch.isfinite(tissue_loss(torch.randn(2, 2, 4, 4), label))


# --------------------------------------------------------------------------- training runs

TINY_CONFIG = """
model:
  variant: {variant}
  encoder: resnet18
  decoder_channels: 16
  share_channels: 8
epochs: 1
batch_size: 2
workers: 0
tile_size: 32
log_every: 1
augment:
  jitter: 0.5
"""


def _tiny_config(tmp_path: Path, variant: str = "pred_to_inter2", extra: str = "") -> Path:
    p = tmp_path / f"{variant}.yaml"
    p.write_text(TINY_CONFIG.format(variant=variant) + extra)
    return p


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_train_cli_then_load_best_and_resume(ocelot_root: Path, tmp_path: Path) -> None:
    from training.train import cli
    from wsi_ocelot.model import load_model

    run = tmp_path / "run"
    cfg = _tiny_config(tmp_path)

    def args_for(out: Path) -> list[str]:
        return [
            *("--config", str(cfg), "--data", str(ocelot_root), "--out", str(out)),
            *("--device", "cpu", "--seed", "3", "--lr", "5e-4"),
        ]

    args = args_for(run)
    assert cli([*args, "--epochs", "1"]) == 0
    for name in (
        "config.yaml",
        "history.jsonl",
        "last.safetensors",
        "last_state.json",
        "last_state.safetensors",
        "best.safetensors",
        "train.log",
    ):
        assert (run / name).is_file(), name
    model, info = load_model(run / "best.safetensors", "cpu")
    assert info.model.variant == "pred_to_inter2" and info.model.encoder == "resnet18"
    assert info.geometry.cell_mpp == pytest.approx(
        0.194
    ) and info.geometry.tissue_mpp == pytest.approx(0.776)
    assert info.geometry.tile_size == SIZE  # crop mode keeps the native resolution
    assert info.training["split_sizes"] == {"train": 4, "val": 2} and info.training["seed"] == 3
    assert "val_mF1" in info.metrics
    out = model(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), torch.tensor([[0.5, 0.5]]))
    assert out["cell_logits"].shape == (1, 3, 32, 32)
    resolved = (run / "config.yaml").read_text()
    assert "lr: 0.0005" in resolved and "seed: 3" in resolved
    state1 = json.loads((run / "last_state.json").read_text())
    assert state1["epoch"] == 1 and state1["step"] == 2

    # resume for a second epoch: optimizer moments and step count continue
    assert cli([*args, "--epochs", "2", "--resume"]) == 0
    state2 = json.loads((run / "last_state.json").read_text())
    assert state2["epoch"] == 2 and state2["step"] == 4
    from safetensors.torch import load_file

    adam = load_file(str(run / "last_state.safetensors"))
    assert float(adam["0.step"]) == 4.0
    hist = _history(run)
    assert [h["epoch"] for h in hist] == [1, 2] and all("val_mF1" in h for h in hist)

    # a fresh 2-epoch run from the same seed gives the same weights as 1 + resume 1
    run_b = tmp_path / "run_b"
    assert cli([*args_for(run_b), "--epochs", "2"]) == 0
    a = load_file(str(run / "last.safetensors"))
    b = load_file(str(run_b / "last.safetensors"))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_train_variants_and_resize(ocelot_root: Path, tmp_path: Path) -> None:
    from training.train import TrainConfig, load_config, main
    from wsi_ocelot.evaluation import evaluate_dataset

    for variant in ("cell_only", "tissue_label_leaking", "feature_sharing"):
        cfg = load_config(
            _tiny_config(tmp_path, variant),
            {"data": str(ocelot_root), "out": str(tmp_path / variant), "max_steps": 1},
        )
        res = main(cfg)
        assert res["steps"] == 1 and (tmp_path / variant / "best.safetensors").is_file()
    cfg = load_config(
        _tiny_config(tmp_path, "pred_to_input", "tile_mode: resize\n"),
        {"data": str(ocelot_root), "out": str(tmp_path / "rs"), "max_steps": 2},
    )
    assert isinstance(cfg, TrainConfig)
    main(cfg)
    from wsi_ocelot.model import read_checkpoint_info

    info = read_checkpoint_info(tmp_path / "rs" / "best.safetensors")
    assert info.geometry.tile_size == 32 and info.geometry.cell_mpp == pytest.approx(0.388)
    result = evaluate_dataset(
        tmp_path / "rs" / "best.safetensors", ocelot_root, "val", batch_size=2
    )
    assert result["num_images"] == 2 and set(result["per_organ"]) == set(ORGANS)
    assert set(result["overall"]) == {"mF1", "BC", "TC"}


def test_evaluate_checkpoint_full_images(ocelot_root: Path, tmp_path: Path) -> None:
    from training.train import load_config, main
    from wsi_ocelot.evaluation import evaluate_dataset

    cfg = load_config(
        _tiny_config(tmp_path, "pred_to_inter2"),
        {"data": str(ocelot_root), "out": str(tmp_path / "r"), "max_steps": 1},
    )
    main(cfg)
    result = evaluate_dataset(
        tmp_path / "r" / "best.safetensors", ocelot_root, "train", batch_size=3
    )
    assert result["num_images"] == 4
    assert set(result["per_organ"]) == {"kidney", "bladder"}
    assert 0.0 <= result["overall"]["mF1"] <= 1.0


@pytest.mark.parametrize(
    "text, match",
    [
        ("epochs: 1\nlearning_rate: 0.1\n", "unknown key.*'learning_rate'"),
        ("model: {variant: nope}\n", "unknown model variant 'nope'"),
        ("tile_size: 50\n", "tile_size = 50"),
        ("batch_size: 1\n", "batch_size = 1"),
        ("augment: {hflip: 2}\n", "augment.hflip"),
    ],
)
def test_bad_train_config_is_a_config_error(tmp_path: Path, text: str, match: str) -> None:
    from training.train import load_config
    from wsi_ocelot.errors import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(bad)


def test_train_config_errors(tmp_path: Path, ocelot_root: Path) -> None:
    from training.train import cli, load_config, main
    from wsi_ocelot.errors import ConfigError

    cfg = load_config(
        _tiny_config(tmp_path), {"data": str(ocelot_root), "out": str(tmp_path / "x")}
    )
    with pytest.raises(ConfigError, match="nothing to resume"):
        main(cfg, resume=True)
    # the CLI turns user errors into one log line and exit code 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("augment: {hflip: 2}\n")
    assert (
        cli(["--config", str(bad), "--data", str(ocelot_root), "--out", str(tmp_path / "y")]) == 2
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["auto", "fp16"])
def test_train_cuda_amp_and_resume(ocelot_root: Path, tmp_path: Path, amp: str) -> None:
    from training.train import load_config, main
    from wsi_ocelot.evaluation import evaluate_dataset

    run = tmp_path / amp
    overrides = {"data": str(ocelot_root), "out": str(run), "device": "cuda", "workers": 2}
    cfg = load_config(_tiny_config(tmp_path, extra=f"amp: {amp}\n"), overrides)
    main(cfg)
    main(
        load_config(_tiny_config(tmp_path, extra=f"amp: {amp}\n"), {**overrides, "epochs": 2}),
        resume=True,
    )
    state = json.loads((run / "last_state.json").read_text())
    assert state["epoch"] == 2 and state["step"] == 4
    assert (state["scaler"] is not None) == (amp == "fp16")
    assert all(np.isfinite(h["train_loss"]) for h in _history(run))
    result = evaluate_dataset(
        run / "best.safetensors", ocelot_root, "val", device="cuda", batch_size=2
    )
    assert result["num_images"] == 2
