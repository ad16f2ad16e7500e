"""The paper's model family (two DeepLabV3+ branches) and self-describing checkpoints.

Public API::

    ModelConfig, build_model, VARIANTS, OcelotModel, crop_tissue, place_in_tissue,
    save_checkpoint, load_model, read_checkpoint_info, CheckpointInfo
"""

from __future__ import annotations

from wsi_ocelot.model.align import crop_tissue, place_in_tissue
from wsi_ocelot.model.checkpoint import (
    CheckpointInfo,
    load_model,
    read_checkpoint_info,
    save_checkpoint,
)
from wsi_ocelot.model.config import ModelConfig
from wsi_ocelot.model.variants import VARIANTS, OcelotModel, build_model

__all__ = [
    "VARIANTS",
    "CheckpointInfo",
    "ModelConfig",
    "OcelotModel",
    "build_model",
    "crop_tissue",
    "load_model",
    "place_in_tissue",
    "read_checkpoint_info",
    "save_checkpoint",
]
