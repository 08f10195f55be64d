"""Self-contained HTML report: one file, no scripts, no network; plots are inline SVG."""
from __future__ import annotations

import math
from collections import defaultdict
from html import escape

from mlaverify.verify import report_svg as svg
from mlaverify.verify.report_common import (
    discrepancy_rows, feature_matrix, fmt_num, group_by_op_model, impl_spec, replay_command, replay_files_of,
)
from mlaverify.verify.results import STATUSES, CaseResult, Report

__all__ = ["render_html", "ULP_BINS"]

# Histogram bins of max ulp error: (upper bound inclusive, label).
ULP_BINS = [(0.0, "0"), (1.0, "≤1"), (2.0, "≤2"), (4.0, "≤4"), (8.0, "≤8"), (32.0, "≤32"), (128.0, "≤128"),
            (math.inf, ">128")]

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}
th{background:#f2f2f2}.pass{color:#2e9d5b;font-weight:600}.fail,.error{color:#d64541;font-weight:600}
.skip{color:#777}.plots{display:flex;flex-wrap:wrap;gap:12px}
code,pre{background:#f6f6f6;font-size:12px}pre{padding:6px;overflow-x:auto}
.verdict-PASS{color:#2e9d5b}.verdict-FAIL{color:#d64541}
"""


def _table(head: list[str], rows: list[list[str]], raw: bool = False) -> str:
    def cell(x: str) -> str:
        return x if raw else escape(str(x))
    out = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{cell(x)}</td>" for x in row) + "</tr>" for row in rows]
    return "".join(out) + "</table>"


def _bin_index(ulp: float) -> int:
    if math.isnan(ulp):
        return len(ULP_BINS) - 1
    for i, (upper, _) in enumerate(ULP_BINS):
        if ulp <= upper:
            return i
    return len(ULP_BINS) - 1


def _distribution_plots(cases: list[CaseResult]) -> list[str]:
    per: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * len(ULP_BINS))
    for c in cases:
        for m in c.outputs.values():
            if m.max_ulp is not None and m.shape is not None:
                per[(c.case.op, m.name)][_bin_index(m.max_ulp)] += 1
    return [svg.histogram(f"{op}: {name} max ulp error", [b[1] for b in ULP_BINS], counts, "max ulp (bf16)")
            for (op, name), counts in sorted(per.items())]


def _main_error(c: CaseResult) -> float | None:
    m = c.outputs.get("out")
    if m is None or m.max_ulp is None or m.shape is None:
        return None
    return m.max_ulp


def _scatter_plots(cases: list[CaseResult]) -> list[str]:
    plots = []
    by_op: dict[str, list[CaseResult]] = defaultdict(list)
    for c in cases:
        if c.status != "skip":
            by_op[c.case.op].append(c)
    for op, op_cases in sorted(by_op.items()):
        for field, label in (("topk", "topk"), ("s_kv", "sequence length s_kv"), ("h_q", "h_q")):
            pts = []
            for c in op_cases:
                y, x = _main_error(c), getattr(c.case, field)
                if y is not None and x > 0 and math.isfinite(y):
                    pts.append((float(x), y, c.status == "pass"))
            if len({p[0] for p in pts}) > 1:
                plots.append(svg.scatter(f"{op}: out max ulp vs {field}", pts, label, "max ulp"))
    return plots


def _case_rows(cases: list[CaseResult]) -> list[list[str]]:
    rows = []
    for c in cases:
        ulps = ", ".join(f"{m.name} {fmt_num(m.max_ulp)}" for m in c.outputs.values())
        rows.append([escape(c.id), f'<span class="{c.status}">{c.status}</span>', escape(ulps),
                     escape(fmt_num(c.duration_s)), escape(c.reason)])
    return rows


def render_html(report: Report, *, replay_files: dict[str, str] | None = None) -> str:
    replay_files = replay_files_of(report, replay_files)
    s = report.summary
    impl = impl_spec(report) or "unknown implementation"
    verdict = report.verdict
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>mla-verify {verdict}: {escape(impl)}</title><style>{_CSS}</style></head><body>",
             f"<h1>mla-verify report: <span class='verdict-{verdict}'>{verdict}</span> — <code>{escape(impl)}</code></h1>",
             f"<p>{s['total']} cases: {s['pass']} passed, {s['fail']} failed, {s['error']} errors, "
             f"{s['skip']} skipped. Tool {escape(str(report.tool.get('version', '?')))}, "
             f"created {escape(report.created or '-')}, {fmt_num(s['duration_s'])} s of case time.</p>"]
    settings_rows = [[k, str(v)] for k, v in sorted(report.settings.items())
                     if k not in ("tolerances", "replay_files")]
    env_rows = [[k, str(v)] for k, v in sorted(report.environment.items())]
    parts.append("<details><summary>settings and environment</summary>" + _table(["setting", "value"], settings_rows)
                 + _table(["environment", "value"], env_rows) + "</details>")

    parts.append("<h2>By op and model</h2>")
    rows = [[key, *(str(sum(c.status == st for c in cases)) for st in STATUSES)]
            for key, cases in group_by_op_model(report.cases).items()]
    parts.append(_table(["op/model", *STATUSES], rows))

    features, columns, cells = feature_matrix(report.cases)
    if features:
        parts.append("<h2>Feature pass matrix</h2><div class='plots'>")
        parts.append(svg.pass_matrix("cases passed / run, per feature and op/model", features, columns, cells))
        parts.append("</div>")

    dist = _distribution_plots(report.cases)
    if dist:
        parts.append("<h2>Error distributions</h2><div class='plots'>" + "".join(dist) + "</div>")
    scatters = _scatter_plots(report.cases)
    if scatters:
        parts.append("<h2>Error against topk, sequence length and h_q</h2><div class='plots'>"
                     + "".join(scatters) + "</div>")

    failures = report.failures()
    parts.append(f"<h2>Failures ({len(failures)})</h2>")
    if not failures:
        parts.append("<p>None.</p>")
    for c in failures:
        head, rows = discrepancy_rows(c)
        parts.append(f"<h3><code>{escape(c.id)}</code> <span class='{c.status}'>{c.status}</span></h3>"
                     f"<p>{escape(c.reason)}</p>")
        if rows:
            parts.append(_table(head, rows))
        for ch in c.checks.values():
            if not ch.passed:
                parts.append(f"<p>check <code>{escape(ch.name)}</code> failed: {escape(ch.reason)}</p>")
        parts.append(f"<pre>{escape(replay_command(c, impl_spec(report), replay_files.get(c.id)))}</pre>")

    parts.append("<h2>All cases</h2><details><summary>show all cases</summary>")
    parts.append(_table(["case", "status", "max ulp per output", "seconds", "reason"], _case_rows(report.cases),
                        raw=True))
    parts.append("</details></body></html>\n")
    return "".join(parts)
