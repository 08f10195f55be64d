"""Markdown summary of a report: fit for a pull-request comment or a CI step summary."""
from __future__ import annotations

from mlaverify.verify.report_common import (
    discrepancy_rows, feature_matrix, fmt_num, group_by_op_model, impl_spec, replay_command, replay_files_of,
    worst_cases,
)
from mlaverify.verify.results import STATUSES, Report

__all__ = ["render_markdown"]

_MAX_FAILURES = 20  # a PR comment stays readable; the JSON and HTML reports hold all of them
_MAX_WORST = 10


def _cell(s: object) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(x) for x in row) + " |" for row in rows]
    return lines


def _verdict(report: Report) -> str:
    return report.verdict


def render_markdown(report: Report, *, replay_files: dict[str, str] | None = None) -> str:
    """The summary: verdict, op x model counts, feature pass matrix, failures with replay commands,
    worst cases by ulp error. ``replay_files`` maps case ids to replay file paths."""
    replay_files = replay_files_of(report, replay_files)
    s = report.summary
    impl = impl_spec(report)
    lines = [f"## mla-verify: {_verdict(report)} — `{impl or 'unknown implementation'}`", ""]
    settings = report.settings
    lines.append(
        f"{s['total']} cases: **{s['pass']} passed**, **{s['fail']} failed**, {s['error']} errors, "
        f"{s['skip']} skipped (profile `{settings.get('profile', '-')}`, seed `{settings.get('seed', '-')}`, "
        f"tool {report.tool.get('version', '?')}, {fmt_num(s['duration_s'])} s)."
    )
    if settings.get("merged_shards"):
        lines.append(f"Merged from shards {', '.join(settings['merged_shards'])}.")
    lines += ["", "### By op and model", ""]
    rows = [[key, *(str(len([c for c in cases if c.status == st])) for st in STATUSES),
             "PASS" if all(c.status in ("pass", "skip") for c in cases) else "FAIL"]
            for key, cases in group_by_op_model(report.cases).items()]
    lines += _table(["op/model", *STATUSES, "verdict"], rows)

    features, columns, cells = feature_matrix(report.cases)
    if features:
        totals = {f: [sum((cells.get((f, col)) or {}).get(k, 0) for col in columns) for k in ("pass", "fail")]
                  for f in features}
        never = sorted((f for f, (p, n) in totals.items() if n and not p), key=lambda f: -totals[f][1])
        lines += ["", "### Feature pass matrix (passed/run; skipped not counted)", ""]
        lines.append("Features whose every case failed: " + (", ".join(f"`{f}`" for f in never) or "none") + ".")
        lines += ["", "<details><summary>matrix</summary>", ""]
        matrix_rows = []
        for feature in features:
            row = [f"`{feature}`"]
            for column in columns:
                cell = cells.get((feature, column))
                if not cell or cell["pass"] + cell["fail"] == 0:
                    row.append("·" if not cell else f"skip {cell['skip']}")
                    continue
                mark = "❌ " if cell["fail"] else ""
                row.append(f"{mark}{cell['pass']}/{cell['pass'] + cell['fail']}")
            matrix_rows.append(row)
        lines += _table(["feature", *columns], matrix_rows) + ["", "</details>"]

    failures = report.failures()
    if failures:
        lines += ["", f"### Failures ({len(failures)})", ""]
        for c in failures[:_MAX_FAILURES]:
            lines += [f"**`{c.id}`** — {c.status}: {c.reason}", ""]
            head, rows = discrepancy_rows(c)
            if rows:
                lines += _table(head, rows) + [""]
            bad_checks = [ch for ch in c.checks.values() if not ch.passed]
            for ch in bad_checks:
                lines.append(f"- check `{ch.name}` failed: {ch.reason}")
            if bad_checks:
                lines.append("")
            lines += ["```", replay_command(c, impl, replay_files.get(c.id)), "```", ""]
        if len(failures) > _MAX_FAILURES:
            lines.append(f"... and {len(failures) - _MAX_FAILURES} more failures (see the JSON or HTML report).")

    worst = [c for c in worst_cases(report.cases, _MAX_WORST) if c.outputs]
    if worst:
        lines += ["", "### Largest errors", ""]
        rows = []
        for c in worst:
            for m in c.outputs.values():
                rows.append([f"`{c.id}`", m.name, c.status, fmt_num(m.max_ulp), fmt_num(m.p99_ulp),
                             fmt_num(m.cos_diff), fmt_num(m.max_abs)])
        lines += _table(["case", "output", "status", "max ulp", "p99 ulp", "cos diff", "max abs"], rows)
    skipped = [c for c in report.cases if c.status == "skip"]
    if skipped:
        reasons: dict[str, int] = {}
        for c in skipped:
            reasons[c.reason] = reasons.get(c.reason, 0) + 1
        lines += ["", "### Skipped (not claimed by the capability profile)", ""]
        lines += [f"- {n} x {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines) + "\n"
