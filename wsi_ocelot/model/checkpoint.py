"""Checkpoints: one ``.safetensors`` file that rebuilds its model.

The weights are plain tensors (safetensors: loading never executes anything from the
file; there is no ``torch.load`` here). The file's metadata holds one JSON string under
the key ``"wsi_ocelot"``::

    {"format_version": 1,
     "model": {ModelConfig fields: variant, encoder, classes, mean, std, context_factor, ...},
     "geometry": {GeometryConfig: cell_mpp, tissue_mpp, tile_size, context_factor, margins},
     "peaks": {PeakConfig fields},
     "training": {...}, "metrics": {...},
     "software": {"wsi_ocelot": ..., "torch": ..., "segmentation_models_pytorch": ..., "safetensors": ...}}
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import segmentation_models_pytorch as smp
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import wsi_ocelot
from wsi_ocelot.atomic import atomic_path
from wsi_ocelot.config import GeometryConfig, PeakConfig, from_dict
from wsi_ocelot.errors import CheckpointError, ConfigError
from wsi_ocelot.model.config import ModelConfig
from wsi_ocelot.model.variants import OcelotModel, build_model

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEY",
    "CheckpointInfo",
    "load_model",
    "read_checkpoint_info",
    "save_checkpoint",
]

FORMAT_VERSION = 1
METADATA_KEY = "wsi_ocelot"
_MAX_HEADER = 100_000_000  # the safetensors format's own limit on the JSON header
_SAVE_FIX = "write checkpoints with wsi_ocelot.model.save_checkpoint, which records the model config beside the weights"
_CONVERT_FIX = (
    "convert it once, only if you trust its origin: model = wsi_ocelot.model.build_model(ModelConfig(...)); "
    "model.load_state_dict(torch.load(path, weights_only=True)); wsi_ocelot.model.save_checkpoint('model.safetensors', model, geometry=..., peaks=...)"
)


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint's metadata says (everything but the weights).

    ``raw`` is the parsed JSON as stored, for fields this version does not model.
    """

    path: str
    format_version: int
    model: ModelConfig
    geometry: GeometryConfig
    peaks: PeakConfig
    training: dict[str, Any]
    metrics: dict[str, Any]
    software: dict[str, Any]
    raw: dict[str, Any]


def _software() -> dict[str, str]:
    return {
        "wsi_ocelot": wsi_ocelot.__version__,
        "torch": torch.__version__,
        "segmentation_models_pytorch": smp.__version__,
        "safetensors": safetensors.__version__,
    }


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    geometry: GeometryConfig,
    peaks: PeakConfig,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and configs to one ``.safetensors`` file (atomically).

    Parameters
    ----------
    path
        destination; parent folders are created.
    model
        an :class:`OcelotModel` (a ``torch.compile`` wrapper is unwrapped).
    geometry
        the working resolutions the model was trained for; its
        ``context_factor`` must equal the model's.
    peaks
        the peak-detection parameters to use with this model.
    training
        JSON-serialisable notes on the training run (data, epochs, config, ...).
    metrics
        JSON-serialisable validation/test metrics.

    Returns
    -------
        The written path.
    """
    path = Path(path)
    model = getattr(model, "_orig_mod", model)
    config = getattr(model, "config", None)
    if not isinstance(model, OcelotModel) or not isinstance(config, ModelConfig):
        raise CheckpointError(
            path,
            f"cannot save a {type(model).__name__}: not a wsi-ocelot model",
            "build the model with wsi_ocelot.model.build_model",
        )
    if geometry.context_factor != config.context_factor:
        raise ConfigError(
            path,
            f"geometry.context_factor {geometry.context_factor} differs from the model's {config.context_factor}",
            "use the same context factor for the geometry and the model",
        )
    meta = {
        "format_version": FORMAT_VERSION,
        "model": dataclasses.asdict(config),
        "geometry": dataclasses.asdict(geometry),
        "peaks": dataclasses.asdict(peaks),
        "training": dict(training or {}),
        "metrics": dict(metrics or {}),
        "software": _software(),
    }
    try:
        text = json.dumps(meta)
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            path,
            f"training/metrics are not JSON-serialisable ({err})",
            "pass plain numbers, strings, lists and dicts",
        ) from err
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, os.fspath(tmp), metadata={METADATA_KEY: text})
    log.info("saved %s checkpoint %s (%d tensors)", config.variant, path, len(tensors))
    return path


def _read_header(path: Path) -> dict[str, Any]:
    """Validate the file's framing without trusting it; return the safetensors JSON header."""
    if not path.exists():
        raise CheckpointError(
            path,
            "checkpoint file not found",
            "pass the path of a .safetensors checkpoint written by wsi-ocelot",
        )
    if not path.is_file():
        raise CheckpointError(path, "not a file", "pass the path of a .safetensors checkpoint file")
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if head[:4] == b"PK\x03\x04" or (
            head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
        ):
            raise CheckpointError(
                path,
                "this is a pickle/torch.save file; wsi-ocelot only loads .safetensors checkpoints (unpickling can execute code)",
                _CONVERT_FIX,
            )
        if len(head) < 8:
            raise CheckpointError(
                path,
                f"file is truncated ({size} bytes, too short for a safetensors header)",
                "copy or download the checkpoint again",
            )
        n = int.from_bytes(head, "little")
        if n < 2 or n > _MAX_HEADER:
            raise CheckpointError(
                path,
                "not a safetensors file (bad header length)",
                "pass a .safetensors checkpoint written by wsi-ocelot",
            )
        raw = fh.read(n)
    if not raw.lstrip()[:1] == b"{":
        raise CheckpointError(
            path,
            "not a safetensors file (no JSON header)",
            "pass a .safetensors checkpoint written by wsi-ocelot",
        )
    if len(raw) < n:
        raise CheckpointError(
            path,
            f"file is truncated (header needs {n} bytes, {len(raw)} present)",
            "copy or download the checkpoint again",
        )
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            path, f"corrupt safetensors header ({err})", "copy or download the checkpoint again"
        ) from err
    if not isinstance(header, dict):
        raise CheckpointError(
            path,
            "corrupt safetensors header (not a JSON object)",
            "copy or download the checkpoint again",
        )
    try:
        data_len = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0
        )
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise CheckpointError(
            path, f"corrupt safetensors header ({err!r})", "copy or download the checkpoint again"
        ) from err
    if size - 8 - n < data_len:
        raise CheckpointError(
            path,
            f"file is truncated ({size} bytes, {8 + n + data_len} expected)",
            "copy or download the checkpoint again",
        )
    return header


def _parse_info(path: Path, header: dict[str, Any]) -> CheckpointInfo:
    meta = header.get("__metadata__") or {}
    text = meta.get(METADATA_KEY) if isinstance(meta, dict) else None
    if text is None:
        raise CheckpointError(
            path,
            f"a safetensors file without wsi-ocelot metadata (no {METADATA_KEY!r} key)",
            _SAVE_FIX,
        )
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(
            path, f"the {METADATA_KEY!r} metadata is not valid JSON ({err})", _SAVE_FIX
        ) from err
    if not isinstance(raw, dict):
        raise CheckpointError(
            path, f"the {METADATA_KEY!r} metadata is not a JSON object", _SAVE_FIX
        )
    version = raw.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(
            path, "the wsi-ocelot metadata has no integer format_version", _SAVE_FIX
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            path,
            f"written by a newer wsi-ocelot (format_version {version}, this one reads {FORMAT_VERSION})",
            "upgrade wsi-ocelot",
        )
    for key in ("model", "geometry", "peaks"):
        if not isinstance(raw.get(key), dict):
            raise CheckpointError(
                path, f"the wsi-ocelot metadata lacks the {key!r} section", _SAVE_FIX
            )
    try:
        model_cfg = from_dict(ModelConfig, raw["model"], source=path, where="model")
        geometry = from_dict(GeometryConfig, raw["geometry"], source=path, where="geometry")
        peaks = from_dict(PeakConfig, raw["peaks"], source=path, where="peaks")
    except ConfigError as err:
        raise CheckpointError(
            path, f"invalid config in its metadata: {err.problem}", err.fix or _SAVE_FIX
        ) from err
    if geometry.context_factor != model_cfg.context_factor:
        raise CheckpointError(
            path,
            f"geometry.context_factor {geometry.context_factor} differs from model.context_factor {model_cfg.context_factor}",
            "re-save the checkpoint with a consistent geometry",
        )
    return CheckpointInfo(
        path=os.fspath(path),
        format_version=version,
        model=model_cfg,
        geometry=geometry,
        peaks=peaks,
        training=dict(raw.get("training") or {}),
        metrics=dict(raw.get("metrics") or {}),
        software=dict(raw.get("software") or {}),
        raw=raw,
    )


def read_checkpoint_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """The checkpoint's metadata, without loading or building anything."""
    p = Path(path)
    return _parse_info(p, _read_header(p))


def _few(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" (+{len(names) - n} more)" if len(names) > n else "")


def weight_key_problems(
    missing: list[str], unexpected: list[str], mismatched: list[str], *, against: str
) -> list[str]:
    """How a file's tensors fail to fit a model (``against``: "config", "encoder"), in one-line
    phrases: missing names, unexpected names, and ``"name (file shape) vs (model shape)"`` entries."""
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} not in the {against}: {_few(unexpected)}")
    if mismatched:
        problems.append(
            f"{len(mismatched)} with the wrong shape (file vs {against}): {_few(mismatched, 3)}"
        )
    return problems


def _check_weights(
    path: Path, expected: dict[str, Tensor], found: dict[str, Tensor], variant: str
) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{k} {tuple(found[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    problems = weight_key_problems(missing, unexpected, mismatched, against="config")
    if problems:
        raise CheckpointError(
            path,
            f"the weights do not fit the {variant!r} model its config describes ({'; '.join(problems)})",
            "re-save the trained model with save_checkpoint so the config matches its weights",
        )


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[OcelotModel, CheckpointInfo]:
    """Rebuild a model from a checkpoint file alone, in eval mode on ``device``.

    Parameters
    ----------
    path
        A ``.safetensors`` checkpoint written by :func:`save_checkpoint` (``wsi_ocelot.weights.demo_path()``
        is the demo's).
    device
        Where the model goes.

    Returns
    -------
    (OcelotModel, CheckpointInfo)
        The model and what its metadata says (variant, encoder, geometry, peaks, training, metrics).

    Examples
    --------
    >>> model, info = load_model("runs/p2i2/best.safetensors")   # doctest: +SKIP

    Raises
    ------
    CheckpointError
        missing file, pickle/``torch.save`` file, truncated or corrupt
        file, safetensors without wsi-ocelot metadata, or weights that do not fit the
        recorded config. The message names the file and the fix.
    """
    p = Path(path)
    info = read_checkpoint_info(p)
    try:
        tensors = load_file(os.fspath(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            p, f"cannot read the weights ({err})", "copy or download the checkpoint again"
        ) from err
    try:
        model = build_model(info.model)
    except Exception as err:  # e.g. an encoder name this segmentation-models-pytorch does not know
        raise CheckpointError(
            p,
            f"cannot build the {info.model.variant!r} model with encoder {info.model.encoder!r} ({err})",
            "install the segmentation-models-pytorch version the checkpoint was made with",
        ) from err
    _check_weights(p, model.state_dict(), tensors, info.model.variant)
    model.load_state_dict(tensors, strict=True)
    model.to(torch.device(device)).eval()
    log.info(
        "loaded %s (%s, %s) from %s",
        info.model.variant,
        info.model.encoder,
        info.software.get("wsi_ocelot", "?"),
        p,
    )
    return model, info
