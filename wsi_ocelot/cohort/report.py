"""Batch reports: ``summary.csv`` (one row per slide) and a self-contained ``report.html``.

Both are built from ``manifest.json`` and each finished slide's ``purity.json``, so
``wsi-ocelot report DIR`` rebuilds them at any time (also for a folder of slides run one
by one with ``wsi-ocelot run`` before batches existed).

The HTML stays light at 10,000 slides and needs no network, also opened from ``file://``: the
rows are one JSON blob in the page, drawn a page at a time by a small script of its own
(``report_table.js``: sorts, filters by text and status, pages); each overview is the slide
folder's ``overview.png``, referenced by a relative link and loaded lazily; the cohort plots
(:mod:`~wsi_ocelot.cohort.report_plots`), the counts and the failures are server-rendered, so they
show without JavaScript. The table fits a laptop's window (1366 px): its columns have fixed
widths, a long slide name is cut with an ellipsis (whole on hover), and a failed slide's message
runs on one line across the columns it has no results for, whole on hover and after a click.
Statuses are told apart everywhere: done (this run), skipped (done by an earlier run, kept),
failed, pending (the batch stopped before it) and running (a run killed while it ran).
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import html
import io
import json
import logging
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from wsi_ocelot.atomic import write_text
from wsi_ocelot.cohort.manifest import DONE, FAILED, PENDING, RUNNING, Manifest, now_iso
from wsi_ocelot.cohort.report_model import SYNTHETIC_DATASET, dataset_name, model_line
from wsi_ocelot.cohort.report_plots import (
    failure_reason,
    failures_by_reason_svg,
    median,
    purity_area_svg,
    purity_histogram_svg,
)
from wsi_ocelot.constants import PURITY_GRID_UM
from wsi_ocelot.errors import ConfigError
from wsi_ocelot.outputs import purity_colormap
from wsi_ocelot.purity import SUMMARY_COLUMNS, SlideRecord

__all__ = [
    "SYNTHETIC_DATASET",
    "dataset_name",
    "rebuild_reports",
    "table_data",
    "write_report",
    "write_summary_csv",
]

log = logging.getLogger(__name__)

#: A slide done by an earlier run, which the last run kept (the table's status label for it).
SKIPPED = "skipped"
#: The table's rows per page: what is in the page's DOM at once.
PAGE_ROWS = 100


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
            "finished": rec.get("finished"),
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
.card.warn{border-color:#e0b84a;background:#fff8e6} .card.warn .n{color:#7a5a00}
.row{display:flex;flex-wrap:wrap;align-items:flex-start;gap:6px 30px} .row>div{width:min-content} .row h2{margin:8px 0 2px;font-size:14px}
.legend{font-size:12.5px;line-height:1.4;margin:2px 0 0} .legend p{margin:2px 0}
.controls{display:flex;gap:10px;align-items:center;margin:4px 0 6px;font-size:13px} .controls input{width:260px}
.controls #shown{color:#444} h2.slides{display:inline-block;margin-right:14px}
.swatch{display:inline-block;width:22px;height:0;border-top:3px solid rgb(0,200,0);vertical-align:middle;margin-right:4px}
.cbar{display:inline-block;width:150px;height:11px;vertical-align:middle;border:1px solid #999;margin:0 4px}
table{border-collapse:collapse;font-size:13px;width:100%;table-layout:fixed;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #ddd;padding:4px 6px;text-align:right;vertical-align:middle;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
th{cursor:pointer;background:#f1f1f1;position:sticky;top:0;user-select:none;font-weight:600;font-size:12px;white-space:normal;vertical-align:bottom}
th.sorted-asc::after{content:" ▲"} th.sorted-desc::after{content:" ▼"} th.nosort{cursor:default}
th .u{display:block;font-weight:400;color:#666;font-size:11px}
td.l,th.l{text-align:left} tr.failed td{background:#fdecea} tr.pending td,tr.running td{background:#f4f4f4}
td.st-skipped{color:#555} td.st-pending,td.st-running{color:#7a5a00;font-weight:600}
td.st-failed{color:#a00;font-weight:600}
td.err{text-align:left;color:#a00;font-size:12.5px;white-space:normal}
td.err summary{cursor:pointer;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;list-style-position:inside}
td.err details[open] summary{white-space:normal;overflow-wrap:anywhere}
td.pur{font-weight:600;font-size:14px} .why{display:block;font-size:11px;color:#666;font-weight:400;white-space:normal}
img.ov{width:300px;height:auto;display:block}
@media (max-width:1320px){col.overview{width:212px !important} img.ov{width:200px}}
.noscript{color:#5a4300;font-size:13px}
.note{background:#fff4d6;border:1px solid #e0b84a;color:#5a4300;padding:8px 12px;margin:0 0 10px;font-size:14px}
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


#: The keys of each row in the page's JSON (``table_data``): the manifest's values, the reason a
#: purity is missing, what ran the forward pass, when the slide finished, whether the last run
#: skipped it (:data:`SKIPPED`) and whether its folder has an ``overview.png``.
ROW_KEYS = (
    *(k for k in SUMMARY_COLUMNS if k != "model_note"),
    "error",
    "purity_reason",
    "runtime",
    "precision",
    "finished",
    "skipped",
    "overview",
)
#: What each status means, on its label's hover and in the status filter.
_STATUS_TITLES = {
    DONE: "done (by the last run, where runs are recorded): its results are in its folder",
    SKIPPED: "done by an earlier run; the last run kept its result",
    FAILED: "failed: its one-line message says why",
    PENDING: "not run: the batch stopped before it (run the same command again to go on)",
    RUNNING: "running when its run was killed: run the same command again",
}


def _time(text: Any) -> _dt.datetime | None:
    try:
        t = _dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


def _run_started(manifest: Manifest) -> _dt.datetime | None:
    """When the batch running now, else the last one, started (None when unknown)."""
    run = manifest.meta.get("current_run") or manifest.meta.get("last_run") or {}
    return _time(run.get("started")) if isinstance(run, dict) else None


def _skipped(row: dict[str, Any], started: _dt.datetime | None) -> bool:
    """A done slide that finished before the last run started: that run skipped it."""
    if started is None or row.get("status") != DONE:
        return False
    finished = _time(row.get("finished"))
    return finished is not None and finished < started


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def table_data(out_dir: Path, manifest: Manifest, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The slide table as the page's JSON: ``cols`` (:data:`ROW_KEYS`), ``rows`` (one list of values
    per slide, in ``cols`` order), the table's columns and formats, the columns a message spans,
    the rows per page and what each status means."""
    started = _run_started(manifest)
    out = []
    for r in rows:
        full = {
            **r,
            "skipped": _skipped(r, started),
            "overview": r.get("status") == DONE
            and (out_dir / r["slide_id"] / "overview.png").is_file(),
        }
        out.append([_json_value(full.get(k)) for k in ROW_KEYS])
    return {
        "cols": list(ROW_KEYS),
        "rows": out,
        "table": [[c.key, c.fmt] for c in _COLS],
        "span": list(_ERROR_SPAN),
        "page": PAGE_ROWS,
        "status_titles": _STATUS_TITLES,
    }


def _json_script(element_id: str, data: Any) -> str:
    """``data`` as a ``<script type="application/json">``: markup characters as JSON escapes, so
    no value can end the element or start a tag."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(ch, esc)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


@functools.cache
def _table_js() -> str:
    return resources.files("wsi_ocelot.cohort").joinpath("report_table.js").read_text("utf-8")


def _labels(rows: list[dict[str, Any]], started: _dt.datetime | None) -> dict[str, int]:
    """Slides per status label (done, skipped, failed, pending, running), in that order."""
    n = dict.fromkeys((DONE, SKIPPED, FAILED, PENDING, RUNNING), 0)
    for r in rows:
        label = SKIPPED if _skipped(r, started) else str(r.get("status") or FAILED)
        n[label] = n.get(label, 0) + 1
    return n


def _controls(labels: dict[str, int], total: int) -> str:
    """The table's filter boxes, row count and pager (hidden until the script shows them)."""
    opts = [f'<option value="">all statuses ({total:,})</option>'] + [
        f'<option value="{html.escape(k, quote=True)}" title="{html.escape(_STATUS_TITLES.get(k, k), quote=True)}">'
        f"{html.escape(k)} ({n:,})</option>"
        for k, n in labels.items()
        if n
    ]
    return (
        '<div class="controls" id="table-controls" hidden>'
        '<input type="search" id="filter-text" placeholder="filter: slide, path or message" aria-label="filter the slides by text">'
        f'<select id="filter-status" aria-label="filter the slides by status">{"".join(opts)}</select>'
        '<button type="button" id="page-prev" aria-label="previous page">&#8249; prev</button>'
        '<button type="button" id="page-next" aria-label="next page">next &#8250;</button>'
        '<span id="shown"></span></div>'
    )


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
        "Click a column header to sort; the boxes above the table filter it.</p></div>"
    )


def _cards(rows: list[dict[str, Any]], labels: dict[str, int], purities: list[float]) -> str:
    no_tissue = sum(1 for r in rows if r.get("status") == DONE and r.get("purity") is None)
    cells = sum(int(r.get("n_cells") or 0) for r in rows if r.get("status") == DONE)
    items = [
        ("slides", f"{len(rows):,}", "", ""),
        ("done", f"{labels[DONE]:,}", "", _STATUS_TITLES[DONE]),
        ("skipped (done before)", f"{labels[SKIPPED]:,}", "", _STATUS_TITLES[SKIPPED]),
        ("failed", f"{labels[FAILED]:,}", " bad" if labels[FAILED] else "", _STATUS_TITLES[FAILED]),
        (
            "pending (not run)",
            f"{labels[PENDING]:,}",
            " warn" if labels[PENDING] else "",
            _STATUS_TITLES[PENDING],
        ),
        *(
            [("running (killed)", f"{labels[RUNNING]:,}", " warn", _STATUS_TITLES[RUNNING])]
            if labels[RUNNING]
            else []
        ),
        ("no cells / no tissue", f"{no_tissue:,}", "", ""),
        ("cells detected", f"{cells:,}", "", ""),
        ("median purity", f"{100 * median(purities):.1f} %" if purities else "n/a", "", ""),
    ]
    return (
        '<div class="cards" id="counts">'
        + "".join(
            f'<div class="card{c}"'
            + (f' title="{html.escape(t, quote=True)}"' if t else "")
            + f'><span class="n">{html.escape(v)}</span><span class="k">{html.escape(k)}</span></div>'
            for k, v, c, t in items
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


def _plots(rows: list[dict[str, Any]], purities: list[float]) -> str:
    """The cohort plots, side by side: purity histogram, purity against tissue area, failures by
    reason."""
    points = [
        (float(r["tissue_area_mm2"]), float(r["purity"]))
        for r in rows
        if r.get("status") == DONE
        and r.get("purity") is not None
        and r.get("tissue_area_mm2") is not None
    ]
    reasons = [
        failure_reason(r.get("error"), r.get("path")) for r in rows if r.get("status") == FAILED
    ]
    return (
        '<div class="row" id="plots">'
        f"<div><h2>Tumour purity ({len(purities):,} slide(s) with cells)</h2>"
        f"{purity_histogram_svg(purities, width=400, height=150)}</div>"
        f"<div><h2>Purity against tissue area ({len(points):,} slide(s))</h2>"
        f"{purity_area_svg(points, width=400, height=150)}</div>"
        f"<div><h2>Failures by reason ({len(reasons):,} slide(s))</h2>"
        f"{failures_by_reason_svg(reasons, width=440, height=150)}</div>"
        "</div>"
    )


def write_report(out_dir: str | os.PathLike[str], manifest: Manifest | None = None) -> Path:
    """Write ``<out>/report.html`` (atomically) and return its path."""
    out_dir = Path(out_dir)
    manifest = manifest or Manifest.load(out_dir)
    rows = _rows(out_dir, manifest)
    purities = [
        float(r["purity"])
        for r in rows
        if r.get("status") == DONE
        and r.get("purity") is not None
        and math.isfinite(float(r["purity"]))
    ]
    labels = _labels(rows, _run_started(manifest))
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
{model_line(manifest, rows, out_dir)}
{note_html}
{_cards(rows, labels, purities)}
{_failures(rows)}
{_not_run(manifest)}
{_plots(rows, purities)}
{_legend()}
<h2 class="slides">Slides</h2>
<noscript><p class="noscript">The table of slides needs JavaScript; summary.csv beside this page holds the same rows.</p></noscript>
{_controls(labels, len(rows))}
<table id="slides"><colgroup>{cols}</colgroup><thead><tr>{head}</tr></thead><tbody></tbody></table>
{_json_script("slides-data", table_data(out_dir, manifest, rows))}
<script>{_table_js()}</script>
</body></html>
"""
    path = out_dir / "report.html"
    write_text(path, doc)
    log.debug("report of %d slide(s): %s (%d bytes)", len(rows), path, len(doc.encode("utf-8")))
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
