"""The forward pass's runtimes: torch, OpenVINO and ONNX Runtime at fp32, bf16 or int8,
chosen per checkpoint and CPU, cached, and gated on fidelity (docs/runtimes.md)."""

from wsi_ocelot.inference.runtimes.spec import (
    FIDELITY,
    PRECISIONS,
    RUNTIMES,
    SUPPORTED,
    RuntimeChoice,
)

__all__ = ["FIDELITY", "PRECISIONS", "RUNTIMES", "SUPPORTED", "RuntimeChoice"]
