"""The two halves of a two-pass model as exportable graphs, exported to ONNX once, quantised
to int8 once, and the synthetic tiles they are calibrated and checked on (docs/runtimes.md).

* tissue graph: ``x`` (B, 3, T, T) float in [0, 1] → ``probs`` (B, tissue_classes, T, T);
* cell graph: ``cell`` (B, 3, T, T) float in [0, 1] (+ ``injection`` (B, tissue_classes, h, w),
  the tissue crop already resized to the injection point, for an injection model) →
  ``probs`` (B, cell_classes, T, T) softmax probabilities.

The resize of the tissue crop stays in torch (an anti-aliased bilinear resize has no
portable ONNX form); the batch dimension is dynamic, the rest fixed by the geometry.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, cast

import numpy as np
import torch
from torch import Tensor, nn

from wsi_ocelot.model.align import crop_tissue, resize_map
from wsi_ocelot.model.checkpoint import CheckpointInfo
from wsi_ocelot.model.variants import InjectionModel, OcelotModel

log = logging.getLogger(__name__)

__all__ = [
    "CalibrationPairs",
    "PER_CONTEXT",
    "CellGraph",
    "TissueGraph",
    "calibration_pairs",
    "crop_injection",
    "export_onnx",
    "high_resolution_convs",
    "injection_size",
    "quantize_int8",
    "RenderedPairs",
    "render_pairs",
    "resize_to_injection",
]

OPSET = 17


def injection_size(model: nn.Module, tile: int) -> tuple[int, int] | None:
    """(h, w) the cell graph's ``injection`` input has for a ``tile``² cell patch; None for a
    model without one (cell only)."""
    if not getattr(model, "has_tissue_branch", False) or not hasattr(model, "injection_size"):
        return None
    return cast(InjectionModel, model).injection_size((tile, tile))


class TissueGraph(nn.Module):
    """The tissue branch with its softmax."""

    def __init__(self, model: OcelotModel):
        super().__init__()
        self.model = model
        self.eval()  # a wrapper left in training mode would put the model back in it after an export

    def forward(self, x: Tensor) -> Tensor:
        return self.model.tissue_probs(x)


class CellGraph(nn.Module):
    """The cell branch from the resized injection, with its softmax."""

    def __init__(self, model: OcelotModel):
        super().__init__()
        self.model = model
        self.injects = injection_size(model, 64) is not None
        self.eval()

    def forward(self, cell: Tensor, injection: Tensor | None = None) -> Tensor:
        if self.injects:  # an injection model, whose graph is always given ``injection``
            model = cast(InjectionModel, self.model)
            return model.cell_logits_injected(cell, cast(Tensor, injection)).softmax(dim=1)
        return self.model.cell_logits_from_tissue(cell, None).softmax(dim=1)


def export_onnx(model: OcelotModel, tile: int, out_dir: Path) -> dict[str, Path]:
    """Write ``tissue.onnx`` (if the model has a tissue branch) and ``cell.onnx`` (fp32, dynamic
    batch) into ``out_dir``; returns their paths by graph name."""
    model = model.eval().float().cpu()
    inj = injection_size(model, tile)
    cell = torch.rand(1, 3, tile, tile)
    paths: dict[str, Path] = {}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        if getattr(model, "has_tissue_branch", False):
            paths["tissue"] = out_dir / "tissue.onnx"
            torch.onnx.export(
                TissueGraph(model),
                (cell,),
                str(paths["tissue"]),
                input_names=["x"],
                output_names=["probs"],
                dynamic_axes={"x": {0: "batch"}, "probs": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        paths["cell"] = out_dir / "cell.onnx"
        if inj is None:
            torch.onnx.export(
                CellGraph(model),
                (cell,),
                str(paths["cell"]),
                input_names=["cell"],
                output_names=["probs"],
                dynamic_axes={"cell": {0: "batch"}, "probs": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        else:
            torch.onnx.export(
                CellGraph(model),
                (cell, torch.rand(1, model.config.tissue_classes, *inj)),
                str(paths["cell"]),
                input_names=["cell", "injection"],
                output_names=["probs"],
                dynamic_axes={
                    "cell": {0: "batch"},
                    "injection": {0: "batch"},
                    "probs": {0: "batch"},
                },
                opset_version=OPSET,
                dynamo=False,
            )
    return paths


#: Cell tiles rendered per context tile: a tissue graph's run serves this many cell tiles, as in
#: the engine, where a tissue tile's prediction serves the cell tiles inside it (27 cell tiles
#: and 4 tissue tiles on the demo slide). One context per pair made the tissue graph (as slow as
#: the cell graph per tile) half of a build's fp32 reference: 4 cut the ResNet-34's by ~35 %.
PER_CONTEXT = 4


class RenderedPairs(NamedTuple):
    """:func:`render_pairs`' output: (M, T, T, 3) uint8 RGB context tiles at the tissue MPP,
    (N, T, T, 3) uint8 RGB cell tiles at the cell MPP, and for each cell tile its context's index
    (N,) and its centre in that context (N, 2) (x, y in [0, 1])."""

    tissue: np.ndarray
    cell: np.ndarray
    context: np.ndarray
    offset: np.ndarray


@dataclass(frozen=True)
class CalibrationPairs:
    """Synthetic H&E at the model's geometry as model inputs: ``tissue`` (M, 3, T, T) context
    tiles at the tissue MPP and ``cell`` (N, 3, T, T) tiles at the cell MPP, float in [0, 1]; cell
    tile ``i`` lies inside context ``context[i]``, centred at ``offset[i]`` of it."""

    tissue: np.ndarray
    cell: np.ndarray
    context: np.ndarray
    offset: np.ndarray
    #: what identifies these pixels (``cache.cached_pairs``: the SHA-256 of the arrays)
    key: str = ""

    @classmethod
    def from_rgb(cls, rendered: RenderedPairs, key: str = "") -> CalibrationPairs:
        """From :func:`render_pairs`' uint8 RGB stacks."""

        def chw(rgb: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(rgb.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0

        return cls(
            tissue=chw(rendered.tissue),
            cell=chw(rendered.cell),
            context=rendered.context.astype(np.int64),
            offset=rendered.offset.astype(np.float32),
            key=key,
        )

    def injection(self, model: nn.Module, tissue_probs: np.ndarray) -> np.ndarray | None:
        """Each cell tile's ``injection`` input (None for a model without one) from the tissue
        graph's output on the contexts, (M, tissue_classes, T, T): its region of its context's
        prediction, resized, as the engine crops it."""
        return crop_injection(
            model,
            tissue_probs[self.context],
            self.cell.shape[-1],
            torch.from_numpy(self.offset),
        )


def render_pairs(
    info: CheckpointInfo, n: int, seed: int, workers: int = 1, per_context: int = PER_CONTEXT
) -> RenderedPairs:
    """``n`` cell tiles and their context tiles (``per_context`` cell tiles to a context; the
    last context may hold fewer) rendered by the synthetic generator at the checkpoint's
    geometry: each context centred on a random point inside tissue, each cell tile on a random
    point inside tissue within its context, clear of the context's other cell tiles
    (deterministic per ``seed``). The generator is the data the demo weights were trained on; for
    weights trained on other slides it is still H&E with cells, tumour and stroma, which is what
    int8 ranges and the fidelity gate need. ``workers`` threads render the tiles (numpy leaves
    the GIL: 2 threads rendered 1.8× as fast as one on 2 cores); ``cache.cached_pairs`` keeps them."""
    from concurrent.futures import ThreadPoolExecutor

    from shapely.geometry import Point

    from wsi_ocelot.synthetic import build_tissue_model, render_um

    g = info.geometry
    T = g.tile_size
    span = T * g.tissue_mpp  # µm the tissue input covers
    c = T * g.cell_mpp  # µm the cell input covers
    side = span * 2.5
    model = build_tissue_model(side, side, seed=seed)
    rng = np.random.default_rng(seed)
    contexts: list[tuple[float, float]] = []  # their top-left corners, µm
    cells: list[tuple[int, float, float]] = []  # context index, centre x, centre y (µm)
    tries = 0
    while len(cells) < n and tries < 200 * n:
        tries += 1
        cx, cy = rng.uniform(span / 2, side - span / 2, size=2)
        if not model.tissue.contains(Point(cx, cy)):
            continue
        x0, y0 = cx - span / 2, cy - span / 2
        mine: list[tuple[float, float]] = []
        for _ in range(200 * per_context):
            if len(mine) == min(per_context, n - len(cells)):
                break
            x, y = rng.uniform((x0 + c / 2, y0 + c / 2), (x0 + span - c / 2, y0 + span - c / 2))
            clear = all(max(abs(x - u), abs(y - v)) >= c for u, v in mine)
            if clear and model.tissue.contains(Point(x, y)):
                mine.append((float(x), float(y)))
        if mine:
            cells += [(len(contexts), x, y) for x, y in mine]
            contexts.append((float(x0), float(y0)))
    if not cells:
        raise RuntimeError("the synthetic generator gave no tissue to calibrate on")
    model.cell_indices_in_box(
        (0.0, 0.0, 1.0, 1.0)
    )  # its lazy index, built before the threads share it

    def context_tile(corner: tuple[float, float]) -> np.ndarray:
        return render_um(model, *corner, T, T, g.tissue_mpp)

    def cell_tile(cell: tuple[int, float, float]) -> np.ndarray:
        _, x, y = cell
        return render_um(model, x - c / 2, y - c / 2, T, T, g.cell_mpp)

    with ThreadPoolExecutor(max(1, min(workers, len(cells)))) as pool:
        tissue = list(pool.map(context_tile, contexts))
        cell_tiles = list(pool.map(cell_tile, cells))
    context = np.array([k for k, _, _ in cells], dtype=np.int64)
    offset = np.array(
        [((x - contexts[k][0]) / span, (y - contexts[k][1]) / span) for k, x, y in cells],
        dtype=np.float32,
    )
    return RenderedPairs(np.stack(tissue), np.stack(cell_tiles), context, offset)


def calibration_pairs(
    info: CheckpointInfo, n: int, seed: int, workers: int = 1, per_context: int = PER_CONTEXT
) -> CalibrationPairs:
    """:func:`render_pairs` as model inputs."""
    return CalibrationPairs.from_rgb(render_pairs(info, n, seed, workers, per_context))


def resize_to_injection(model: nn.Module, crop: Tensor, tile: int) -> np.ndarray | None:
    """A tissue crop over a ``tile``² cell patch (B, tissue_classes, h, w), resized to the injection
    point: the cell graph's ``injection`` input (None for a model without one)."""
    size = injection_size(model, tile)
    return None if size is None else resize_map(crop.float(), size).numpy()


def crop_injection(
    model: nn.Module, tissue_probs: np.ndarray, tile: int, offset: Tensor | None = None
) -> np.ndarray | None:
    """The cell patch's region of each tissue prediction (``offset`` (B, 2) its centre in the
    tissue patch, [0, 1]; None: centred, as the engine's tiles are), resized to the injection point."""
    if injection_size(model, tile) is None:
        return None
    probs = torch.from_numpy(tissue_probs)
    off = torch.full((len(probs), 2), 0.5) if offset is None else offset
    context_factor = cast(OcelotModel, model).config.context_factor
    return resize_to_injection(model, crop_tissue(probs, off, context_factor), tile)


#: int8 leaves in float every convolution of the cell graph whose output is at most this many
#: times coarser than the tile: the stem and first stage of the encoder (whose features the
#: decoder takes as its low-level skip) and, in smp's DeepLabV3+ decoder, the low-level
#: projection, the fusion block's separable convolution and the head: the high-resolution
#: layers that place the peaks and shape their classes. Measured on a quickly trained ResNet-34
#: model (AMD EPYC, AVX-512 VNNI and BF16; OpenVINO, 8 gate pairs, ~1,350 cells): cells F1
#: against fp32 0.993 with the decoder's four in float (the tumour share +0.0028; 0.981 with every
#: convolution quantised, on 3 pairs), 0.996 with the encoder's seven as well (+0.0009), about 5 %
#: slower per tile. No other stage in float helped (stage 2, 3, 4 or the ASPP: 0.991-0.993). The
#: demo model: 0.9956 -> 0.9995, and faster (90 vs 127 ms per tile; docs/runtimes.md).
FLOAT_STRIDE = 4


def high_resolution_convs(onnx_path: Path, stride: int = FLOAT_STRIDE) -> list[str]:
    """The names of ``onnx_path``'s convolutions whose output is at most ``stride`` times
    coarser than the graph's first input (from ONNX shape inference; the graph's spatial
    dimensions are fixed by the checkpoint's geometry)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    g = model.graph

    def height(value: onnx.ValueInfoProto) -> int | None:
        dims = value.type.tensor_type.shape.dim
        return dims[2].dim_value if len(dims) == 4 and dims[2].dim_value > 0 else None

    tile = height(g.input[0])
    if tile is None:
        raise ValueError(f"{onnx_path}: the first input has no fixed spatial size")
    heights = {v.name: height(v) for v in [*g.value_info, *g.output]}
    return [
        n.name
        for n in g.node
        if n.op_type == "Conv" and (h := heights.get(n.output[0])) and h * stride >= tile
    ]


def quantize_int8(
    onnx_path: Path,
    out_path: Path,
    feeds: list[dict[str, np.ndarray]],
    *,
    reduce_range: bool,
    float_stride: int = FLOAT_STRIDE,
) -> Path:
    """Static int8 quantisation of ``onnx_path``'s convolutions but those at stride
    ``float_stride`` or finer (:func:`high_resolution_convs`; QDQ, per-channel int8 weights, uint8
    activations, a Relu that follows a quantised convolution folded into its output's range,
    ranges from ``feeds``: one input dict per calibration sample; the softmax, the
    resizes and the float convolutions stay fp32, or bf16 where the runtime runs float parts in
    bf16; ``float_stride=0`` quantises every convolution). ``reduce_range`` keeps weights to 7
    bits: on a CPU without VNNI the uint8 × int8 products are summed in pairs into int16
    (``vpmaddubsw``) and saturate at full range, which cost the demo model's cells F1 0.72-0.85
    against fp32 on an AVX2 AMD EPYC (0.996 with 7 bits)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    pre = out_path.with_suffix(".pre.onnx")
    quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
    in_float = high_resolution_convs(pre, float_stride) if float_stride else []
    quantize_static(
        str(pre),
        str(out_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        reduce_range=reduce_range,
        # a Relu after a quantised convolution folds into the range of the convolution's
        # output (from 0): one Q/DQ pair instead of one on each side of the Relu, which OpenVINO
        # ran as a stand-alone FakeQuantize and convert per block (docs/runtimes.md)
        op_types_to_quantize=["Conv", "Relu"],
        nodes_to_exclude=in_float,
    )
    pre.unlink(missing_ok=True)
    return out_path
