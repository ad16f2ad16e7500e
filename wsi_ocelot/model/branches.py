"""One DeepLabV3+ branch, runnable stage by stage so other maps can be joined in.

Built from segmentation-models-pytorch parts (encoder, ASPP decoder, head) with
``weights=None`` (nothing is downloaded). The stages and the injection points of the paper
(Fig. 4) are:

- ``"input"``: channels appended to the RGB input (Pred-to-input, label leaking);
- ``"encoder"``: to the deepest encoder features, output stride 16 (Pred-to-inter-1);
- ``"aspp"``: to the ASPP output, output stride 16 (Pred-to-inter-2);
- ``"decoder"``: to the decoder output, output stride 4 (Pred-to-output).

``extra`` maps a stage to the number of channels that will be concatenated there; the
following layer is widened accordingly.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.decoders.deeplabv3.decoder import (
    DeepLabV3PlusDecoder,
    SeparableConv2d,
)
from segmentation_models_pytorch.encoders import get_encoder
from torch import Tensor, nn

from wsi_ocelot.model.config import ModelConfig

STAGES: tuple[str, ...] = ("input", "encoder", "aspp", "decoder")
_HIGHRES_CHANNELS = 48  # DeepLabV3+'s projection of the stride-4 features (smp's value)


class DeepLabBranch(nn.Module):
    """DeepLabV3+ with optional extra input channels at any of :data:`STAGES`.

    Call the stages in order: ``encode`` → ``aspp`` → ``decode`` → ``head``; ``join``
    concatenates an extra map (already at the stage's spatial size) along channels.
    """

    def __init__(self, config: ModelConfig, classes: int, extra: Mapping[str, int] | None = None):
        super().__init__()
        extra = dict(extra or {})
        bad = sorted(set(extra) - set(STAGES))
        if bad:
            raise ValueError(f"unknown stage(s) {bad}; use {', '.join(STAGES)}")
        self.extra = {s: int(extra.get(s, 0)) for s in STAGES}
        self.encoder = get_encoder(
            config.encoder,
            in_channels=3 + self.extra["input"],
            depth=5,
            weights=None,
            output_stride=config.encoder_output_stride,
        )
        enc_channels = list(self.encoder.out_channels)
        enc_channels[-1] += self.extra["encoder"]
        self.decoder = DeepLabV3PlusDecoder(
            encoder_channels=enc_channels,
            encoder_depth=5,
            out_channels=config.decoder_channels,
            atrous_rates=tuple(config.atrous_rates),
            output_stride=config.encoder_output_stride,
            aspp_separable=True,
            aspp_dropout=config.aspp_dropout,
        )
        if self.extra["aspp"]:
            self.decoder.block2[0] = SeparableConv2d(
                _HIGHRES_CHANNELS + config.decoder_channels + self.extra["aspp"],
                config.decoder_channels,
                kernel_size=3,
                padding=1,
                bias=False,
            )
        self.head = SegmentationHead(
            in_channels=config.decoder_channels + self.extra["decoder"],
            out_channels=classes,
            kernel_size=1,
            upsampling=4,
        )

    @property
    def input_multiple(self) -> int:
        """Input height and width must be multiples of this (the encoder's deepest stride)."""
        return int(self.encoder.output_stride)

    def check_input(self, x: Tensor, name: str) -> None:
        m = self.input_multiple
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(
                f"{name} must be (B, 3, H, W) with H and W multiples of {m}, got shape {tuple(x.shape)}"
            )

    @staticmethod
    def join(x: Tensor, extra: Tensor | None) -> Tensor:
        """(B, C, h, w) + (B, E, h, w) → (B, C + E, h, w); ``None`` leaves ``x`` unchanged."""
        return x if extra is None else torch.cat([x, extra.to(x.dtype)], dim=1)

    def encode(self, x: Tensor) -> list[Tensor]:
        """(B, 3 + E_input, H, W) normalised input → encoder features (deepest last, stride 16)."""
        return list(self.encoder(x))

    def aspp(self, deepest: Tensor) -> Tensor:
        """(B, C_enc + E_encoder, H/16, W/16) → (B, D, H/16, W/16)."""
        return self.decoder.aspp(deepest)

    def decode(self, aspp_out: Tensor, features: list[Tensor]) -> Tensor:
        """(B, D + E_aspp, H/16, W/16) and the encoder features → (B, D, H/4, W/4)."""
        high = self.decoder.block1(features[2])
        return self.decoder.block2(torch.cat([self.decoder.up(aspp_out), high], dim=1))

    def forward(self, x: Tensor) -> Tensor:
        """Plain DeepLabV3+ (no extra channels anywhere): (B, 3, H, W) → (B, classes, H, W)."""
        feats = self.encode(x)
        return self.head(self.decode(self.aspp(feats[-1]), feats))
