"""The demo's HTML report: one self-contained page with inline SVG plots (no plotting library)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

W, H, PAD = 560, 260, 44
COLOURS = ("#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2")


def _axis(x0: float, x1: float, y0: float, y1: float, xlabel: str, ylabel: str) -> list[str]:
    parts = [f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 10}" y2="{H - PAD}" stroke="#444"/>',
             f'<line x1="{PAD}" y1="10" x2="{PAD}" y2="{H - PAD}" stroke="#444"/>',
             f'<text x="{(W + PAD) / 2}" y="{H - 6}" text-anchor="middle" font-size="12">{html.escape(xlabel)}</text>',
             f'<text x="12" y="{(H - PAD) / 2}" text-anchor="middle" font-size="12" '
             f'transform="rotate(-90 12 {(H - PAD) / 2})">{html.escape(ylabel)}</text>']
    for i in range(5):
        fx, fy = i / 4, i / 4
        x = PAD + fx * (W - 10 - PAD)
        y = H - PAD - fy * (H - PAD - 10)
        parts.append(f'<text x="{x:.1f}" y="{H - PAD + 14}" text-anchor="middle" font-size="10">'
                     f'{_fmt(x0 + fx * (x1 - x0))}</text>')
        parts.append(f'<text x="{PAD - 4}" y="{y + 3:.1f}" text-anchor="end" font-size="10">'
                     f'{_fmt(y0 + fy * (y1 - y0))}</text>')
        parts.append(f'<line x1="{PAD}" y1="{y:.1f}" x2="{W - 10}" y2="{y:.1f}" stroke="#eee"/>')
    return parts


def _fmt(v: float) -> str:
    if v == 0 or 0.01 <= abs(v) < 10_000:
        return f"{v:.3g}"
    return f"{v:.1e}"


def _svg(parts: list[str], title: str) -> str:
    body = "".join(parts)
    return (f'<figure><figcaption>{html.escape(title)}</figcaption>'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}">'
            f'{body}</svg></figure>')


def _sx(v: float, lo: float, hi: float) -> float:
    return PAD + (v - lo) / ((hi - lo) or 1) * (W - 10 - PAD)


def _sy(v: float, lo: float, hi: float) -> float:
    return H - PAD - (v - lo) / ((hi - lo) or 1) * (H - PAD - 10)


def line_chart(series: dict[str, Sequence[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
               marks: Sequence[tuple[float, str]] = ()) -> str:
    """Step lines (one per series) with optional vertical event marks."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return _svg([], title + " (no data)")
    x0, x1 = 0.0, max(p[0] for p in pts) or 1.0
    y0, y1 = 0.0, max(max(p[1] for p in pts), 1.0)
    parts = _axis(x0, x1, y0, y1, xlabel, ylabel)
    for (name, s), colour in zip(series.items(), COLOURS, strict=False):
        path = " ".join(f"{'M' if i == 0 else 'L'}{_sx(x, x0, x1):.1f},{_sy(y, y0, y1):.1f}" for i, (x, y) in enumerate(s))
        parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        k = list(series).index(name)
        parts.append(f'<rect x="{PAD + 10 + 150 * k}" y="14" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{PAD + 24 + 150 * k}" y="23" font-size="11">{html.escape(name)}</text>')
    for x, label in marks:
        sx = _sx(x, x0, x1)
        parts.append(f'<line x1="{sx:.1f}" y1="30" x2="{sx:.1f}" y2="{H - PAD}" stroke="#999" stroke-dasharray="4 3"/>'
                     f'<text x="{sx + 3:.1f}" y="40" font-size="10" fill="#555">{html.escape(label)}</text>')
    return _svg(parts, title)


def histogram(values: Sequence[float], title: str, xlabel: str, bins: int = 30) -> str:
    if not values:
        return _svg([], title + " (no data)")
    lo, hi = 0.0, max(values) * 1.02 or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
    top = max(counts)
    parts = _axis(lo, hi, 0, top, xlabel, "results")
    bw = (W - 10 - PAD) / bins
    for i, c in enumerate(counts):
        y = _sy(c, 0, top)
        parts.append(f'<rect x="{PAD + i * bw + 1:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" '
                     f'height="{H - PAD - y:.1f}" fill="{COLOURS[0]}"/>')
    return _svg(parts, title)


def bar_chart(bars: dict[str, float], title: str, ylabel: str, highlight: str = "") -> str:
    if not bars:
        return _svg([], title + " (no data)")
    top = max(bars.values()) * 1.15 or 1.0
    parts = _axis(0, 0, 0, top, "", ylabel)[:2] + [
        f'<text x="{PAD - 4}" y="{_sy(top * f, 0, top) + 3:.1f}" text-anchor="end" font-size="10">{_fmt(top * f)}</text>'
        for f in (0, 0.25, 0.5, 0.75, 1.0)]
    bw = (W - 10 - PAD) / len(bars)
    for i, (name, v) in enumerate(bars.items()):
        y = _sy(v, 0, top)
        colour = COLOURS[1] if name == highlight else COLOURS[0]
        x = PAD + i * bw + bw * 0.15
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw * 0.7:.1f}" height="{H - PAD - y:.1f}" fill="{colour}"/>'
                     f'<text x="{x + bw * 0.35:.1f}" y="{y - 4:.1f}" text-anchor="middle" font-size="11">{_fmt(v)}</text>'
                     f'<text x="{x + bw * 0.35:.1f}" y="{H - PAD + 14}" text-anchor="middle" font-size="11">'
                     f'{html.escape(name)}{" (search)" if name == highlight else ""}</text>')
    return _svg(parts, title)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def write_report(path: Path, summary: dict[str, Any], charts: list[str], tables: dict[str, list[list[str]]]) -> Path:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items())
    blocks = []
    for title, table in tables.items():
        head, *body = table
        blocks.append(f"<h2>{html.escape(title)}</h2><table class='grid'><tr>"
                      + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
                      + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
                      + "</table>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Walle demo report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #111; max-width: 1200px; }}
h1 {{ margin-bottom: 4px; }} .sub {{ color: #555; margin-top: 0; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; }}
th, td {{ text-align: left; padding: 3px 10px; border-bottom: 1px solid #e5e5e5; font-size: 14px; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 16px; }}
figure {{ margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }}
figcaption {{ font-weight: 600; margin-bottom: 4px; }}
</style></head><body>
<h1>Walle end-to-end demo</h1>
<p class="sub">registry → signed task → staged rollout → device pipelines → task VM → engine → upload tunnel → registry</p>
<table>{rows}</table>
<div class="charts">{''.join(charts)}</div>
{''.join(blocks)}
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, "utf-8")
    return path
