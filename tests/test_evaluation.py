"""``wsi-ocelot evaluate --data ROOT --split S --model CKPT``: a checkpoint scored on an
OCELOT-layout split, overall and per organ; and the training→evaluate path of README."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import run_cli, write_small_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evalds")
    data = root / "data"
    write_small_dataset(data, seed=9)
    run = root / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.train",
            "--config",
            "configs/pred_to_inter2.yaml",
            "--data",
            str(data),
            "--out",
            str(run),
            "--encoder",
            "resnet18",
            "--encoder-weights",
            "none",
            "--batch-size",
            "2",
            "--epochs",
            "1",
            "--max-steps",
            "2",
            "--device",
            "cpu",
            "--workers",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return data, run / "best.safetensors"


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_evaluate_data_json(trained):
    data, ckpt = trained
    proc = run_cli(
        "evaluate", "--data", str(data), "--split", "test", "--model", str(ckpt), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["num_images"] == 3 and out["split"] == "test"
    assert set(out["overall"]) == {"mF1", "BC", "TC"} and set(out["overall"]["BC"]) == {
        "precision",
        "recall",
        "f1",
    }
    meta = json.loads((data / "metadata.json").read_text())
    organs = {p["organ"] for p in meta["sample_pairs"].values() if p["subset"] == "test"}
    assert set(out["per_organ"]) == organs


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_evaluate_data_table_and_errors(trained, tmp_path):
    data, ckpt = trained
    proc = run_cli("evaluate", "--data", str(data), "--split", "val", "--model", str(ckpt))
    assert proc.returncode == 0, proc.stderr
    assert "population" in proc.stdout and "mF1" in proc.stdout
    bad = run_cli("evaluate", "--data", str(tmp_path), "--split", "test", "--model", str(ckpt))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "Fix:" in bad.stderr
    missing = run_cli(
        "evaluate", "--data", str(data), "--model", str(tmp_path / "nope.safetensors")
    )
    assert (
        missing.returncode == 2
        and "nope.safetensors" in missing.stderr
        and "Traceback" not in missing.stderr
    )


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_smoke_run_writes_report_and_evaluate_prints_card_metrics(trained):
    """The README's smoke run leaves curves, history and a model card; `evaluate --model CKPT`
    alone prints the card's metrics (read from the checkpoint, nothing run)."""
    from wsi_ocelot.model import read_checkpoint_info

    data, ckpt = trained
    run = ckpt.parent
    for name in ("curves.png", "augment_grid.png", "history.jsonl", "model_card.md"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (run / "model_card.md").read_text()
    for fact in (
        "pred_to_inter2",
        "resnet18",
        "Encoder initialisation: none",
        "Licence: synthetic",
        "µm/px",
        "Best validation epoch: 1",
        "HED p 0.5",
        "| val | all | 2 |",
        "| test | all | 3 |",
        "torch ",
    ):
        assert fact in card, fact
    info = read_checkpoint_info(ckpt)
    assert (
        info.training["card"]["best_epoch"] == 1
        and info.training["card"]["data"]["splits"]["test"]["pairs"] == 3
    )
    assert info.training["encoder_init"]["encoder_weights"] == "none"
    per_split = info.metrics["per_split"]
    assert set(per_split) == {"val", "test"} and set(per_split["test"]["per_organ"]) == set(
        info.training["card"]["data"]["splits"]["test"]["organs"]
    )
    proc = run_cli("evaluate", "--model", str(ckpt))
    assert proc.returncode == 0, proc.stderr
    assert (
        "best epoch 1" in proc.stdout
        and "on val (2 images)" in proc.stdout
        and "on test (3 images)" in proc.stdout
    )
    assert f"{per_split['test']['overall']['mF1']:.4f}" in proc.stdout
    as_json = run_cli("evaluate", "--model", str(ckpt), "--json")
    assert (
        json.loads(as_json.stdout)["per_split"]["val"]["overall"]["mF1"]
        == per_split["val"]["overall"]["mF1"]
    )
    demo = run_cli("evaluate", "--model", "demo")
    assert (
        demo.returncode == 2
        and "no per-split metrics" in demo.stderr
        and "Traceback" not in demo.stderr
    )


def test_reproduce_summary_ci():
    from training.reproduce import mean_ci95

    m, ci = mean_ci95([0.6, 0.7, 0.8])
    # sd = 0.1, t(0.975, 2) = 4.3027, ci = 4.3027 * 0.1 / sqrt(3) = 0.2484
    assert m == pytest.approx(0.7) and ci == pytest.approx(0.2484, abs=1e-4)


def test_model_demo_resolves(tmp_path):
    from wsi_ocelot.weights import demo_path, resolve_model

    assert resolve_model("demo") == demo_path() and demo_path().stat().st_size < 25 * 2**20
    assert resolve_model(tmp_path / "x.safetensors") == tmp_path / "x.safetensors"
