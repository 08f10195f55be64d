"""Self-contained HTML report: one file, no scripts, no network; plots are inline SVG from matplotlib.

Order: the verdict and counts, the failures (a summary linked to each failure's details), the
root-cause summary, the gate's decision; then the failures in full (discrepancy table, worst element
with named coordinates, replay command); then the tables and plots (by op, largest errors by
error / allowed, the feature matrix grouped by kind, the ratio histograms and scatter plots).
"""
from __future__ import annotations

from html import escape

from mlaverify.verify import root_cause
from mlaverify.verify.report_common import (
    NA_COS, NA_FLOOR, case_ratio, coverage_view, discrepancy_rows, failing_outputs, feature_groups, feature_matrix, fmt_metric,
    fmt_num, fmt_ratio, gate_summary, gate_tables, group_by_op_model, impl_spec, largest_errors, replay_command,
    replay_files_of,
)
from mlaverify.verify.report_locate import element_detail, named_index
from mlaverify.verify.results import STATUSES, CaseResult, Report

__all__ = ["render_html", "failing_kinds", "LOCATED_FAILURES", "MAX_LARGEST"]

LOCATED_FAILURES = 5   # failures whose worst elements are decoded against regenerated inputs (~1 s each on CPU)
MAX_LARGEST = 25       # rows of "Largest errors"
_REASON_CHARS = 140    # the failure summary's reason column; the details hold the whole reason

_CSS = """
body{font-family:system-ui,sans-serif;margin:16px 24px;color:#222;max-width:1400px}
h1{font-size:21px;margin:4px 0}h2{font-size:17px;margin:22px 0 6px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:16px 0 4px}p{margin:4px 0}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1e7a46;font-weight:600}.fail,.error,.FAIL{color:#c62828;font-weight:600}.skip{color:#777}
.verdict{padding:1px 10px;border-radius:4px;color:#fff}
.v-PASS{background:#1e7a46}.v-FAIL{background:#c62828}.v-other{background:#9a5b00}
.lead{font-size:15px;background:#fff4e5;border-left:4px solid #e69500;padding:4px 8px}
nav{font-size:13px;margin:6px 0}nav a{margin-right:12px}
code{background:#f4f4f4;font-size:12px}
pre.replay{background:#f4f4f4;font-size:12px;padding:6px;white-space:pre-wrap;overflow-wrap:anywhere;
user-select:all;border:1px solid #ddd}
.cell-fail{background:#fde0dc}.cell-pass{background:#e3f4ea}.cell-none{color:#aaa}
.kind td{background:#fafafa;font-weight:600}
figure{margin:8px 0}figure svg{max-width:100%;height:auto}figcaption{font-size:12px;color:#555}
"""


def _table(head: list[str], rows: list[list[str]], raw: bool = False, num_from: int | None = None) -> str:
    def cell(i: int, x: str) -> str:
        cls = " class='num'" if num_from is not None and i >= num_from else ""
        return f"<td{cls}>{x if raw else escape(str(x))}</td>"
    out = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(cell(i, x) for i, x in enumerate(row)) + "</tr>" for row in rows]
    return "".join(out) + "</table>"


def _verdict_badge(verdict: str) -> str:
    cls = f"v-{verdict}" if verdict in ("PASS", "FAIL") else "v-other"
    return f"<span class='verdict {cls}'>{escape(verdict)}</span>"


def _head(report: Report, impl: str) -> list[str]:
    s, verdict = report.summary, report.verdict
    parts = [f"<h1>mla-verify {_verdict_badge(verdict)} <code>{escape(impl)}</code></h1>",
             f"<p>{s['total']} cases: {s['pass']} passed, <b>{s['fail']} failed</b>, {s['error']} errors, "
             f"{s['skip']} skipped · profile <code>{escape(str(report.settings.get('profile', '-')))}</code>, "
             f"seed {escape(str(report.settings.get('seed', '-')))} · tool "
             f"{escape(str(report.tool.get('version', '?')))} · {escape(report.created or '-')} · "
             f"{fmt_num(s['duration_s'])} s of case time</p>"]
    if verdict == "NOT VERIFIED":
        parts.append("<p class='lead'>NOT VERIFIED: no case was executed (every case skipped or none selected); "
                     "this run says nothing about the implementation.</p>")
    cov = coverage_view(report)
    if verdict == "NOT COVERED":
        parts.append(f"<p class='lead'>NOT COVERED: every case passed, but {len(cov.unobserved)} required boundary "
                     "features were never observable in any case, so a bug there could not have failed: "
                     f"{escape(', '.join(cov.unobserved))} — <a href='#coverage'>coverage</a></p>")
    elif cov is not None:
        parts.append(f"<p>{escape(cov.headline())} — <a href='#coverage'>coverage</a></p>")
    if report.run_status == "interrupted":
        parts.append("<p class='lead'>INTERRUPTED: the run was stopped; only the cases done so far are here.</p>")
    if report.run_status == "aborted":
        parts.append(f"<p class='lead'>ABORTED before any case ran: {escape(report.fatal or 'no reason recorded')}</p>")
    if report.gate is not None:
        parts.append(f"<p class='lead'>{escape(gate_summary(report.gate))} — <a href='#gate'>details</a></p>")
    links = [("failures", "Failures"), ("root-cause", "Root cause"), ("gate", "Gate"), ("details", "Failure details"),
             ("by-op", "By op"), ("largest", "Largest errors"), ("matrix", "Feature matrix"),
             ("coverage", "Coverage"), ("plots", "Plots"),
             ("all-cases", "All cases")]
    shown = [(a, t) for a, t in links if (a != "gate" or report.gate is not None)
             and (a != "coverage" or cov is not None)
             and (a not in ("failures", "details", "root-cause") or report.failures())]
    parts.append("<nav>" + "".join(f"<a href='#{a}'>{t}</a>" for a, t in shown) + "</nav>")
    return parts


def _failure_summary(failures: list[CaseResult]) -> list[str]:
    rows = []
    for i, c in enumerate(failures, 1):
        reason = c.reason if len(c.reason) <= _REASON_CHARS else c.reason[:_REASON_CHARS - 1] + "…"
        rows.append([f"<a href='#fail-{i}'>{i}</a>", f"<a href='#fail-{i}'><code>{escape(c.id)}</code></a>",
                     escape(", ".join(failing_outputs(c)) or c.status), escape(fmt_ratio(case_ratio(c))),
                     escape(reason)])
    return [f"<h2 id='failures'>Failures ({len(failures)})</h2>",
            _table(["#", "case", "failing", "error/allowed", "reason"], rows, raw=True)]


def _root_cause(report: Report) -> list[str]:
    ranked = root_cause.rank_features(report.cases)
    parts = ["<h2 id='root-cause'>Root cause: features that go with the failures</h2>",
             f"<p class='lead'><b>{escape(root_cause.summary_line(ranked))}</b></p>"]
    if not ranked:
        return parts

    def rows(items):
        return [[a.label, f"{a.fail_with}/{a.n_with}", f"{a.fail_without}/{a.n_without}", f"{a.p_value:.2g}",
                 ", ".join(a.same_as) or "-"] for a in items]
    head = ["feature", "failed with", "failed without", "p (Fisher, one-sided)", "same cases as"]
    lead = root_cause.leading(ranked)
    parts.append(_table(head, rows(lead[:8])))
    covered = [a for a in ranked if a.covered_by is not None][:15]
    if covered:
        parts.append("<details><summary>also associated, but adding no failure to the lines above "
                     f"({len(covered)} shown)</summary>" + _table(head, rows(covered)) + "</details>")
    parts.append("<p>p ranks, it does not test: the feature sets were chosen after seeing the outcomes. "
                 "Counts are over executed cases (skips excluded).</p>")
    return parts


def _gate(gate: dict) -> list[str]:
    parts = [f"<h2 id='gate'>Gate: {_verdict_badge(str(gate.get('verdict', '?')))}</h2>",
             f"<p>{escape(gate_summary(gate))}</p>"]
    for title, head, rows in gate_tables(gate):
        parts.append(f"<h3>{escape(title)} ({len(rows)})</h3>" + _table(head, rows[:200]))
    return parts


def _worst_lines(c: CaseResult, locate: bool) -> list[str]:
    lines = []
    for m in c.outputs.values():
        if m.passed or m.worst_index is None:
            continue
        detail = element_detail(c.case, m.name, m.worst_index) if locate else None
        where = detail or "run the replay command for the top-k slot / page block behind it"
        at = named_index(c.case.op, m.name, m.worst_index)
        lines.append(f"<li><b>{escape(m.name)}</b> worst at <code>{escape(at)}</code>"
                     f": got {escape(fmt_num(m.worst_value, 5))}, ref {escape(fmt_num(m.worst_ref, 5))} "
                     f"({escape(fmt_ratio(m.elem_ratio))}x its allowed error) — {escape(where)}</li>")
    return ["<ul>" + "".join(lines) + "</ul>"] if lines else []


def _failure_details(report: Report, failures: list[CaseResult], replay_files: dict[str, str]) -> list[str]:
    parts = ["<h2 id='details'>Failure details</h2>"]
    impl = impl_spec(report)
    for i, c in enumerate(failures, 1):
        head, rows = discrepancy_rows(c)
        parts.append(f"<h3 id='fail-{i}'>{i}. <code>{escape(c.id)}</code> <span class='{c.status}'>{c.status}</span>"
                     "</h3>" + f"<p>{escape(c.reason)}</p>")
        if rows:
            parts.append(_table(head, rows, num_from=2))
        parts += _worst_lines(c, locate=i <= LOCATED_FAILURES)
        for ch in c.checks.values():
            if not ch.passed:
                parts.append(f"<p>check <code>{escape(ch.name)}</code> failed: {escape(ch.reason)}</p>")
        parts.append(f"<pre class='replay'>{escape(replay_command(c, impl, replay_files.get(c.id)))}</pre>")
    return parts


def _by_op(report: Report) -> list[str]:
    rows = []
    for key, cases in group_by_op_model(report.cases).items():
        bad = any(c.status in ("fail", "error") for c in cases)
        verdict = "FAIL" if bad else "NOT VERIFIED" if all(c.status == "skip" for c in cases) else "PASS"
        cls = {"FAIL": "fail", "PASS": "pass"}.get(verdict, "skip")
        worst = max((r for c in cases if (r := case_ratio(c)) is not None), default=None)
        rows.append([escape(key), f"<span class='{cls}'>{verdict}</span>",
                     *(str(sum(c.status == st for c in cases)) for st in STATUSES), escape(fmt_ratio(worst))])
    return ["<h2 id='by-op'>By op and model</h2>",
            _table(["op/model", "verdict", *STATUSES, "largest error/allowed"], rows, raw=True, num_from=2)]


def _largest(report: Report) -> list[str]:
    rows = [[escape(c.id), escape(m.name), f"<span class='{c.status}'>{c.status}</span>",
             f"<b>{escape(fmt_ratio(m.tol_ratio))}</b>", escape(fmt_ratio(m.elem_ratio)),
             escape(fmt_ratio(m.cos_ratio)),
             escape(fmt_num(m.max_abs)), escape(fmt_metric(m.max_ulp)), escape(fmt_metric(m.cos_diff, NA_COS)),
             str(m.floor_excluded)]
            for c, m in largest_errors(report.cases, MAX_LARGEST)]
    if not rows:
        return []
    return ["<h2 id='largest'>Largest errors, by error / allowed (sorted, largest first)</h2>",
            f"<p>error/allowed below 1 passes; max ulp is over elements above the floor ({NA_FLOOR}: none is).</p>",
            _table(["case", "output", "status", "error/allowed ▼", "elem ratio", "cos ratio", "max abs", "max ulp",
                    "cos diff", "below floor"], rows, raw=True, num_from=3)]


def _matrix_rows(groups: dict[str, list[str]], columns: list[str], cells: dict) -> list[str]:
    rows = []
    for kind, features in groups.items():
        rows.append(f"<tr class='kind'><td colspan='{len(columns) + 1}'>{escape(kind)}</td></tr>")
        for f in features:
            tds = []
            for col in columns:
                cell = cells.get((f, col))
                if not cell:
                    tds.append("<td class='cell-none'>·</td>")
                elif cell["pass"] + cell["fail"] == 0:
                    tds.append(f"<td class='cell-none'>skip {cell['skip']}</td>")
                else:
                    cls = "cell-fail" if cell["fail"] else "cell-pass"
                    tds.append(f"<td class='num {cls}'>{cell['pass']}/{cell['pass'] + cell['fail']}</td>")
            rows.append(f"<tr><td><code>{escape(f)}</code></td>{''.join(tds)}</tr>")
    return rows


def kind_of(feature: str) -> str:
    return root_cause.feature_kind(feature)[0]


def _kind_order(report: Report) -> dict[str, int]:
    """Feature kind -> its rank in the root-cause list (op scope dropped): the matrix shows the likeliest first."""
    order: dict[str, int] = {}
    for i, a in enumerate(root_cause.rank_features(report.cases)):
        order.setdefault(a.kind.split(": ")[-1], i)
    return order


def failing_kinds(report: Report, groups: dict[str, list[str]], failing: set[str]) -> dict[str, list[str]]:
    """The feature groups with a failing feature, the kinds ranked highest by the root-cause summary first."""
    order = _kind_order(report)
    ranked = sorted(groups.items(), key=lambda kv: min(order.get(kind_of(f), len(order)) for f in kv[1]))
    return {k: fs for k, fs in ranked if any(f in failing for f in fs)}


def _matrix(report: Report) -> list[str]:
    features, columns, cells = feature_matrix(report.cases)
    if not features:
        return []
    failing = {f for (f, _), cell in cells.items() if cell["fail"]}
    groups = feature_groups(features)
    hot = failing_kinds(report, groups, failing)
    cold = {k: fs for k, fs in groups.items() if k not in hot}
    head = "<tr><th>feature</th>" + "".join(f"<th>{escape(c)}</th>" for c in columns) + "</tr>"
    parts = ["<h2 id='matrix'>Feature matrix (passed / run per op and model; · not observed)</h2>"]
    if hot:
        parts.append(f"<p>Feature kinds with a failure ({len(hot)}), the most associated with failure first:</p>"
                     f"<table>{head}"
                     + "".join(_matrix_rows(hot, columns, cells)) + "</table>")
    if cold:
        parts.append(f"<details><summary>{len(cold)} feature kinds that never failed "
                     f"({sum(len(v) for v in cold.values())} features)</summary><table>{head}"
                     + "".join(_matrix_rows(cold, columns, cells)) + "</table></details>")
    return parts


def _coverage(report: Report) -> list[str]:
    """Boundary coverage: per op, each required feature's observed / run count per model."""
    cov = coverage_view(report)
    if cov is None:
        return []
    parts = [f"<h2 id='coverage'>Boundary coverage ({cov.observed} of {cov.total} features observed)</h2>",
             "<p>A feature counts only where a bug in it could have changed the output: the output it feeds is "
             "not forced to zero or empty, and the feature's own part reaches it (a tile's last entry valid, a "
             "head past the first tile with a visible sink, an entry past token 64 of a big page, ...). Cells: "
             "cases where observed / cases run; red: never observed, or a case failed where it was.</p>"]
    if cov.unobserved:
        parts.append(f"<p class='fail'>Never observed ({len(cov.unobserved)}"
                     f"{', required: the run fails' if cov.required else ''}): "
                     f"{escape(', '.join(cov.unobserved))}</p>")
    if cov.not_claimed:
        parts.append(f"<p class='skip'>Observable only in skipped cases ({len(cov.not_claimed)}): "
                     f"{escape(', '.join(cov.not_claimed))}</p>")
    css = {"pass": "num cell-pass", "fail": "num cell-fail", "none": "num cell-fail", "skip": "cell-none",
           "n/a": "cell-none"}
    for op, columns in cov.ops.items():
        head = "<tr><th>feature</th>" + "".join(f"<th>{escape(c.split('/')[1])}</th>" for c in columns) + "</tr>"
        rows = []
        for f in cov.features[op]:
            cells = [cov.cell_text(f, col) for col in columns]
            rows.append(f"<tr><td><code>{escape(f)}</code></td>"
                        + "".join(f"<td class='{css[k]}'>{escape(t)}</td>" for t, k in cells) + "</tr>")
        seen = sum(1 for col in columns for f in cov.features[op] if cov.cell_text(f, col)[1] in ("pass", "fail"))
        total = sum(1 for col in columns for f in cov.features[op] if (f, col) in cov.cells)
        opened = " open" if any(cov.cell_text(f, col)[1] in ("none", "fail") for col in columns
                                for f in cov.features[op]) else ""
        parts.append(f"<details{opened}><summary><code>{escape(op)}</code>: {seen} of {total} observed</summary>"
                     f"<table>{head}{''.join(rows)}</table></details>")
    return parts


def _plots(report: Report) -> list[str]:
    from mlaverify.verify.report_plots import RATIO_HI, RATIO_LO, figure_svg, report_figures  # matplotlib: lazily

    figures = report_figures(report.cases)
    if not any(figures.values()):
        return []
    parts = ["<h2 id='plots'>Plots: error / allowed (dashed line at 1.0: above it fails)</h2>",
             f"<p>Ratios below {RATIO_LO:g} (exact outputs included) and above {RATIO_HI:g} (misplaced NaN / inf "
             "included) are drawn at the edge: triangles in the scatter plots, the outer bins in the histograms.</p>"]
    for title, fig in figures["histograms"] + figures["scatter"]:
        parts.append(f"<figure>{figure_svg(fig, title)}<figcaption>{escape(title)}</figcaption></figure>")
    return parts


def _all_cases(report: Report) -> list[str]:
    rows = [[escape(c.id), f"<span class='{c.status}'>{c.status}</span>", escape(fmt_ratio(case_ratio(c))),
             escape(fmt_num(c.duration_s)), escape(c.reason)] for c in report.cases]
    return ["<h2 id='all-cases'>All cases</h2><details><summary>show all cases</summary>",
            _table(["case", "status", "error/allowed", "seconds", "reason"], rows, raw=True), "</details>"]


def _settings(report: Report) -> list[str]:
    settings_rows = [[k, str(v)] for k, v in sorted(report.settings.items()) if k not in ("tolerances", "replay_files")]
    env_rows = [[k, str(v)] for k, v in sorted(report.environment.items())]
    return ["<details><summary>settings and environment</summary>", _table(["setting", "value"], settings_rows),
            _table(["environment", "value"], env_rows), "</details>"]


def render_html(report: Report, *, replay_files: dict[str, str] | None = None) -> str:
    replay_files = replay_files_of(report, replay_files)
    impl = impl_spec(report) or "unknown implementation"
    failures = report.failures()
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>mla-verify {escape(report.verdict)}: {escape(impl)}</title><style>{_CSS}</style></head><body>"]
    parts += _head(report, impl)
    if failures:
        parts += _failure_summary(failures) + _root_cause(report)
    if report.gate is not None:
        parts += _gate(report.gate)
    if failures:
        parts += _failure_details(report, failures, replay_files)
    parts += _by_op(report) + _largest(report) + _matrix(report) + _coverage(report) + _plots(report) + _all_cases(report)
    parts += _settings(report)
    parts.append("</body></html>\n")
    return "".join(parts)
