"""JUnit XML: one <testcase> per case, one <testsuite> per op/model, for CI dashboards."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from mlaverify.verify.report_common import (
    discrepancy_table, group_by_op_model, impl_spec, replay_command, replay_files_of,
)
from mlaverify.verify.results import Report

__all__ = ["render_junit"]


def render_junit(report: Report, *, replay_files: dict[str, str] | None = None) -> str:
    replay_files = replay_files_of(report, replay_files)
    impl = impl_spec(report)
    root = ET.Element("testsuites", name=f"mla-verify {impl or ''}".strip())
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "time": 0.0}
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
                detail = discrepancy_table(c) + "\n\nreplay: " + replay_command(c, impl, replay_files.get(c.id))
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
