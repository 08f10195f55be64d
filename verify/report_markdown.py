"""Markdown summary of a report: fit for a pull-request comment or a CI step summary.

Same order as the HTML report, kept short: the verdict and counts, the gate's line, a one-row-per-
failure summary, the root-cause line; then everything long inside ``<details>`` blocks (each
failure's discrepancy table, worst element and replay command; the gate's tables; the by-op table;
the largest errors; the feature matrix of the kinds that failed). GitHub limits a comment to 65,536
characters: the renderer drops failure details past MAX_CHARS and says so.
"""
from __future__ import annotations

from mlaverify.verify import root_cause
from mlaverify.verify.report_common import (
    NA_COS, case_ratio, coverage_view, discrepancy_rows, failing_outputs, feature_groups, feature_matrix, fmt_metric, fmt_num,
    fmt_ratio, gate_summary, gate_tables, group_by_op_model, impl_spec, largest_errors, replay_command,
    replay_files_of,
)
from mlaverify.verify.report_html import LOCATED_FAILURES, failing_kinds
from mlaverify.verify.report_locate import element_detail, named_index
from mlaverify.verify.results import STATUSES, CaseResult, Report

__all__ = ["render_markdown", "MAX_CHARS"]

_MAX_FAILURES = 20  # failures listed in the summary table and in details; the JSON and HTML hold all
_MAX_WORST = 10     # rows of "Largest errors"
MAX_CHARS = 60_000  # below GitHub's 65,536-character comment limit, with room for a bot's header
_REASON_CHARS = 100


def _cell(s: object) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(x) for x in row) + " |" for row in rows]
    return lines


def _details(summary: str, body: list[str]) -> list[str]:
    return ["", f"<details><summary>{summary}</summary>", "", *body, "", "</details>"]


def _head(report: Report, impl: str | None) -> list[str]:
    s, settings, verdict = report.summary, report.settings, report.verdict
    mark = {"PASS": "✅", "FAIL": "❌"}.get(verdict, "⚠️")
    lines = [f"## {mark} mla-verify: {verdict} — `{impl or 'unknown implementation'}`", "",
             f"{s['total']} cases: **{s['pass']} passed**, **{s['fail']} failed**, {s['error']} errors, "
             f"{s['skip']} skipped (profile `{settings.get('profile', '-')}`, seed `{settings.get('seed', '-')}`, "
             f"tool {report.tool.get('version', '?')}, {fmt_num(s['duration_s'])} s)."]
    if settings.get("merged_shards"):
        lines.append(f"Merged from shards {', '.join(settings['merged_shards'])}.")
    if verdict == "NOT VERIFIED":
        lines += ["", "**NOT VERIFIED**: no case was executed (every case skipped or none selected); this run says "
                      "nothing about the implementation."]
    cov = coverage_view(report)
    if verdict == "NOT COVERED":
        lines += ["", f"**NOT COVERED**: every case passed, but {len(cov.unobserved)} required boundary features were "
                      "never observable in any case, so a bug there could not have failed: "
                      + ", ".join(f"`{f}`" for f in cov.unobserved)]
    elif cov is not None:
        lines += ["", cov.headline()[0].upper() + cov.headline()[1:] + "."]
    if report.run_status == "interrupted":
        lines += ["", "**INTERRUPTED**: the run was stopped; only the cases done so far are reported."]
    if report.run_status == "aborted":
        lines += ["", f"**ABORTED** before any case ran: {report.fatal or 'no reason recorded'}"]
    if report.gate is not None:
        lines += ["", f"**{gate_summary(report.gate)}**"]
    return lines


def _failure_summary(failures: list[CaseResult]) -> list[str]:
    rows = []
    for i, c in enumerate(failures[:_MAX_FAILURES], 1):
        reason = c.reason if len(c.reason) <= _REASON_CHARS else c.reason[:_REASON_CHARS - 1] + "…"
        rows.append([str(i), f"`{c.id}`", ", ".join(failing_outputs(c)) or c.status, fmt_ratio(case_ratio(c)), reason])
    lines = ["", f"### Failures ({len(failures)})", ""] + _table(["#", "case", "failing", "error/allowed", "reason"],
                                                                rows)
    if len(failures) > _MAX_FAILURES:
        lines.append(f"\n... and {len(failures) - _MAX_FAILURES} more failures (see the JSON or HTML report).")
    return lines


def _root_cause(report: Report) -> list[str]:
    ranked = root_cause.rank_features(report.cases)
    lines = ["", f"**Root cause:** {root_cause.summary_line(ranked)}"]
    if ranked:
        rows = [[f"`{a.label}`", f"{a.fail_with}/{a.n_with}", f"{a.fail_without}/{a.n_without}", f"{a.p_value:.2g}",
                 "" if a.covered_by is None else "covered by the lines above"] for a in ranked[:10]]
        lines += _details("features most associated with failure (one-sided Fisher p: a ranking, not a test)",
                          _table(["feature", "failed with", "failed without", "p", "note"], rows))
    return lines


def _failure_block(c: CaseResult, i: int, impl: str | None, replay_file: str | None) -> list[str]:
    body = [c.reason, ""]
    head, rows = discrepancy_rows(c)
    if rows:
        body += _table(head, rows) + [""]
    for m in c.outputs.values():
        if not m.passed and m.worst_index is not None:
            detail = element_detail(c.case, m.name, m.worst_index) if i <= LOCATED_FAILURES else None
            body.append(f"- `{m.name}` worst at `{named_index(c.case.op, m.name, m.worst_index)}`: got "
                        f"{fmt_num(m.worst_value, 5)}, ref {fmt_num(m.worst_ref, 5)}"
                        + (f" — {detail}" if detail else ""))
    body += [f"- check `{ch.name}` failed: {ch.reason}" for ch in c.checks.values() if not ch.passed]
    body += ["", "```", replay_command(c, impl, replay_file), "```"]
    return _details(f"{i}. <code>{c.id}</code>: {', '.join(failing_outputs(c)) or c.status} "
                    f"(error/allowed {fmt_ratio(case_ratio(c))})", body)


def _by_op(report: Report) -> list[str]:
    rows = []
    for key, cases in group_by_op_model(report.cases).items():
        bad = any(c.status in ("fail", "error") for c in cases)
        verdict = "FAIL" if bad else "NOT VERIFIED" if all(c.status == "skip" for c in cases) else "PASS"
        rows.append([key, verdict, *(str(sum(c.status == st for c in cases)) for st in STATUSES)])
    return _table(["op/model", "verdict", *STATUSES], rows)


def _largest(report: Report) -> list[str]:
    rows = [[f"`{c.id}`", m.name, c.status, f"**{fmt_ratio(m.tol_ratio)}**", fmt_ratio(m.elem_ratio),
             fmt_ratio(m.cos_ratio), fmt_num(m.max_abs), fmt_metric(m.max_ulp), fmt_metric(m.cos_diff, NA_COS),
             str(m.floor_excluded)] for c, m in largest_errors(report.cases, _MAX_WORST)]
    if not rows:
        return []
    return _details("Largest errors, sorted by error/allowed (largest first)",
                    _table(["case", "output", "status", "error/allowed ▼", "elem ratio", "cos ratio", "max abs",
                            "max ulp", "cos diff", "below floor"], rows))


def _matrix(report: Report) -> list[str]:
    features, columns, cells = feature_matrix(report.cases)
    failing = {f for (f, _), cell in cells.items() if cell["fail"]}
    hot = failing_kinds(report, feature_groups(features), failing)
    if not hot:
        return []
    rows = []
    for kind, fs in hot.items():
        for f in fs:
            row = [f"`{f}`"]
            for col in columns:
                cell = cells.get((f, col))
                if not cell or cell["pass"] + cell["fail"] == 0:
                    row.append("·" if not cell else f"skip {cell['skip']}")
                else:
                    row.append(("❌ " if cell["fail"] else "") + f"{cell['pass']}/{cell['pass'] + cell['fail']}")
            rows.append(row)
    return _details(f"Feature matrix of the {len(hot)} feature kinds with a failure, most associated first "
                    "(passed/run; · not observed)",
                    _table(["feature", *columns], rows))


def _coverage(report: Report) -> list[str]:
    cov = coverage_view(report)
    if cov is None:
        return []
    mark = {"pass": "", "fail": "❌ ", "none": "❌ ", "skip": "", "n/a": ""}
    lines = []
    for op, columns in cov.ops.items():
        rows = [[f"`{f}`", *(mark[k] + t for t, k in (cov.cell_text(f, col) for col in columns))]
                for f in cov.features[op]]
        lines += ["", f"**{op}**", ""] + _table(["feature", *(c.split("/")[1] for c in columns)], rows)
    return _details(f"Boundary coverage: {cov.observed} of {cov.total} features observed "
                    "(cases where observable / cases run; ❌ never observed, or failed where observed)", lines)


def render_markdown(report: Report, *, replay_files: dict[str, str] | None = None) -> str:
    """The summary (see the module docstring). ``replay_files`` maps case ids to replay file paths."""
    replay_files = replay_files_of(report, replay_files)
    impl = impl_spec(report)
    failures = report.failures()
    lines = _head(report, impl)
    if failures:
        lines += _failure_summary(failures) + _root_cause(report)
    tail = []
    if report.gate is not None:
        for title, head, rows in gate_tables(report.gate):
            tail += _details(f"Gate: {title} ({len(rows)})", _table(head, rows[:50]))
    tail += _details("By op and model", _by_op(report)) + _largest(report) + _matrix(report) + _coverage(report)
    skipped = [c for c in report.cases if c.status == "skip"]
    if skipped:
        reasons: dict[str, int] = {}
        for c in skipped:
            reasons[c.reason] = reasons.get(c.reason, 0) + 1
        tail += _details(f"Skipped ({len(skipped)}: not claimed by the capability profile)",
                         [f"- {n} x {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])])
    if failures:
        lines += ["", "### Failure details"]
    size = len("\n".join(lines + tail))
    for i, c in enumerate(failures[:_MAX_FAILURES], 1):
        block = _failure_block(c, i, impl, replay_files.get(c.id))
        if size + len("\n".join(block)) > MAX_CHARS:
            lines += ["", f"... details of failures {i}..{len(failures)} left out to fit a PR comment "
                          "(see the HTML report or the replay files)."]
            break
        lines += block
        size += len("\n".join(block)) + 1
    return "\n".join(lines + tail) + "\n"
