"""``wsi-ocelot evaluate --data``: run a checkpoint on an OCELOT-layout split and score it
with the challenge metric, overall and per organ (the paper's Table 6).

Images are used whole, at the checkpoint's ``cell_mpp``: when the data's ``resized_mpp``
differs by more than 5 %, both images are resized (antialiased) to match, the ground-truth
points scale as ``x' = (x + 0.5)·s − 0.5`` and the 15 px matching radius (≈3 µm at the
release's 0.194 µm/px) scales by the same ``s``, so the radius stays ≈3 µm.

Pairs with a cell mask (``annotations/{split}/cell_mask/NNN.png``: a dataset cut from annotated
regions, labelled only inside them) are scored within it: detections outside the mask are
dropped before matching (:func:`wsi_ocelot.metrics.evaluate`'s ``masks``), so the demo weights,
a model trained on OCELOT and a fine-tuned one compare fairly on a user's partial labels. The
result says how many pairs were scored that way and the labelled area.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsi_ocelot.datasets import dataset_name, list_pairs, read_cell_csv, read_rgb, read_tissue_png
from wsi_ocelot.datasets.ocelot import read_cell_mask
from wsi_ocelot.errors import WsiOcelotError
from wsi_ocelot.inference import find_peaks
from wsi_ocelot.inference.runtimes.backends import Backend
from wsi_ocelot.inference.runtimes.graphs import crop_injection, injection_size
from wsi_ocelot.inference.runtimes.select import choose_runtime
from wsi_ocelot.inference.runtimes.select import describe as describe_runtime
from wsi_ocelot.metrics import DISTANCE_CUTOFF, OcelotScore, evaluate
from wsi_ocelot.model import load_model
from wsi_ocelot.model.device import resolve_device
from wsi_ocelot.model.precision import autocast
from wsi_ocelot.weights import resolve_model

log = logging.getLogger(__name__)


def _target_size(
    image_size: int, data_mpp: float | None, ckpt_mpp: float, multiple: int = 32
) -> int | None:
    """The image size that brings the data to the checkpoint's cell MPP, or None (as is)."""
    if data_mpp is None or abs(data_mpp / ckpt_mpp - 1.0) <= 0.05:
        return None
    size = image_size * data_mpp / ckpt_mpp
    return min(image_size, max(multiple, int(round(size / multiple)) * multiple))


def data_name(root: str | os.PathLike[str]) -> str:
    """The name a dataset gives itself (:func:`wsi_ocelot.datasets.dataset_name`), else its
    folder's name."""
    return dataset_name(root) or Path(root).resolve().name


def _resize_mask(mask: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or size == mask.shape[-1]:
        return mask
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (F.interpolate(t, size=(size, size), mode="nearest-exact")[0, 0] > 0.5).numpy()


def _to_tensor(img: np.ndarray, size: int | None) -> torch.Tensor:
    t = torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0)
    if size is not None and size != t.shape[-1]:
        t = F.interpolate(
            t[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )[0].clamp_(0, 1)
    return t


@torch.inference_mode()
def evaluate_dataset(
    model_path: str | os.PathLike[str],  # a checkpoint, or "demo"
    data_root: str | os.PathLike[str],
    split: str = "test",
    *,
    device: str = "cpu",
    batch_size: int = 4,
    runtime: str = "auto",
    precision: str = "auto",
) -> dict[str, Any]:
    """Score a checkpoint on one split of a dataset in the OCELOT release layout with the
    OCELOT challenge metric (``wsi_ocelot.evaluate``; ``wsi-ocelot evaluate --data``).

    Parameters
    ----------
    model_path
        A checkpoint or ``"demo"``.
    data_root
        The dataset's root (``images/``, ``annotations/``, ``metadata.json``).
    split
        ``train``, ``val`` or ``test``.
    device, batch_size
        Where and how many pairs at a time.
    runtime, precision
        What runs the forward pass (docs/runtimes.md); pairs whose images differ in size
        from the checkpoint's tile run in torch.

    Returns
    -------
    dict
        ``{"overall": {"mF1", "BC": {...}, "TC": {...}}, "per_organ": {organ: ...},
        "num_images": N, "split": split, "model": path, "radius_px": r, "data": name,
        "masks": None or {"pairs", "labelled_mm2", "labelled_fraction"}}``; ``masks`` says
        how many pairs were scored within their cell masks, their labelled area (mm², at
        the data's cell MPP) and its share of those pairs' cell images.

    Examples
    --------
    >>> evaluate_dataset("demo", "ocelot_data", "test")["overall"]["mF1"]   # doctest: +SKIP
    """
    model_path = resolve_model(model_path)
    dev = resolve_device(device)
    model, info = load_model(model_path, dev)
    records = list_pairs(data_root, split)
    first = read_rgb(records[0].cell_image)
    size0 = first.shape[0]
    size = _target_size(size0, records[0].cell_mpp, info.geometry.cell_mpp)
    scale = (size / size0) if size else 1.0
    if size:
        log.info(
            "resizing %s images from %d to %d px to match the checkpoint's cell MPP %.3f",
            split,
            size0,
            size,
            info.geometry.cell_mpp,
        )
    needs_label = bool(getattr(model, "needs_tissue_label", False))
    tile = size or size0
    if (
        tile != info.geometry.tile_size
    ):  # the exported graphs are built for the checkpoint's tile size: torch runs these
        if runtime not in ("auto", "torch") or precision == "int8":
            raise WsiOcelotError(
                data_root,
                f"the {split} images are {tile} px and the checkpoint's tiles {info.geometry.tile_size} px; "
                f"--runtime {runtime} --precision {precision} runs graphs built for the checkpoint's tiles",
                "use --runtime torch (or auto) with --precision fp32 or auto for this data",
            )
        runtime = "torch"
    choice, backend = choose_runtime(
        model,
        info,
        str(model_path),
        dev,
        runtime,
        precision,
        two_pass=bool(getattr(model, "supports_two_pass", True)) and not needs_label,
    )
    log.info("the forward pass runs in %s", describe_runtime(choice))
    amp = autocast(
        dev, torch.bfloat16 if choice.precision == "bf16" else None
    )  # what choose_runtime decided, on either device
    preds: list[np.ndarray] = []
    gts: list[np.ndarray] = []
    masks: list[np.ndarray | None] = []
    organs: list[str | None] = []
    labelled_px = total_px = 0
    labelled_um2 = 0.0
    for i in range(0, len(records), batch_size):
        chunk = records[i : i + batch_size]
        cell = torch.stack([_to_tensor(read_rgb(r.cell_image), size) for r in chunk]).to(dev)
        tissue = torch.stack([_to_tensor(read_rgb(r.tissue_image), size) for r in chunk]).to(dev)
        offset = torch.tensor([r.offset for r in chunk], dtype=torch.float32, device=dev)
        label = None
        if needs_label:
            labs = [torch.from_numpy(read_tissue_png(r.tissue_png).astype(np.int64)) for r in chunk]
            if size:
                labs = [
                    F.interpolate(x[None, None].float(), size=(size, size), mode="nearest-exact")[
                        0, 0
                    ].long()
                    for x in labs
                ]
            label = torch.stack(labs).to(dev)
        if backend is not None:
            probs = _backend_pair_probs(backend, model, cell, tissue, offset)
        else:
            with amp:
                out = model(cell, tissue, offset, tissue_label=label)
            probs = out["cell_logits"].float().softmax(dim=1)
        points = find_peaks(probs, info.peaks)
        for r, p in zip(chunk, points, strict=True):
            gt = read_cell_csv(r.cell_csv).astype(np.float64)
            gt[:, :2] = (gt[:, :2] + 0.5) * scale - 0.5
            preds.append(p.cpu().double().numpy())
            gts.append(gt)
            organs.append(r.organ)
            mask = None
            if r.cell_mask is not None:
                full = read_cell_mask(r.cell_mask, shape=(size0, size0))
                labelled_px += int(full.sum())
                total_px += full.size
                labelled_um2 += (
                    float(full.sum()) * (r.cell_mpp or info.geometry.cell_mpp * scale) ** 2
                )
                mask = _resize_mask(full, size)
            masks.append(mask)
    radius = DISTANCE_CUTOFF * scale
    n_masked = sum(m is not None for m in masks)
    mask_arg = masks if n_masked else None
    groups: dict[str, list[int]] = defaultdict(list)
    for k, organ in enumerate(organs):
        if organ is not None:
            groups[organ].append(k)
    result: dict[str, Any] = {
        "overall": evaluate(preds, gts, radius, masks=mask_arg).to_dict(),
        "per_organ": {
            o: evaluate(
                [preds[k] for k in idx],
                [gts[k] for k in idx],
                radius,
                masks=None if mask_arg is None else [masks[k] for k in idx],
            ).to_dict()
            for o, idx in sorted(groups.items())
        },
        "num_images": len(preds),
        "split": split,
        "model": os.fspath(model_path),
        "radius_px": radius,
        "data": data_name(data_root),
        "runtime": choice.to_json(),
        "masks": None
        if not n_masked
        else {
            "pairs": n_masked,
            "labelled_mm2": round(labelled_um2 / 1e6, 6),
            "labelled_fraction": round(labelled_px / total_px, 4),
        },
    }
    log.info(
        "%s on %s/%s: mF1 %.4f over %d images%s",
        os.fspath(model_path),
        os.fspath(data_root),
        split,
        result["overall"]["mF1"],
        len(preds),
        f"; {masks_line(result)}" if n_masked else "",
    )
    return result


def _backend_pair_probs(
    backend: Backend,
    model: torch.nn.Module,
    cell: torch.Tensor,
    tissue: torch.Tensor,
    offset: torch.Tensor,
) -> torch.Tensor:
    """A pair's cell probabilities from a runtime backend: the tissue graph on the context, its
    crop over the cell patch (as in training), resized to the injection point, then the cell graph."""
    tile = cell.shape[-1]
    inj = None
    if injection_size(model, tile) is not None:
        inj = crop_injection(
            model, backend.tissue(tissue.cpu().float().numpy()), tile, offset.cpu()
        )
    return torch.from_numpy(backend.cell(cell.cpu().float().numpy(), inj))


def masks_line(result: dict[str, Any]) -> str:
    """How a result's pairs were scored: within region masks (how many, the labelled area) or
    labelled everywhere."""
    m = result.get("masks")
    n = result.get("num_images")
    if not m:
        return f"all {n} pairs labelled everywhere"
    return (
        f"{m['pairs']} of {n} pairs scored within region masks (labelled area {m['labelled_mm2']:.4f} mm², "
        f"{100 * m['labelled_fraction']:.0f} % of those pairs; detections outside the masks not counted)"
    )


def format_result(result: dict[str, Any]) -> str:
    """A Table-6-style text report: overall and per-organ precision, recall, F1, mF1."""
    rows = [("population", result["overall"])] + list(result["per_organ"].items())
    head = [f"{result['model']} on {result['split']} ({result['num_images']} images)"]
    if result.get("masks"):
        head.append(masks_line(result))
    lines = [
        *head,
        "",
        f"{'subset':<16}{'mF1':>8}{'BC P':>8}{'BC R':>8}{'BC F1':>8}{'TC P':>8}{'TC R':>8}{'TC F1':>8}",
    ]
    for name, s in rows:
        lines.append(
            f"{name:<16}{s['mF1']:>8.4f}{s['BC']['precision']:>8.4f}{s['BC']['recall']:>8.4f}{s['BC']['f1']:>8.4f}"
            f"{s['TC']['precision']:>8.4f}{s['TC']['recall']:>8.4f}{s['TC']['f1']:>8.4f}"
        )
    return "\n".join(lines)


def recorded_metrics(model_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metrics a checkpoint's model card recorded (``wsi-ocelot evaluate --model CKPT``
    without ``--data``): ``{"model", "best_epoch", "val_mF1", "validated_on", "parent",
    "per_split": {split: result}}``, each result as :func:`evaluate_dataset` returns it.
    ``validated_on`` is the checkpoint's ``training.validation`` (``{"dataset", "root",
    "split", "pairs", "masked_pairs", "labelled_fraction"}``, recorded by ``training.train``;
    for older checkpoints what their card's data and split sizes say, or None); ``parent`` its
    ``training.parent`` (fine-tuned runs: ``{"path", "sha256", "dataset", ...}``) or None.
    Nothing is run."""
    from wsi_ocelot.errors import CheckpointError
    from wsi_ocelot.model import read_checkpoint_info

    model_path = resolve_model(model_path)
    info = read_checkpoint_info(model_path)
    per_split = info.metrics.get("per_split") or {}
    if not per_split:
        raise CheckpointError(
            model_path,
            "the checkpoint records no per-split metrics (no model card: trained before the training report, or without validation)",
            "score it on data instead: wsi-ocelot evaluate --data ROOT --split test --model CKPT",
        )
    return {
        "model": os.fspath(model_path),
        "best_epoch": info.metrics.get("best_epoch"),
        "val_mF1": info.metrics.get("val_mF1"),
        "validated_on": _validated_on(info.training, info.metrics),
        "parent": info.training.get("parent"),
        "per_split": per_split,
    }


def _validated_on(training: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any] | None:
    """``training.validation`` as recorded, or the same facts from an older checkpoint's card."""
    recorded = training.get("validation")
    if isinstance(recorded, dict):
        return recorded
    split = metrics.get("split")
    sizes = training.get("split_sizes") or {}
    if not split or split not in sizes:
        return None
    card_data = (training.get("card") or {}).get("data") or {}
    root = training.get("data_root")
    name = card_data.get("dataset") or (Path(root).name if isinstance(root, str) and root else None)
    return {
        "dataset": name,
        "root": root,
        "split": split,
        "pairs": sizes[split],
        "masked_pairs": None,
        "labelled_fraction": None,
    }


def validated_on_line(validated: dict[str, Any] | None) -> str:
    """``validated on: NAME (N pairs, masked)``: the data a checkpoint's best epoch was chosen on."""
    if not validated:
        return "validated on: not recorded"
    masked, pairs = validated.get("masked_pairs"), validated.get("pairs")
    how = "" if not masked else (", masked" if masked == pairs else f", {masked} masked")
    return f"validated on: {validated.get('dataset') or 'unknown data'} ({pairs} pairs{how})"


def format_recorded(recorded: dict[str, Any]) -> str:
    """:func:`recorded_metrics` as text: the model card's metrics, one table per split."""
    head = f"{recorded['model']}: metrics recorded by its training run (best epoch {recorded['best_epoch']})"
    head += "\n" + validated_on_line(recorded.get("validated_on"))
    parent = recorded.get("parent")
    if parent:
        head += f"\nfine-tuned from: {parent.get('path')} (sha256 {str(parent.get('sha256'))[:12]}…, trained on {parent.get('dataset') or 'unknown data'})"
    return "\n\n".join([head] + [format_result(r) for r in recorded["per_split"].values()])


def score_slide(
    pred: np.ndarray, gt: np.ndarray, mpp: float, radius_um: float = 3.0
) -> OcelotScore:
    """Slide-level detections ``(N, 4)`` x, y, class, prob against ground truth ``(M, 3)``
    x, y, class, all in level-0 px, with the OCELOT matching at ``radius_um`` (15 px at
    the release's ~0.2 µm/px ≈ 3 µm). Returns an :class:`~wsi_ocelot.metrics.OcelotScore`."""
    return evaluate(
        [np.asarray(pred, np.float64).reshape(-1, 4)],
        [np.asarray(gt, np.float64).reshape(-1, 3)],
        radius_um / mpp,
    )
