"""``--encoder-weights imagenet|PATH|none`` (training.encoders): local files mapped onto the
smp encoders with every key checked, export of a trained branch, and the offline error."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest
import torch
import torchvision
from test_training import make_fake_ocelot

from training.encoders import export_encoder, init_encoders, read_weights_file
from wsi_ocelot.config import GeometryConfig, PeakConfig
from wsi_ocelot.errors import ConfigError
from wsi_ocelot.model import ModelConfig, build_model, read_checkpoint_info, save_checkpoint

# training runs: seconds each on a 2-core CPU (the quick loop leaves them to .ci/run)
pytestmark = pytest.mark.slow

torch.set_num_threads(1)


def _model(variant: str = "pred_to_inter2", encoder: str = "resnet18"):
    return build_model(ModelConfig(variant=variant, encoder=encoder, decoder_channels=16))


@pytest.fixture(scope="module")
def tv_resnet18(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision ResNet-18 state dict (random weights, classifier head included) written with torch.save."""
    torch.manual_seed(7)
    net = torchvision.models.resnet18()
    path = tmp_path_factory.mktemp("enc") / "resnet18_torchvision.pth"
    torch.save(net.state_dict(), path)
    return path, net.state_dict()


def test_torchvision_file_loads_into_every_branch(tv_resnet18) -> None:
    path, state = tv_resnet18
    model = _model()
    info = init_encoders(model, str(path), encoder_name="resnet18")
    assert info["branches"] == ["cell", "tissue"] and len(info["sha256"]) == 64
    for branch in (model.cell, model.tissue):
        enc = branch.encoder.state_dict()
        assert info["tensors"] == len(enc)  # every encoder key matched
        assert torch.equal(
            branch.encoder.conv1.weight, state["conv1.weight"]
        )  # the first convolution is the file's
        assert torch.equal(enc["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])


def test_wider_first_conv_gets_smp_rule(tv_resnet18) -> None:
    path, state = tv_resnet18
    model = _model("pred_to_input")  # the cell branch takes RGB + 2 tissue channels
    init_encoders(model, str(path), encoder_name="resnet18")
    w = model.cell.encoder.conv1.weight
    assert w.shape[1] == 5
    assert torch.allclose(w[:, :3], state["conv1.weight"] * 3 / 5) and torch.allclose(
        w[:, 3:], state["conv1.weight"][:, :2] * 3 / 5
    )
    assert torch.equal(model.tissue.encoder.conv1.weight, state["conv1.weight"])


def test_file_for_another_encoder_is_one_line_error(tv_resnet18, tmp_path: Path) -> None:
    path, _ = tv_resnet18
    with pytest.raises(ConfigError) as err:
        init_encoders(_model(encoder="resnet34"), str(path), encoder_name="resnet34")
    msg = str(err.value)
    assert (
        "\n" not in msg
        and str(path) in msg
        and "missing" in msg
        and "layer1.2.conv1.weight" in msg
        and "Fix:" in msg
    )
    # a ResNet-34 file into a ResNet-18: every ResNet-18 key exists, but the extra blocks are listed
    big = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), big)
    with pytest.raises(ConfigError, match=r"not in the encoder: layer1\.2\.conv1\.weight"):
        init_encoders(_model(), str(big), encoder_name="resnet18")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="cannot read the safetensors file"):
        init_encoders(_model(), str(junk), encoder_name="resnet18")
    with pytest.raises(ConfigError, match="not found"):
        init_encoders(_model(), str(tmp_path / "missing.pth"), encoder_name="resnet18")


def test_export_trained_branch_and_load_it(tmp_path: Path) -> None:
    torch.manual_seed(3)
    trained = _model("cell_only")
    ckpt = save_checkpoint(
        tmp_path / "best.safetensors",
        trained,
        geometry=GeometryConfig(),
        peaks=PeakConfig(),
        training={"epoch": 4},
        metrics={"val_mF1": 0.5},
    )
    enc_file = export_encoder(ckpt, tmp_path / "enc.safetensors", branch="cell")
    assert set(read_weights_file(enc_file)) == set(trained.cell.encoder.state_dict())
    fresh = _model("pred_to_inter2")
    init_encoders(fresh, str(enc_file), encoder_name="resnet18")
    for k, v in trained.cell.encoder.state_dict().items():
        assert torch.equal(fresh.cell.encoder.state_dict()[k], v) and torch.equal(
            fresh.tissue.encoder.state_dict()[k], v
        ), k
    # a whole checkpoint works as PATH too (its cell branch's encoder)
    fresh2 = _model("cell_only")
    init_encoders(fresh2, str(ckpt), encoder_name="resnet18")
    assert torch.equal(fresh2.cell.encoder.conv1.weight, trained.cell.encoder.conv1.weight)
    # the file records its encoder: another encoder is refused by name
    with pytest.raises(
        ConfigError, match="holds a 'resnet18' encoder, the model's encoder is 'resnet34'"
    ):
        init_encoders(_model(encoder="resnet34"), str(enc_file), encoder_name="resnet34")
    with pytest.raises(ConfigError, match="has no 'tissue' branch"):
        export_encoder(ckpt, tmp_path / "t.safetensors", branch="tissue")


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and an empty weights cache: a download fails at once, never hangs."""
    import huggingface_hub.constants as hc

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def test_imagenet_offline_is_one_line_error(offline) -> None:
    with pytest.raises(ConfigError) as err:
        init_encoders(_model(), "imagenet", encoder_name="resnet18")
    msg = str(err.value)
    assert (
        "\n" not in msg
        and "--encoder-weights imagenet" in msg
        and "--encoder-weights PATH" in msg
        and "resnet18" in msg
    )


def test_train_cli_records_init_and_refuses_offline_imagenet(
    offline, tmp_path: Path, tv_resnet18, caplog: pytest.LogCaptureFixture
) -> None:
    from training.train import cli

    root = make_fake_ocelot(tmp_path / "data")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model: {variant: cell_only, encoder: resnet18, decoder_channels: 16}\nepochs: 1\nbatch_size: 2\nworkers: 0\ntile_size: 32\n"
        "report: {enabled: false}\n"
    )
    base = ["--config", str(cfg), "--data", str(root), "--device", "cpu", "--max-steps", "1"]
    with caplog.at_level(logging.ERROR):
        assert cli([*base, "--out", str(tmp_path / "a"), "--encoder-weights", "imagenet"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "--encoder-weights PATH" in errors[0] and "\n" not in errors[0]
    path, state = tv_resnet18
    assert cli([*base, "--out", str(tmp_path / "b"), "--encoder-weights", str(path)]) == 0
    info = read_checkpoint_info(tmp_path / "b" / "best.safetensors")
    init = info.training["encoder_init"]
    assert (
        init["encoder_weights"] == str(path) and init["tensors"] == len(state) - 2
    )  # all but fc.weight / fc.bias
    assert json.loads(json.dumps(init)) == init
    assert "encoder_weights: " + str(path) in (tmp_path / "b" / "config.yaml").read_text()
