"""The cohort plots of ``report.html``, as inline SVG built here (no plotting library, no script).

Each plot's size is bounded whatever the cohort's: the histogram has a fixed number of bars, the
scatter of purity against tissue area is one ``<path>`` with one short segment per distinct pixel
(10,000 slides make at most a few hundred kB, usually far less), and the failures are grouped by a
normalised reason (:func:`failure_reason`) into at most ``top`` bars.
"""

from __future__ import annotations

import html
import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = [
    "failure_reason",
    "failures_by_reason_svg",
    "median",
    "purity_area_svg",
    "purity_histogram_svg",
]

_MARGINS = (44, 16, 12, 36)  # left, right, top, bottom: room for the axes' labels
_BAR = "#c0392b"


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    q = sorted(values)
    n = len(q)
    return q[n // 2] if n % 2 else (q[n // 2 - 1] + q[n // 2]) / 2


def _open(plot_id: str, width: int, height: int, label: str) -> str:
    return (
        f'<svg id="{plot_id}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(label, quote=True)}">'
    )


def _axes(width: int, height: int, x_label: str, y_label: str) -> list[str]:
    ml, mr, mt, mb = _MARGINS
    pw, ph = width - ml - mr, height - mt - mb
    return [
        f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="#333"/>',
        f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="#333"/>',
        f'<text x="{ml + pw / 2:.1f}" y="{height - 4}" font-size="12" text-anchor="middle">{html.escape(x_label)}</text>',
    ] + (
        [
            f'<text x="12" y="{mt + ph / 2:.1f}" font-size="11" text-anchor="middle" '
            f'transform="rotate(-90 12 {mt + ph / 2:.1f})">{html.escape(y_label)}</text>'
        ]
        if y_label
        else []
    )


def _percent_ticks(ml: int, pw: int, y: float) -> list[str]:
    return [
        f'<text x="{ml + pw * t / 10:.1f}" y="{y:.1f}" font-size="11" text-anchor="middle">{t * 10} %</text>'
        for t in range(0, 11, 2)
    ]


def purity_histogram_svg(
    values: Sequence[float], *, bins: int = 20, width: int = 560, height: int = 220
) -> str:
    """An inline-SVG histogram of slide purities on [0, 1] with the median marked."""
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(v * bins)))] += 1
    top = max(counts) if values else 1
    ml, mr, mt, mb = _MARGINS
    pw, ph = width - ml - mr, height - mt - mb
    bw = pw / bins
    parts = [
        _open(
            "purity-plot", width, height, f"distribution of tumour purity over {len(values)} slides"
        )
    ]
    for i, c in enumerate(counts):
        if c:
            h = ph * c / top
            parts.append(
                f'<rect class="bar" x="{ml + i * bw + 1:.1f}" y="{mt + ph - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" fill="{_BAR}">'
                f"<title>{i / bins:.2f}–{(i + 1) / bins:.2f}: {c} slide(s)</title></rect>"
            )
    parts += _axes(width, height, "tumour purity of the slide, TC / (TC + BC)", "slides")
    parts += _percent_ticks(ml, pw, mt + ph + 14)
    parts.append(f'<text x="{ml - 6}" y="{mt + 4}" font-size="11" text-anchor="end">{top}</text>')
    parts.append(f'<text x="{ml - 6}" y="{mt + ph}" font-size="11" text-anchor="end">0</text>')
    if values:
        med = median(values)
        x = ml + pw * med
        parts.append(
            f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" stroke="#2c3e50" stroke-dasharray="4 3"/>'
        )
        parts.append(
            f'<text x="{x + 4:.1f}" y="{mt + 10}" font-size="11">median {100 * med:.1f} %</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _nice_top(v: float) -> float:
    """The smallest 1, 2 or 5 × 10^k at or above ``v`` (> 0): the x axis's end."""
    k = 10 ** math.floor(math.log10(v))
    return next(m * k for m in (1, 2, 5, 10) if m * k >= v)


def purity_area_svg(
    points: Sequence[tuple[float, float]], *, width: int = 420, height: int = 170
) -> str:
    """Purity (y, on [0, 1]) against tissue area in mm² (x, from 0) of each slide with cells, as
    one ``<path>``: a dot per distinct pixel, so its size stops growing with the cohort."""
    ml, mr, mt, mb = _MARGINS
    pw, ph = width - ml - mr, height - mt - mb
    pts = [(a, p) for a, p in points if math.isfinite(a) and math.isfinite(p) and a >= 0]
    top = _nice_top(max((a for a, _ in pts), default=1.0) or 1.0)
    dots = sorted(
        {
            (round(ml + pw * min(a / top, 1.0)), round(mt + ph * (1 - min(max(p, 0.0), 1.0))))
            for a, p in pts
        }
    )
    parts = [
        _open(
            "purity-area-plot",
            width,
            height,
            f"tumour purity against tissue area of {len(pts)} slides",
        )
    ]
    parts += _axes(width, height, "tissue area of the slide, mm²", "")  # the ticks say purity
    for t in (0, 50, 100):
        y = mt + ph * (1 - t / 100)
        parts.append(
            f'<text x="{ml - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{t} %</text>'
        )
    for t in range(0, 6):
        v = top * t / 5
        parts.append(
            f'<text x="{ml + pw * t / 5:.1f}" y="{mt + ph + 14}" font-size="11" text-anchor="middle">{v:g}</text>'
        )
    if dots:
        d = "".join(f"M{x} {y}h0" for x, y in dots)
        few = len(dots) < 200  # few dots: larger and solid; many: smaller and see-through
        parts.append(
            f'<path class="dots" d="{d}" stroke="{_BAR}" stroke-opacity="{0.8 if few else 0.35}" '
            f'stroke-width="{5 if few else 3.5}" stroke-linecap="round" fill="none">'
            f"<title>{len(pts)} slide(s)</title></path>"
        )
    parts.append("</svg>")
    return "".join(parts)


#: Parts of a one-line error that differ between slides with the same problem.
_DETAILS = re.compile(r" ?\((?=[^()]*[\d ])[^()]*\)")  # "(mean saturation 0.03, ...)", not "(s)"
_VARYING = (
    (re.compile(r"'[^']*'|\"[^\"]*\""), "…"),  # quoted names
    (re.compile(r"(?<![\w.])(?:/|[A-Za-z]:\\)\S*"), "…"),  # paths
    (re.compile(r"[-+]?\d+(?:[.,]\d+)*(?:e[-+]?\d+)?"), "N"),  # numbers
    (re.compile(r"\s+"), " "),
)


def failure_reason(error: str | None, path: str | None = None) -> str:
    """A failed slide's one-line error reduced to what slides failing the same way share: the
    slide's path in front, the "Fix: ..." part and details in parentheses dropped, numbers as N, paths and quoted names
    as "…", cut at 90 characters."""
    text = str(error or "").strip()
    if not text:
        return "no message"
    if path and text.startswith(str(path) + ": "):
        text = text[len(str(path)) + 2 :]
    text = text.split(" Fix: ", 1)[0].rstrip(". ")
    while (shorter := _DETAILS.sub("", text)) != text:  # innermost first: nested details go too
        text = shorter
    for pattern, repl in _VARYING:
        text = pattern.sub(repl, text)
    text = text.strip(" :;,") or "no message"
    return text if len(text) <= 90 else text[:89] + "…"


def failures_by_reason_svg(
    reasons: Sequence[str], *, top: int = 6, width: int = 420, height: int = 170
) -> str:
    """Horizontal bars: how many slides failed for each reason (the ``top`` commonest, the rest as
    "other reasons"); an empty plot that says so when nothing failed."""
    counts = Counter(reasons).most_common()
    shown = counts[:top] if len(counts) <= top else counts[: top - 1]
    rest = sum(c for _, c in counts[len(shown) :])
    if rest:
        shown.append((f"{len(counts) - len(shown)} other reasons", rest))
    parts = [_open("failure-plot", width, height, f"{len(reasons)} failed slides by reason")]
    if not shown:
        parts.append(
            f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" font-size="13" text-anchor="middle" fill="#555">no slide failed</text></svg>'
        )
        return "".join(parts)
    most = shown[0][1]
    row = min(26.0, (height - 4) / len(shown))
    bar_w = width * 0.2  # bars on the left, the reason written beside each
    for i, (reason, c) in enumerate(shown):
        y = 2 + i * row
        w = max(2.0, (bar_w - 40) * c / most)
        parts.append(
            f'<rect class="bar" x="0" y="{y + 2:.1f}" width="{w:.1f}" height="{row - 6:.1f}" fill="{_BAR}">'
            f"<title>{html.escape(reason)}: {c} slide(s)</title></rect>"
            f'<text x="{w + 4:.1f}" y="{y + row / 2 + 2:.1f}" font-size="11">{c}</text>'
            f'<text class="reason" x="{bar_w:.1f}" y="{y + row / 2 + 2:.1f}" font-size="11">'
            f"<title>{html.escape(reason)}</title>{html.escape(_clip(reason, width - bar_w))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _clip(text: str, px: float) -> str:
    """``text`` cut to about ``px`` pixels of 11 px type (≈ 5.8 px a character)."""
    n = max(8, int(px / 5.8))
    return text if len(text) <= n else text[: n - 1] + "…"
