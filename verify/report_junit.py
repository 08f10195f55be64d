"""JUnit XML: one <testcase> per case, one <testsuite> per op/model, for CI dashboards.

A dashboard reads "no failure" as green, so what is not a case failure but still not a pass gets a
failing testcase of its own in the suite "mla-verify": a verdict of NOT VERIFIED, INTERRUPTED or
ABORTED (testcase "verdict"), each required boundary feature no case made observable (testcases
"coverage/<op>/<model>: <feature>"), and, for a gate report, each metric regression, missing case and
loosened tolerance (testcases "gate/regression/...", "gate/missing/...", "gate/loosened/...").
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

from mlaverify.verify.report_common import (
    METRIC_LABELS, discrepancy_table, fmt_num, gate_summary, group_by_op_model, impl_spec, replay_command,
    replay_files_of,
)
from mlaverify.verify.report_locate import named_index
from mlaverify.verify.results import Report

__all__ = ["render_junit"]

_VERDICT_TEXT = {
    "NOT VERIFIED": "no case was executed (every case skipped or none selected): nothing was verified",
    "INTERRUPTED": "the run was stopped before it finished; only the cases done so far are reported",
}


def _num(x) -> str:
    return fmt_num(x) if isinstance(x, (int, float)) else str(x)


def _run_suite(root: ET.Element, report: Report) -> dict[str, int]:
    """The suite "mla-verify": the verdict when it is not a plain PASS/FAIL of cases, and the gate's findings."""
    items: list[tuple[str, str, str]] = []   # (testcase name, failure message, body)
    verdict = report.verdict
    if report.run_status == "aborted":
        items.append(("verdict", f"ABORTED: {report.fatal or 'no reason recorded'}", report.fatal))
    elif verdict in _VERDICT_TEXT and report.gate is None:
        items.append(("verdict", f"{verdict}: {_VERDICT_TEXT[verdict]}", ""))
    items += [(f"coverage/{f}", f"NOT COVERED: {f} was never observable in any case (--require-coverage)", f)
              for f in report.coverage_missing]
    gate = report.gate
    if gate is not None:
        if gate.get("verdict") == "NOT VERIFIED":
            items.append(("gate/verdict", "gate NOT VERIFIED: no case was compared with the baseline",
                          gate_summary(gate)))
        for r in gate.get("regressions") or []:
            metric = METRIC_LABELS.get(r.get("metric"), str(r.get("metric")))
            items.append((f"gate/regression/{r.get('case')}/{r.get('output')}/{r.get('metric')}",
                          f"{r.get('output')} {metric} {_num(r.get('baseline'))} -> {_num(r.get('current'))} "
                          f"(x{_num(r.get('ratio'))}, allowed x{_num(gate.get('factor'))})", gate_summary(gate)))
        items += [(f"gate/missing/{m}", "missing: run by the baseline, absent or skipped now", m)
                  for m in gate.get("missing") or []]
        items += [(f"gate/loosened/{i}", f"loosened tolerance: {x}", x)
                  for i, x in enumerate(gate.get("loosened") or [])]
    if not items:
        return {"tests": 0, "failures": 0}
    suite = ET.SubElement(root, "testsuite", name="mla-verify", tests=str(len(items)), failures=str(len(items)),
                          errors="0", skipped="0", time="0.000")
    for name, message, body in items:
        tc = ET.SubElement(suite, "testcase", name=name, classname="mlaverify.run", time="0.0000")
        el = ET.SubElement(tc, "failure", message=message[:500], type="verdict")
        el.text = body or message
    return {"tests": len(items), "failures": len(items)}


def render_junit(report: Report, *, replay_files: dict[str, str] | None = None) -> str:
    replay_files = replay_files_of(report, replay_files)
    impl = impl_spec(report)
    root = ET.Element("testsuites", name=f"mla-verify {impl or ''}".strip())
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "time": 0.0}
    for k, v in _run_suite(root, report).items():
        totals[k] += v
    for key, cases in group_by_op_model(report.cases).items():
        suite = ET.SubElement(root, "testsuite", name=key)
        counts = {"tests": len(cases), "failures": 0, "errors": 0, "skipped": 0}
        time_s = 0.0
        for c in cases:
            time_s += c.duration_s
            tc = ET.SubElement(suite, "testcase", name=c.id, classname=f"mlaverify.{key.replace('/', '.')}",
                               time=f"{c.duration_s:.4f}")
            if c.status in ("fail", "error"):
                tag = "failure" if c.status == "fail" else "error"
                counts["failures" if tag == "failure" else "errors"] += 1
                worst = [f"{m.name} worst at {named_index(c.case.op, m.name, m.worst_index)}: got "
                         f"{fmt_num(m.worst_value, 5)}, ref {fmt_num(m.worst_ref, 5)}"
                         for m in c.outputs.values() if not m.passed and m.worst_index is not None]
                detail = (discrepancy_table(c) + ("\n" + "\n".join(worst) if worst else "")
                          + "\n\nreplay: " + replay_command(c, impl, replay_files.get(c.id)))
                el = ET.SubElement(tc, tag, message=c.reason[:500], type=c.status)
                el.text = detail
            elif c.status == "skip":
                counts["skipped"] += 1
                ET.SubElement(tc, "skipped", message=c.reason[:500])
        for k, v in counts.items():
            suite.set(k, str(v))
            totals[k] += v
        suite.set("time", f"{time_s:.3f}")
        totals["time"] += time_s
    for k, v in totals.items():
        root.set(k, f"{v:.3f}" if k == "time" else str(v))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
