"""The paper's model family (Table 5), selected by name from :data:`VARIANTS`.

Every model takes RGB in [0, 1] (it normalises internally) and returns, in training:
``forward(cell, tissue, offset, tissue_label=None) -> {"cell_logits", "tissue_logits"}``.
The tissue-prediction injection models (``pred_to_*``) and ``cell_only`` also split into
the two halves the slide engine runs separately (``supports_two_pass = True``):
``tissue_probs(tissue)`` once per slide region, and
``cell_logits_from_tissue(cell, crop_tissue(probs, offset, f))`` per cell tile; the
training forward is literally those two calls, so both paths give the same logits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from wsi_ocelot.errors import ConfigError
from wsi_ocelot.model.align import crop_tissue, place_in_tissue, resize_map, tissue_label_onehot
from wsi_ocelot.model.branches import DeepLabBranch
from wsi_ocelot.model.config import VARIANT_NAMES, ModelConfig

log = logging.getLogger(__name__)

__all__ = [
    "VARIANTS",
    "CellOnlyModel",
    "FeatureSharingModel",
    "InjectionModel",
    "LabelLeakingModel",
    "OcelotModel",
    "build_model",
]


class OcelotModel(nn.Module):
    """Base class: config, internal normalisation and the capability flags the engine reads.

    Attributes
    ----------
    config
        the :class:`ModelConfig` it was built from.
    supports_two_pass
        whether ``tissue_probs`` + ``cell_logits_from_tissue`` exist
        (tissue pass once per region, cell pass per tile).
    has_tissue_branch
        whether the model predicts tissue at all.
    needs_tissue_label
        whether ``forward`` needs ``tissue_label`` (label leaking).
    """

    supports_two_pass: ClassVar[bool] = True
    has_tissue_branch: ClassVar[bool] = True
    needs_tissue_label: ClassVar[bool] = False
    mean: Tensor  # (1, 3, 1, 1) buffers, registered in __init__
    std: Tensor

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # Not persistent: rebuilt from the config, so the weights file holds weights only.
        self.register_buffer(
            "mean",
            torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1),
            persistent=False,
        )
        self.register_buffer(
            "std", torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

    @property
    def variant(self) -> str:
        return self.config.variant

    def normalise(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) RGB in [0, 1] → mean/std normalised, same shape."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def tissue_probs(self, tissue: Tensor) -> Tensor:
        """(B, 3, Ht, Wt) tissue patch in [0, 1] → (B, tissue_classes, Ht, Wt) softmax probabilities."""
        raise NotImplementedError(
            f"model variant {self.variant!r} has no stand-alone tissue branch"
        )

    def cell_logits_from_tissue(self, cell: Tensor, tissue_crop: Tensor | None) -> Tensor:
        """(B, 3, H, W) cell patch + (B, tissue_classes, h, w) cropped tissue probs → (B, cell_classes, H, W)."""
        raise NotImplementedError(
            f"model variant {self.variant!r} cannot run the cell pass on its own (supports_two_pass is False)"
        )

    def _check_pair(self, cell: Tensor, tissue: Tensor | None, offset: Tensor | None) -> None:
        b = cell.shape[0]
        if tissue is not None and tissue.shape[0] != b:
            raise ValueError(
                f"cell and tissue batches differ: {cell.shape[0]} vs {tissue.shape[0]}"
            )
        if offset is not None and tuple(offset.shape) != (b, 2):
            raise ValueError(
                f"offset must have shape ({b}, 2) holding (x, y) per sample, got {tuple(offset.shape)}"
            )


class CellOnlyModel(OcelotModel):
    """The single-task baseline: one DeepLabV3+ on the cell patch; no tissue branch."""

    has_tissue_branch = False

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.cell = DeepLabBranch(config, config.cell_classes)

    def cell_logits_from_tissue(self, cell: Tensor, tissue_crop: Tensor | None = None) -> Tensor:
        """(B, 3, H, W) → (B, cell_classes, H, W); ``tissue_crop`` is ignored (uniform engine API)."""
        self.cell.check_input(cell, "cell")
        return self.cell(self.normalise(cell))

    def forward(
        self,
        cell: Tensor,
        tissue: Tensor | None = None,
        offset: Tensor | None = None,
        tissue_label: Tensor | None = None,
    ) -> dict[str, Tensor | None]:
        """cell (B, 3, H, W) → {"cell_logits": (B, cell_classes, H, W), "tissue_logits": None}."""
        return {"cell_logits": self.cell_logits_from_tissue(cell, None), "tissue_logits": None}


class InjectionModel(OcelotModel):
    """Tissue-prediction injection (paper §5.2, Fig. 4): the tissue branch's softmax,
    cropped to the cell region and resized, is concatenated into the cell branch at
    ``stage`` (one of ``input``, ``encoder``, ``aspp``, ``decoder``).
    """

    def __init__(self, config: ModelConfig, stage: str):
        super().__init__(config)
        self.stage = stage
        self.cell = DeepLabBranch(config, config.cell_classes, extra={stage: config.tissue_classes})
        if self.has_tissue_branch:
            self.tissue = DeepLabBranch(config, config.tissue_classes)

    def tissue_probs(self, tissue: Tensor) -> Tensor:
        """(B, 3, Ht, Wt) tissue patch in [0, 1] → (B, tissue_classes, Ht, Wt) softmax probabilities."""
        return self._tissue_logits(tissue).softmax(dim=1)

    def _tissue_logits(self, tissue: Tensor) -> Tensor:
        self.tissue.check_input(tissue, "tissue")
        return self.tissue(self.normalise(tissue))

    def cell_logits_from_tissue(self, cell: Tensor, tissue_crop: Tensor | None) -> Tensor:
        """Cell pass with the tissue map already cropped to the cell region.

        Parameters
        ----------
        cell
            (B, 3, H, W) cell patch in [0, 1].
        tissue_crop
            (B, tissue_classes, h, w) tissue probabilities over exactly the cell
            patch's field of view (:func:`crop_tissue`), any h, w: resized here to the
            injection point (bilinear, anti-aliased when shrinking).

        Returns
        -------
            (B, cell_classes, H, W) logits.
        """
        self.cell.check_input(cell, "cell")
        k = self.config.tissue_classes
        if (
            tissue_crop is None
            or tissue_crop.ndim != 4
            or tissue_crop.shape[:2] != (cell.shape[0], k)
        ):
            got = None if tissue_crop is None else tuple(tissue_crop.shape)
            raise ValueError(
                f"tissue_crop must be ({cell.shape[0]}, {k}, h, w) for variant {self.variant!r}, got {got}"
            )
        return self.cell_logits_injected(
            cell, resize_map(tissue_crop, self.injection_size(cell.shape[-2:]))
        )

    def injection_size(self, cell_hw: tuple[int, int] | torch.Size) -> tuple[int, int]:
        """(h, w) of the cell branch's features at the injection point for a cell patch of
        ``cell_hw`` (multiples of the encoder's stride): the input itself, 1/stride at the
        encoder's output and the ASPP, 1/4 at the decoder."""
        h, w = (int(v) for v in cell_hw)
        if self.stage == "input":
            return h, w
        if self.stage == "decoder":
            return h // 4, w // 4
        s = self.cell.input_multiple
        return -(-h // s), -(-w // s)

    def cell_logits_injected(self, cell: Tensor, injected: Tensor) -> Tensor:
        """The cell branch with the tissue probabilities already resized to the injection
        point (:meth:`injection_size`): (B, 3, H, W) in [0, 1] + (B, tissue_classes, h, w) →
        (B, cell_classes, H, W) logits. What an exported graph of the cell pass holds
        (``inference/runtimes/``); the resize stays outside it, in torch."""
        br = self.cell
        x = self.normalise(cell)
        if self.stage == "input":
            x = br.join(x, injected)
        feats = br.encode(x)
        deep = feats[-1]
        if self.stage == "encoder":
            deep = br.join(deep, injected)
        a = br.aspp(deep)
        if self.stage == "aspp":
            a = br.join(a, injected)
        d = br.decode(a, feats)
        if self.stage == "decoder":
            d = br.join(d, injected)
        return br.head(d)

    def forward(
        self, cell: Tensor, tissue: Tensor, offset: Tensor, tissue_label: Tensor | None = None
    ) -> dict[str, Tensor | None]:
        """Training forward on OCELOT pairs.

        Parameters
        ----------
        cell
            (B, 3, H, W) cell patch in [0, 1].
        tissue
            (B, 3, Ht, Wt) tissue (context) patch in [0, 1].
        offset
            (B, 2) cell patch centre (x, y) relative to the tissue patch.
        tissue_label
            unused.

        Returns
        -------
            ``cell_logits`` (B, cell_classes, H, W), ``tissue_logits`` (B, tissue_classes, Ht, Wt).
        """
        self._check_pair(cell, tissue, offset)
        tissue_logits = self._tissue_logits(tissue)
        crop = crop_tissue(tissue_logits.softmax(dim=1), offset, self.config.context_factor)
        return {
            "cell_logits": self.cell_logits_from_tissue(cell, crop),
            "tissue_logits": tissue_logits,
        }


class LabelLeakingModel(InjectionModel):
    """Tissue-label leaking (paper §4.2, Fig. 3): the one-hot tissue *label* is cropped to the
    cell region, upsampled (nearest) and concatenated to the cell input. Analysis only: it
    needs labels, so the slide engine never runs it.
    """

    supports_two_pass = False
    has_tissue_branch = False
    needs_tissue_label = True

    def __init__(self, config: ModelConfig):
        super().__init__(config, "input")

    def tissue_probs(self, tissue: Tensor) -> Tensor:
        raise NotImplementedError(
            "tissue_label_leaking has no tissue branch (it reads tissue labels)"
        )

    def forward(
        self,
        cell: Tensor,
        tissue: Tensor | None,
        offset: Tensor,
        tissue_label: Tensor | None = None,
    ) -> dict[str, Tensor | None]:
        """cell (B, 3, H, W), offset (B, 2), tissue_label (B, Ht, Wt) long with 1 = BG, 2 = CA,
        255 = unknown (→ all-zero channels) → {"cell_logits": (B, cell_classes, H, W), "tissue_logits": None}.
        """
        if tissue_label is None:
            raise ValueError("tissue_label_leaking needs tissue_label (B, Ht, Wt) in forward")
        self._check_pair(cell, None, offset)
        if tissue_label.shape[0] != cell.shape[0]:
            raise ValueError(
                f"cell and tissue_label batches differ: {cell.shape[0]} vs {tissue_label.shape[0]}"
            )
        onehot = tissue_label_onehot(tissue_label, self.config.tissue_classes)
        crop = crop_tissue(
            onehot, offset, self.config.context_factor, cell.shape[-2:], mode="nearest"
        )
        return {"cell_logits": self.cell_logits_from_tissue(cell, crop), "tissue_logits": None}


def _share_conv(cin: int, cout: int) -> nn.Module:
    """The shallow 3×3 convolution that precedes every exchange (paper Fig. 5)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class FeatureSharingModel(OcelotModel):
    """Cell-tissue feature sharing (paper §5.3, Fig. 5–6): after the encoder, after ASPP and
    after the decoder both branches exchange features. Tissue→cell: 3×3 conv, crop the cell
    region, upsample; cell→tissue: 3×3 conv, downsample, zero-pad into the cell region. Each
    branch concatenates what it receives. The branches depend on each other, so there is no
    two-pass split (``supports_two_pass = False``).
    """

    supports_two_pass = False
    exchange_stages: ClassVar[tuple[str, ...]] = ("encoder", "aspp", "decoder")

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        s = config.share_channels
        extra = {stage: s for stage in self.exchange_stages}
        self.cell = DeepLabBranch(config, config.cell_classes, extra=extra)
        self.tissue = DeepLabBranch(config, config.tissue_classes, extra=extra)
        widths = {
            "encoder": self.cell.encoder.out_channels[-1],
            "aspp": config.decoder_channels,
            "decoder": config.decoder_channels,
        }
        self.tissue_to_cell = nn.ModuleDict(
            {k: _share_conv(widths[k], s) for k in self.exchange_stages}
        )
        self.cell_to_tissue = nn.ModuleDict(
            {k: _share_conv(widths[k], s) for k in self.exchange_stages}
        )

    def _exchange(self, stage: str, c: Tensor, t: Tensor, offset: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, h, w) cell and (B, C, ht, wt) tissue maps → both widened by ``share_channels``."""
        f = self.config.context_factor
        to_cell = crop_tissue(self.tissue_to_cell[stage](t), offset, f, c.shape[-2:])
        to_tissue = place_in_tissue(self.cell_to_tissue[stage](c), offset, f, t.shape[-2:])
        return torch.cat([c, to_cell], dim=1), torch.cat([t, to_tissue], dim=1)

    def forward(
        self, cell: Tensor, tissue: Tensor, offset: Tensor, tissue_label: Tensor | None = None
    ) -> dict[str, Tensor | None]:
        """cell (B, 3, H, W), tissue (B, 3, Ht, Wt), offset (B, 2) →
        ``cell_logits`` (B, cell_classes, H, W), ``tissue_logits`` (B, tissue_classes, Ht, Wt).
        """
        self._check_pair(cell, tissue, offset)
        self.cell.check_input(cell, "cell")
        self.tissue.check_input(tissue, "tissue")
        fc = self.cell.encode(self.normalise(cell))
        ft = self.tissue.encode(self.normalise(tissue))
        dc, dt = self._exchange("encoder", fc[-1], ft[-1], offset)
        ac, at = self._exchange("aspp", self.cell.aspp(dc), self.tissue.aspp(dt), offset)
        oc, ot = self._exchange(
            "decoder", self.cell.decode(ac, fc), self.tissue.decode(at, ft), offset
        )
        return {"cell_logits": self.cell.head(oc), "tissue_logits": self.tissue.head(ot)}


def _injection(stage: str) -> Callable[[ModelConfig], OcelotModel]:
    def build(config: ModelConfig) -> OcelotModel:
        return InjectionModel(config, stage)

    build.__name__ = f"build_injection_{stage}"
    return build


VARIANTS: dict[str, Callable[[ModelConfig], OcelotModel]] = {
    "cell_only": CellOnlyModel,
    "pred_to_input": _injection("input"),
    "pred_to_inter1": _injection("encoder"),
    "pred_to_inter2": _injection("aspp"),
    "pred_to_output": _injection("decoder"),
    "feature_sharing": FeatureSharingModel,
    "tissue_label_leaking": LabelLeakingModel,
}
"""Variant name → builder (paper Table 5). ``pred_to_inter2`` is the default and the paper's best."""
assert tuple(VARIANTS) == VARIANT_NAMES, (
    "model/config.py's VARIANT_NAMES and the builders must list the same variants"
)


def build_model(config: ModelConfig | str) -> OcelotModel:
    """Build a model (random weights; nothing downloaded) from a config or a variant name."""
    if isinstance(config, str):
        config = ModelConfig(variant=config)
    try:
        builder = VARIANTS[config.variant]
    except KeyError:
        raise ConfigError(
            None, f"unknown model variant {config.variant!r}", f"use one of {', '.join(VARIANTS)}"
        ) from None
    model = builder(config)
    log.debug(
        "built %s with encoder %s (%d parameters)",
        config.variant,
        config.encoder,
        sum(p.numel() for p in model.parameters()),
    )
    return model
