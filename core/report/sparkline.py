"""Sparklines: unicode blocks for the console, inline SVG for the HTML report.

Both take a sequence of numbers where ``None`` marks a gap (no sample that day): a gap is drawn as a
gap, never as zero, so a collector outage does not look like a collapse.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

BLOCKS = "▁▂▃▄▅▆▇█"
_COLOR = re.compile(r"#[0-9a-fA-F]{3,8}")
GAP = " "


def _scale(values: Sequence[float | None], lo: float | None, hi: float | None) -> tuple[float, float]:
    known = [v for v in values if v is not None]
    low = min(known) if lo is None else lo
    high = max(known) if hi is None else hi
    return low, high


def spark_unicode(values: Sequence[float | None], *, lo: float | None = None, hi: float | None = None) -> str:
    """One block character per value, scaled between ``lo`` and ``hi`` (default: the values' range).

    >>> spark_unicode([1, 2, None, 8])
    '▁▂ █'
    """
    if not any(v is not None for v in values):
        return GAP * len(values)
    low, high = _scale(values, lo, hi)
    span = high - low
    out = []
    for v in values:
        if v is None:
            out.append(GAP)
        elif span <= 0:
            out.append(BLOCKS[len(BLOCKS) // 2])  # flat line: mid height, not "all bad"
        else:
            frac = min(1.0, max(0.0, (v - low) / span))
            out.append(BLOCKS[round(frac * (len(BLOCKS) - 1))])
    return "".join(out)


def spark_svg(values: Sequence[float | None], *, width: int = 96, height: int = 24,
              lo: float | None = None, hi: float | None = None, label: str = "",
              color: str = "#2563eb", axis: tuple[str, str] | None = None) -> str:
    """A small inline ``<svg>`` polyline (gaps split the line), last point marked with a dot.

    ``axis`` = (top label, bottom label) writes the scale's range at the left, so a reader can tell a
    dip on a fixed 0-100 scale from a crash (``width`` includes that gutter). The result is markup
    built only from numbers, ``label`` and ``axis``, which are escaped here, so the template may mark
    it safe.
    """
    if not _COLOR.fullmatch(color):  # it goes into markup unescaped
        raise ValueError(f"spark_svg color must be a hex colour like #2563eb, not {color!r}")
    n = len(values)
    gutter = 0.0
    ticks = ""
    if axis is not None:
        top, bottom = (_esc(str(t)) for t in axis)
        gutter = 5.0 * max(len(top), len(bottom)) + 4
        ticks = (f'<g fill="currentColor" opacity=".65" font-size="8" font-family="sans-serif" text-anchor="end">'
                 f'<text x="{gutter - 2:.0f}" y="8">{top}</text>'
                 f'<text x="{gutter - 2:.0f}" y="{height - 1}">{bottom}</text></g>'
                 f'<line x1="{gutter:.0f}" y1="2" x2="{gutter:.0f}" y2="{height - 2}" stroke="currentColor" '
                 f'stroke-opacity=".25"/>')
    title = f"<title>{_esc(label)}</title>" if label else ""
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(label or "trend")}">{title}')
    head += ticks
    if n == 0 or not any(v is not None for v in values):
        return head + "</svg>"
    low, high = _scale(values, lo, hi)
    span = high - low
    pad = 3.0
    step = (width - gutter - 2 * pad) / max(1, n - 1)
    scale = (height - 2 * pad) / span if span > 0 else 0.0
    mid = height / 2
    base = height - pad
    # one pass: points as text, split into segments at gaps
    segments: list[list[str]] = [[]]
    last = ""
    for i, v in enumerate(values):
        if v is None:
            if segments[-1]:
                segments.append([])
            continue
        y = mid if span <= 0 else base - (min(high, max(low, v)) - low) * scale
        last = f"{gutter + pad + i * step:.1f},{y:.1f}"
        segments[-1].append(last)
    parts = []
    for seg in segments:
        if len(seg) >= 2:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{" ".join(seg)}"/>')
        elif seg:
            x, y = seg[0].split(",")
            parts.append(f'<circle cx="{x}" cy="{y}" r="1.2" fill="{color}"/>')
    x, y = last.split(",")
    parts.append(f'<circle cx="{x}" cy="{y}" r="2.2" fill="{color}"/>')
    return head + "".join(parts) + "</svg>"


def _esc(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#39;"))
