"""Plots as inline SVG text for the HTML report: histograms, scatter plots, a pass matrix.

No plotting library: each function returns one self-contained ``<svg>`` element string that a
browser renders as is (no scripts, no external fonts or images).
"""
from __future__ import annotations

import math
from html import escape
from typing import Sequence

__all__ = ["histogram", "scatter", "pass_matrix", "PASS_COLOR", "FAIL_COLOR", "SKIP_COLOR"]

PASS_COLOR = "#2e9d5b"
FAIL_COLOR = "#d64541"
SKIP_COLOR = "#b9bec5"
_BAR_COLOR = "#4a78c2"
_FONT = 'font-family="system-ui, sans-serif"'


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
            f'<title>{escape(title)}</title>'
            f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" font-size="13" {_FONT}>{escape(title)}</text>'
            + "".join(body) + "</svg>")


def _text(x: float, y: float, s: str, size: int = 10, anchor: str = "middle", rotate: float | None = None) -> str:
    rot = f' transform="rotate({rotate:.0f} {x:.1f} {y:.1f})"' if rotate is not None else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" {_FONT}{rot}>{escape(s)}</text>'


def histogram(title: str, labels: Sequence[str], counts: Sequence[int], xlabel: str, width: int = 420,
              height: int = 220) -> str:
    """Vertical bars, one per bin label, with the count above each bar."""
    if len(labels) != len(counts):
        raise ValueError(f"histogram: expected as many labels as counts, got {len(labels)} and {len(counts)}")
    left, right, top, bottom = 36, 10, 38, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(counts, default=0) or 1
    step = plot_w / max(1, len(counts))
    body = [f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>']
    for i, (label, n) in enumerate(zip(labels, counts)):
        h = plot_h * n / peak
        x = left + i * step + step * 0.1
        body.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{step * 0.8:.1f}" height="{h:.1f}" '
                    f'fill="{_BAR_COLOR}"><title>{escape(label)}: {n}</title></rect>')
        if n:
            body.append(_text(x + step * 0.4, top + plot_h - h - 3, str(n), 9))
        body.append(_text(x + step * 0.4, top + plot_h + 12, label, 9))
    body.append(_text(left + plot_w / 2, height - 8, xlabel, 10))
    body.append(_text(12, top + plot_h / 2, "cases", 10, rotate=-90))
    return _svg(width, height, body, title)


def _scale(values: Sequence[float], log: bool) -> tuple[float, float]:
    vals = [math.log10(v) if log else v for v in values]
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1
    pad = 0.05 * (hi - lo)  # keep points off the frame
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, log: bool) -> list[tuple[float, str]]:
    if log:
        return [(float(e), f"1e{e}") for e in range(math.ceil(lo), math.floor(hi) + 1)]
    step = (hi - lo) / 4
    return [(lo + i * step, f"{lo + i * step:.3g}") for i in range(5)]


def scatter(title: str, points: Sequence[tuple[float, float, bool]], xlabel: str, ylabel: str, *,
            log_x: bool = True, log_y: bool = True, floor_y: float = 1e-3, width: int = 420,
            height: int = 240) -> str:
    """Points (x, y, passed); y values below ``floor_y`` are drawn at the floor (exact results)."""
    left, right, top, bottom = 52, 12, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    pts = [(x, max(y, floor_y) if log_y else y, ok) for x, y, ok in points
           if math.isfinite(x) and math.isfinite(y) and (x > 0 or not log_x)]
    body = [f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>']
    if not pts:
        body.append(_text(left + plot_w / 2, top + plot_h / 2, "no finite data", 11))
        return _svg(width, height, body, title)
    x_lo, x_hi = _scale([p[0] for p in pts], log_x)
    y_lo, y_hi = _scale([p[1] for p in pts], log_y)

    def px(x: float) -> float:
        v = math.log10(x) if log_x else x
        return left + plot_w * (v - x_lo) / (x_hi - x_lo)

    def py(y: float) -> float:
        v = math.log10(y) if log_y else y
        return top + plot_h - plot_h * (v - y_lo) / (y_hi - y_lo)

    for v, label in _ticks(x_lo, x_hi, log_x):
        x = left + plot_w * (v - x_lo) / (x_hi - x_lo)
        body.append(_text(x, top + plot_h + 12, label, 9))
    for v, label in _ticks(y_lo, y_hi, log_y):
        if log_y and abs(v - math.log10(floor_y)) < 1e-9:
            label = "0"  # exact results are drawn at the floor
        y = top + plot_h - plot_h * (v - y_lo) / (y_hi - y_lo)
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
        body.append(_text(left - 4, y + 3, label, 9, anchor="end"))
    for x, y, ok in pts:
        color = PASS_COLOR if ok else FAIL_COLOR
        body.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.2" fill="{color}" fill-opacity="0.75">'
                    f'<title>{escape(xlabel)}={x:g}, {escape(ylabel)}={y:.3g}</title></circle>')
    body.append(_text(left + plot_w / 2, height - 6, xlabel, 10))
    body.append(_text(12, top + plot_h / 2, ylabel, 10, rotate=-90))
    return _svg(width, height, body, title)


def pass_matrix(title: str, rows: Sequence[str], columns: Sequence[str], cells: dict) -> str:
    """Grid of rows x columns; a cell {"pass", "fail", "skip"} is green (all pass), red (any fail),
    grey (only skips), empty (no case); it shows passed/total."""
    cell_w, cell_h, label_w, head_h = 92, 18, 150, 110
    width = label_w + cell_w * len(columns) + 110  # room for the last slanted column label
    height = head_h + cell_h * len(rows) + 10
    body = []
    for j, column in enumerate(columns):
        x = label_w + j * cell_w + cell_w / 2
        body.append(_text(x, head_h - 6, column, 10, anchor="start", rotate=-35))
    for i, row in enumerate(rows):
        y = head_h + i * cell_h
        body.append(_text(label_w - 6, y + 13, row, 10, anchor="end"))
        for j, column in enumerate(columns):
            cell = cells.get((row, column))
            x = label_w + j * cell_w
            if not cell:
                body.append(f'<rect x="{x}" y="{y}" width="{cell_w - 2}" height="{cell_h - 2}" fill="#f6f6f6"/>')
                continue
            total = cell["pass"] + cell["fail"]
            color = FAIL_COLOR if cell["fail"] else PASS_COLOR if cell["pass"] else SKIP_COLOR
            label = f"{cell['pass']}/{total}" + (f" +{cell['skip']}s" if cell["skip"] else "")
            body.append(f'<rect x="{x}" y="{y}" width="{cell_w - 2}" height="{cell_h - 2}" fill="{color}">'
                        f'<title>{escape(row)} @ {escape(column)}: {cell["pass"]} pass, {cell["fail"]} fail, '
                        f'{cell["skip"]} skip</title></rect>')
            body.append(f'<text x="{x + cell_w / 2 - 1:.1f}" y="{y + 12:.1f}" text-anchor="middle" font-size="10" '
                        f'fill="#fff" {_FONT}>{escape(label)}</text>')
    return _svg(width, height, body, title)
