"""The training report of a run folder: curves, an augmentation grid and a model card.

Written by :func:`training.train.main` at the end of every run (``report.enabled``):

- ``curves.png``: training loss (and validation loss) and validation mF1 per epoch, from
  ``history.jsonl``;
- ``augment_grid.png``: a few training pairs before and after the configured augmentation
  (cell and tissue image side by side: they must look like H&E, with the same stain);
- the model card (:data:`CARD_FILE`, Markdown): data and splits, MPPs, encoder and its initialisation, augmentation,
  best epoch, metrics per split and per organ (``wsi_ocelot.evaluate`` on the best
  checkpoint), software versions and the data's licence. The same facts go into the
  best checkpoint's metadata (``training.card``; ``metrics.per_split``), which is what
  ``wsi-ocelot evaluate --model CKPT`` prints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wsi_ocelot.atomic import atomic_path, write_text
from wsi_ocelot.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

CARD_FILE = "model_card.md"
OCELOT_LICENCE = "CC BY-NC 4.0 (the OCELOT release, Zenodo v1.0.1): non-commercial use only; weights trained on it carry the same restriction"
SYNTHETIC_LICENCE = "synthetic data made by `wsi-ocelot synth-dataset` (no third-party licence)"


@dataclass(frozen=True)
class ReportConfig:
    """``splits``: scored with the best checkpoint at the end of the run for the model card
    (overall and per organ; a split the dataset lacks is skipped). ``grid``: pairs shown in
    ``augment_grid.png`` (0: no grid)."""

    enabled: bool = True
    splits: tuple[str, ...] = ("val", "test")
    grid: int = 4

    def __post_init__(self) -> None:
        if self.grid < 0 or self.grid > 16:
            raise ConfigError(
                None, f"report.grid must be in [0, 16], got {self.grid}", "use e.g. report.grid: 4"
            )


# --------------------------------------------------------------------------- plots

_OPTIMIZER_NAMES = {
    "adam": "Adam",
    "adamw": "AdamW",
}  # the model card's spelling of TrainConfig.optimizer


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig: Any, path: str | os.PathLike[str], *, dpi: int) -> Path:
    """Write a matplotlib figure to ``path`` as PNG (atomically) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    _pyplot().close(fig)
    return path


def line_plot(
    path: str | os.PathLike[str],
    panels: Sequence[tuple[str, Sequence[tuple[str, Sequence[float], Sequence[float]]]]],
    *,
    title: str,
    xlabel: str,
    hline: float | None = None,
) -> Path:
    """One PNG with a panel per ``(ylabel, [(label, xs, ys), ...])``, side by side."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels, strict=True):
        for label, xs, ys in series:
            ax.plot(list(xs), list(ys), marker="o", markersize=3, label=label)
        if hline is not None and "mF1" in ylabel:
            ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save_png(fig, path, dpi=110)


def read_history(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    f = Path(run_dir) / "history.jsonl"
    if not f.is_file():
        return []
    return [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_curves(
    run_dir: str | os.PathLike[str], history: list[dict[str, Any]] | None = None
) -> Path:
    """``curves.png``: losses and validation mF1 against the epoch."""
    history = read_history(run_dir) if history is None else history
    ep = [h["epoch"] for h in history]
    losses = [("train loss", ep, [h.get("train_loss", float("nan")) for h in history])]
    val = [h for h in history if h.get("val") is not None]
    if val and val[0]["val"].get("loss") is not None:
        losses.append(("val loss", [h["epoch"] for h in val], [h["val"]["loss"] for h in val]))
    mf1 = [("val mF1", [h["epoch"] for h in val], [h["val_mF1"] for h in val])] if val else []
    return line_plot(
        Path(run_dir) / "curves.png",
        [("loss", losses), ("validation mF1", mf1)],
        title=f"{Path(run_dir).name}: training curves",
        xlabel="epoch",
    )


def write_augment_grid(
    path: str | os.PathLike[str],
    ds: Any,
    augment: Any,
    *,
    n: int,
    context_factor: int,
    seed: int = 0,
    side: int = 192,
) -> Path:
    """``n`` pairs of ``ds`` (an :class:`training.data.OcelotDataset`): cell, augmented cell,
    tissue, augmented tissue per row, with the CPU path's draws (:func:`training.augment.random_augment`)."""
    import torch.nn.functional as F

    from training.augment import random_augment

    plt = _pyplot()
    g = torch.Generator().manual_seed(seed)
    n = min(n, len(ds))
    fig, axes = plt.subplots(n, 4, figsize=(8, 2 * n + 0.4), squeeze=False)

    def show(ax: Any, img: torch.Tensor, title: str) -> None:
        small = F.interpolate(
            img[None].float(),
            size=(side, side),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0].clamp(0, 1)
        ax.imshow(small.permute(1, 2, 0).numpy())
        ax.set_title(title, fontsize=7)
        ax.axis("off")

    for row in range(n):
        index = int(torch.randint(0, len(ds), (), generator=g))
        pair = ds.load_pair(index)
        aug = random_augment(pair, augment, g, context_factor=context_factor)
        show(axes[row][0], pair.cell, f"cell {ds.records[index].id}")
        show(axes[row][1], aug.cell, "cell, augmented")
        show(axes[row][2], pair.tissue, "tissue")
        show(axes[row][3], aug.tissue, "tissue, augmented")
    fig.suptitle("augmentation (same draw on a row's cell and tissue image)", fontsize=9)
    return _save_png(fig, path, dpi=100)


# --------------------------------------------------------------------------- card


def software_versions() -> dict[str, str]:
    import numpy
    import segmentation_models_pytorch
    import timm

    import wsi_ocelot

    return {
        "wsi_ocelot": wsi_ocelot.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "segmentation_models_pytorch": segmentation_models_pytorch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(terse=True),
    }


def data_facts(root: str | os.PathLike[str], splits: Sequence[str]) -> dict[str, Any]:
    """Pairs and organs per split, MPPs, and the licence (from ``metadata.json``)."""
    from wsi_ocelot.datasets import list_pairs

    meta_file = Path(root) / "metadata.json"
    try:
        general = json.loads(meta_file.read_text(encoding="utf-8")).get("general_info") or {}
    except (OSError, ValueError):
        general = {}
    synthetic = "generator" in general or "synthetic" in str(general.get("dataset", "")).lower()
    out: dict[str, Any] = {
        "root": os.fspath(Path(root).resolve()),
        "dataset": general.get("dataset", "OCELOT layout"),
        "licence": SYNTHETIC_LICENCE if synthetic else OCELOT_LICENCE,
        "splits": {},
    }
    cell_mpp: list[float] = []
    tissue_mpp: list[float] = []
    for split in dict.fromkeys(splits):
        try:
            records = list_pairs(root, split)
        except DatasetError:  # a split the dataset does not have
            continue
        out["splits"][split] = {
            "pairs": len(records),
            "organs": dict(sorted(Counter(r.organ or "unknown" for r in records).items())),
        }
        cell_mpp += [r.cell_mpp for r in records if r.cell_mpp is not None]
        tissue_mpp += [r.tissue_mpp for r in records if r.tissue_mpp is not None]
    out["mpp"] = {
        "cell": round(sum(cell_mpp) / len(cell_mpp), 4) if cell_mpp else None,
        "tissue": round(sum(tissue_mpp) / len(tissue_mpp), 4) if tissue_mpp else None,
    }
    return out


def _fmt_score(s: dict[str, Any]) -> str:
    return (
        f"{s['mF1']:.4f} | {s['BC']['precision']:.3f} / {s['BC']['recall']:.3f} / {s['BC']['f1']:.3f} | "
        f"{s['TC']['precision']:.3f} / {s['TC']['recall']:.3f} / {s['TC']['f1']:.3f}"
    )


def card_markdown(card: dict[str, Any]) -> str:
    """The model card as Markdown (``card`` as :func:`build_card` returns it)."""
    m, d, t = card["model"], card["data"], card["training"]
    lines = [
        f"# Model card: {m['variant']} ({m['encoder']})",
        "",
        "## Model",
        "",
        f"- Variant: `{m['variant']}` (OCELOT paper Table 5), DeepLabV3+ branches, encoder `{m['encoder']}`.",
        f"- Encoder initialisation: {card['encoder_init'].get('encoder_weights')} (source: {card['encoder_init'].get('source')}"
        + (
            f", sha256 {card['encoder_init']['sha256'][:16]}…"
            if card["encoder_init"].get("sha256")
            else ""
        )
        + ").",
        f"- Working resolution: cell {card['geometry']['cell_mpp']:.4f} µm/px, tissue {card['geometry']['tissue_mpp']:.4f} µm/px, "
        f"tile {card['geometry']['tile_size']} px, context factor {card['geometry']['context_factor']}.",
        f"- Checkpoint: `{card['checkpoint']}`.",
        "",
        "## Data",
        "",
        f"- Dataset: {d['dataset']} at `{d['root']}`.",
        f"- Licence: {d['licence']}.",
        f"- Data MPPs (metadata `resized_mpp`, mean): cell {d['mpp']['cell']}, tissue {d['mpp']['tissue']} µm/px.",
        "",
        "| split | pairs | organs |",
        "| --- | ---: | --- |",
    ]
    for split, s in d["splits"].items():
        lines.append(
            f"| {split} | {s['pairs']} | {', '.join(f'{k} {v}' for k, v in s['organs'].items())} |"
        )
    aug = t["augment"]
    lines += [
        "",
        "## Training",
        "",
        f"- {t['epochs_done']} epochs ({t['steps']} optimizer steps) of {t['epochs']} configured, batch {t['batch_size']}, {_OPTIMIZER_NAMES.get(t.get('optimizer', 'adam'), t.get('optimizer'))} lr {t['lr']:g} "
        f"({t['lr_schedule']}), weight decay {t['weight_decay']:g}, seed {t['seed']}, tile {t['tile_size']} ({t['tile_mode']}), amp {t['amp']}, device {t['device']}.",
        f"- Best validation epoch: {card['best_epoch']} (val mF1 {card['best_val_mF1']}).",
        f"- Augmentation: {'on' if aug.get('enabled') else 'off'}; flips {aug.get('hflip')}/{aug.get('vflip')}, rot90 {aug.get('rot90')}, "
        f"colour jitter p {aug.get('jitter')} (b {aug.get('brightness')}, c {aug.get('contrast')}, s {aug.get('saturation')}, h {aug.get('hue')}), "
        f"HED p {aug.get('hed')} (scale ±{aug.get('hed_scale')}, shift ±{aug.get('hed_shift')} OD), blur p {aug.get('blur')} (σ {aug.get('blur_sigma')} px), "
        f"noise p {aug.get('noise')} (σ ≤ {aug.get('noise_std')}).",
        "- Report: `curves.png`, `augment_grid.png`, `history.jsonl` beside this file.",
        "",
        "## Metrics (best checkpoint; OCELOT challenge metric, `wsi_ocelot.evaluate`)",
        "",
        "| split | subset | images | mF1 | BC P / R / F1 | TC P / R / F1 |",
        "| --- | --- | ---: | ---: | --- | --- |",
    ]
    for split, r in card["metrics"].items():
        lines.append(f"| {split} | all | {r['num_images']} | {_fmt_score(r['overall'])} |")
        counts = d["splits"].get(split, {}).get("organs", {})
        for organ, s in r["per_organ"].items():
            lines.append(f"| {split} | {organ} | {counts.get(organ, '')} | {_fmt_score(s)} |")
    lines += [
        "",
        "## Software",
        "",
        ", ".join(f"{k} {v}" for k, v in card["software"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


def build_card(
    *,
    checkpoint: Path,
    info: Any,
    data: dict[str, Any],
    training: dict[str, Any],
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """Every fact of the model card as a JSON-safe dict."""
    val = [h for h in history if h.get("val_mF1") is not None]
    best = max(val, key=lambda h: h["val_mF1"]) if val else None
    return {
        "checkpoint": os.fspath(checkpoint),
        "model": {"variant": info.model.variant, "encoder": info.model.encoder},
        "encoder_init": info.training.get("encoder_init") or {},
        "geometry": {
            k: getattr(info.geometry, k)
            for k in ("cell_mpp", "tissue_mpp", "tile_size", "context_factor")
        },
        "data": data,
        "training": training,
        "best_epoch": None if best is None else best["epoch"],
        "best_val_mF1": None if best is None else round(float(best["val_mF1"]), 4),
        "metrics": metrics,
        "software": software_versions(),
    }


def finish(run_dir: Path, cfg: Any, *, train_ds: Any, device: str) -> dict[str, Any] | None:
    """Curves, augmentation grid and model card of a finished run; the card's facts are
    written into ``best.safetensors``'s metadata too. Returns the card (None without a
    best checkpoint: then only the curves and the grid)."""
    from wsi_ocelot.evaluation import evaluate_dataset
    from wsi_ocelot.model import load_model, save_checkpoint

    rc: ReportConfig = cfg.report
    history = read_history(run_dir)
    try:
        import matplotlib  # noqa: F401

        plots = True
    except ImportError:
        plots = False
        log.warning(
            "matplotlib is not installed: no curves.png / augment_grid.png (pip install 'wsi-ocelot[train]')"
        )
    if history and plots:
        write_curves(run_dir, history)
    if plots and rc.grid and cfg.augment.enabled:
        write_augment_grid(
            run_dir / "augment_grid.png",
            train_ds,
            cfg.augment,
            n=rc.grid,
            context_factor=cfg.model.context_factor,
            seed=cfg.seed,
        )
    best = run_dir / "best.safetensors"
    if not best.is_file():
        log.info("no best.safetensors (no validation): report without a model card")
        return None
    data = data_facts(
        cfg.data, [cfg.train_split, *([cfg.val_split] if cfg.val_split else []), *rc.splits]
    )
    metrics = {}
    for split in rc.splits:
        if split not in data["splits"]:
            log.info("model card: the dataset has no %r split, not scored", split)
            continue
        metrics[split] = evaluate_dataset(
            best, cfg.data, split, device=device, runtime="torch"
        )  # the model's own numbers
    model, info = load_model(best, "cpu")
    state = history[-1] if history else {}
    training = {
        "epochs": cfg.epochs,
        "epochs_done": state.get("epoch"),
        "steps": state.get("step"),
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "lr_schedule": cfg.lr_schedule,
        "weight_decay": cfg.weight_decay,
        "seed": cfg.seed,
        "tile_size": cfg.tile_size,
        "tile_mode": cfg.tile_mode,
        "amp": cfg.amp,
        "device": device,
        "augment": dataclasses.asdict(cfg.augment),
        "encoder_weights": cfg.encoder_weights,
        "optimizer": cfg.optimizer,
    }
    card = build_card(
        checkpoint=best.resolve(),
        info=info,
        data=data,
        training=training,
        metrics=metrics,
        history=history,
    )
    write_text(run_dir / CARD_FILE, card_markdown(card))
    save_checkpoint(
        best,
        model,
        geometry=info.geometry,
        peaks=info.peaks,
        training={**info.training, "card": card},
        metrics={**info.metrics, "best_epoch": card["best_epoch"], "per_split": metrics},
    )
    log.info(
        "report: %s, %s, %s",
        run_dir / "curves.png",
        run_dir / CARD_FILE,
        "augment_grid.png" if rc.grid else "no grid",
    )
    return card
