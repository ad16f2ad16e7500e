"""report.html at cohort scale (#22 item 3): rows as a JSON blob that round-trips the manifest,
overviews linked (not embedded) and loaded lazily, a table that sorts, filters and pages in the
browser, the cohort plots, every status told apart, and hostile slide ids inert. The cohort folders
are made by ``fake_cohort`` (records and overview PNGs, no model run)."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path

import pytest
from chromium import WebDriver, load, require_browser, wait_for_images
from conftest import report_rows
from fake_cohort import ERRORS, write_fake_cohort

from wsi_ocelot.cohort.manifest import Manifest
from wsi_ocelot.cohort.report import PAGE_ROWS, ROW_KEYS, write_report, write_summary_csv
from wsi_ocelot.cohort.report_plots import (
    failure_reason,
    failures_by_reason_svg,
    purity_area_svg,
)

#: Slide ids with markup, quotes and URL syntax (ids are made safe for a path, but the report does not
#: rely on it; a folder name cannot hold '/', so the script end is in the paths).
HOSTILE_IDS = (
    "<script>window.pwned=1<\\script>",
    "<img src=x onerror=window.pwned=2>",
    "a\"b'c&amp;d #?%20=+",
    "漢字 ü <b>bold<\\b>",
)


def _hostile_path(sid: str) -> str:
    return f"/data/<i>x</i>/</script><script>window.pwned=3</script>/{sid}.svs"


def _add_hostile(out: Path) -> None:
    """Four done slides with hostile ids (and a hostile path) in ``out``'s manifest, folders included."""
    data = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    first = next(r for r in data["slides"].values() if r["status"] == "done")
    png = next(out.glob("*/overview.png"))
    for i, sid in enumerate(HOSTILE_IDS):
        (out / sid).mkdir()
        shutil.copy(png, out / sid / "overview.png")
        data["slides"][sid] = {**first, "path": _hostile_path(sid), "n_cells": 10 + i}
    (out / "manifest.json").write_text(json.dumps(data), encoding="utf-8")


def _page(out: Path) -> str:
    return write_report(out).read_text(encoding="utf-8")


def test_rows_round_trip_the_manifest(tmp_path):
    slides = write_fake_cohort(tmp_path, 80, failed=0.15, pending=0.1, seed=2)
    rows = report_rows(_page(tmp_path))
    assert [r["slide_id"] for r in rows] == sorted(slides)
    started = dt.datetime.fromisoformat(
        Manifest.load(tmp_path).meta["last_run"]["started"]
    )  # slides that finished before it: skipped by the last run
    for row in rows:
        rec = slides[row["slide_id"]]
        assert set(row) == set(ROW_KEYS)
        for k in ROW_KEYS:
            if k in rec:
                assert row[k] == rec[k], (row["slide_id"], k)  # exact: floats included
        done = rec["status"] == "done"
        assert row["overview"] == done
        assert row["skipped"] == (done and dt.datetime.fromisoformat(rec["finished"]) < started)
    assert {r["status"] for r in rows} == {"done", "failed", "pending"}
    assert any(r["skipped"] for r in rows) and not all(r["skipped"] for r in rows if r["overview"])


def test_each_status_is_told_apart_without_javascript(tmp_path):
    """Done, skipped (done before), failed, pending (not run) and running (killed) each have their
    count, filter and row label; the cards, plots and failures are in the page itself."""
    write_fake_cohort(tmp_path, 120, failed=0.1, pending=0.1, seed=4)
    m = Manifest.load(tmp_path)
    killed = next(s for s, r in sorted(m.slides.items()) if r["status"] == "pending")
    m.slides[killed] = {"path": m.slides[killed]["path"], "status": "running", "error": None}
    m.save()
    page = _page(tmp_path)
    rows = report_rows(page)
    label = {r["slide_id"]: ("skipped" if r["skipped"] else r["status"]) for r in rows}
    n = {s: sum(1 for v in label.values() if v == s) for s in set(label.values())}
    assert set(n) == {"done", "skipped", "failed", "pending", "running"}
    static = page.split('<script type="application/json"', 1)[0]  # what shows without script
    cards = dict(
        (k, v)
        for v, k in re.findall(
            r'<span class="n">([^<]*)</span><span class="k">([^<]*)</span>', static
        )
    )
    assert cards["done"] == str(n["done"]) and cards["skipped (done before)"] == str(n["skipped"])
    assert cards["failed"] == str(n["failed"]) and cards["pending (not run)"] == str(n["pending"])
    assert cards["running (killed)"] == "1" and cards["slides"] == "120"
    for status, count in n.items():
        assert f'<option value="{status}"' in static and f"{status} ({count})</option>" in static
    for plot in ("purity-plot", "purity-area-plot", "failure-plot"):
        assert f'<svg id="{plot}"' in static
    assert f"{n['failed']} slide(s) failed" in static and "<noscript>" in static


def test_hostile_ids_stay_inert_in_the_page(tmp_path):
    write_fake_cohort(tmp_path, 5, failed=0, pending=0)
    _add_hostile(tmp_path)
    page = _page(tmp_path)
    assert page.count("<script") == 2 and page.count("</script>") == 2  # the data and the table's
    assert "<img src=x" not in page and "<b>bold" not in page and "<i>x" not in page
    assert "window.pwned" not in page.split('id="slides-data">', 1)[0]
    rows = {r["slide_id"]: r for r in report_rows(page)}
    for sid in HOSTILE_IDS:  # intact in the data the table is drawn from
        assert rows[sid]["path"] == _hostile_path(sid) and rows[sid]["overview"]


def test_failures_are_grouped_by_reason():
    paths = [f"/data/s{i}/slide {i}.svs" for i in range(40)]
    errors = [ERRORS[i % len(ERRORS)].format(path=p, sid=f"s{i}") for i, p in enumerate(paths)]
    reasons = [failure_reason(e, p) for e, p in zip(errors, paths, strict=True)]
    assert len(set(reasons)) == len(ERRORS)  # one reason per kind of message, whatever the slide
    assert "N of its N cell tiles are unreadable, more than the allowed N%" in reasons
    assert "does not look like brightfield H&E" in reasons
    assert all("/data" not in r and "Fix" not in r for r in reasons)
    assert failure_reason(None) == "no message"
    svg = failures_by_reason_svg([f"reason {i % 9}" for i in range(90)], top=4)
    assert svg.count('class="bar"') == 4 and "6 other reasons" in svg  # 3 shown + the rest
    assert "no slide failed" in failures_by_reason_svg([])


def test_the_scatter_stays_one_path_at_any_size():
    import numpy as np

    rng = np.random.default_rng(0)
    pts = list(zip(rng.gamma(2, 40, 10_000), rng.random(10_000), strict=True))
    svg = purity_area_svg(pts, width=400, height=150)
    assert (
        svg.count("<path") == 1 and 'aria-label="tumour purity against tissue area of 10000' in svg
    )
    assert len(svg) < 20 * 340 * 102  # at most one short segment per pixel of the plot area
    assert purity_area_svg([]).count("<path") == 0


@pytest.mark.slow  # builds 10,000 slide folders
def test_the_report_stays_light_at_10000_slides(tmp_path):
    write_fake_cohort(tmp_path, 10_000)
    path = write_report(tmp_path)
    size = path.stat().st_size
    assert size < 15e6 and size / 10_000 < 500, size  # about 300 bytes a slide
    page = path.read_text(encoding="utf-8")
    assert "data:image" not in page and len(report_rows(page)) == 10_000
    assert write_summary_csv(tmp_path).read_text(encoding="utf-8").count("\n") == 10_001


_ROWS_JS = "return Array.from(document.querySelectorAll('#slides tbody tr'))"
_IDS_JS = _ROWS_JS + ".map(r => r.querySelector('td[data-k=slide_id]').getAttribute('data-v'))"


def _header(wd: WebDriver, key: str) -> None:
    wd.js(f"document.querySelector('#slides th[data-k={key}]').click()")


@pytest.mark.slow  # headless Chromium
def test_the_table_sorts_filters_and_pages_in_chromium(tmp_path):
    found = require_browser()
    slides = write_fake_cohort(tmp_path, 250, failed=0.1, pending=0.05, seed=3)
    _add_hostile(tmp_path)
    write_report(tmp_path)
    total = len(slides) + len(HOSTILE_IDS)
    wd = WebDriver(*found, size=(1366, 900))
    try:
        load(wd, tmp_path / "report.html")
        assert wd.js("return document.getElementById('slides').getAttribute('data-drawn')") == str(
            PAGE_ROWS
        )
        shown = wd.js("return document.getElementById('shown').textContent")
        assert shown == f"rows 1–{PAGE_ROWS} of {total} slides · page 1 of 3"
        first = wd.js(_IDS_JS)
        assert first == sorted([*slides, *HOSTILE_IDS])[:PAGE_ROWS]
        # pages
        wd.js("document.getElementById('page-next').click()")
        assert wd.js(_IDS_JS) == sorted([*slides, *HOSTILE_IDS])[PAGE_ROWS : 2 * PAGE_ROWS]
        assert wd.js("return document.getElementById('shown').textContent").startswith(
            f"rows {PAGE_ROWS + 1}–{2 * PAGE_ROWS} of"
        )
        wd.js("document.getElementById('page-next').click()")
        assert len(wd.js(_IDS_JS)) == total - 2 * PAGE_ROWS
        assert wd.js("return document.getElementById('page-next').disabled")
        # sort by purity, highest first: over the whole cohort, empty values last
        _header(wd, "purity")
        _header(wd, "purity")
        purities = sorted(
            (r["purity"] for r in slides.values() if r.get("purity") is not None), reverse=True
        )
        vals = wd.js(
            _ROWS_JS + ".map(r => r.querySelector('td[data-k=purity]'))"
            ".map(td => td ? td.getAttribute('data-v') : '')"
        )
        assert [float(v) for v in vals] == purities[:PAGE_ROWS]  # back on page 1, the top 100
        assert wd.js("return document.getElementById('shown').textContent").startswith(
            f"rows 1–{PAGE_ROWS} of"
        )
        # filter by status: the failed ones, each labelled and with its message
        wd.js(
            "const s = document.getElementById('filter-status'); s.value = 'failed';"
            "s.dispatchEvent(new Event('change'))"
        )
        n_failed = sum(1 for r in slides.values() if r["status"] == "failed")
        assert wd.js(_ROWS_JS + ".length") == n_failed
        assert wd.js(_ROWS_JS + ".every(r => r.classList.contains('failed'))")
        assert (
            wd.js("return document.querySelectorAll('#slides tbody td.st-failed').length")
            == n_failed
        )
        assert wd.js("return document.getElementById('shown').textContent") == (
            f"rows 1–{n_failed} of {n_failed} shown ({total} slides)"
        )
        for status in ("skipped", "pending"):
            wd.js(
                f"const s = document.getElementById('filter-status'); s.value = '{status}';"
                "s.dispatchEvent(new Event('change'))"
            )
            assert wd.js(
                "return Array.from(document.querySelectorAll('#slides tbody td[data-k=status]'))"
                ".map(td => td.textContent)"
            ) == [status] * min(PAGE_ROWS, wd.js(_ROWS_JS + ".length"))
        # filter by text (slide, path or message), with the status filter back on all
        wd.js(
            "const s = document.getElementById('filter-status'); s.value = '';"
            "s.dispatchEvent(new Event('change'));"
            "const t = document.getElementById('filter-text'); t.value = 'no MPP';"
            "t.dispatchEvent(new Event('input'))"
        )
        no_mpp = sum(1 for r in slides.values() if "no MPP" in (r.get("error") or ""))
        assert no_mpp and wd.js(_ROWS_JS + ".length") == no_mpp
        # hostile ids: drawn as text, nothing injected, the overview link URL-encoded
        wd.js(
            "const t = document.getElementById('filter-text'); t.value = '/data/<i>x</i>/';"
            "t.dispatchEvent(new Event('input'))"
        )
        assert sorted(wd.js(_IDS_JS)) == sorted(HOSTILE_IDS)
        assert wd.js(
            "return window.pwned === undefined && !document.querySelector('#slides b, #slides i')"
        )
        hrefs = wd.js(
            "return Array.from(document.querySelectorAll('#slides img')).map(i => i.getAttribute('src'))"
        )
        from urllib.parse import quote

        assert sorted(hrefs) == sorted(  # encodeURIComponent's escapes
            quote(s, safe="!*'()~") + "/overview.png" for s in HOSTILE_IDS
        )
        imgs = wait_for_images(wd)
        assert len(imgs) == 4 and all(ok for ok, _, _ in imgs), imgs  # each id's own folder
        titles = wd.js(
            "return Array.from(document.querySelectorAll('#slides td[data-k=slide_id] span')).map(s => s.title)"
        )
        assert sorted(titles) == sorted(f"{s}\n{_hostile_path(s)}" for s in HOSTILE_IDS)
    finally:
        wd.quit()
