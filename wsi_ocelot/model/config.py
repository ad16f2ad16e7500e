"""The model's constructor config (saved in every checkpoint so it rebuilds itself)."""

from __future__ import annotations

from dataclasses import dataclass

from wsi_ocelot.errors import ConfigError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: The paper's model family (Table 5); ``model/variants.py`` maps each name to its builder.
VARIANT_NAMES: tuple[str, ...] = (
    "cell_only",
    "pred_to_input",
    "pred_to_inter1",
    "pred_to_inter2",
    "pred_to_output",
    "feature_sharing",
    "tissue_label_leaking",
)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a model of the paper's family (Table 5).

    ``variant`` is a key of :data:`wsi_ocelot.model.VARIANTS`; ``encoder`` any
    segmentation-models-pytorch encoder name (never with pretrained weights: nothing is
    downloaded). Inputs are RGB in [0, 1]; the model subtracts ``mean`` and divides by
    ``std`` itself. ``context_factor`` is how many times wider the tissue patch's field of
    view is than the cell patch's (OCELOT: 4). ``share_channels`` is the width of the 3×3
    exchange convolutions of ``feature_sharing`` (unused by other variants).
    """

    variant: str = "pred_to_inter2"
    encoder: str = "resnet34"
    cell_classes: int = 3
    tissue_classes: int = 2
    context_factor: int = 4
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    decoder_channels: int = 256
    encoder_output_stride: int = 16
    atrous_rates: tuple[int, int, int] = (12, 24, 36)
    aspp_dropout: float = 0.5
    share_channels: int = 64

    def __post_init__(self) -> None:
        if self.variant not in VARIANT_NAMES:
            raise ConfigError(
                None,
                f"unknown model variant {self.variant!r}",
                f"use one of {', '.join(VARIANT_NAMES)}",
            )
        if self.cell_classes < 2 or self.tissue_classes < 1:
            raise ConfigError(
                None,
                f"cell_classes must be >= 2 and tissue_classes >= 1, got {self.cell_classes}, {self.tissue_classes}",
                "use cell_classes=3 (no cell, BC, TC) and tissue_classes=2 (BG, CA)",
            )
        if self.context_factor < 1:
            raise ConfigError(
                None, f"context_factor must be >= 1, got {self.context_factor}", "use 4 (OCELOT)"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ConfigError(
                None,
                f"mean/std must be 3 values with std > 0, got {self.mean}, {self.std}",
                "use the ImageNet defaults",
            )
        if self.encoder_output_stride not in (8, 16):
            raise ConfigError(
                None,
                f"encoder_output_stride must be 8 or 16, got {self.encoder_output_stride}",
                "use 16 (DeepLabV3+ default)",
            )
        if self.decoder_channels < 1 or self.share_channels < 1:
            raise ConfigError(
                None,
                f"decoder_channels and share_channels must be >= 1, got {self.decoder_channels}, {self.share_channels}",
                "use 256 and 64",
            )
        if len(self.atrous_rates) != 3:
            raise ConfigError(
                None, f"atrous_rates must be 3 values, got {self.atrous_rates}", "use (12, 24, 36)"
            )
