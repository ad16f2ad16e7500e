"""Device choice: which torch device a run uses (``--device``), beside the precision policy
(``model/precision.py``) that says what runs on it. The engine, the cohort driver, dataset
evaluation and training/ all resolve a device here."""

from __future__ import annotations

import torch

from wsi_ocelot.errors import WsiOcelotError

__all__ = ["resolve_device"]


def resolve_device(spec: str = "auto", *, here: bool = True) -> torch.device:
    """``auto`` → the first CUDA device if there is one, else the CPU; ``cpu``, ``cuda``,
    ``cuda:N`` as given. A CUDA request without CUDA is a one-line error. ``here=False`` checks
    the spelling only (for a remote Dask cluster, whose workers may have GPUs this machine lacks)."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if here and torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError as err:
        raise WsiOcelotError(
            None, f"unknown device {spec!r}", "use auto, cpu, cuda or cuda:N"
        ) from err
    if dev.type == "cuda" and here:
        if not torch.cuda.is_available():
            raise WsiOcelotError(
                None,
                f"device {spec!r} asked for, but CUDA is not available here",
                "use --device cpu (or auto)",
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise WsiOcelotError(
                None,
                f"device {spec!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist",
                "pick an index below that",
            )
    return dev
