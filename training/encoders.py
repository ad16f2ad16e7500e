"""Encoder initialisation for training: ``encoder_weights`` = ``imagenet`` | PATH | ``none``.

- ``none``: random weights (the model as :func:`wsi_ocelot.model.build_model` made it).
- ``imagenet``: segmentation-models-pytorch / timm download the encoder's ImageNet weights
  (Hugging Face hub) at training time; offline this is a one-line :class:`ConfigError`
  naming ``--encoder-weights`` and the PATH alternative.
- PATH: a local file for offline clusters: ``.safetensors`` (an encoder file written by
  :func:`export_encoder`, a plain encoder state dict, or a whole wsi-ocelot checkpoint,
  whose cell branch's encoder is used), or a torchvision / timm state dict
  (``torch.load(..., weights_only=True)``: no code from the file runs).

The weights go into the encoder of every branch (cell and tissue). Every encoder tensor must
be found in the file with the right shape, and the file must hold nothing else but a
classification head; otherwise a one-line error lists what did not match. Key names are
compared after dropping wrapper prefixes (``module.``, ``encoder.``, ``model.``,
``backbone.``) and with ``_`` read as ``.`` (timm's ``features_only`` renames ``a.b`` to
``a_b``). A first convolution with more input channels than the file's 3 (the cell branch of
``pred_to_input`` and label leaking) gets smp's rule: the RGB filters repeated over the new
channels and scaled by 3 / C; one with fewer keeps the file's first C channels (RGB first).

::

    python -m training.encoders export runs/pretrain/best.safetensors --branch cell --out enc.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from wsi_ocelot.atomic import atomic_path
from wsi_ocelot.errors import ConfigError, WsiOcelotError
from wsi_ocelot.model.checkpoint import weight_key_problems
from wsi_ocelot.weights import file_sha256

log = logging.getLogger(__name__)

#: Spellings of the two keywords; anything else is a path.
RANDOM = "none"
IMAGENET = "imagenet"
ENCODER_METADATA_KEY = "wsi_ocelot_encoder"
_FLAG_FIX = "pass --encoder-weights PATH (a local .safetensors or torchvision/timm state dict of the same encoder) or --encoder-weights none"
_PREFIXES = ("module.", "encoder.", "model.", "backbone.")
#: Top-level modules of a classification network that an encoder does not have.
_HEADS = (
    "fc",
    "classifier",
    "head",
    "last_linear",
    "conv_head",
    "bn2",
    "global_pool",
    "pre_logits",
    "fc_norm",
)


def describe(spec: str | None) -> str:
    """``none``, ``imagenet`` or the path, as written in configs."""
    return RANDOM if spec in (None, "", RANDOM, "null", "random") else str(spec)


def _norm(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key.replace("_", ".")


def _is_head(key: str) -> bool:
    top = key.split(".", 1)[0]
    return top in _HEADS


def branch_encoders(model: nn.Module) -> dict[str, nn.Module]:
    """``{"cell": encoder, "tissue": encoder}`` of an :class:`OcelotModel` (the branches it has)."""
    model = getattr(model, "_orig_mod", model)
    out = {}
    for name in ("cell", "tissue"):
        branch = getattr(model, name, None)
        if branch is not None and hasattr(branch, "encoder"):
            out[name] = branch.encoder
    return out


def _fit_first_conv(value: Tensor, target: Tensor) -> Tensor | None:
    """``value`` reshaped to ``target``'s input channels, or None if it is not such a case."""
    if (
        value.ndim != 4
        or target.ndim != 4
        or value.shape[0] != target.shape[0]
        or value.shape[2:] != target.shape[2:]
    ):
        return None
    have, want = value.shape[1], target.shape[1]
    if want < have:
        return value[:, :want].clone()
    if have == 3:  # segmentation_models_pytorch.encoders._utils.patch_first_conv, pretrained case
        idx = torch.arange(want) % have
        return value[:, idx] * (have / want)
    return None


def map_state_dict(
    encoder: nn.Module, state: Mapping[str, Tensor], source: str | os.PathLike[str]
) -> dict[str, Tensor]:
    """``state`` renamed (and the first convolution adapted) to ``encoder.state_dict()``'s keys.

    Raises :class:`ConfigError` listing missing, unexpected and wrongly shaped tensors.
    """
    target = encoder.state_dict()
    by_norm: dict[str, str] = {}
    for key in target:
        by_norm[_norm(key)] = key
    found: dict[str, Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    for key, value in state.items():
        if not isinstance(value, Tensor):
            continue
        name = by_norm.get(_norm(key))
        if name is None:
            if not _is_head(_norm(key)):
                unexpected.append(key)
            continue
        want = target[name]
        if tuple(value.shape) != tuple(want.shape):
            fitted = _fit_first_conv(value, want)
            if fitted is None:
                mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(want.shape)}")
                continue
            value = fitted
        found[name] = value.to(want.dtype)
    missing = [k for k in target if k not in found and not k.endswith("num_batches_tracked")]
    problems = weight_key_problems(missing, unexpected, mismatched, against="encoder")
    if problems:
        raise ConfigError(
            source,
            f"the file does not fit the {type(encoder).__name__} encoder ({'; '.join(problems)})",
            "pass a weights file of the same encoder as model.encoder (or --encoder-weights none)",
        )
    for key in target:  # e.g. BatchNorm's num_batches_tracked when the file lacks it
        found.setdefault(key, target[key])
    return found


def read_weights_file(
    path: str | os.PathLike[str], encoder_name: str | None = None
) -> dict[str, Tensor]:
    """The tensors of a local weights file (safetensors, or a torch state dict read with
    ``weights_only=True``). A whole wsi-ocelot checkpoint gives its cell branch's encoder.
    An encoder file that records another encoder name than ``encoder_name`` is an error."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(p, "encoder weights file not found", f"check the path, or {_FLAG_FIX}")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(os.fspath(p), framework="pt") as fh:
                meta = fh.metadata() or {}
                state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no items())
        except (SafetensorError, OSError, ValueError) as err:
            raise ConfigError(
                p,
                f"cannot read the safetensors file ({err})",
                "copy the file again or write it with python -m training.encoders export",
            ) from err
        recorded = (
            json.loads(meta[ENCODER_METADATA_KEY]).get("encoder")
            if ENCODER_METADATA_KEY in meta
            else None
        )
        if recorded is None and "wsi_ocelot" in meta:
            recorded = json.loads(meta["wsi_ocelot"]).get("model", {}).get("encoder")
        if encoder_name is not None and recorded is not None and recorded != encoder_name:
            raise ConfigError(
                p,
                f"the file holds a {recorded!r} encoder, the model's encoder is {encoder_name!r}",
                f"set model.encoder (--encoder) to {recorded}, or pass a {encoder_name} weights file",
            )
    else:
        try:
            obj = torch.load(os.fspath(p), map_location="cpu", weights_only=True)
        except (
            Exception
        ) as err:  # pickle errors of every kind: a file that is not a plain state dict
            raise ConfigError(
                p,
                f"cannot read it as a torch state dict ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
                "pass a .safetensors file or a plain state dict saved with torch.save(model.state_dict(), path)",
            ) from err
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
        if not isinstance(obj, dict):
            raise ConfigError(
                p,
                f"holds a {type(obj).__name__}, not a state dict",
                "save it with torch.save(model.state_dict(), path)",
            )
        state = dict(obj)
    if any(
        k.startswith("cell.encoder.") for k in state
    ):  # a whole checkpoint: its cell branch's encoder
        state = {
            k[len("cell.encoder.") :]: v for k, v in state.items() if k.startswith("cell.encoder.")
        }
    return state


def imagenet_state(encoder_name: str, output_stride: int) -> dict[str, Tensor]:
    """The ImageNet weights of ``encoder_name`` as smp / timm fetch them (needs the internet)."""
    from segmentation_models_pytorch.encoders import get_encoder

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            enc = get_encoder(
                encoder_name, in_channels=3, depth=5, weights=IMAGENET, output_stride=output_stride
            )
    except KeyError as err:
        raise ConfigError(
            None,
            f"encoder {encoder_name!r} has no ImageNet weights in segmentation-models-pytorch ({str(err).strip(chr(34) + chr(39))})",
            _FLAG_FIX,
        ) from err
    except Exception as err:  # offline: huggingface_hub / requests / urllib errors of many kinds
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise ConfigError(
            None,
            f"--encoder-weights imagenet: cannot download the ImageNet weights of {encoder_name!r} "
            f"(no internet? {type(err).__name__}: {first})",
            _FLAG_FIX,
        ) from err
    return enc.state_dict()


def init_encoders(
    model: nn.Module, spec: str | None, *, encoder_name: str, output_stride: int = 16
) -> dict[str, Any]:
    """Initialise every branch's encoder of ``model`` from ``spec``; returns what was done
    (recorded in the checkpoint's training info)."""
    spec = describe(spec)
    encoders = branch_encoders(model)
    if spec == RANDOM:
        return {"encoder_weights": RANDOM, "source": "random", "branches": sorted(encoders)}
    if spec == IMAGENET:
        state, source, extra = imagenet_state(encoder_name, output_stride), IMAGENET, {}
    else:
        path = Path(spec)
        state = read_weights_file(path, encoder_name)
        source = os.fspath(path.resolve())
        extra = {"sha256": file_sha256(path)}
    n = 0
    for enc in encoders.values():
        mapped = map_state_dict(enc, state, spec)
        enc.load_state_dict(mapped, strict=True)
        n = len(mapped)
    log.info(
        "encoders of %s initialised from %s (%d tensors each)",
        ", ".join(sorted(encoders)),
        source,
        n,
    )
    return {
        "encoder_weights": spec,
        "source": source,
        "branches": sorted(encoders),
        "tensors": n,
        **extra,
    }


def export_encoder(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], *, branch: str = "cell"
) -> Path:
    """Write the ``branch`` encoder of a trained checkpoint as an encoder file (safetensors,
    plain smp encoder keys, the encoder name and source in its metadata), for
    ``--encoder-weights PATH``. The cell branch is 3-channel in every variant but
    ``pred_to_input`` / label leaking (their extra input channels are kept; loading into
    a 3-channel encoder takes the RGB ones)."""
    from safetensors.torch import save_file

    from wsi_ocelot.model import load_model

    model, info = load_model(checkpoint, "cpu")
    encoders = branch_encoders(model)
    if branch not in encoders:
        raise ConfigError(
            checkpoint,
            f"the {info.model.variant!r} model has no {branch!r} branch",
            f"use --branch {' or '.join(sorted(encoders))}",
        )
    state = {k: v.detach().contiguous().clone() for k, v in encoders[branch].state_dict().items()}
    meta = {
        ENCODER_METADATA_KEY: json.dumps(
            {
                "encoder": info.model.encoder,
                "branch": branch,
                "variant": info.model.variant,
                "checkpoint": os.fspath(Path(checkpoint).resolve()),
                "training": {
                    k: info.training.get(k)
                    for k in ("data_root", "epoch", "seed", "encoder_init")
                    if k in info.training
                },
                "metrics": {"val_mF1": info.metrics.get("val_mF1")},
            }
        )
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_file(state, os.fspath(tmp), metadata=meta)
    log.info(
        "wrote the %s encoder (%s, %d tensors) of %s to %s",
        branch,
        info.model.encoder,
        len(state),
        checkpoint,
        out,
    )
    return out


def cli(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.encoders",
        description="Encoder weight files for --encoder-weights PATH.",
        epilog="example: python -m training.encoders export runs/pretrain/best.safetensors --branch cell --out enc.safetensors",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="save one branch's encoder of a trained checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--branch", default="cell", choices=("cell", "tissue"))
    e.add_argument("--out", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        export_encoder(args.checkpoint, args.out, branch=args.branch)
    except WsiOcelotError as err:
        log.error("%s", err.one_line())
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
