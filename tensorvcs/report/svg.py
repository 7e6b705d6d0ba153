"""Small server-side SVG charts for the report: line charts, a heatmap, stacked bars.

No charting library: each chart is a string of SVG elements drawn from the data in Python,
so the page renders without JavaScript. Elements that show a tooltip carry ``data-tip``
(the page's script shows it on hover); the heatmap keeps its values in a JSON block instead
of one attribute per cell.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from html import escape

FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif"
# one hue per series / group (colour-blind friendly, after the Okabe-Ito palette)
SERIES = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
# the heatmap's colour ramp, low to high (dark blue through teal and green to yellow)
RAMP = (
    (0.0, (38, 22, 84)),
    (0.25, (49, 84, 142)),
    (0.5, (33, 145, 140)),
    (0.75, (94, 201, 98)),
    (1.0, (253, 231, 37)),
)
UNCHANGED = "#d9d9d9"
NONFINITE = "#e00000"


def attr(text: object) -> str:
    return escape(str(text), quote=True)


def fmt_num(v: float) -> str:
    """A number for labels: 3 significant digits, scientific when tiny or huge."""
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.2e}".replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")
    return f"{v:.4g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering lo..hi (about n of them)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out = []
    v = first
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    return out


def ramp(t: float) -> str:
    """The colour at ``t`` in 0..1 of RAMP."""
    t = min(1.0, max(0.0, t))
    for (t0, c0), (t1, c1) in itertools.pairwise(RAMP):
        if t <= t1:
            f = (t - t0) / (t1 - t0) if t1 > t0 else 0.0
            r, g, b = (round(u + (v - u) * f) for u, v in zip(c0, c1, strict=True))
            return f"#{r:02x}{g:02x}{b:02x}"
    return "#{:02x}{:02x}{:02x}".format(*RAMP[-1][1])


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


class Frame:
    """A chart's plot area inside its SVG, with linear x and y scales."""

    def __init__(
        self,
        width: int,
        height: int,
        x_range: tuple[float, float],
        y_range: tuple[float, float],
        left: int = 56,
        right: int = 12,
        top: int = 14,
        bottom: int = 30,
    ) -> None:
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = left, right, top, bottom
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        if self.x1 <= self.x0:
            self.x0, self.x1 = self.x0 - 0.5, self.x0 + 0.5
        if self.y1 <= self.y0:
            pad = abs(self.y0) * 0.1 or 1.0
            self.y0, self.y1 = self.y0 - pad, self.y0 + pad

    def x(self, v: float) -> float:
        w = self.width - self.left - self.right
        return round(self.left + (v - self.x0) / (self.x1 - self.x0) * w, 2)

    def y(self, v: float) -> float:
        h = self.height - self.top - self.bottom
        return round(self.top + h - (v - self.y0) / (self.y1 - self.y0) * h, 2)

    def axes(self, x_label: str, bytes_axis: bool = False) -> str:
        out = []
        bx, by = self.left, self.height - self.bottom
        out.append(
            f'<line x1="{bx}" y1="{by}" x2="{self.width - self.right}" y2="{by}" stroke="#888"/>'
        )
        out.append(f'<line x1="{bx}" y1="{self.top}" x2="{bx}" y2="{by}" stroke="#888"/>')
        for t in nice_ticks(self.y0, self.y1, 4):
            y = self.y(t)
            label = human_bytes(t) if bytes_axis else fmt_num(t)
            out.append(
                f'<line x1="{bx - 3}" y1="{y}" x2="{self.width - self.right}" y2="{y}" '
                f'stroke="#eee"/><text x="{bx - 5}" y="{y + 3}" text-anchor="end">{label}</text>'
            )
        for t in nice_ticks(self.x0, self.x1, 6):
            x = self.x(t)
            out.append(
                f'<line x1="{x}" y1="{by}" x2="{x}" y2="{by + 3}" stroke="#888"/>'
                f'<text x="{x}" y="{by + 14}" text-anchor="middle">{fmt_num(t)}</text>'
            )
        out.append(
            f'<text x="{(bx + self.width - self.right) / 2}" y="{self.height - 3}" '
            f'text-anchor="middle" fill="#555">{attr(x_label)}</text>'
        )
        return "".join(out)


def svg(width: int, height: int, body: str, cls: str, label: str) -> str:
    return (
        f'<svg class="{cls}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{attr(label)}" '
        f'style="{FONT};font-size:10px">{body}</svg>'
    )


def legend(items: Sequence[tuple[str, str]], x: float, y: float, gap: int = 14) -> str:
    """Colour swatches with labels in a row from (x, y)."""
    out = []
    for colour, label in items:
        out.append(
            f'<rect x="{x}" y="{y - 8}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="{y + 1}">{attr(label)}</text>'
        )
        x += 24 + 6 * len(label) + gap
    return "".join(out)
