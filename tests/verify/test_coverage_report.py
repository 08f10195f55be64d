"""Boundary coverage reaches every report and the exit code: observed / run per feature, the unobserved
ones listed, and NOT COVERED (exit 1) when coverage was required and a feature was never observable."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from mlaverify.verify.cases import Case
from mlaverify.verify.cli import main
from mlaverify.verify.cli_check import exit_code
from mlaverify.verify.coverage import coverage_summary, unobserved
from mlaverify.verify.report_common import coverage_view
from mlaverify.verify.report_html import render_html
from mlaverify.verify.report_junit import render_junit
from mlaverify.verify.report_markdown import render_markdown
from mlaverify.verify.results import Report
from tests.verify.report_fixtures import result

# two short prefill lists: len:32-1 observed in both, len:32 only in the second; duplicates never
_SHORT = Case(op="sparse_prefill", model="v32", s_q=2, h_q=2, s_kv=60, topk=31, seed=1)
_TILE = Case(op="sparse_prefill", model="v32", s_q=2, h_q=2, s_kv=60, topk=32, seed=2)


def _report(required: bool, second_status: str = "pass") -> Report:
    cases = [result(_SHORT, "pass", 0.1), result(_TILE, second_status, 0.2 if second_status == "pass" else 5.0)]
    summary = coverage_summary(cases)
    settings = {"profile": "ci", "seed": 0,
                "coverage": {"required": required, "columns": summary, "unobserved": unobserved(summary)}}
    return Report(cases=cases, implementation={"spec": "x"}, settings=settings)


def test_required_and_missing_is_not_covered_and_exit_1():
    report = _report(required=True)
    assert report.summary["passed"] and report.verified
    assert "sparse_prefill/v32: duplicates" in report.coverage_missing
    assert report.verdict == "NOT COVERED"
    assert exit_code(report) == 1


def test_not_required_stays_pass_but_lists_the_missing():
    report = _report(required=False)
    assert report.verdict == "PASS" and exit_code(report) == 0 and report.coverage_missing == []
    view = coverage_view(report)
    assert "sparse_prefill/v32: duplicates" in view.unobserved
    assert "never observed" in view.headline() and "duplicates" in view.headline()
    assert "duplicates" in render_markdown(report) and "Boundary coverage" in render_html(report)


def test_cells_count_observed_run_and_failures_where_observed():
    view = coverage_view(_report(required=False, second_status="fail"))
    assert view.cell_text("len:32-1", "sparse_prefill/v32") == ("1/2", "pass")
    assert view.cell_text("len:32", "sparse_prefill/v32") == ("1/2 (1 failed)", "fail")
    assert view.cell_text("duplicates", "sparse_prefill/v32") == ("0/2", "none")
    assert view.cell_text("page64", "sparse_prefill/v32") == ("", "n/a")
    assert 0 < view.observed < view.total


def test_every_format_says_not_covered_and_names_the_features():
    report = _report(required=True)
    html, md = render_html(report), render_markdown(report)
    for text in (html, md):
        assert "NOT COVERED" in text and "sparse_prefill/v32: duplicates" in text
    assert "id='coverage'" in html and "href='#coverage'" in html
    assert html.index("NOT COVERED") < html.index("id='coverage'")
    suites = {s.get("name"): s for s in ET.fromstring(render_junit(report)).iter("testsuite")}
    names = [tc.get("name") for tc in suites["mla-verify"].iter("testcase")]
    assert "coverage/sparse_prefill/v32: duplicates" in names
    assert all(tc.find("failure") is not None for tc in suites["mla-verify"].iter("testcase"))


def test_report_without_coverage_renders_no_coverage_section():
    report = _report(required=False)
    report.settings.pop("coverage")
    assert coverage_view(report) is None
    assert "id='coverage'" not in render_html(report) and "Boundary coverage" not in render_markdown(report)


def test_gate_of_a_report_that_is_not_covered_exits_1(tmp_path, capsys):
    """A run whose cases no longer reach a required feature fails the gate even when no metric regressed."""
    report = _report(required=True)
    base = _report(required=False)
    (tmp_path / "base.json").write_text(base.to_json())
    (tmp_path / "run.json").write_text(report.to_json())
    code = main(["gate", "--baseline", str(tmp_path / "base.json"), "--report", str(tmp_path / "run.json"),
                 "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "NOT COVERED" in out and "duplicates" in out
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["gate"]["verdict"] == "PASS"  # the metrics did not regress; the coverage failed


@pytest.mark.parametrize("required", [True, False])
def test_json_round_trip_keeps_the_verdict(required, tmp_path):
    from mlaverify.verify.report_common import load_report

    path = tmp_path / "r.json"
    path.write_text(_report(required).to_json())
    assert load_report(path).verdict == ("NOT COVERED" if required else "PASS")
