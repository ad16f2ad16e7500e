"""Checkpoints: safetensors round-trip, self-description, and every error a user can hit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wsi_ocelot.config import GeometryConfig
from wsi_ocelot.errors import CheckpointError
from wsi_ocelot.inference import PeakConfig
from wsi_ocelot.model import CheckpointInfo, ModelConfig, build_model, load_model, save_checkpoint
from wsi_ocelot.model.checkpoint import METADATA_KEY, read_checkpoint_info

torch.set_num_threads(1)

TINY = {"encoder": "mobilenet_v2", "decoder_channels": 16, "share_channels": 8}
GEOMETRY = GeometryConfig(tile_size=64, cell_margin=8, tissue_margin=8)
OFFSETS = torch.tensor([[0.125, 0.625], [0.625, 0.125]])


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(variant="pred_to_inter2", mean=(0.5, 0.5, 0.5), **TINY))
    with torch.no_grad():  # make BatchNorm statistics non-trivial so they must round-trip too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(
        path,
        model,
        geometry=GEOMETRY,
        peaks=PeakConfig(min_distance=4),
        training={"dataset": "ocelot", "epochs": 3},
        metrics={"val_mf1": 0.7},
    )
    return path, model.eval()


def test_round_trip_gives_identical_outputs(saved) -> None:
    path, model = saved
    loaded, info = load_model(path)
    assert not loaded.training
    cell, tissue = _inputs()
    with torch.no_grad():
        a = model(cell, tissue, OFFSETS)
        b = loaded(cell, tissue, OFFSETS)
    assert torch.equal(a["cell_logits"], b["cell_logits"])
    assert torch.equal(a["tissue_logits"], b["tissue_logits"])
    assert isinstance(info, CheckpointInfo)
    assert info.model == model.config
    assert info.geometry == GEOMETRY
    assert info.peaks == PeakConfig(min_distance=4)
    assert info.training == {"dataset": "ocelot", "epochs": 3}
    assert info.metrics == {"val_mf1": 0.7}


@pytest.mark.parametrize("variant", ["feature_sharing", "cell_only"])
def test_round_trip_other_variants(tmp_path: Path, variant: str) -> None:
    torch.manual_seed(1)
    model = build_model(ModelConfig(variant=variant, **TINY)).eval()
    path = save_checkpoint(tmp_path / "m.safetensors", model, geometry=GEOMETRY, peaks=PeakConfig())
    loaded, info = load_model(path)
    assert info.model.variant == variant
    cell, tissue = _inputs()
    with torch.no_grad():
        assert torch.equal(
            model(cell, tissue, OFFSETS)["cell_logits"],
            loaded(cell, tissue, OFFSETS)["cell_logits"],
        )


def test_metadata_layout(saved) -> None:
    path, _ = saved
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()[METADATA_KEY])
    assert meta["format_version"] == 1
    assert set(meta) >= {"model", "geometry", "peaks", "training", "metrics", "software"}
    assert meta["model"]["variant"] == "pred_to_inter2"
    assert meta["model"]["encoder"] == "mobilenet_v2"
    assert meta["model"]["mean"] == [0.5, 0.5, 0.5]
    assert meta["model"]["cell_classes"] == 3 and meta["model"]["tissue_classes"] == 2
    assert meta["geometry"] == {
        "cell_mpp": 0.2,
        "tissue_mpp": 0.8,
        "tile_size": 64,
        "context_factor": 4,
        "cell_margin": 8,
        "tissue_margin": 8,
    }
    assert meta["peaks"]["min_distance"] == 4
    assert {"wsi_ocelot", "torch"} <= set(meta["software"])
    assert read_checkpoint_info(path).raw == meta


def _load_error(path: Path) -> str:
    """Loading ``path`` fails with one line that names it and a fix: that line."""
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "Fix:" in msg
    return msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.safetensors"
    assert "not found" in _load_error(path)


def test_pickle_file_is_refused_without_unpickling(tmp_path: Path) -> None:
    for name, kwargs in (("zip.pt", {}), ("legacy.pt", {"_use_new_zipfile_serialization": False})):
        path = tmp_path / name
        torch.save({"w": torch.zeros(2)}, path, **kwargs)
        msg = _load_error(path)
        assert "pickle/torch.save" in msg and "safetensors" in msg and "save_checkpoint" in msg


def test_truncated_file(saved, tmp_path: Path) -> None:
    good = saved[0].read_bytes()
    for cut in (len(good) - 1000, 200, 5):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(good[:cut])
        assert "truncated" in _load_error(path)


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "noise.safetensors"
    path.write_bytes(b"hello, this is not a model at all" * 4)
    assert "not a safetensors file" in _load_error(path)


def test_safetensors_without_our_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    msg = _load_error(path)
    assert "without wsi-ocelot metadata" in msg and "save_checkpoint" in msg


def _rewrite(src: Path, dst: Path, edit) -> None:
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    tensors, meta = edit(tensors, meta)
    save_file(tensors, str(dst), metadata=meta)


def test_weights_that_do_not_fit_the_config(saved, tmp_path: Path) -> None:
    src = saved[0]

    def drop_and_add(t, m):
        key = sorted(t)[0]
        del t[key]
        t["extra.weight"] = torch.zeros(1)
        return t, m

    path = tmp_path / "keys.safetensors"
    _rewrite(src, path, drop_and_add)
    msg = _load_error(path)
    assert "1 missing" in msg and "1 not in the config: extra.weight" in msg

    def other_variant(t, m):
        meta = json.loads(m[METADATA_KEY])
        meta["model"]["variant"] = "pred_to_input"  # the first conv now needs 5 input channels
        return t, {METADATA_KEY: json.dumps(meta)}

    path = tmp_path / "shape.safetensors"
    _rewrite(src, path, other_variant)
    msg = _load_error(path)
    assert "wrong shape" in msg and "cell.encoder" in msg


@pytest.mark.parametrize(
    "name, edit, needle",
    [
        ("variant", lambda meta: meta["model"].update(variant="pred_to_moon"), "pred_to_moon"),
        ("newer", lambda meta: meta.update(format_version=99), "upgrade"),
    ],
)
def test_invalid_config_in_metadata(saved, tmp_path: Path, name, edit, needle) -> None:
    def bad(t, m):
        meta = json.loads(m[METADATA_KEY])
        edit(meta)
        return t, {METADATA_KEY: json.dumps(meta)}

    path = tmp_path / f"{name}.safetensors"
    _rewrite(saved[0], path, bad)
    assert needle in _load_error(path)


def test_no_torch_load_in_the_loader() -> None:
    import wsi_ocelot.model.checkpoint as mod

    src = Path(mod.__file__).read_text()
    assert "torch.load(" not in src.replace(
        "model.load_state_dict(torch.load(path, weights_only=True))", ""
    )
    assert "pickle.load" not in src
