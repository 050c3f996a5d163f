"""Small server-side SVG charts (no script, no external library: the page's CSP allows neither inline
scripts nor styles, and SVG attributes need neither)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT, PAD = 520, 260, 44


def _x(v: float) -> float:
    return PAD + v * (WIDTH - 2 * PAD)


def _y(v: float, top: float) -> float:
    return HEIGHT - PAD - (v / top) * (HEIGHT - 2 * PAD)


def risk_coverage_svg(points: Sequence[tuple[float, float, float]], alpha: float, chosen: float | None) -> str:
    """Error among finalised (y) against the share of the pool finalised (x), one step per threshold; the
    allowed error alpha as a dashed line, and the certifiable threshold's point marked."""
    top = max(2 * alpha, max((e for _, _, e in points), default=0.0) * 1.1, 1e-3)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        'aria-label="Risk-coverage curve of the calibration pool">',
        f'<rect x="{PAD}" y="{PAD}" width="{WIDTH - 2 * PAD}" height="{HEIGHT - 2 * PAD}" fill="#fbfcfd" '
        'stroke="#dde3ea"/>',
    ]
    for i in range(5):
        v = top * i / 4
        y = _y(v, top)
        parts.append(
            f'<text x="{PAD - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end" fill="#667385">{v:.1%}</text>'
        )
        x = _x(i / 4)
        label = f"{i / 4:.0%}"
        y_text = HEIGHT - PAD + 16
        parts.append(
            f'<text x="{x:.1f}" y="{y_text}" font-size="10" text-anchor="middle" fill="#667385">{label}</text>'
        )
    ya = _y(alpha, top)
    parts.append(
        f'<line x1="{PAD}" y1="{ya:.1f}" x2="{WIDTH - PAD}" y2="{ya:.1f}" stroke="#a15c00" stroke-dasharray="5 4"/>'
    )
    parts.append(
        f'<text x="{WIDTH - PAD - 4}" y="{ya - 5:.1f}" font-size="10" text-anchor="end" fill="#a15c00">'
        f"alpha {escape(f'{alpha:g}')}</text>"
    )
    if points:
        path = " ".join(f"{_x(c):.1f},{_y(e, top):.1f}" for _, c, e in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#0b63b6" stroke-width="2"/>')
        for t, c, e in points:
            if chosen is not None and t == chosen:
                parts.append(f'<circle cx="{_x(c):.1f}" cy="{_y(e, top):.1f}" r="5" fill="#1c7c3c"/>')
    parts.append(
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 6}" font-size="11" text-anchor="middle" fill="#1b2530">'
        "share of the pool finalised</text>"
    )
    parts.append(
        f'<text x="12" y="{HEIGHT / 2}" font-size="11" text-anchor="middle" fill="#1b2530" '
        f'transform="rotate(-90 12 {HEIGHT / 2})">error among finalised</text>'
    )
    parts.append("</svg>")
    return "".join(parts)
