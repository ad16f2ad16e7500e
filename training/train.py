"""Train a model of the paper's family on data in the OCELOT release layout.

::

    python -m training.train --config configs/pred_to_inter2.yaml --data ROOT --out RUN_DIR \
        [--epochs N] [--max-steps N] [--device D] [--seed S] [--resume] [--lr X] \
        [--batch-size B] [--tile-size T] [--workers W] [--encoder NAME]

    # fine-tuning: start from a checkpoint's weights, model and geometry (configs/finetune.yaml)
    python -m training.train --config configs/finetune.yaml --data ROOT --init CKPT|demo --out RUN_DIR

Run folder:

- ``config.yaml``: the resolved :class:`TrainConfig` (file + flags); it can be passed back as
  ``--config`` to repeat the run.
- ``history.jsonl``: one JSON line per epoch (losses, lr, validation score, time).
- ``last.safetensors`` (a full checkpoint, loadable with ``wsi_ocelot.model.load_model``),
  ``last_state.safetensors`` (the Adam moments as plain tensors) and ``last_state.json``
  (epoch, step, best score, optimizer hyper-parameters, AMP scaler): ``--resume`` continues
  from them, optimizer included. No pickle anywhere.
- ``best.safetensors``: the checkpoint with the best validation mF1 (paper §6.2: the model at
  the epoch with the best validation performance), with geometry, peak config, training
  info and metrics in its metadata.
- ``train.log``: the log.

Randomness is reseeded at every epoch from ``seed + epoch`` (global torch RNG, the sampler
and the DataLoader workers), so an interrupted run resumed with ``--resume`` draws the same
batches and augmentations as an uninterrupted one.

Fine-tuning (``init``, ``--init CKPT|demo``): the model is rebuilt from the checkpoint's own
config (variant, encoder, normalisation), its weights loaded strictly, its peak settings and
geometry kept (the data's MPPs and tile size must agree with the checkpoint's: one-line error
otherwise). Every checkpoint of the run records ``training.parent`` (path, SHA-256, the data
it was trained on) and the fine-tuning data (``dataset``, ``data_root``, ``split_sizes``,
``data_masks``). Every run records ``training.validation``: the data its best epoch was chosen
on (name, split, pairs, how many within region masks, labelled share).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader

from training.augment import AugmentConfig
from training.data import TILE_MODES, OcelotDataset, collate
from training.encoders import describe, init_encoders
from training.evaluate_data import forward, predict, score
from training.losses import LossConfig, total_loss
from training.report import CARD_FILE, ReportConfig
from training.report import finish as finish_report
from wsi_ocelot.atomic import atomic_path, write_text
from wsi_ocelot.config import GeometryConfig, PeakConfig, from_dict, load_yaml
from wsi_ocelot.errors import ConfigError, WsiOcelotError
from wsi_ocelot.evaluation import data_name
from wsi_ocelot.metrics import DISTANCE_CUTOFF
from wsi_ocelot.model import (
    CheckpointInfo,
    ModelConfig,
    OcelotModel,
    build_model,
    load_model,
    read_checkpoint_info,
    save_checkpoint,
)
from wsi_ocelot.model.device import resolve_device
from wsi_ocelot.model.precision import autocast
from wsi_ocelot.weights import file_sha256, is_demo_weights, resolve_model

log = logging.getLogger(__name__)

#: The paper's learning-rate search range (§6.2).
PAPER_LR_RANGE = (5e-5, 2e-3)
AMP_MODES = ("auto", "bf16", "fp16", "none")
LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "adamw")
#: What the data's MPPs may differ from an ``init`` checkpoint's (as ``wsi-ocelot evaluate`` allows).
GEOMETRY_MPP_TOLERANCE = 0.05
#: Geometry defaults when the metadata has no ``resized_mpp`` (nominal OCELOT).
DEFAULT_MPP = (0.2, 0.8)
STATE_JSON = "last_state.json"
STATE_TENSORS = "last_state.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. Defaults follow the paper (§6.2): ResNet-34
    DeepLabV3+ branches, Adam, 300 epochs, best epoch by validation mF1.

    ``lr`` 1e-3 (inside the paper's tuning range [5e-5, 2e-3]).
    ``encoder_weights``: how the encoders start (:mod:`training.encoders`): ``none``
    (random; the default here, nothing downloaded), ``imagenet`` (smp / timm download the
    ImageNet weights at training time; the paper configs set it) or a PATH to a local
    safetensors / torchvision / timm state dict of the same encoder.
    ``max_steps`` caps the optimizer steps of the whole run (None = no cap).
    ``tile_size`` (None = whole images) with ``tile_mode`` ``crop`` (random crops at the
    native resolution, geometry recomputed) or ``resize`` (both images resized); see
    :mod:`training.data`. Validation uses the deterministic centred crop unless
    ``val_full_size``. ``disk_radius`` in original cell px. ``amp``: ``auto`` = bf16 on
    CUDA when supported, else fp16 with a GradScaler; no autocast on CPU.
    ``val_split: null`` skips validation (then no ``best.safetensors`` is written).
    ``checkpoint_every``: write ``last.safetensors`` and the optimizer state every N epochs
    and after the last one (a large study sets it high: a ResNet-34 pair with its Adam
    moments is ~0.5 GB per write); ``--resume`` continues from the last one written.

    Fine-tuning (``configs/finetune.yaml``): ``init`` (``demo`` or a checkpoint path; None =
    train from ``encoder_weights``) starts from that checkpoint's weights, model, peaks and
    geometry (``model`` and ``encoder_weights`` are then taken from it). ``optimizer``
    ``adam`` (the paper) or ``adamw`` (decoupled ``weight_decay``). ``warmup_epochs``: the
    learning rate ramps linearly over the first N epochs (``lr · (e + 1) / (N + 1)``), then
    follows ``lr_schedule`` over the rest. ``encoder_lr_scale``: the encoders learn at
    ``lr × scale`` (1 = as the rest). ``freeze_encoder_epochs``: the encoders (weights and
    BatchNorm statistics) stay fixed for the first N epochs, the decoders and heads adapt.
    """

    data: str | None = None
    out: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    encoder_weights: str | None = "none"
    epochs: int = 300
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    init: str | None = None
    optimizer: str = "adam"
    warmup_epochs: int = 0
    encoder_lr_scale: float = 1.0
    freeze_encoder_epochs: int = 0
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    workers: int = 2
    cache: bool = False
    tile_size: int | None = None
    tile_mode: str = "crop"
    val_full_size: bool = False
    disk_radius: float = 5.0
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    peaks: PeakConfig = field(default_factory=PeakConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    metric_radius: float = DISTANCE_CUTOFF
    eval_every: int = 1
    log_every: int = 50
    checkpoint_every: int = 1
    train_split: str = "train"
    val_split: str | None = "val"

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, fix: str) -> ConfigError:
            return ConfigError(None, f"{name} = {value!r} is invalid", fix)

        if self.encoder_weights is not None and (
            not isinstance(self.encoder_weights, str) or not self.encoder_weights.strip()
        ):
            raise bad(
                "encoder_weights",
                self.encoder_weights,
                "use imagenet, none, or the path of a local encoder weights file",
            )
        if self.epochs < 1:
            raise bad("epochs", self.epochs, "use at least 1 epoch (the paper trains 300)")
        if self.max_steps is not None and self.max_steps < 1:
            raise bad("max_steps", self.max_steps, "use a positive number of steps or null")
        if self.batch_size < 2:
            raise bad(
                "batch_size",
                self.batch_size,
                "use at least 2: BatchNorm in the ASPP image-pooling branch needs 2 samples per batch",
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise bad(
                "lr",
                self.lr,
                f"use a learning rate in the paper's range {PAPER_LR_RANGE[0]:g}–{PAPER_LR_RANGE[1]:g}",
            )
        if self.weight_decay < 0:
            raise bad("weight_decay", self.weight_decay, "use 0 or a small positive value")
        if self.lr_schedule not in LR_SCHEDULES:
            raise bad("lr_schedule", self.lr_schedule, f"use one of {', '.join(LR_SCHEDULES)}")
        if self.init is not None and (not isinstance(self.init, str) or not self.init.strip()):
            raise bad(
                "init", self.init, "use demo, the path of a checkpoint (.safetensors), or null"
            )
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", self.optimizer, f"use one of {', '.join(OPTIMIZERS)}")
        if self.warmup_epochs < 0:
            raise bad(
                "warmup_epochs",
                self.warmup_epochs,
                "use 0 (no warm-up) or a number of epochs, e.g. 1",
            )
        if not (0.0 <= self.encoder_lr_scale <= 1.0):
            raise bad(
                "encoder_lr_scale",
                self.encoder_lr_scale,
                "use a factor in [0, 1], e.g. 0.1 (1 = the encoders learn at lr)",
            )
        if self.freeze_encoder_epochs < 0:
            raise bad(
                "freeze_encoder_epochs",
                self.freeze_encoder_epochs,
                "use 0 (never frozen) or a number of epochs",
            )
        if self.amp not in AMP_MODES:
            raise bad("amp", self.amp, f"use one of {', '.join(AMP_MODES)}")
        if self.workers < 0:
            raise bad("workers", self.workers, "use 0 (load in the main process) or more")
        if self.tile_mode not in TILE_MODES:
            raise bad("tile_mode", self.tile_mode, f"use one of {', '.join(TILE_MODES)}")
        if self.tile_size is not None and (self.tile_size < 32 or self.tile_size % 32):
            raise bad(
                "tile_size",
                self.tile_size,
                "use a multiple of 32 (the encoder's stride), e.g. 256 or 512, or null for whole images",
            )
        if self.disk_radius <= 0:
            raise bad("disk_radius", self.disk_radius, "use a radius in cell px, e.g. 5")
        if self.metric_radius <= 0:
            raise bad("metric_radius", self.metric_radius, "use 15 (px, the OCELOT challenge)")
        if self.eval_every < 1 or self.log_every < 1 or self.checkpoint_every < 1:
            raise bad(
                "eval_every/log_every/checkpoint_every",
                (self.eval_every, self.log_every, self.checkpoint_every),
                "use positive integers",
            )


# --------------------------------------------------------------------------- config


def _plain(obj: Any) -> Any:
    """Dataclasses/tuples → dicts/lists (YAML- and JSON-safe)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return _plain(cfg)


def load_config(
    path: str | os.PathLike[str] | None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file (unknown keys rejected) with top-level overrides.

    Overrides whose value is None are ignored; ``encoder`` goes into ``model.encoder``.
    """
    data = load_yaml(path) if path is not None else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    encoder = overrides.pop("encoder", None)
    if encoder is not None:
        model = dict(data.get("model") or {})
        model["encoder"] = encoder
        data["model"] = model
    for key, value in overrides.items():  # mappings merge one level deep (e.g. peaks: {sigma: 1})
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return from_dict(TrainConfig, data, source=path)


# --------------------------------------------------------------------------- helpers


def resolve_amp(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether to use a GradScaler)."""
    if device.type != "cuda":
        if mode in ("bf16",):
            return torch.bfloat16, False
        if mode == "fp16":
            raise ConfigError(
                None, "amp = 'fp16' needs a CUDA device", "use amp: auto, bf16 or none on CPU"
            )
        return None, False
    if mode == "none":
        return None, False
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16, False
    return torch.float16, True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of ``epoch`` (0-based): a linear warm-up over ``warmup_epochs``, then
    constant, or cosine from ``lr`` towards 0 over the remaining epochs."""
    w = cfg.warmup_epochs
    if epoch < w:
        return cfg.lr * (epoch + 1) / (w + 1)
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (epoch - w) / (cfg.epochs - w)))
    return cfg.lr


def encoders(model: nn.Module) -> list[nn.Module]:
    """The branches' encoders (``cell.encoder``, ``tissue.encoder`` where the variant has them)."""
    return [
        getattr(model, b).encoder
        for b in ("cell", "tissue")
        if isinstance(getattr(getattr(model, b, None), "encoder", None), nn.Module)
    ]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW; with ``encoder_lr_scale`` ≠ 1 two parameter groups (the encoders' group
    learns at ``lr × encoder_lr_scale``; each group's ``lr_scale`` is applied per epoch)."""
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    if cfg.encoder_lr_scale == 1.0:
        return cls(
            [{"params": list(model.parameters()), "lr_scale": 1.0}],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
        )
    enc_ids = {id(q) for m in encoders(model) for q in m.parameters()}
    rest = [q for q in model.parameters() if id(q) not in enc_ids]
    enc = [q for q in model.parameters() if id(q) in enc_ids]
    return cls(
        [{"params": rest, "lr_scale": 1.0}, {"params": enc, "lr_scale": cfg.encoder_lr_scale}],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )


def set_encoders_frozen(model: nn.Module, frozen: bool) -> list[nn.Module]:
    """Freeze (or release) the encoders' weights; returns the frozen modules, which the training
    loop keeps in eval mode (BatchNorm statistics fixed too)."""
    mods = encoders(model)
    for m in mods:
        for q in m.parameters():
            q.requires_grad_(not frozen)
    return mods if frozen else []


def geometry_for(ds: OcelotDataset, context_factor: int) -> GeometryConfig:
    """The checkpoint geometry: MPPs from the metadata's ``resized_mpp`` (else 0.2 / 0.8),
    scaled for ``resize`` tiles; tile size = the model-input size at that MPP (the release's
    1024 in crop mode); margins scaled from the defaults 64 / 128 at 1024 px.
    """
    mpp = ds.mpp() or DEFAULT_MPP
    scale = ds.scale
    tile = ds.out_size if ds.tile_mode == "resize" and ds.tile_size else ds.image_size
    tile -= tile % context_factor
    return GeometryConfig(
        cell_mpp=mpp[0] / scale,
        tissue_mpp=mpp[1] / scale,
        tile_size=tile,
        context_factor=context_factor,
        cell_margin=max(0, round(64 * tile / 1024)),
        tissue_margin=max(0, round(128 * tile / 1024)),
    )


def save_train_state(
    run_dir: Path,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    *,
    epoch: int,
    step: int,
    best: float | None,
    config: dict[str, Any],
) -> None:
    """Optimizer tensors → ``last_state.safetensors``; everything else → ``last_state.json``."""
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"{idx}.{name}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    with atomic_path(run_dir / STATE_TENSORS) as tmp:
        save_file(tensors, os.fspath(tmp))
    state = {
        "epoch": epoch,
        "step": step,
        "best_mF1": best,
        "param_groups": sd["param_groups"],
        "state_scalars": scalars,
        "scaler": None if scaler is None else scaler.state_dict(),
        "config": config,
    }
    write_text(run_dir / STATE_JSON, json.dumps(state, indent=1))


def load_train_state(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    device: torch.device,
) -> dict[str, Any]:
    """Restore weights, optimizer and scaler from ``run_dir``; return the JSON state."""
    from safetensors.torch import load_file

    state_json = run_dir / STATE_JSON
    if not state_json.is_file() or not (run_dir / "last.safetensors").is_file():
        raise ConfigError(
            run_dir,
            "nothing to resume (no last.safetensors / last_state.json)",
            "drop --resume to start a new run, or pass the run folder of an earlier run",
        )
    state = json.loads(state_json.read_text(encoding="utf-8"))
    loaded, _ = load_model(run_dir / "last.safetensors", "cpu")
    try:
        model.load_state_dict(loaded.state_dict())
    except RuntimeError as err:
        raise ConfigError(
            run_dir / "last.safetensors",
            f"weights do not fit the configured model ({str(err).splitlines()[0]})",
            "resume with the same config as the original run",
        ) from err
    tensors = load_file(os.fspath(run_dir / STATE_TENSORS))
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = value
    for idx, extra in state.get("state_scalars", {}).items():
        opt_state.setdefault(int(idx), {}).update(extra)
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state


# --------------------------------------------------------------------------- loops


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    cfg: TrainConfig,
    *,
    epoch: int,
    step: int,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    frozen: Sequence[nn.Module] = (),
) -> tuple[dict[str, float], int]:
    """One pass over ``loader``; stops early at ``cfg.max_steps``. Returns (mean losses, step).
    ``frozen`` modules stay in eval mode (fixed BatchNorm statistics)."""
    model.train()
    for m in frozen:
        m.eval()
    sums: dict[str, Tensor] = {}
    n = 0
    for batch in loader:
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
        with autocast(device, amp_dtype):
            outputs = forward(model, batch, device)
        targets = {
            "cell_target": batch["cell_target"].to(device, non_blocking=True),
            "tissue_label": batch["tissue_label"].to(device, non_blocking=True),
        }
        loss, parts = total_loss(outputs, targets, cfg.loss)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        step += 1
        n += 1
        for k, v in parts.items():
            sums[k] = sums.get(k, torch.zeros((), device=v.device)) + v.float()
        if step % cfg.log_every == 0:
            log.info("epoch %d step %d loss %.4f", epoch + 1, step, float(parts["loss"]))
    means = {k: float(v) / max(n, 1) for k, v in sums.items()}
    if means and not math.isfinite(means["loss"]):
        raise FloatingPointError(
            f"training loss is {means['loss']} in epoch {epoch + 1}; lower --lr or use amp: none"
        )
    means["steps"] = n
    return means, step


def evaluate(
    model: nn.Module,
    loader: DataLoader[Any],
    device: torch.device,
    cfg: TrainConfig,
    *,
    scale: float = 1.0,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Validation: peaks → points → OCELOT metric. Returns ``{"mF1", "BC", "TC", "loss"}``.

    ``scale``: model-input px per original px (the matching radius is scaled with it).
    """
    pred = predict(model, loader, device, cfg.peaks, amp_dtype=amp_dtype, loss_cfg=cfg.loss)
    result = score(pred, cfg.metric_radius * scale)
    result["loss"] = pred.loss
    return result


# --------------------------------------------------------------------------- main


def _loader(
    ds: OcelotDataset,
    cfg: TrainConfig,
    device: torch.device,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> DataLoader[Any]:
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        drop_last=shuffle,  # a last batch of 1 would break BatchNorm in training
        num_workers=cfg.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        generator=generator,
        persistent_workers=cfg.cache
        and cfg.workers > 0,  # keep each worker's decoded-pair cache across epochs
    )


def _datasets(
    cfg: TrainConfig, parent: Parent | None = None
) -> tuple[OcelotDataset, OcelotDataset | None]:
    """The training and validation datasets (uint8 images out of the workers: colour jitter
    runs on the device), decoded into memory first with ``cache``; their geometry checked
    against the ``parent`` checkpoint's first (:func:`check_geometry`)."""
    cf = cfg.model.context_factor
    train_ds = OcelotDataset(
        cfg.data,
        cfg.train_split,
        tile_size=cfg.tile_size,
        tile_mode=cfg.tile_mode,
        random_crop=True,
        augment=cfg.augment,
        disk_radius=cfg.disk_radius,
        context_factor=cf,
        cache=cfg.cache,
        device_augment=True,
    )
    val_ds = None
    if cfg.val_split is not None:
        val_tile = None if cfg.val_full_size and cfg.tile_mode == "crop" else cfg.tile_size
        val_ds = OcelotDataset(
            cfg.data,
            cfg.val_split,
            tile_size=val_tile,
            tile_mode=cfg.tile_mode,
            random_crop=False,
            augment=None,
            disk_radius=cfg.disk_radius,
            context_factor=cf,
            cache=cfg.cache,
            device_augment=True,
        )
    if parent is not None:  # before decoding anything
        check_geometry(geometry_for(train_ds, cf), parent, cfg.data)  # type: ignore[arg-type]
    if cfg.cache:  # decode once, in threads, before the loader's workers fork (they inherit it)
        t_load = time.perf_counter()
        n_loaded = sum(ds.preload() for ds in (train_ds, val_ds) if ds is not None)
        if n_loaded:
            log.info(
                "decoded %d pairs into the cache in %.1f s", n_loaded, time.perf_counter() - t_load
            )
    if len(train_ds) < cfg.batch_size:
        raise ConfigError(
            None,
            f"batch_size {cfg.batch_size} is larger than the training split ({len(train_ds)} pairs)",
            f"use --batch-size ≤ {len(train_ds)}",
        )
    return train_ds, val_ds


@dataclass(frozen=True)
class Parent:
    """The checkpoint a fine-tuning run starts from (``init``)."""

    spec: str  # as given: "demo" or a path
    path: Path
    info: CheckpointInfo

    def record(self) -> dict[str, Any]:
        """What every checkpoint of the run records as ``training.parent``."""
        t, m = self.info.training, self.info.metrics
        return {
            "init": self.spec,
            "path": os.fspath(self.path.resolve()),
            "sha256": file_sha256(self.path),
            "dataset": parent_data_name(self.info, self.path),
            "data_root": t.get("data_root"),
            "variant": self.info.model.variant,
            "encoder": self.info.model.encoder,
            "val_mF1": m.get("val_mF1"),
            "parent": t.get("parent"),
        }


def parent_data_name(info: CheckpointInfo, path: Path) -> str | None:
    """The name of the data a checkpoint was trained on: what it records (``training.dataset``,
    its card's data), the synthetic data for the demo weights, else its data folder's name."""
    t = info.training
    card_data = (t.get("card") or {}).get("data") or {}
    for name in (t.get("dataset"), card_data.get("dataset")):
        if isinstance(name, str) and name.strip():
            return name.strip()
    if is_demo_weights(path):
        return "wsi-ocelot synthetic"
    root = t.get("data_root")
    return Path(root).name if isinstance(root, str) and root.strip() else None


def apply_init(cfg: TrainConfig) -> tuple[TrainConfig, Parent | None]:
    """``cfg`` with the ``init`` checkpoint's model config and peak settings, and that
    checkpoint; ``(cfg, None)`` without ``init``. A ``model`` setting (or ``--encoder``) other
    than the default that differs from the checkpoint's is an error: the weights decide the model."""
    if cfg.init is None:
        return cfg, None
    path = resolve_model(cfg.init)
    info = read_checkpoint_info(path)  # a missing or foreign file: one line naming it
    default = ModelConfig()
    diff = [
        f"{f.name} {getattr(cfg.model, f.name)!r} vs {getattr(info.model, f.name)!r}"
        for f in dataclasses.fields(ModelConfig)
        if getattr(cfg.model, f.name) not in (getattr(default, f.name), getattr(info.model, f.name))
    ]
    if diff:  # a model setting given (not the default) that contradicts the checkpoint
        raise ConfigError(
            path,
            f"the config's model differs from this --init checkpoint's ({'; '.join(diff[:3])})",
            "drop the model section and --encoder: with --init the model is the checkpoint's",
        )
    if cfg.encoder_weights not in (None, "none"):
        log.info(
            "init %s: encoder_weights %r not used (the weights are the checkpoint's)",
            cfg.init,
            cfg.encoder_weights,
        )
    peaks = info.peaks if cfg.peaks == PeakConfig() else cfg.peaks
    if peaks != info.peaks:
        log.info("peaks from the config (%s), not the checkpoint's (%s)", cfg.peaks, info.peaks)
    parent_radius = (info.training.get("config") or {}).get("disk_radius")
    if isinstance(parent_radius, (int, float)) and abs(parent_radius - cfg.disk_radius) > 1e-6:
        log.warning(
            "disk_radius %g differs from the %g px %s was trained with: its cell head learnt disks of that size",
            cfg.disk_radius,
            parent_radius,
            cfg.init,
        )
    return dataclasses.replace(cfg, model=info.model, peaks=peaks), Parent(
        spec=cfg.init, path=path, info=info
    )


def check_geometry(
    geometry: GeometryConfig, parent: Parent, data_root: str | os.PathLike[str]
) -> None:
    """The data's geometry (:func:`geometry_for`) must be the ``init`` checkpoint's: cell and
    tissue MPP within 5 %, the same tile size. One line naming both and the fix otherwise."""
    g = parent.info.geometry
    off = [abs(geometry.cell_mpp / g.cell_mpp - 1), abs(geometry.tissue_mpp / g.tissue_mpp - 1)]
    if max(off) <= GEOMETRY_MPP_TOLERANCE and geometry.tile_size == g.tile_size:
        return
    t_mode = (parent.info.training.get("config") or {}).get(
        "tile_mode"
    ) or parent.info.training.get("tile_mode")
    also = (
        f" (or, as it was trained on resized tiles, set tile_mode: resize and tile_size: {g.tile_size})"
        if t_mode == "resize"
        else ""
    )
    raise ConfigError(
        Path(data_root),
        f"the data's geometry (cell {geometry.cell_mpp:.4f} / tissue {geometry.tissue_mpp:.4f} µm/px, {geometry.tile_size} px tiles) differs from "
        f"--init {parent.spec}'s (cell {g.cell_mpp:.4f} / tissue {g.tissue_mpp:.4f} µm/px, {g.tile_size} px tiles)",
        f"rebuild the dataset at the checkpoint's geometry: wsi-ocelot tiles ... --annotations ... --like {parent.spec}{also}",
    )


def _model(
    cfg: TrainConfig,
    train_ds: OcelotDataset,
    val_ds: OcelotDataset | None,
    device: torch.device,
    *,
    resume: bool = False,
    parent: Parent | None = None,
) -> tuple[OcelotModel, dict[str, Any]]:
    """The model on ``device`` (channels-last on CUDA), its input sizes checked against the
    encoder's stride, its encoders initialised from ``cfg.encoder_weights`` or all its weights
    from the ``parent`` checkpoint (strictly; not when resuming: the run's own weights follow).
    Returns (model, how the encoders started)."""
    if parent is not None and not resume:
        model, _ = load_model(
            parent.path, "cpu"
        )  # rebuilt from its own config, every tensor checked
        model.train()
    else:
        model = build_model(cfg.model)
    multiple = int(getattr(getattr(model, "cell", None), "input_multiple", 1))
    for what, size in (
        ("training", train_ds.out_size),
        ("validation", val_ds.out_size if val_ds else multiple),
    ):
        if size % multiple:
            raise ConfigError(
                None,
                f"{what} images are {size} px, not a multiple of the encoder stride {multiple}",
                f"set tile_size to a multiple of {multiple}",
            )
    if resume:
        last = Path(cfg.out) / "last.safetensors"  # type: ignore[arg-type]
        init = read_checkpoint_info(last).training.get("encoder_init") if last.is_file() else None
        init = init or {
            "encoder_weights": describe(cfg.encoder_weights),
            "source": "unknown (resumed)",
        }
    elif parent is not None:
        init = {
            "encoder_weights": "init",
            "source": f"the whole model from {parent.path.resolve()} (--init {parent.spec})",
            "sha256": file_sha256(parent.path),
        }
    else:
        init = init_encoders(
            model,
            cfg.encoder_weights,
            encoder_name=cfg.model.encoder,
            output_stride=cfg.model.encoder_output_stride,
        )
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model, init


def _resume(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    device: torch.device,
    resolved: dict[str, Any],
) -> tuple[int, int, float | None]:
    """Epoch, step and best validation mF1 of the run in ``run_dir``, its weights and optimizer state loaded."""
    state = load_train_state(run_dir, model, optimizer, scaler, device)
    start_epoch, step, best = int(state["epoch"]), int(state["step"]), state.get("best_mF1")
    old = {
        k: v
        for k, v in (state.get("config") or {}).items()
        if k not in ("epochs", "max_steps", "device", "workers", "out", "log_every")
    }
    new = {k: v for k, v in resolved.items() if k in old}
    if old != new:
        changed = sorted(k for k in old if old[k] != new.get(k))
        log.warning(
            "resuming with a config that differs from the original run in: %s", ", ".join(changed)
        )
    log.info("resuming %s at epoch %d, step %d (best mF1 %s)", run_dir, start_epoch + 1, step, best)
    return start_epoch, step, best


def validation_record(cfg: TrainConfig, val_ds: OcelotDataset | None) -> dict[str, Any] | None:
    """``training.validation``: the data the best epoch is chosen on (``{"dataset", "root",
    "split", "pairs", "masked_pairs", "labelled_fraction"}``), None without validation."""
    if val_ds is None or cfg.val_split is None:
        return None
    frac = val_ds.labelled_fraction()
    return {
        "dataset": data_name(cfg.data),
        "root": os.fspath(Path(cfg.data).resolve()),
        "split": cfg.val_split,
        "pairs": len(val_ds),  # type: ignore[arg-type]
        "masked_pairs": val_ds.masked_pairs,
        "labelled_fraction": None if frac is None else round(frac, 4),
    }


def _training_info(
    cfg: TrainConfig,
    train_ds: OcelotDataset,
    val_ds: OcelotDataset | None,
    resolved: dict[str, Any],
    encoder_init: dict[str, Any],
    parent: Parent | None = None,
) -> dict[str, Any]:
    """What every checkpoint of the run records about its training."""
    return {
        "encoder_init": encoder_init,
        **({"parent": parent.record()} if parent is not None else {}),
        "dataset": data_name(cfg.data),  # type: ignore[arg-type]
        "data_root": os.fspath(Path(cfg.data).resolve()),
        "split_sizes": {
            cfg.train_split: len(train_ds),
            **({cfg.val_split: len(val_ds)} if val_ds is not None and cfg.val_split else {}),
        },
        "data_masks": {
            cfg.train_split: train_ds.masked_pairs,
            **(
                {cfg.val_split: val_ds.masked_pairs} if val_ds is not None and cfg.val_split else {}
            ),
        },
        "validation": validation_record(cfg, val_ds),
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "tile_size": cfg.tile_size,
        "tile_mode": cfg.tile_mode,
        "config": resolved,
    }


@dataclass
class _Run:
    """One training run's state across epochs."""

    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    model: OcelotModel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    geometry: GeometryConfig
    info: dict[str, Any]
    resolved: dict[str, Any]
    train_loader: DataLoader
    val_loader: DataLoader | None
    val_scale: float
    gen: torch.Generator
    step: int = 0
    best: float | None = None

    def epoch(self, epoch: int) -> None:
        """Train one epoch, validate when due, save the checkpoints, append to history.jsonl."""
        cfg = self.cfg
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed + epoch)
        lr = lr_at(cfg, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * float(group.get("lr_scale", 1.0))
        frozen = set_encoders_frozen(self.model, epoch < cfg.freeze_encoder_epochs)
        self.gen.manual_seed(
            cfg.seed + epoch
        )  # the same shuffle as a fresh generator with this seed
        train_stats, self.step = train_one_epoch(
            self.model,
            self.train_loader,
            self.optimizer,
            self.device,
            cfg,
            epoch=epoch,
            step=self.step,
            amp_dtype=self.amp_dtype,
            scaler=self.scaler,
            frozen=frozen,
        )
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": self.step,
            "lr": lr,
            **{f"train_{k}": v for k, v in train_stats.items()},
        }
        if frozen:
            record["encoders_frozen"] = True
        val = None
        if self.val_loader is not None and (
            (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        ):
            val = evaluate(
                self.model,
                self.val_loader,
                self.device,
                cfg,
                scale=self.val_scale,
                amp_dtype=self.amp_dtype,
            )
            record["val"] = val
            record["val_mF1"] = val["mF1"]
        improved = val is not None and (self.best is None or val["mF1"] > self.best)
        training = {**self.info, "epoch": epoch + 1, "step": self.step}
        if improved:
            self.best = float(val["mF1"])  # type: ignore[index]
            save_checkpoint(
                self.run_dir / "best.safetensors",
                self.model,
                geometry=self.geometry,
                peaks=cfg.peaks,
                training=training,
                metrics={"val_mF1": self.best, "val": val, "split": cfg.val_split},
            )
        record["best_mF1"] = self.best
        record["time_s"] = round(time.perf_counter() - t0, 3)
        last_epoch = epoch + 1 == cfg.epochs or (
            cfg.max_steps is not None and self.step >= cfg.max_steps
        )
        if (epoch + 1) % cfg.checkpoint_every == 0 or last_epoch:
            save_checkpoint(
                self.run_dir / "last.safetensors",
                self.model,
                geometry=self.geometry,
                peaks=cfg.peaks,
                training=training,
                metrics={"val_mF1": None if val is None else val["mF1"]},
            )
            save_train_state(
                self.run_dir,
                self.optimizer,
                self.scaler,
                epoch=epoch + 1,
                step=self.step,
                best=self.best,
                config=self.resolved,
            )
        with (self.run_dir / "history.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        log.info(
            "epoch %d/%d step %d loss %.4f (cell %.4f%s) val mF1 %s best %s lr %.2g %.1f s%s",
            epoch + 1,
            cfg.epochs,
            self.step,
            train_stats.get("loss", float("nan")),
            train_stats.get("cell_loss", float("nan")),
            f", tissue {train_stats['tissue_loss']:.4f}" if "tissue_loss" in train_stats else "",
            "-" if val is None else f"{val['mF1']:.4f}",
            "-" if self.best is None else f"{self.best:.4f}",
            lr,
            record["time_s"],
            " *" if improved else "",
        )


def _parent_val_before(run: _Run, *, resume: bool) -> dict[str, Any] | None:
    """The ``init`` checkpoint's validation score on this run's validation data, before any
    fine-tuning (on ``--resume``: as the run recorded it). None without validation."""
    if run.val_loader is None:
        return None
    if resume:
        last = run.run_dir / "last.safetensors"
        rec = (read_checkpoint_info(last).training.get("parent") or {}) if last.is_file() else {}
        return rec.get("val_before")
    val = evaluate(
        run.model, run.val_loader, run.device, run.cfg, scale=run.val_scale, amp_dtype=run.amp_dtype
    )
    log.info(
        "before fine-tuning: val mF1 %.4f (the --init checkpoint on %s)",
        val["mF1"],
        run.cfg.val_split,
    )
    return {"split": run.cfg.val_split, "mF1": val["mF1"], "BC": val["BC"], "TC": val["TC"]}


def main(cfg: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) training; returns ``{"best_mF1", "epochs_done", "steps", "run_dir"}``."""
    if not cfg.data or not cfg.out:
        raise ConfigError(
            None,
            "no dataset root or run folder",
            "pass --data ROOT and --out RUN_DIR (or set data/out in the config)",
        )
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    amp_dtype, use_scaler = resolve_amp(cfg.amp, device)
    if not PAPER_LR_RANGE[0] <= cfg.lr <= PAPER_LR_RANGE[1]:
        log.warning("lr %g is outside the paper's range [%g, %g]", cfg.lr, *PAPER_LR_RANGE)
    cfg, parent = apply_init(cfg)
    seed_everything(cfg.seed)
    train_ds, val_ds = _datasets(cfg, parent)
    # a fine-tuned model keeps its parent's geometry, margins included (the data agrees within tolerance)
    geometry = (
        parent.info.geometry
        if parent is not None
        else geometry_for(train_ds, cfg.model.context_factor)
    )
    model, encoder_init = _model(cfg, train_ds, val_ds, device, resume=resume, parent=parent)
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    resolved = config_to_dict(cfg)
    start_epoch, step, best = (
        _resume(run_dir, model, optimizer, scaler, device, resolved) if resume else (0, 0, None)
    )
    write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    log.info(
        "training %s (%s) on %s: %d train / %s val pairs, %d epochs, device %s, amp %s",
        cfg.model.variant,
        cfg.model.encoder,
        cfg.data,
        len(train_ds),
        len(val_ds) if val_ds else "no",
        cfg.epochs,
        device,
        amp_dtype,
    )
    info = _training_info(cfg, train_ds, val_ds, resolved, encoder_init, parent)
    if parent is not None:
        rec = info["parent"]
        log.info(
            "fine-tuning from %s (sha256 %s…, trained on %s)",
            rec["path"],
            rec["sha256"][:12],
            rec["dataset"] or "unknown data",
        )
    if train_ds.masked_pairs:
        log.info(
            "%d of %d training pairs labelled within region masks (the loss ignores cells outside them)",
            train_ds.masked_pairs,
            len(train_ds),
        )
    if info["validation"] is not None:
        v = info["validation"]
        log.info(
            "validating on %s split %s: %d pairs%s",
            v["dataset"],
            v["split"],
            v["pairs"],
            f", {v['masked_pairs']} within region masks (labelled {100 * v['labelled_fraction']:.0f} %)"
            if v["masked_pairs"]
            else "",
        )
    val_loader = _loader(val_ds, cfg, device, shuffle=False) if val_ds is not None else None
    gen = torch.Generator()
    train_loader = _loader(
        train_ds, cfg, device, shuffle=True, generator=gen
    )  # one loader: persistent workers keep their caches
    run = _Run(
        cfg,
        run_dir,
        device,
        model,
        optimizer,
        scaler,
        amp_dtype,
        geometry,
        info,
        resolved,
        train_loader,
        val_loader,
        val_ds.scale if val_ds else 1.0,
        gen,
        step,
        best,
    )
    if parent is not None:
        info["parent"]["val_before"] = _parent_val_before(run, resume=resume)
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.max_steps is not None and run.step >= cfg.max_steps:
            log.info("max_steps %d reached", cfg.max_steps)
            break
        run.epoch(epoch)
    before = (info.get("parent") or {}).get("val_before")
    if before and run.best is not None and run.best < before["mF1"]:
        log.warning(
            "fine-tuning did not beat its starting point on %s: best val mF1 %.4f, the --init checkpoint %.4f before fine-tuning; "
            "keep using %s (or try more labelled regions, another lr)",
            cfg.val_split,
            run.best,
            before["mF1"],
            parent.spec if parent else "it",
        )
    if cfg.report.enabled:
        finish_report(run_dir, cfg, train_ds=train_ds, device=str(device))
        append_card_lineage(run_dir / CARD_FILE, info)
    state = (
        json.loads((run_dir / STATE_JSON).read_text(encoding="utf-8"))
        if (run_dir / STATE_JSON).is_file()
        else {}
    )
    return {
        "best_mF1": run.best,
        "epochs_done": int(state.get("epoch", 0)),
        "steps": run.step,
        "run_dir": os.fspath(run_dir),
    }


def card_lineage_markdown(info: dict[str, Any]) -> str:
    """The model card's section on where the weights came from and what they were validated on."""
    lines = ["## Lineage and validation data", ""]
    parent = info.get("parent")
    if parent:
        lines.append(
            f"- Fine-tuned from `{parent['path']}` (`--init {parent['init']}`, sha256 `{parent['sha256']}`), "
            f"{parent['variant']} ({parent['encoder']}) trained on {parent.get('dataset') or 'unknown data'}."
        )
        before = parent.get("val_before")
        if before:
            lines.append(
                f"- Before fine-tuning it scored val mF1 {before['mF1']:.4f} on the validation data below (the same metric, the same masks)."
            )
    else:
        lines.append(
            f"- Trained from {info.get('encoder_init', {}).get('encoder_weights')} encoder weights (no parent checkpoint)."
        )
    c = info.get("config") or {}
    if c:
        lines.append(
            f"- Optimiser {c.get('optimizer')} at lr {c.get('lr'):g} ({c.get('lr_schedule')}, {c.get('warmup_epochs')} warm-up epoch(s)), "
            f"weight decay {c.get('weight_decay'):g}; encoders at lr × {c.get('encoder_lr_scale'):g}, "
            f"frozen for the first {c.get('freeze_encoder_epochs')} epoch(s)."
        )
    sizes, masks = info.get("split_sizes") or {}, info.get("data_masks") or {}
    lines.append(
        f"- Training data: {info.get('dataset')} at `{info.get('data_root')}`: "
        + ", ".join(
            f"{split} {n} pairs"
            + (f" ({masks[split]} within region masks)" if masks.get(split) else "")
            for split, n in sizes.items()
        )
        + "."
    )
    v = info.get("validation")
    if v:
        how = (
            f", {v['masked_pairs']} of them scored within region masks (labelled {100 * v['labelled_fraction']:.0f} % of their area)"
            if v.get("masked_pairs")
            else ", labelled everywhere"
        )
        lines.append(
            f"- Validated on: {v['dataset']}, split `{v['split']}`, {v['pairs']} pairs{how}; the best epoch was chosen there."
        )
    else:
        lines.append(
            "- Validated on: nothing (no validation split): the last epoch is not a chosen one."
        )
    return "\n".join(lines) + "\n"


def append_card_lineage(card: Path, info: dict[str, Any]) -> None:
    """Add :func:`card_lineage_markdown` to a written model card (nothing without a card)."""
    if card.is_file():
        write_text(
            card,
            card.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + card_lineage_markdown(info),
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train a model of the OCELOT family (paper Table 5) on data in the OCELOT release layout.",
        epilog="example: python -m training.train --config configs/pred_to_inter2.yaml --data /data/ocelot --out runs/p2i2 --tile-size 512",
    )
    p.add_argument(
        "--config", required=True, help="YAML with TrainConfig fields (configs/<variant>.yaml)"
    )
    p.add_argument("--data", help="dataset root (metadata.json, images/, annotations/)")
    p.add_argument("--out", help="run folder (checkpoints, config.yaml, history.jsonl)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, dest="max_steps")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from last.safetensors"
    )
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument(
        "--tile-size",
        type=int,
        dest="tile_size",
        help="train on T×T crops (tile_mode crop) or resized images (tile_mode resize)",
    )
    p.add_argument(
        "--tile-mode",
        choices=TILE_MODES,
        dest="tile_mode",
        help="crop (native resolution) or resize (whole field of view, coarser MPP)",
    )
    p.add_argument("--workers", type=int)
    p.add_argument(
        "--cache",
        action="store_const",
        const=True,
        default=None,
        help="keep decoded pairs in memory across epochs",
    )
    p.add_argument("--eval-every", type=int, dest="eval_every", help="validate every N epochs")
    p.add_argument("--encoder", help="override model.encoder (e.g. resnet18 for quick runs)")
    p.add_argument(
        "--encoder-weights",
        dest="encoder_weights",
        metavar="imagenet|PATH|none",
        help="how the encoders start: imagenet (downloaded at training time), a local weights file, or none (random)",
    )
    p.add_argument(
        "--init",
        metavar="CKPT|demo",
        help="fine-tune: start from this checkpoint's weights, model, peaks and geometry (configs/finetune.yaml)",
    )
    return p.parse_args(argv)


def cli(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides = {
        k: getattr(args, k)
        for k in (
            "data",
            "out",
            "epochs",
            "max_steps",
            "device",
            "seed",
            "lr",
            "batch_size",
            "tile_size",
            "tile_mode",
            "workers",
            "cache",
            "eval_every",
            "encoder",
            "encoder_weights",
            "init",
        )
    }
    handler: logging.Handler | None = None
    try:
        cfg = load_config(args.config, overrides)
        if cfg.out:
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(Path(cfg.out) / "train.log", encoding="utf-8")
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
            logging.getLogger().addHandler(handler)
        result = main(cfg, resume=args.resume)
    except WsiOcelotError as err:
        log.error("%s", err.one_line())
        return 2
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    log.info(
        "done: best val mF1 %s, %d epochs, %d steps, %s",
        result["best_mF1"],
        result["epochs_done"],
        result["steps"],
        result["run_dir"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli())
