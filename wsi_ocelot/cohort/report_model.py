"""The report's model line: the checkpoint that ran, the data it was trained (and validated) on,
and what ran its forward pass, read from the checkpoint when it is still there, else from a
finished slide's ``purity.json``."""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from typing import Any

from wsi_ocelot.cohort.manifest import DONE, Manifest
from wsi_ocelot.datasets import dataset_name as metadata_dataset_name
from wsi_ocelot.errors import WsiOcelotError
from wsi_ocelot.weights import is_demo_weights

__all__ = ["SYNTHETIC_DATASET", "dataset_name", "model_line"]


#: What ``wsi-ocelot synthetic-dataset`` names its data (``general_info.dataset`` of its
#: ``metadata.json``): the data the shipped demo weights were trained on.
SYNTHETIC_DATASET = "wsi-ocelot synthetic"
_NAME_MAX = 80


def dataset_name(
    training: dict[str, Any], model_path: str | os.PathLike[str] | None = None
) -> str | None:
    """A name for the data a checkpoint was trained on, for the report's "trained on".

    Parameters
    ----------
    training : dict
        The checkpoint's ``training`` metadata (``CheckpointInfo.training``).
    model_path : str or path-like, optional
        The checkpoint, to recognise the shipped demo weights.

    Returns
    -------
    str or None
        In order: the name the checkpoint records (``dataset``); :data:`SYNTHETIC_DATASET` for the
        demo weights; the name in the dataset's ``metadata.json`` when its folder is on this
        machine; else the last component of the recorded folder. Never the recorded folder itself:
        that is a path on the training machine (often a scratch folder such as ``/tmp/gdata``),
        which means nothing to the report's reader. None when nothing is recorded.
    """
    named = training.get("dataset")
    if isinstance(named, str) and named.strip():
        return named.strip()[:_NAME_MAX]
    if model_path is not None and is_demo_weights(model_path):
        return SYNTHETIC_DATASET
    root = training.get("data") or training.get("data_root")
    if not isinstance(root, str) or not root.strip():
        return None
    name = metadata_dataset_name(root) or re.split(r"[\\/]", root.strip().rstrip("\\/"))[-1]
    return name[:_NAME_MAX] or None


def model_line(manifest: Manifest, rows: list[dict[str, Any]], out_dir: Path) -> str:
    """The model that ran and the data it was trained on (from the checkpoint when it is still
    there, else from a finished slide's record)."""
    path = str(manifest.meta.get("model") or "")
    rec: dict[str, Any] = {}
    ran: set[str] = (
        set()
    )  # what ran the forward pass (runtime + precision), over the finished slides
    for r in rows:
        if r.get("status") == DONE and r.get("runtime"):
            ran.add(f"{r['runtime']} {r.get('precision') or ''}".strip())
        pj = out_dir / r["slide_id"] / "purity.json"
        if not rec and r.get("status") == DONE and pj.is_file():
            try:
                rec = json.loads(pj.read_text(encoding="utf-8")).get("model") or {}
            except (OSError, ValueError):
                rec = {}
    path = path or str(rec.get("path") or "")
    variant, encoder, trained, lineage = rec.get("variant"), rec.get("encoder"), "", ""
    if path and Path(path).is_file():
        # deliberately deferred: the model package imports torch, which the report needs only here
        from wsi_ocelot.model import read_checkpoint_info

        try:
            info = read_checkpoint_info(path)
        except WsiOcelotError:
            info = None
        if info is not None:
            variant, encoder = info.model.variant, info.model.encoder
            t, m = info.training or {}, info.metrics or {}
            sizes = t.get("split_sizes") or {}
            parts = [
                dataset_name(t, path) or "",
                ", ".join(f"{v} {k}" for k, v in sizes.items()) + " tiles" if sizes else "",
            ]
            mf1 = m.get("val_mF1") or (m.get(m.get("split", "val")) or {}).get("mF1")
            parts.append(f"{m.get('split', 'val')} mF1 {float(mf1):.3f}" if mf1 is not None else "")
            trained = "; ".join(p for p in parts if p)
            lineage = _lineage(t)
    if not path:
        return '<p class="model" id="model"><strong>Model:</strong> unknown</p>'
    desc = ", ".join(x for x in (variant, f"encoder {encoder}" if encoder else None) if x)
    return (
        f'<p class="model" id="model"><strong>Model:</strong> <span title="{html.escape(path, quote=True)}">{html.escape(Path(path).name)}</span>'
        + (f" ({html.escape(desc)})" if desc else "")
        + (
            f' · <strong>trained on:</strong> <span id="model-data">{html.escape(trained)}</span>'
            if trained
            else ""
        )
        + (f' · <span id="model-lineage">{html.escape(lineage)}</span>' if lineage else "")
        + (
            f' · <strong>forward pass:</strong> <span id="model-runtime">{html.escape(", ".join(sorted(ran)))}</span>'
            if ran
            else ""
        )
        + "</p>"
    )


def _lineage(training: dict[str, Any]) -> str:
    """What a fine-tuned checkpoint records of its validation data and its parent (training.train
    ``--init``): "validated on NAME (N pairs, within region masks); fine-tuned from FILE"."""
    parts = []
    val = training.get("validation") or {}
    if val:
        masked = " within region masks" if val.get("masked_pairs") else ""
        parts.append(
            f"validated on {val.get('dataset') or 'its ' + str(val.get('split', 'val')) + ' split'} "
            f"({val.get('pairs', '?')} pairs{masked})"
        )
    parent = training.get("parent") or {}
    if parent:
        name = (
            "the demo weights"
            if parent.get("init") == "demo"
            else Path(str(parent.get("path") or "?")).name
        )
        parts.append(f"fine-tuned from {name}")
    return "; ".join(parts)
