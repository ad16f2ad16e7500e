"""wsi-ocelot: whole-slide cell detection with tissue-prediction injection (OCELOT, CVPR 2023)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
