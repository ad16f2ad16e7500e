"""One line that describes the machine, for benchmark and study results."""

from __future__ import annotations

import os
import platform
from functools import lru_cache


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's machine type)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            return int(fh.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return None


def describe_machine(device: str | None = None) -> str:
    """E.g. ``"2 CPU cores (AMD EPYC), 23.4 GiB, GPU NVIDIA H200, Python 3.11.7, torch 2.14.1"``.
    The GPU is named when ``device`` is a CUDA device (or ``None`` and CUDA is available)."""
    parts = [f"{os.cpu_count()} CPU cores ({cpu_model()})"]
    mem = memory_gib()
    if mem:
        parts.append(f"{mem:.1f} GiB")
    try:
        import torch

        if torch.cuda.is_available() and (device is None or str(device).startswith("cuda")):
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
        elif device is not None:
            parts.append("CPU only")
        torch_v = f", torch {torch.__version__}"
    except ImportError:  # pragma: no cover - torch is a dependency
        torch_v = ""
    return ", ".join(parts) + f", Python {platform.python_version()}{torch_v}"
