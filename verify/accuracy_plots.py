"""Plots of the accuracy report's sweeps, drawn with matplotlib and inlined as SVG text (no files, no network)."""
from __future__ import annotations

import io

__all__ = ["sweep_plots"]

_MARKERS = ("o", "s", "^", "D", "v", "x", "+")
_DASHES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (1, 1)), (0, (3, 1, 1, 1)))


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: the SVG sits inside the HTML body


def sweep_plots(report) -> list[str]:
    """One SVG per (op, model, sweep): rel Frobenius error of out vs the swept value, a line per format."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display: render to text only
    import matplotlib.pyplot as plt

    from mlaverify.verify.accuracy_report import SWEEP_LABELS

    plots = []
    keys = sorted({(r.op, r.model, r.sweep) for r in report.rows if r.sweep is not None})
    for op, model, sweep in keys:
        rows = [r for r in report.rows if (r.op, r.model, r.sweep) == (op, model, sweep) and r.format != "bf16"]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        try:
            for i, fmt in enumerate(dict.fromkeys(r.format for r in rows)):
                pts = sorted((r.value, r.metrics["rel_fro"]) for r in rows if r.format == fmt)
                # formats with identical errors (power-of-two scales at any tile) draw on top of each other:
                # shrinking open markers and distinct dashes keep every one of them visible
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=_MARKERS[i % len(_MARKERS)],
                        markersize=max(3.0, 10.0 - 1.5 * i), fillstyle="none", linestyle=_DASHES[i % len(_DASHES)],
                        label=fmt)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(SWEEP_LABELS[sweep])
            ax.set_ylabel("rel Frobenius error of out")
            ax.set_title(f"{op}, {model} keys ({rows[0].distribution})", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
            plots.append(_svg(fig))
        finally:
            plt.close(fig)
    return plots
