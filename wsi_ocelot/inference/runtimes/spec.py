"""Runtimes and precisions: their names, what each runtime supports, what this CPU can do,
the fidelity a path must keep, and the record of what ran (docs/runtimes.md).

Imports neither torch nor a runtime, so the CLI can name the choices cheaply.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import asdict, dataclass, field
from typing import Any

from wsi_ocelot.constants import PRECISIONS, RUNTIMES
from wsi_ocelot.sysinfo import cpu_flags

__all__ = [
    "FIDELITY",
    "PRECISIONS",
    "RUNTIMES",
    "SUPPORTED",
    "RuntimeChoice",
    "auto_may_take",
    "cpu_flags",
    "cpu_has_bf16",
    "reserve_for",
    "reserve_may_pass",
    "runtime_version",
]


#: the precisions each runtime runs (on the CPU; on CUDA only torch runs, fp32 or bf16)
SUPPORTED: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "bf16"),
    "openvino": ("int8", "bf16", "fp32"),
    "onnxruntime": ("int8", "fp32"),
}

#: the Python distribution that brings each runtime
DISTRIBUTION = {"torch": "torch", "openvino": "openvino", "onnxruntime": "onnxruntime"}

#: What a path must keep against fp32 torch on the gate's tiles before ``auto`` may choose it:
#: cells F1 (same class, within ``match_px``), the tissue map's mean absolute difference
#: (0-255) and the share of map pixels on the same side of the cancer-area threshold.
#: ``auto`` asks a margin (``*_auto``): a cells F1 of 0.995 and a tumour share (the purity of the
#: gate's tiles) within 0.0025 of fp32's, half the issue's slide criterion. A quickly trained
#: ResNet-34's int8 with only the decoder's tail in float read F1 0.993 and +0.0028 on the gate
#: but 0.988 and purity +0.0057 on a whole slide: reduced precision shifted classes one way, which
#: a cells F1 alone hides. A path asked for by name is held to ``cells_f1``.
FIDELITY: dict[str, float] = {
    "cells_f1": 0.99,
    "cells_f1_auto": 0.995,
    "purity_auto": 0.0025,
    "tissue_mean_abs": 1.0,
    "ca_agreement": 0.995,
    "match_px": 3.0,
}


def auto_may_take(res: dict[str, Any]) -> bool:
    """A gate record (``build.json``'s per path) ``auto`` may choose: it built, kept the gate,
    and keeps auto's margins: a cells F1 of ``FIDELITY["cells_f1_auto"]`` and a tumour share
    within ``FIDELITY["purity_auto"]`` of fp32's on the gate's tiles."""
    fid = res.get("fidelity") or {}
    return bool(
        res.get("status") == "ok"
        and fid.get("passes")
        and fid.get("cells_f1", 0.0) >= FIDELITY["cells_f1_auto"]
        and abs(fid.get("purity_delta", 1.0)) <= FIDELITY["purity_auto"]
    )


def reserve_for(c: tuple[str, str], candidates: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The path an ``auto`` build tries before ONNX Runtime's path ``c``: OpenVINO's at the same
    precision, where it is a candidate (None: ``c`` is no reserve). Both run the same ONNX graphs
    (int8 the same QDQ graph). OpenVINO's int8 ran 1.06-1.7× faster than ONNX Runtime's end to
    end (the demo and a ResNet-34, an AVX2 and an AVX-512 AMD EPYC; 3× per tile on an AMX Xeon),
    and at fp32 the two were within 5 % either way (the gate's tiles and the slide disagreeing on
    which was faster) but for the demo on the AVX-512 EPYC (OpenVINO 1.4×; docs/runtimes.md).
    Timing ONNX Runtime as well cost a first build ~7 s for the demo model on the AVX2 EPYC and
    ~25 s for a ResNet-34."""
    other = ("openvino", c[1])
    return other if c[0] == "onnxruntime" and other in candidates else None


#: How far OpenVINO's path may miss auto's margins on the gate for ONNX Runtime's at its
#: precision, which runs the same graph, to be tried after it. The two int8 paths have differed
#: by at most 0.0022 in cells F1 and 0.001 in the tumour share on the gate (both models, the AVX2
#: and the AVX-512 AMD EPYC): a wider miss is the graph's (a trained ResNet-34's int8 on the AVX2
#: EPYC read F1 0.965 and 0.966, the tumour share -0.021 and -0.020), and gating ONNX Runtime's
#: too cost that build ~45 s.
RESERVE_SLACK: dict[str, float] = {"cells_f1": 0.01, "purity": 0.005}


def reserve_may_pass(res: dict[str, Any]) -> bool:
    """After OpenVINO's path missed auto's margins with the gate record ``res``: may ONNX
    Runtime's at its precision keep them? Yes where OpenVINO's failed (it never ran) or missed
    by less than ``RESERVE_SLACK``."""
    fid = res.get("fidelity") or {}
    if res.get("status") != "ok" or not fid:
        return True
    return bool(
        fid.get("cells_f1", 0.0) >= FIDELITY["cells_f1_auto"] - RESERVE_SLACK["cells_f1"]
        and abs(fid.get("purity_delta", 1.0)) <= FIDELITY["purity_auto"] + RESERVE_SLACK["purity"]
    )


#: the flags that change which kernels a runtime may use (part of the cache key)
KERNEL_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "avx512_fp16",
)


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic (AVX-512 BF16 or AMX): without it bf16 is emulated, and far slower
    than fp32 (measured ~100× on an AVX2-only AMD EPYC)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_has_vnni() -> bool:
    """int8 dot products without 16-bit saturation (AVX-512 VNNI, AVX-VNNI or AMX)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def runtime_version(runtime: str) -> str | None:
    """The installed version of ``runtime``'s distribution, or None when it is not installed
    (read from the package metadata: nothing is imported)."""
    try:
        return importlib.metadata.version(DISTRIBUTION[runtime])
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class RuntimeChoice:
    """What ran a slide's forward pass: ``runtime`` and ``precision`` (as run, never ``auto``),
    the runtime's version, the processor, the intra-op threads, why this path was taken and,
    for a path other than fp32 torch, its fidelity on the gate's tiles (and, for OpenVINO int8 on
    a bf16 CPU, the precision of its float parts)."""

    runtime: str
    precision: str
    version: str
    processor: str
    threads: int | None = None
    reason: str = ""
    fidelity: dict[str, Any] | None = field(default=None, compare=False)
    #: OpenVINO int8 on a bf16 CPU: what the cell graph's float parts ran at (``bf16`` or ``fp32``)
    int8_float: str | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def label(self) -> str:
        """E.g. ``openvino 2026.4.1 int8``."""
        return f"{self.runtime} {self.version} {self.precision}"
