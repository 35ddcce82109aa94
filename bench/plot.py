"""A dependency-free SVG scatter plot: size (x) against KL to the teacher (y, log scale)."""

from __future__ import annotations

import math
from html import escape

COLORS = {"ours": "#d62728", "llama.cpp": "#1f77b4", "onnxruntime": "#2ca02c"}


def pareto_svg(points: list[dict], title: str, width: int = 760, height: int = 460) -> str:
    """``points``: dicts with ``label``, ``family`` (a COLORS key), ``x`` (MiB) and ``y`` (KL > 0)."""
    pts = [p for p in points if p["y"] > 0]
    left, right, top, bottom = 70, 230, 40, 50
    xs, ys = [p["x"] for p in pts], [math.log10(p["y"]) for p in pts]
    x0, x1 = min(xs) * 0.9, max(xs) * 1.05
    y0, y1 = math.floor(min(ys)), math.ceil(max(ys))
    if y1 == y0:
        y1 = y0 + 1

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return top + (y1 - y) / (y1 - y0) * (height - top - bottom)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2 - 100}" y="22" font-size="14">{escape(title)}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" '
        'stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
        f'<text x="{(width - right) / 2}" y="{height - 12}">file size (MiB)</text>',
        f'<text x="14" y="{top - 10}">mean KL to teacher (log)</text>',
    ]
    for e in range(y0, y1 + 1):
        out.append(f'<line x1="{left - 4}" y1="{sy(e)}" x2="{width - right}" y2="{sy(e)}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 44}" y="{sy(e) + 4}">1e{e}</text>')
    step = 10 ** math.floor(math.log10(max(x1 - x0, 1))) / 2
    tick = math.ceil(x0 / step) * step
    while tick <= x1:
        out.append(f'<text x="{sx(tick) - 10}" y="{height - bottom + 16}">{tick:g}</text>')
        tick += step
    for i, p in enumerate(sorted(pts, key=lambda p: p["x"])):
        cx, cy = sx(p["x"]), sy(math.log10(p["y"]))
        color = COLORS.get(p["family"], "#555")
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{color}"/>')
        out.append(
            f'<text x="{cx + 7:.1f}" y="{cy + 4 + (i % 2) * 10:.1f}" font-size="10">'
            f"{escape(p['label'])}</text>"
        )
    for i, (fam, color) in enumerate(COLORS.items()):
        y = top + 20 * i
        out.append(f'<circle cx="{width - right + 20}" cy="{y}" r="5" fill="{color}"/>')
        out.append(f'<text x="{width - right + 30}" y="{y + 4}">{escape(fam)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
