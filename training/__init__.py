"""Training scripts for the OCELOT model family (outside the installed ``wsi_ocelot`` API).

Modules: :mod:`training.data` (OCELOT-layout dataset), :mod:`training.targets` (disk and
tissue targets), :mod:`training.augment` (geometry-consistent augmentation),
:mod:`training.losses`, :mod:`training.train` (``python -m training.train``) and
:mod:`training.evaluate_data` (score a checkpoint on an OCELOT-layout split).
"""

from __future__ import annotations
