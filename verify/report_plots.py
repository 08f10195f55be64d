"""The HTML report's plots, drawn with matplotlib and embedded as inline SVG (no network, no files).

Every plot shows the distance to the tolerance, ``error / allowed`` (`TensorMetrics.tol_ratio`: below
1 passes), on a log axis with a line at 1.0:
- `ratio_scatter`: per op, each case's largest ratio over its outputs against top-k, the sequence
  length and h_q; passing cases as green circles, failing ones as red crosses;
- `ratio_histograms`: per op, one histogram per output of that output's ratio, passing and failing
  outputs stacked in different colours and hatching.
Ratios outside [RATIO_LO, RATIO_HI] (an exact output has ratio 0, a misplaced NaN inf) are drawn at
the edge of the axis as triangles, so no point is lost off the plot.

Figures are built with `matplotlib.figure.Figure` (no pyplot, no global backend switch) and laid out
with fixed margins (see `_margins`); `text_overlaps` measures every drawn label so that tests can check that no
two overlap.
"""
from __future__ import annotations

import io
import math
import re
from collections import defaultdict
from typing import Iterable

from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

from mlaverify.verify.results import CaseResult

__all__ = ["RATIO_LO", "RATIO_HI", "ratio_scatter", "ratio_histograms", "report_figures", "figure_svg",
           "text_overlaps"]

RATIO_LO = 1e-3   # an output within 1/1000 of its allowed error reads as "exact" at this scale
RATIO_HI = 1e3    # a thousand times the allowed error is as wrong as it gets; beyond: drawn at the edge
PASS_COLOR, FAIL_COLOR = "#2e7d4f", "#c62828"
_FIELDS = (("topk", "top-k"), ("s_kv", "sequence length s_kv"), ("h_q", "query heads h_q"))
_BINS_PER_DECADE = 4


def _clip(x: float) -> tuple[float, str]:
    """(value drawn, where): "in", "low" (below RATIO_LO, exact included) or "high" (above RATIO_HI, inf)."""
    if math.isnan(x) or x > RATIO_HI:
        return RATIO_HI, "high"
    if x < RATIO_LO:
        return RATIO_LO, "low"
    return x, "in"


def _edge_bin(x: float) -> float:
    """A histogram value: ratios outside the range go to the middle of the bin past its edge."""
    drawn, where = _clip(x)
    step = 10 ** (0.5 / _BINS_PER_DECADE)
    return drawn / step if where == "low" else drawn * step if where == "high" else drawn


def _ratio_axis(ax, axis: str = "y") -> None:
    scale = ax.set_yscale if axis == "y" else ax.set_xscale
    scale("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, numticks=8))
    target.set_minor_locator(NullLocator())
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    (ax.set_ylim if axis == "y" else ax.set_xlim)(RATIO_LO / 2, RATIO_HI * 2)
    line = ax.axhline if axis == "y" else ax.axvline
    line(1.0, color="#444", linestyle="--", linewidth=1)


def _pow2_axis(ax, values: list[float]) -> None:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(LogLocator(base=2, numticks=7))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    lo, hi = min(values), max(values)
    ax.set_xlim(lo / 1.5, hi * 1.5)


def _margins(fig: Figure) -> None:
    """Fixed margins in inches (room for tick labels, axis labels, the title and the legend on the right).
    Matplotlib's constrained layout finds the same room but triples the time to draw a report's plots
    (8.1 s against 2.6 s for the 8 figures of a 76-case report); `text_overlaps` checks the result."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=0.62 / w, right=1 - 0.85 / w, bottom=0.5 / h, top=1 - 0.5 / h, wspace=0.32)


def _legend(fig: Figure, handles, labels) -> None:
    """The legend in the right margin, level with the top of the axes: clear of the title above."""
    w, h = fig.get_size_inches()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1 - 0.8 / w, 1 - 0.5 / h), fontsize=8,
               frameon=False, borderaxespad=0.0, handletextpad=0.3)


def _case_ratio(c: CaseResult) -> float | None:
    ratios = [m.tol_ratio for m in c.outputs.values() if m.tol_ratio is not None]
    return max(ratios, key=lambda r: math.inf if math.isnan(r) else r) if ratios else None


def ratio_scatter(op: str, cases: Iterable[CaseResult]) -> Figure | None:
    """Largest error/allowed per case against top-k, s_kv and h_q; None when no field varies."""
    points = [(c, r) for c in cases if c.status != "skip" and (r := _case_ratio(c)) is not None]
    panels = []
    for name, label in _FIELDS:
        xs = [(float(getattr(c.case, name)), r, c.status == "pass") for c, r in points if getattr(c.case, name) > 0]
        if len({x for x, _, _ in xs}) > 1:
            panels.append((label, xs))
    if not panels:
        return None
    fig = Figure(figsize=(max(3.3 * len(panels) + 1.2, 6.0), 2.9))   # room for the title
    fig.suptitle(f"{op}: largest error / allowed per case (< 1 passes)", fontsize=10)
    for i, (label, xs) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for passed, color, marker, what in ((True, PASS_COLOR, "o", "pass"), (False, FAIL_COLOR, "x", "fail")):
            for where, m in (("in", marker), ("low", "v"), ("high", "^")):
                sel = [(x, _clip(r)[0]) for x, r, p in xs if p == passed and _clip(r)[1] == where]
                if sel:
                    ax.scatter([s[0] for s in sel], [s[1] for s in sel], s=22, marker=m, color=color,
                               facecolors="none" if m == "o" else color, linewidths=1.2,
                               label=what if where == "in" else None)
        _pow2_axis(ax, [x for x, _, _ in xs])
        _ratio_axis(ax)
        ax.set_xlabel(label, fontsize=9)
        if i == 0:
            ax.set_ylabel("error / allowed", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, which="major", color="#e4e4e4", linewidth=0.6)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    if handles:
        _legend(fig, handles, labels)
    _margins(fig)
    return fig


def ratio_histograms(op: str, cases: Iterable[CaseResult]) -> Figure | None:
    """One histogram per output of error/allowed, passing and failing outputs stacked."""
    per: dict[str, dict[bool, list[float]]] = defaultdict(lambda: {True: [], False: []})
    for c in cases:
        if c.status == "skip":
            continue
        for m in c.outputs.values():
            if m.tol_ratio is not None and m.shape is not None:
                per[m.name][m.passed].append(m.tol_ratio)
    if not per:
        return None
    names = sorted(per, key=lambda n: ("out", "max_logits", "lse", "dq", "dk", "dv").index(n)
                   if n in ("out", "max_logits", "lse", "dq", "dk", "dv") else 99)
    decades = round(math.log10(RATIO_HI / RATIO_LO))
    # one bin past each end of the range holds the clipped ratios (exact outputs below, inf above)
    edges = [RATIO_LO * 10 ** (k / _BINS_PER_DECADE) for k in range(-1, decades * _BINS_PER_DECADE + 2)]
    width = min(max(2.4 * len(names) + 1.4, 6.0), 13.0)   # room for the title; 13 in = 1250 px fits the page
    fig = Figure(figsize=(width, 2.6))
    fig.suptitle(f"{op}: error / allowed per output (< 1 passes)", fontsize=10)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        data = [[_edge_bin(r) for r in per[name][True]], [_edge_bin(r) for r in per[name][False]]]
        ax.hist(data, bins=edges, stacked=True, color=[PASS_COLOR, FAIL_COLOR], label=["pass", "fail"],
                edgecolor="white", linewidth=0.4)
        for patch in ax.containers[1]:
            patch.set_hatch("////")
        _ratio_axis(ax, "x")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_title(f"{name}: {len(data[0])} pass, {len(data[1])} fail", fontsize=9)
        ax.set_xlabel("error / allowed", fontsize=8)
        if i == 0:
            ax.set_ylabel("outputs", fontsize=8)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))   # counts: whole numbers
        ax.tick_params(labelsize=7)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    _legend(fig, handles, labels)
    _margins(fig)
    return fig


def report_figures(cases: Iterable[CaseResult]) -> dict[str, list[tuple[str, Figure]]]:
    """{"histograms": [(title, figure)], "scatter": [...]}: one figure per op in each."""
    by_op: dict[str, list[CaseResult]] = defaultdict(list)
    for c in cases:
        by_op[c.case.op].append(c)
    out: dict[str, list[tuple[str, Figure]]] = {"histograms": [], "scatter": []}
    for op, op_cases in sorted(by_op.items()):
        hist = ratio_histograms(op, op_cases)
        if hist is not None:
            out["histograms"].append((f"{op}: error / allowed per output", hist))
        scatter = ratio_scatter(op, op_cases)
        if scatter is not None:
            out["scatter"].append((f"{op}: error / allowed against top-k, s_kv, h_q", scatter))
    return out


def figure_svg(fig: Figure, title: str) -> str:
    """The figure as an inline <svg> element (text kept as text, ids stable across runs)."""
    buf = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "mla-verify"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Title": title})
    text = buf.getvalue()
    svg = text[text.index("<svg"):]                     # drop the XML declaration and DOCTYPE
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    return svg.replace(">", f"><title>{_escape(title)}</title>", 1)


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _drawn_texts(fig: Figure):
    """Every non-empty text matplotlib draws: titles, labels, legends, and the tick labels in view."""
    for ax in fig.axes:
        for axis, view in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = min(view), max(view)
            for tick in axis.get_major_ticks():
                if lo <= tick.get_loc() <= hi and tick.label1.get_visible() and tick.label1.get_text():
                    yield tick.label1
        for t in (ax.title, ax.xaxis.label, ax.yaxis.label):
            if t.get_text():
                yield t
        legend = ax.get_legend()
        if legend is not None:
            yield from (t for t in legend.get_texts() if t.get_text())
    for legend in fig.legends:
        yield from (t for t in legend.get_texts() if t.get_text())
    if fig.get_suptitle():
        yield from (t for t in fig.findobj(Text) if t.get_text() == fig.get_suptitle())


def text_overlaps(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of drawn texts whose boxes overlap by more than half a point, or that leave the figure."""
    canvas = FigureCanvasAgg(fig)   # measures text with the same font metrics the SVG was laid out with
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _drawn_texts(fig)]
    page = fig.bbox
    bad = [(a, "outside the figure") for a, b in boxes
           if b.x0 < page.x0 - 0.5 or b.y0 < page.y0 - 0.5 or b.x1 > page.x1 + 0.5 or b.y1 > page.y1 + 0.5]
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1:]:
            if min(a.x1, b.x1) - max(a.x0, b.x0) > 0.5 and min(a.y1, b.y1) - max(a.y0, b.y0) > 0.5:
                bad.append((ta, tb))
    return bad
