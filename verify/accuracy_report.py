"""The `mlaverify accuracy` report: JSON (schema-versioned), Markdown, self-contained HTML, and its conclusions.

The conclusions paragraph is computed from the rows: which format has the lowest error where, the
effect of the scale format (same tile) and of the tile size (same scale format), the trend with the
outlier magnitude, and, with --impl, whether the kernel's or the quantization's error dominates.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from html import escape

from mlaverify.verify.accuracy import Row

__all__ = ["AccuracyReport", "ACCURACY_SCHEMA", "ACCURACY_SCHEMA_VERSION", "conclusions", "render_markdown",
           "render_html", "TABLE_METRICS"]

ACCURACY_SCHEMA = "mla-verify-accuracy"
ACCURACY_SCHEMA_VERSION = 1
# (metric key, column label) of the detailed tables, in display order
TABLE_METRICS = (("rel_fro", "rel Frobenius"), ("max_abs", "max abs"), ("cosine", "1 - cosine"),
                 ("lse_max_err", "lse max err"), ("topk_mass_mean", "top-k mass mean"),
                 ("topk_mass_min", "top-k mass min"), ("out_nope_rel", "out NoPE rel"),
                 ("out_rope_rel", "out RoPE rel"), ("logit_nope_rms", "logit err NoPE rms"),
                 ("logit_rope_rms", "logit err RoPE rms"))
SWEEP_LABELS = {"outlier_ratio": "outlier channel magnitude (x the bulk)", "topk": "top-k (keys per query)",
                "s_kv": "sequence length (cache tokens)"}


@dataclass
class AccuracyReport:
    settings: dict
    formats: list[dict]                 # name, tile, scale_format, real, description
    distributions: dict[str, str]       # name -> reason (files: their path)
    rows: list[Row]
    implementation: str | None = None
    tool_version: str = ""
    elapsed_s: float = 0.0
    schema_version: int = ACCURACY_SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """An implementation was asked for and failed (or returned NaN) on some row."""
        return any(r.impl_error for r in self.rows)

    def to_json(self) -> str:
        return json.dumps({
            "schema": ACCURACY_SCHEMA, "schema_version": self.schema_version, "tool_version": self.tool_version,
            "implementation": self.implementation, "elapsed_s": round(self.elapsed_s, 3), "settings": self.settings,
            "formats": self.formats, "distributions": self.distributions, "conclusions": conclusions(self),
            "rows": [r.to_dict() for r in self.rows], **self.extra,
        }, indent=1, sort_keys=False) + "\n"


def _main(report: AccuracyReport) -> list[Row]:
    return [r for r in report.rows if r.sweep is None]


def _fmt(x, key: str = "") -> str:
    if x is None:
        return "-"
    if key == "cosine":
        x = 1.0 - x
        if abs(x) < 1e-12:  # float64 rounding of a cosine of 1
            return "0"
    if key.startswith("topk_mass"):
        return f"{x:.4f}"
    return "0" if x == 0 else f"{x:.3g}"


def _lookup(rows: list[Row]) -> dict:
    return {(r.op, r.model, r.distribution, r.format, r.sweep, r.value): r for r in rows}


def _ratio_text(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.3f}x" if hi - lo < 5e-4 * lo else f"{lo:.3f}-{hi:.3f}x"


def _range(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2g}" if hi - lo < 0.05 * lo else f"{lo:.2g}-{hi:.2g}"


# A ratio of two formats' errors below this is not called a difference: at the default sizes (8 rows x 16
# heads, top-k 256) the ratio model1 / model1-f32 measured over 6 seeds spread 0.89-1.39x on the peaked,
# wide_logits, near_duplicate and rope_scaled distributions (1.03-1.07x on flashmla).
CLEAR_RATIO = 1.5


def _median_by(rows: list[Row], key) -> dict:
    groups: dict = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r.metrics["rel_fro"])
    return {k: statistics.median(v) for k, v in groups.items()}


def _effect(rows: list[Row], table: dict, a: str, b: str, what: str) -> str | None:
    """One sentence on the ratio of format a's error to format b's over every (op, model, distribution)."""
    ratios = []
    for r in rows:
        other = table.get((r.op, r.model, r.distribution, b, None, None))
        if r.format == a and other is not None and other.metrics["rel_fro"] > 0:
            ratios.append((r.distribution, r.metrics["rel_fro"] / other.metrics["rel_fro"]))
    if not ratios:
        return None
    n = len(ratios)
    if all(abs(v - 1.0) < 1e-9 for _, v in ratios):  # float64 summation order only
        return f"{what} ({a} vs {b}): identical errors on all {n} rows."
    if all(abs(v - 1.0) < 0.01 for _, v in ratios):
        return (f"{what} ({a} vs {b}): the same error within {max(abs(v - 1) for _, v in ratios):.1e} (relative) "
                f"on all {n} rows.")
    worst = max(ratios, key=lambda kv: kv[1])
    return (f"{what} ({a} / {b} error): median {statistics.median(v for _, v in ratios):.2f}x over {n} rows, "
            f"largest {worst[1]:.2f}x on {worst[0]}.")


def conclusions(report: AccuracyReport) -> str:
    """One paragraph, every number in it read from the report's rows."""
    rows = _main(report)
    if not rows:
        return "No rows were computed."
    table = _lookup(report.rows)
    parts = []
    if any(r.format == "bf16" for r in rows):
        zero = all(r.metrics["rel_fro"] == 0 for r in report.rows if r.format == "bf16")
        parts.append("bf16 has zero quantization error by construction" + ("" if zero else " (NOT zero: a bug)") + ".")
    fp8 = [r for r in rows if r.format != "bf16"]
    clear, close = [], []
    for dist in dict.fromkeys(r.distribution for r in fp8):
        med = _median_by([r for r in fp8 if r.distribution == dist], lambda r: r.format)
        best, worst = min(med, key=med.get), max(med, key=med.get)
        if med[best] > 0 and med[worst] / med[best] >= CLEAR_RATIO:
            clear.append(f"{dist} {best} {med[best]:.2g} vs {worst} {med[worst]:.2g} ({med[worst] / med[best]:.2g}x)")
        else:
            close.append(f"{dist} ({min(med.values()):.2g}-{max(med.values()):.2g})")
    if clear:
        parts.append("Relative error of out (median over ops and key shapes), best vs worst FP8 format where they "
                     f"differ by at least {CLEAR_RATIO:g}x: " + "; ".join(clear) + ".")
    if close:
        parts.append(f"Within {CLEAR_RATIO:g}x of each other, the seed-to-seed spread at the default sizes: "
                     + ", ".join(close) + ".")
    for a, b, what in (("model1", "v32", "MODEL1's format vs V32's on the same keys"),
                       ("model1", "model1-f32", "Scale format, ue8m0 vs float32 at tile 64"),
                       ("v32-ue8m0", "model1", "Tile size, 128 vs 64 with ue8m0 scales"),
                       ("v32-exact", "model1-f32", "Tile size, 128 vs 64 with float32 scales")):
        sentence = _effect(fp8, table, a, b, what)
        if sentence:
            parts.append(sentence)
    sweep = [r for r in report.rows if r.sweep == "outlier_ratio" and r.format != "bf16"]
    for op, model in dict.fromkeys((r.op, r.model) for r in sweep):
        trends = []
        for fmt in dict.fromkeys(r.format for r in sweep):
            pts = sorted((r.value, r.metrics["rel_fro"]) for r in sweep if (r.op, r.model, r.format) == (op, model, fmt))
            if len(pts) >= 2:
                trends.append(f"{fmt} {pts[0][1]:.2g} -> {pts[-1][1]:.2g}")
        if trends:
            lo, hi = min(r.value for r in sweep), max(r.value for r in sweep)
            parts.append(f"Outlier channels from {lo:g}x to {hi:g}x the bulk ({op}, {model} keys): "
                         + ", ".join(trends) + ".")
            break
    with_impl = [r for r in rows if r.impl is not None and r.format != "bf16" and r.metrics["rel_fro"] > 0]
    if with_impl:
        ratios = [r.impl["rel_fro"] / r.metrics["rel_fro"] for r in with_impl]
        med = statistics.median(ratios)
        side = "the kernel's own error dominates" if med > 2 else "the quantization error dominates"
        alone = [r.impl["rel_fro"] for r in rows if r.impl is not None and r.format == "bf16"]
        kernel = (f"; on the bf16 keys its own error alone is {_range(alone)}, against a median quantization error "
                  f"of {statistics.median(r.metrics['rel_fro'] for r in with_impl):.3g}") if alone else ""
        parts.append(f"{report.implementation}: end-to-end error / quantization error alone is median {med:.3f}x "
                     f"(range {_ratio_text(ratios)}) over {len(ratios)} rows{kernel}, so {side}.")
    if report.failed:
        bad = [r for r in report.rows if r.impl_error]
        parts.append(f"The implementation failed on {len(bad)} rows (first: {bad[0].impl_error}).")
    return " ".join(parts)


def summary_table(report: AccuracyReport, op: str, model: str, key: str = "rel_fro") -> tuple[list, list]:
    """(header, rows): distributions x formats of one metric on the main grid."""
    rows = [r for r in _main(report) if (r.op, r.model) == (op, model)]
    formats = [f["name"] for f in report.formats if any(r.format == f["name"] for r in rows)]
    dists = list(dict.fromkeys(r.distribution for r in rows))
    table = _lookup(rows)
    body = [[d] + [_fmt(table[(op, model, d, f, None, None)].metrics[key], key)
                   if (op, model, d, f, None, None) in table else "-" for f in formats] for d in dists]
    return ["distribution"] + formats, body


def detail_rows(report: AccuracyReport, op: str, model: str) -> tuple[list, list]:
    rows = [r for r in _main(report) if (r.op, r.model) == (op, model)]
    head = ["distribution", "format"] + [label for _, label in TABLE_METRICS]
    if report.implementation:
        head += ["impl rel Frobenius", "impl max abs", "impl lse max err"]
    body = []
    for r in rows:
        line = [r.distribution, r.format] + [_fmt(r.metrics.get(k), k) for k, _ in TABLE_METRICS]
        if report.implementation:
            if r.impl is not None:
                line += [_fmt(r.impl["rel_fro"]), _fmt(r.impl["max_abs"]), _fmt(r.impl["lse_max_err"])]
            else:
                line += [r.impl_error or "n/a (no byte cache)"] + ["-", "-"]
        body.append(line)
    return head, body


def sweep_table(report: AccuracyReport, op: str, model: str, sweep: str) -> tuple[list, list]:
    rows = [r for r in report.rows if (r.op, r.model, r.sweep) == (op, model, sweep)]
    formats = list(dict.fromkeys(r.format for r in rows))
    values = sorted({r.value for r in rows})
    table = _lookup(rows)
    dist = rows[0].distribution if rows else ""
    body = [[f"{v:g}"] + [_fmt(table[(op, model, dist, f, sweep, v)].metrics["rel_fro"])
                          if (op, model, dist, f, sweep, v) in table else "-" for f in formats] for v in values]
    return [sweep] + formats, body


def _groups(report: AccuracyReport, sweeps: bool = False) -> list[tuple[str, str]]:
    rows = [r for r in report.rows if (r.sweep is not None) == sweeps]
    return list(dict.fromkeys((r.op, r.model) for r in rows))


def _md_table(head: list, body: list) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(x) for x in row) + " |" for row in body])


def _settings_line(report: AccuracyReport) -> str:
    s = report.settings
    d, p = s["decode"], s["prefill"]
    preset = f"preset {s['preset']}, " if s.get("preset") else ""
    return (f"{preset}sparse decode h_q={d['h_q']} s_kv={d['s_kv']} topk={d['topk']} rows={d['rows']}; "
            f"sparse prefill h_q={p['h_q']} s_kv={p['s_kv']} topk={p['topk']} rows={p['rows']}; seed {s['seed']}; "
            f"{report.elapsed_s:.0f} s")


def render_markdown(report: AccuracyReport) -> str:
    out = ["# KV-cache format accuracy", "", f"mla-verify {report.tool_version}; {_settings_line(report)}.", "",
           "Error of the attention output against the float64 reference on the unquantized bf16 keys.", "",
           "## Conclusions", "", conclusions(report), "", "## Formats", ""]
    out += [f"- `{f['name']}`: {f['description']}" for f in report.formats]
    out += ["", "## Distributions", ""] + [f"- `{k}`: {v}" for k, v in report.distributions.items()]
    for op, model in _groups(report):
        out += ["", f"## {op}, {model} keys: relative Frobenius error of out", "",
                _md_table(*summary_table(report, op, model)), "", "<details><summary>all metrics</summary>", "",
                _md_table(*detail_rows(report, op, model)), "", "</details>"]
    for op, model in _groups(report, sweeps=True):
        for sweep in SWEEP_LABELS:
            head, body = sweep_table(report, op, model, sweep)
            if body:
                out += ["", f"## {op}, {model} keys: rel Frobenius error vs {SWEEP_LABELS[sweep]}", "",
                        _md_table(head, body)]
    return "\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#f2f2f2}.plots{display:flex;flex-wrap:wrap;gap:12px}p.conclusions{max-width:1100px}"""


def _html_table(head: list, body: list) -> str:
    rows = ["<tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in head) + "</tr>"]
    rows += ["<tr>" + "".join(f"<td>{escape(str(x))}</td>" for x in row) + "</tr>" for row in body]
    return "<table>" + "".join(rows) + "</table>"


def render_html(report: AccuracyReport) -> str:
    from mlaverify.verify.accuracy_plots import sweep_plots

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>KV-cache format accuracy</title>"
             f"<style>{_CSS}</style></head><body><h1>KV-cache format accuracy</h1>",
             f"<p>mla-verify {escape(report.tool_version)}; {escape(_settings_line(report))}. Error of the attention "
             "output against the float64 reference on the unquantized bf16 keys.</p>",
             f"<h2>Conclusions</h2><p class='conclusions'>{escape(conclusions(report))}</p>", "<h2>Formats</h2><ul>"]
    parts += [f"<li><code>{escape(f['name'])}</code>: {escape(f['description'])}</li>" for f in report.formats]
    parts += ["</ul><h2>Distributions</h2><ul>"]
    parts += [f"<li><code>{escape(k)}</code>: {escape(v)}</li>" for k, v in report.distributions.items()]
    parts.append("</ul>")
    for op, model in _groups(report):
        parts.append(f"<h2>{escape(op)}, {escape(model)} keys</h2><p>Relative Frobenius error of out:</p>")
        parts.append(_html_table(*summary_table(report, op, model)))
        parts.append("<details><summary>all metrics</summary>" + _html_table(*detail_rows(report, op, model))
                     + "</details>")
    plots = sweep_plots(report)
    if plots:
        parts.append("<h2>Sweeps</h2><div class='plots'>" + "".join(plots) + "</div>")
        for op, model in _groups(report, sweeps=True):
            for sweep in SWEEP_LABELS:
                head, body = sweep_table(report, op, model, sweep)
                if body:
                    parts.append(f"<p>{escape(op)}, {escape(model)} keys, vs {escape(SWEEP_LABELS[sweep])}:</p>"
                                 + _html_table(head, body))
    parts.append("</body></html>")
    return "".join(parts) + "\n"
