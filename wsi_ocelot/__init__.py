"""wsi-ocelot: whole-slide cell detection with tissue-prediction injection (OCELOT, CVPR 2023).

The Python API (everything a notebook needs; the command line ``wsi-ocelot`` is a thin layer
over it):

open_slide(path, mpp=None, reader="openslide")
    Open a whole-slide image with its resolved µm/px; read any level-0 box at any MPP.
EngineConfig(...)
    How slides are run: device, batch size, reader processes, GeoJSON options, ...
SlideRunner(model, config)
    Load a model once and run many slides: ``runner.run(slide, out_dir)``.
run_slide(slide, out_dir, model, config)
    Load a model and run one slide into ``out_dir/<slide-id>/``.
load_model(checkpoint, device="cpu")
    A checkpoint (``.safetensors``, or ``"demo"``'s path) as ``(model, info)``.
run_cohort(jobs, out_dir, config)
    A batch of slides with a resumable manifest, summary.csv and report.html; ``collect_jobs``
    turns files, folders and CSV manifests into jobs, ``CohortConfig`` configures the batch.
evaluate(model, data_root, split="test")
    The OCELOT challenge metric of a checkpoint on a dataset in the OCELOT release layout.
read_cells(result_folder)
    A slide's detected cells as a pandas DataFrame.
export_spatialdata(result_folder)
    A slide's result as a SpatialData ``.zarr`` (needs ``pip install "wsi-ocelot[spatialdata]"``).

Example
-------
>>> import wsi_ocelot
>>> runner = wsi_ocelot.SlideRunner("demo", wsi_ocelot.EngineConfig(device="cpu"))  # doctest: +SKIP
>>> result = runner.run("slide.svs", "results")                                    # doctest: +SKIP
>>> cells = wsi_ocelot.read_cells(result.out_dir)                                  # doctest: +SKIP

The names are imported on first use (torch is heavy), so ``import wsi_ocelot`` and the
command line's ``--help`` stay instant.
"""

from __future__ import annotations

from wsi_ocelot.lazy import lazy_exports

__version__ = "0.1.0"

#: public name → the module that defines it
_API = {
    "open_slide": "wsi_ocelot.slide",
    "EngineConfig": "wsi_ocelot.inference.engine",
    "SlideRunner": "wsi_ocelot.inference.engine",
    "SlideResult": "wsi_ocelot.inference.engine",
    "run_slide": "wsi_ocelot.inference.engine",
    "load_model": "wsi_ocelot.model",
    "run_cohort": "wsi_ocelot.cohort",
    "collect_jobs": "wsi_ocelot.cohort",
    "CohortConfig": "wsi_ocelot.cohort",
    "evaluate": "wsi_ocelot.evaluation:evaluate_dataset",
    "read_cells": "wsi_ocelot.outputs.cells_table",
    "export_spatialdata": "wsi_ocelot.outputs.spatialdata_export",
}

__all__ = ["__version__", *_API]


__getattr__, __dir__ = lazy_exports(__name__, _API)  # deferred: the API's modules import torch
