"""Batch reports: ``summary.csv`` (one row per slide) and a self-contained ``report.html``.

Both are built from ``manifest.json`` and each finished slide's ``purity.json``, so
``wsi-ocelot report DIR`` rebuilds them at any time (also for a folder of slides run one
by one with ``wsi-ocelot run`` before batches existed). The HTML has no external
resources: thumbnails are embedded as data URIs, the purity distribution is inline SVG,
and the table sorts with a few lines of inline JavaScript. The table fits a laptop's window
(1366 px): its columns have fixed widths, a long slide name is cut with an ellipsis (whole on
hover), and a failed slide's message runs on one line across the columns it has no results
for, whole on hover and after a click.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from wsi_ocelot.atomic import write_text
from wsi_ocelot.cohort.manifest import DONE, Manifest, now_iso
from wsi_ocelot.constants import PURITY_GRID_UM
from wsi_ocelot.datasets import dataset_name as metadata_dataset_name
from wsi_ocelot.errors import ConfigError, WsiOcelotError
from wsi_ocelot.outputs import purity_colormap
from wsi_ocelot.purity import SUMMARY_COLUMNS, SlideRecord
from wsi_ocelot.weights import is_demo_weights

log = logging.getLogger(__name__)

THUMB_SIDE = 600  # px on the long side (an overview is two panels side by side), shown 300 px wide


def _rows(out_dir: Path, manifest: Manifest) -> list[dict[str, Any]]:
    """One row per slide: the manifest's record; a finished slide without the counts in its record
    (a folder from a single ``run_slide``, or an older manifest) is completed from its purity.json."""
    slides = dict(manifest.slides)
    for d in (
        sorted(out_dir.iterdir()) if out_dir.is_dir() else []
    ):  # slide folders from single runs
        if (
            d.is_dir()
            and not d.name.startswith(".")
            and d.name not in slides
            and (d / "purity.json").is_file()
        ):
            slides[d.name] = {"status": DONE}
    rows = []
    for sid in sorted(slides):
        rec = slides[sid]
        row: dict[str, Any] = {
            "slide_id": sid,
            **{k: rec.get(k) for k in SUMMARY_COLUMNS if k != "slide_id"},
            "purity_reason": rec.get("purity_reason"),
            "runtime": rec.get("runtime"),
            "precision": rec.get("precision"),
        }
        pj = out_dir / sid / "purity.json"
        if (
            rec.get("status") == DONE and "n_cells" not in rec and pj.is_file()
        ):  # not re-read after every slide of a batch
            try:
                known = SlideRecord.from_json(
                    json.loads(pj.read_text(encoding="utf-8"))
                ).summary_row()
            except (OSError, ValueError, TypeError):
                known = {}
            row.update(
                {
                    k: v
                    for k, v in known.items()
                    if v is not None and (k not in ("path", "runtime_s") or row.get(k) is None)
                }
            )
        rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_summary_csv(out_dir: str | os.PathLike[str], manifest: Manifest | None = None) -> Path:
    """Write ``<out>/summary.csv`` (atomically) and return its path."""
    out_dir = Path(out_dir)
    manifest = manifest or Manifest.load(out_dir)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_COLUMNS)
    for row in _rows(out_dir, manifest):
        w.writerow([_fmt(row.get(c)) for c in SUMMARY_COLUMNS])
    path = out_dir / "summary.csv"
    write_text(path, buf.getvalue())
    return path


def _thumbnail(png: Path) -> str | None:
    try:
        with Image.open(png) as src:
            im = src.convert("RGB")
            im.thumbnail((THUMB_SIDE, THUMB_SIDE))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=82)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def purity_histogram_svg(
    values: list[float], *, bins: int = 20, width: int = 560, height: int = 220
) -> str:
    """An inline-SVG histogram of slide purities on [0, 1] with the median marked."""
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(v * bins)))] += 1
    top = max(counts) if values else 1
    ml, mr, mt, mb = 44, 22, 12, 36
    pw, ph = width - ml - mr, height - mt - mb
    bw = pw / bins
    parts = [
        f'<svg id="purity-plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="distribution of tumour purity over {len(values)} slides">'
    ]
    for i, c in enumerate(counts):
        if c:
            h = ph * c / top
            parts.append(
                f'<rect class="bar" x="{ml + i * bw + 1:.1f}" y="{mt + ph - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" fill="#c0392b">'
                f"<title>{i / bins:.2f}–{(i + 1) / bins:.2f}: {c} slide(s)</title></rect>"
            )
    parts.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="#333"/>')
    parts.append(f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="#333"/>')
    for t in range(0, 11, 2):
        x = ml + pw * t / 10
        parts.append(
            f'<text x="{x:.1f}" y="{mt + ph + 14}" font-size="11" text-anchor="middle">{t * 10} %</text>'
        )
    parts.append(
        f'<text x="{ml + pw / 2:.1f}" y="{height - 4}" font-size="12" text-anchor="middle">tumour purity of the slide, TC / (TC + BC)</text>'
    )
    parts.append(
        f'<text x="12" y="{mt + ph / 2:.1f}" font-size="11" text-anchor="middle" transform="rotate(-90 12 {mt + ph / 2:.1f})">slides</text>'
    )
    parts.append(f'<text x="{ml - 6}" y="{mt + 4}" font-size="11" text-anchor="end">{top}</text>')
    parts.append(f'<text x="{ml - 6}" y="{mt + ph}" font-size="11" text-anchor="end">0</text>')
    if values:
        med = (
            sorted(values)[len(values) // 2]
            if len(values) % 2
            else sum(sorted(values)[len(values) // 2 - 1 : len(values) // 2 + 1]) / 2
        )
        x = ml + pw * med
        parts.append(
            f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" stroke="#2c3e50" stroke-dasharray="4 3"/>'
        )
        parts.append(
            f'<text x="{x + 4:.1f}" y="{mt + 10}" font-size="11">median {100 * med:.1f} %</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:16px 24px;color:#222;font-size:14px}
h1{font-size:21px;margin:0 0 2px} h2{font-size:16px;margin:18px 0 6px}
.meta{color:#555;font-size:12px} .model{margin:4px 0 10px;font-size:13px} .model strong{font-weight:600}
.cards{display:flex;gap:10px;flex-wrap:wrap;margin:6px 0 10px} .card{border:1px solid #ddd;border-radius:6px;padding:5px 12px;background:#fafafa}
.card .n{font-size:19px;font-weight:600;display:block} .card .k{font-size:11px;color:#555;text-transform:uppercase;letter-spacing:.03em}
.card.bad{border-color:#e3a39c;background:#fdecea} .card.bad .n{color:#a00}
.failures{border:1px solid #e3a39c;background:#fdecea;border-radius:6px;padding:6px 12px;margin:0 0 10px}
.failures h2{margin:2px 0 4px;color:#a00;font-size:15px} .failures ul{margin:0;padding-left:20px} .failures li{margin:2px 0;overflow-wrap:anywhere}
.failures .msg{color:#a00} .failures summary{cursor:pointer;color:#555;font-size:12.5px;margin:2px 0}
.row{display:flex;gap:28px;flex-wrap:wrap;align-items:flex-start}
.legend{font-size:12.5px;max-width:560px;line-height:1.45} .legend p{margin:4px 0}
.swatch{display:inline-block;width:22px;height:0;border-top:3px solid rgb(0,200,0);vertical-align:middle;margin-right:4px}
.cbar{display:inline-block;width:150px;height:11px;vertical-align:middle;border:1px solid #999;margin:0 4px}
table{border-collapse:collapse;font-size:13px;width:100%;table-layout:fixed;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #ddd;padding:4px 6px;text-align:right;vertical-align:middle;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
th{cursor:pointer;background:#f1f1f1;position:sticky;top:0;user-select:none;font-weight:600;font-size:12px;white-space:normal;vertical-align:bottom}
th.sorted-asc::after{content:" ▲"} th.sorted-desc::after{content:" ▼"} th.nosort{cursor:default}
th .u{display:block;font-weight:400;color:#666;font-size:11px}
td.l,th.l{text-align:left} tr.failed td{background:#fdecea} tr.pending td{background:#f4f4f4}
td.st-failed{color:#a00;font-weight:600}
td.err{text-align:left;color:#a00;font-size:12.5px;white-space:normal}
td.err summary{cursor:pointer;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;list-style-position:inside}
td.err details[open] summary{white-space:normal;overflow-wrap:anywhere}
td.pur{font-weight:600;font-size:14px} .why{display:block;font-size:11px;color:#666;font-weight:400;white-space:normal}
img.ov{width:300px;height:auto;display:block}
@media (max-width:1320px){col.overview{width:212px !important} img.ov{width:200px}}
.note{background:#fff4d6;border:1px solid #e0b84a;color:#5a4300;padding:8px 12px;margin:0 0 10px;font-size:14px}
"""

_JS = """
(function(){
  const table=document.getElementById('slides');
  const heads=table.tHead.rows[0].cells;
  function key(tr,k){const td=tr.querySelector('td[data-k="'+k+'"]');const v=td?td.getAttribute('data-v'):null;
    if(v===null||v==='')return null;const n=Number(v);return isNaN(n)?v.toLowerCase():n;}
  for(const th of heads){
    if(th.classList.contains('nosort'))continue;
    th.addEventListener('click',function(){
      const asc=!this.classList.contains('sorted-asc'),k=this.getAttribute('data-k');
      for(const h of heads)h.classList.remove('sorted-asc','sorted-desc');
      this.classList.add(asc?'sorted-asc':'sorted-desc');
      const rows=Array.from(table.tBodies[0].rows);
      rows.sort(function(a,b){const x=key(a,k),y=key(b,k);
        if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
        return (x<y?-1:x>y?1:0)*(asc?1:-1);});
      for(const r of rows)table.tBodies[0].appendChild(r);
    });
  }
})();
"""


class _Col(NamedTuple):
    """A column of the report's table: the row's ``key``, its ``header`` and ``unit``, the CSS
    ``css`` class, the ``fmt`` of its values ("s" text, "d" integer, "%" a fraction shown as
    a percentage, a digit: decimals; None: the overview image) and its ``width`` in CSS px
    (None: what the other columns leave, so the table fits the window)."""

    key: str
    header: str
    unit: str = ""
    css: str = ""
    fmt: str | None = "s"
    width: int | None = None


_COLS = (
    _Col("overview", "overview", "cancer area · purity map", css="l nosort", fmt=None, width=312),
    _Col("slide_id", "slide", css="l"),
    _Col("status", "status", css="l", width=64),
    _Col("purity", "purity", "TC / all cells", css="pur", fmt="%", width=80),
    _Col("purity_in_cancer_area", "purity in cancer area", css="pur", fmt="%", width=84),
    _Col("n_cells", "cells", fmt="d", width=80),
    _Col("n_tc", "tumour", "cells (TC)", fmt="d", width=80),
    _Col("n_bc", "background", "cells (BC)", fmt="d", width=96),
    _Col("tissue_area_mm2", "tissue", "mm²", fmt="2", width=70),
    _Col("cancer_area_mm2", "cancer area", "mm²", fmt="2", width=70),
    _Col("n_unreadable_tiles", "unreadable", "tiles", fmt="d", width=90),
    _Col("mpp", "resolution", "µm/px", fmt="3", width=88),
    _Col("runtime_s", "runtime", "s", fmt="1", width=72),
)
#: The columns a failed (or pending) slide's error message spans: it has no results to show there,
#: and a one-line message across them fits the window where a column of its own would not.
_ERROR_SPAN = (
    "purity",
    "purity_in_cancer_area",
    "n_cells",
    "n_tc",
    "n_bc",
    "tissue_area_mm2",
    "cancer_area_mm2",
    "n_unreadable_tiles",
    "mpp",
)


def _shorten_middle(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters with "…" in the middle (for paths, whose start
    and end say the most)."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head) :]


def _error_text(row: dict[str, Any]) -> tuple[str, str]:
    """The row's error as (full line, shown part): a message that starts with the slide's path
    drops it (the row names the slide; its path is on the slide's hover)."""
    full = str(row.get("error") or "")
    path = str(row.get("path") or "")
    shown = full[len(path) + 2 :] if path and full.startswith(path + ": ") else full
    return full, shown


def _error_cell(row: dict[str, Any]) -> str:
    """A failed slide's message across :data:`_ERROR_SPAN`: one line cut with an ellipsis, the
    whole line on hover, and the whole message wrapped after a click (a ``<details>``)."""
    full, shown = _error_text(row)
    q = html.escape(full, quote=True)
    return (
        f'<td class="err" colspan="{len(_ERROR_SPAN)}" data-k="error" data-v="{q}">'
        f'<details><summary title="{q}">{html.escape(shown)}</summary></details></td>'
    )


def _cell(row: dict[str, Any], key: str, fmt: str | None, thumbs: dict[str, str | None]) -> str:
    k = f' data-k="{key}"'
    if key == "overview":
        uri = thumbs.get(row["slide_id"])
        if not uri:
            return '<td class="l"></td>'
        href = html.escape(f"{row['slide_id']}/overview.png", quote=True)
        return f'<td class="l"><a href="{href}"><img class="ov" alt="overview of {html.escape(row["slide_id"])}" src="{uri}"></a></td>'
    v = row.get(key)
    if v is None:
        shown = ""
        reason = row.get("purity_reason") if key == "purity" else None
        if reason:
            shown = f'<span title="{html.escape(str(reason), quote=True)}">n/a<span class="why">{html.escape(str(reason))}</span></span>'
        return f'<td class="{"l" if fmt == "s" else ("pur" if fmt == "%" else "")}"{k} data-v="">{shown}</td>'
    if fmt == "s":
        cls = f"l st-{html.escape(str(v), quote=True)}" if key == "status" else "l"
        shown = html.escape(str(v))
        if (
            key == "slide_id"
        ):  # a long id is cut with an ellipsis: the id and the slide's file in full on hover
            tip = str(v) + (f"\n{row['path']}" if row.get("path") else "")
            shown = f'<span title="{html.escape(tip, quote=True)}">{shown}</span>'
        return f'<td class="{cls}"{k} data-v="{html.escape(str(v), quote=True)}">{shown}</td>'
    num = float(v)
    if fmt == "%":
        return f'<td class="pur"{k} data-v="{num!r}">{100 * num:.1f} %</td>'
    shown = f"{int(num):,}" if fmt == "d" else f"{num:.{int(fmt or 0)}f}"
    return f'<td{k} data-v="{num!r}">{shown}</td>'


def _table_row(row: dict[str, Any], thumbs: dict[str, str | None]) -> str:
    """One ``<tr>``; a slide that is not done but has an error shows it across :data:`_ERROR_SPAN`."""
    status = row.get("status")
    cls = (
        f' class="{html.escape(str(status), quote=True)}"'
        if status in ("failed", "pending", "running")
        else ""
    )
    spans = status != DONE and bool(row.get("error"))
    cells = []
    for c in _COLS:
        if spans and c.key in _ERROR_SPAN:
            if c.key == _ERROR_SPAN[0]:
                cells.append(_error_cell(row))
            continue
        cells.append(_cell(row, c.key, c.fmt, thumbs))
    return f"<tr{cls}>" + "".join(cells) + "</tr>"


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


def _model_line(manifest: Manifest, rows: list[dict[str, Any]], out_dir: Path) -> str:
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


def _legend() -> str:
    lo, mid, hi = (tuple(int(c) for c in rgb) for rgb in purity_colormap([0.0, 0.5, 1.0]))
    grad = f"linear-gradient(to right, rgb{lo}, rgb{mid}, rgb{hi})"
    return (
        '<div class="legend" id="legend"><p><strong>Reading the overviews.</strong> Left: the slide with the predicted '
        '<span class="swatch"></span><strong>cancer area</strong> outlined in green. Right: <strong>tumour purity</strong> per '
        f'{PURITY_GRID_UM:g} µm × {PURITY_GRID_UM:g} µm square:<br>0 % <span class="cbar" style="background:{grad}"></span> 100 % '
        "(blue: background cells only, red: tumour cells only; no colour: no cells). Click an overview for full size.</p>"
        "<p><strong>Purity</strong> = tumour cells (TC) / all detected cells (TC + BC) on the slide; <strong>in cancer area</strong>: the same, "
        "counting only cells inside the predicted cancer area. Areas in mm² from the slide's µm/px. "
        "Click a column header to sort.</p></div>"
    )


def _cards(rows: list[dict[str, Any]], purities: list[float]) -> str:
    n = {
        s: sum(1 for r in rows if r.get("status") == s)
        for s in ("done", "failed", "running", "pending")
    }
    no_tissue = sum(1 for r in rows if r.get("status") == DONE and r.get("purity") is None)
    cells = sum(int(r.get("n_cells") or 0) for r in rows if r.get("status") == DONE)
    med = ""
    if purities:
        q = sorted(purities)
        m = q[len(q) // 2] if len(q) % 2 else (q[len(q) // 2 - 1] + q[len(q) // 2]) / 2
        med = f"{100 * m:.1f} %"
    items = [
        ("slides", str(len(rows)), ""),
        ("done", str(n["done"]), ""),
        ("failed", str(n["failed"]), " bad" if n["failed"] else ""),
        ("no cells / no tissue", str(no_tissue), ""),
        ("unfinished", str(n["running"] + n["pending"]), ""),
        ("cells detected", f"{cells:,}", ""),
        ("median purity", med or "n/a", ""),
    ]
    return (
        '<div class="cards" id="counts">'
        + "".join(
            f'<div class="card{c}"><span class="n">{html.escape(v)}</span><span class="k">{html.escape(k)}</span></div>'
            for k, v, c in items
        )
        + "</div>"
    )


def _failures(rows: list[dict[str, Any]], shown: int = 5) -> str:
    """The box of failed slides above the table, each with its whole message (the first ``shown``
    open, the rest behind a click so that a bad batch does not push the table off the screen)."""
    failed = [r for r in rows if r.get("status") == "failed"]
    if not failed:
        return ""

    def item(r: dict[str, Any]) -> str:
        full, msg = _error_text(r)
        return (
            f'<li><strong>{html.escape(r["slide_id"])}</strong>: <span class="msg" title="{html.escape(full, quote=True)}">'
            f"{html.escape(msg or 'no message')}</span></li>"
        )

    items = "".join(item(r) for r in failed[:shown])
    more = (
        f"<details><summary>{len(failed) - shown} more</summary><ul>{''.join(item(r) for r in failed[shown:])}</ul></details>"
        if len(failed) > shown
        else ""
    )
    return f'<div class="failures" id="failures"><h2>{len(failed)} slide(s) failed</h2><ul>{items}</ul>{more}</div>'


def _not_run(manifest: Manifest) -> str:
    """The inputs the last run refused before it started (not slides, an id holding another
    slide's result): not in the table, since nothing was recorded for them."""
    lines = [str(x) for x in (manifest.meta.get("last_run") or {}).get("not_run") or []]
    if not lines:
        return ""
    items = "".join(f'<li><span class="msg">{html.escape(line)}</span></li>' for line in lines)
    return (
        f'<div class="failures" id="not-run"><h2>{len(lines)} input(s) of the last run not run (nothing recorded for them)</h2>'
        f"<ul>{items}</ul></div>"
    )


def write_report(out_dir: str | os.PathLike[str], manifest: Manifest | None = None) -> Path:
    """Write ``<out>/report.html`` (atomically) and return its path."""
    out_dir = Path(out_dir)
    manifest = manifest or Manifest.load(out_dir)
    rows = _rows(out_dir, manifest)
    thumbs = {
        r["slide_id"]: _thumbnail(out_dir / r["slide_id"] / "overview.png")
        for r in rows
        if r.get("status") == DONE
    }
    purities = [
        float(r["purity"])
        for r in rows
        if r.get("status") == DONE
        and r.get("purity") is not None
        and math.isfinite(float(r["purity"]))
    ]
    title = f"Tumour purity report: {out_dir.resolve().name}"
    head = "".join(
        f'<th class="{c.css}" data-k="{c.key}">{html.escape(c.header)}'
        + (f'<span class="u">{html.escape(c.unit)}</span>' if c.unit else "")
        + "</th>"
        for c in _COLS
    )
    cols = "".join(
        f'<col class="{c.key}"' + (f' style="width:{c.width}px"' if c.width else "") + ">"
        for c in _COLS
    )
    body = [_table_row(r, thumbs) for r in rows]
    where = str(out_dir.resolve())
    notes = sorted(
        {
            str(n)
            for n in [manifest.meta.get("model_note"), *(r.get("model_note") for r in rows)]
            if n
        }
    )
    note_html = "".join(
        f'<div class="note" role="alert">&#9888; {html.escape(n)}</div>' for n in notes
    )
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<div class="meta">wsi-ocelot batch in <span title="{html.escape(where, quote=True)}">{html.escape(_shorten_middle(where, 90))}</span> · {html.escape(str(manifest.meta.get("software", "")))} · built {html.escape(now_iso())}</div>
{_model_line(manifest, rows, out_dir)}
{note_html}
{_cards(rows, purities)}
{_failures(rows)}
{_not_run(manifest)}
<div class="row"><div><h2>Tumour purity over the cohort ({len(purities)} slide(s) with cells)</h2>
{purity_histogram_svg(purities, width=460, height=170)}</div>
{_legend()}</div>
<h2>Slides</h2>
<table id="slides"><colgroup>{cols}</colgroup><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
<script>{_JS}</script>
</body></html>
"""
    path = out_dir / "report.html"
    write_text(path, doc)
    return path


def rebuild_reports(out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``wsi-ocelot report DIR``: rebuild ``summary.csv`` and ``report.html`` from what is on disk."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ConfigError(
            out_dir, "the folder does not exist", "pass the --out folder of a `wsi-ocelot run`"
        )
    manifest = Manifest.load(out_dir)
    if not manifest.slides and not any(
        (d / "purity.json").is_file() for d in out_dir.iterdir() if d.is_dir()
    ):
        raise ConfigError(
            out_dir,
            "no manifest.json and no slide results here",
            "pass the --out folder of a `wsi-ocelot run`",
        )
    return write_summary_csv(out_dir, manifest), write_report(out_dir, manifest)
