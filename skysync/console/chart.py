"""The overview's chart, drawn on the server as inline SVG: one path of per-minute counts, its
axes and labels. No script, no image request, no library; presentation attributes only (the
Content-Security-Policy allows no inline style)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from markupsafe import Markup, escape

WIDTH, HEIGHT = 760, 150
LEFT, RIGHT, TOP, BOTTOM = 48, 8, 10, 22  # margins for the labels
TICK_EVERY = timedelta(hours=3)


@dataclass(frozen=True)
class MinuteFigures:
    total: int
    peak: int
    peak_at: datetime | None
    last_hour: int


def figures(counts: list[int], since: datetime) -> MinuteFigures:
    """The numbers said beside the chart: the total, the busiest minute, the last hour's."""
    peak = max(counts, default=0)
    at = counts.index(peak) if peak else None
    return MinuteFigures(
        total=sum(counts),
        peak=peak,
        peak_at=since + timedelta(minutes=at) if at is not None else None,
        last_hour=sum(counts[-60:]),
    )


def minute_chart(counts: list[int], since: datetime, *, label: str) -> Markup:
    """An area chart of ``counts`` (one per minute from ``since``), ``label`` its accessible
    name."""
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = max(max(counts, default=0), 1)
    step = inner_w / max(len(counts), 1)
    base = TOP + inner_h
    points = " ".join(
        f"{LEFT + (i + 0.5) * step:.1f},{base - n / top * inner_h:.1f}"
        for i, n in enumerate(counts)
    )
    area = f"M{LEFT:.1f},{base:.1f} L{points} L{LEFT + inner_w:.1f},{base:.1f} Z"
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(label)}</title>",
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT + inner_w}" y2="{TOP}" stroke="#d9dee5" />',
        f'<line x1="{LEFT}" y1="{base}" x2="{LEFT + inner_w}" y2="{base}" stroke="#8a94a3" />',
        f'<text x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end" font-size="11" '
        f'fill="#4a5361">{top:,}</text>',
        f'<text x="{LEFT - 6}" y="{base}" text-anchor="end" font-size="11" fill="#4a5361">0</text>',
    ]
    if counts:
        parts.append(f'<path d="{area}" fill="#9cc3e6" stroke="#2f6fae" stroke-width="1" />')
    first = (since + TICK_EVERY).replace(minute=0, second=0, microsecond=0)
    first -= timedelta(hours=first.hour % 3)
    tick = first if first > since else first + TICK_EVERY
    end = since + timedelta(minutes=len(counts))
    while tick < end:
        x = LEFT + (tick - since).total_seconds() / 60 * step
        parts.append(
            f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" stroke="#8a94a3" />'
            f'<text x="{x:.1f}" y="{base + 16}" text-anchor="middle" font-size="11" '
            f'fill="#4a5361">{tick:%H:%M}</text>'
        )
        tick += TICK_EVERY
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from numbers and escaped text only
