"""Markdown, HTML and JUnit reports; progress display; the matplotlib plots."""
from __future__ import annotations

import dataclasses
import io
import math
import re
import xml.etree.ElementTree as ET

import pytest

from mlaverify.verify import planted
from mlaverify.verify.cases import Case
from mlaverify.verify.progress import Progress, format_duration
from mlaverify.verify.report_common import (
    NA_COS, discrepancy_rows, discrepancy_table, fmt_ratio, largest_errors, merge_reports,
)
from mlaverify.verify.report_html import render_html
from mlaverify.verify.report_junit import render_junit
from mlaverify.verify.report_locate import named_index
from mlaverify.verify.report_markdown import MAX_CHARS, render_markdown
from mlaverify.verify.report_plots import RATIO_HI, RATIO_LO, ratio_histograms, ratio_scatter, text_overlaps
from mlaverify.verify.results import Report
from mlaverify.verify.runner import run_check
from tests.verify.report_fixtures import decode, result, sink_report

PREFILL = Case(op="sparse_prefill", model="v32", s_q=3, h_q=8, s_kv=40, topk=16, sink="finite", seed=5)
DENSE_A = Case(op="dense_decode", model="model1", b=2, s_q=1, h_q=4, s_kv=24, page_block_size=16, seed=6)
DENSE_B = Case(op="dense_decode", model="v32", b=1, s_q=2, h_q=8, h_kv=2, s_kv=40, page_block_size=8, causal=True,
               seed=7)
MHA = Case(op="mha_prefill", model="d128", b=1, s_q=4, s_kv=4, h_q=2, seed=8)

GATE = {"passed": False, "verdict": "FAIL", "baseline": "reports/base.json", "factor": 2.0, "compared": 3,
        "failing": [], "missing": ["sparse_decode/v32/b1-h8-sq1-sk64-topk16-pb64-s99"],
        "regressions": [{"case": "dense_decode/v32/b1-h8-sq1-sk32-pb16-s20", "output": "out", "metric": "max_ulp",
                         "baseline": 1.5, "current": 9.0, "ratio": 6.0}],
        "loosened": [], "improvements": [], "new_cases": [], "unverified": [], "newly_run": []}


@pytest.fixture(scope="module")
def report():
    """pass (dense x2), fail (prefill: max_logits and lse in base 2), skip (mha not claimed)."""
    module = planted.module_for("prefill_lse_base2")
    return run_check(module, cases=[PREFILL, DENSE_A, DENSE_B, MHA], device="cpu",
                     capabilities={"ops": ["sparse_prefill", "dense_decode"]})


@pytest.fixture(scope="module")
def html(report):
    return render_html(report)


@pytest.fixture(scope="module")
def sink_html():
    return render_html(sink_report())


def _sections(text: str, markers: list[str]) -> list[int]:
    return [text.index(m) for m in markers]


def test_fixture_has_every_status(report):
    assert [c.status for c in report.cases] == ["fail", "pass", "pass", "skip"]


def test_markdown_order_and_content(report):
    md = render_markdown(report, replay_files={PREFILL.id: "out/replays/x.json"})
    assert md.startswith("## ❌ mla-verify: FAIL")
    # verdict and counts, the failure summary, the root cause, then the details and tables
    pos = _sections(md, ["4 cases: **2 passed**, **1 failed**", "### Failures (1)", "**Root cause:**",
                         "### Failure details", "By op and model"])
    assert pos == sorted(pos)
    assert re.search(rf"\| 1 \| `{re.escape(PREFILL.id)}` \| max_logits, lse \| [^|]+ \|", md)
    assert "| sparse_prefill/v32 | FAIL | 0 | 1 | 0 | 0 |" in md
    assert "| dense_decode/v32 | PASS | 1 | 0 | 0 | 0 |" in md
    # the failure's details: the discrepancy table, the worst element by name, the replay command
    assert re.search(r"\| max_logits \| FAIL \| [^|]+ \| [^|]+ \| [^|]+ \| \d+/24 \|", md)
    assert re.search(r"`max_logits` worst at `q=\d h=\d`", md)
    assert "mlaverify replay out/replays/x.json --impl mlaverify.verify.planted.prefill_lse_base2" in md
    assert "Skipped (1: not claimed by the capability profile)" in md and "op mha_prefill not claimed" in md
    # long parts are folded
    assert md.count("<details>") == md.count("</details>") >= 4


def test_markdown_of_passing_report_has_no_failure_section(report):
    passing = merge_reports([type(report)(cases=report.cases[1:3], implementation=report.implementation,
                                          settings=report.settings)])
    md = render_markdown(passing)
    assert md.startswith("## ✅ mla-verify: PASS") and "### Failures" not in md and "Root cause" not in md


@pytest.mark.parametrize("kind", ["all_skipped", "empty"])
def test_nothing_executed_is_not_verified_never_green(report, kind):
    cases = [report.cases[3]] if kind == "all_skipped" else []
    r = Report(cases=cases, implementation=report.implementation, settings=report.settings)
    assert r.verdict == "NOT VERIFIED"
    md = render_markdown(r)
    assert md.startswith("## ⚠️ mla-verify: NOT VERIFIED") and "✅" not in md and "PASS" not in md
    page = render_html(r)
    assert "<span class='verdict v-other'>NOT VERIFIED</span>" in page and "'verdict v-PASS'" not in page
    root = ET.fromstring(render_junit(r))
    verdict = [tc for tc in root.iter("testcase") if tc.get("name") == "verdict"]
    assert len(verdict) == 1 and verdict[0].find("failure").get("message").startswith("NOT VERIFIED")
    assert int(root.get("failures")) == 1


@pytest.mark.parametrize("status, verdict", [("interrupted", "INTERRUPTED"), ("aborted", "ABORTED")])
def test_interrupted_and_aborted_runs_say_so(report, status, verdict):
    r = Report(cases=report.cases[1:3] if status == "interrupted" else [], implementation=report.implementation,
               run_status=status, fatal="the implementation did not import" if status == "aborted" else "")
    assert r.verdict == verdict
    assert render_markdown(r).startswith(f"## ⚠️ mla-verify: {verdict}")
    page = render_html(r)
    assert f"<span class='verdict v-other'>{verdict}</span>" in page
    if status == "aborted":
        assert "did not import" in page
    assert any(tc.find("failure") is not None for tc in ET.fromstring(render_junit(r)).iter("testcase")
               if tc.get("name") == "verdict")


def test_html_is_self_contained_and_ordered(report, html):
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    # no network and nothing executable: no scripts, stylesheets, images or frames from anywhere
    for forbidden in ("<script", "<link", "<img", "<iframe", "src=", "@import", "https://"):
        assert forbidden not in html
    urls = set(re.findall(r"https?://[^\s\"'<>]+", html))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    # verdict, failures, root cause, failure details, then tables and plots
    pos = _sections(html, ["<span class='verdict v-FAIL'>FAIL</span>", "id='failures'", "id='root-cause'",
                           "id='details'", "id='by-op'", "id='largest'", "id='matrix'", "id='plots'"])
    assert pos == sorted(pos)
    assert "<a href='#fail-1'>" in html and "<h3 id='fail-1'>" in html  # the summary links to the details
    assert "<pre class='replay'>mlaverify replay " in html
    svgs = re.findall(r"<svg.*?</svg>", html, re.S)
    for s in svgs:
        ET.fromstring(s)  # every plot is well-formed XML
    titles = re.findall(r"<title>([^<]*)</title>", "".join(svgs))
    assert "sparse_prefill: error / allowed per output" in titles
    assert "dense_decode: error / allowed against top-k, s_kv, h_q" in titles


def test_html_by_op_table_has_a_verdict_column(html):
    by_op = html[html.index("id='by-op'"):html.index("id='largest'")]
    assert "<th>verdict</th>" in by_op
    assert re.search(r"<td>sparse_prefill/v32</td><td><span class='fail'>FAIL</span></td>", by_op)
    assert re.search(r"<td>dense_decode/v32</td><td><span class='pass'>PASS</span></td>", by_op)


def test_html_matrix_groups_kinds_and_folds_the_never_failing(html):
    matrix = html[html.index("id='matrix'"):html.index("id='plots'")]
    shown, folded = matrix.split("<details>")
    assert re.search(r"<tr class='kind'><td colspan='\d+'>sink</td></tr>", shown)  # the failing prefill case's sink
    assert "<code>gqa</code>" not in shown and "<code>gqa</code>" in folded    # only passing cases have GQA


def test_discrepancy_table_shows_ratios_floor_and_named_index():
    c = result(decode(1), "fail", 12.5, max_ulp=None, cos_diff=None, floor_excluded=17)
    head, rows = discrepancy_rows(c)
    row = dict(zip(head, rows[0]))
    assert row["error/allowed"] == "12.5" and row["elem ratio"] == "12.5" and row["cos ratio"] == "-"
    assert row["max ulp"] == row["p99 ulp"] == row["max rel"] == "n/a"   # nothing above the floor
    assert row["cos diff"] == NA_COS == "n/a (reference all zero)"
    assert row["below floor"] == "17"
    assert row["worst at"] == "b=0 q=1 h=49 d=388"
    assert "n/a (reference all zero)" in discrepancy_table(c)
    page = render_html(Report(cases=[c, result(decode(2), "pass", 0.1)]))
    assert "n/a (reference all zero)" in page and ">n/a<" in page


def test_named_index_follows_each_output_layout():
    assert named_index("sparse_decode", "out", (0, 1, 49, 388)) == "b=0 q=1 h=49 d=388"
    assert named_index("sparse_decode", "lse", (0, 49, 1)) == "b=0 h=49 q=1"
    assert named_index("sparse_prefill", "max_logits", (3, 7)) == "q=3 h=7"
    assert named_index("mha_prefill", "dk", (5, 1, 9)) == "key=5 h_kv=1 d=9"
    assert named_index("sparse_decode", "out", (0, 1)) == "[0, 1]"   # does not fit the layout: as is
    assert named_index("sparse_decode", "out", None) == "-"


def test_largest_errors_sorted_by_the_ratio_column(sink_html):
    r = sink_report()
    rows = largest_errors(r.cases, 8)
    ratios = [m.tol_ratio for _, m in rows]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] == 53.0
    page = sink_html
    section = page[page.index("id='largest'"):page.index("id='matrix'")]
    shown = [float(x) for x in re.findall(r"<td class='num'><b>([^<]+)</b></td>", section)]
    assert shown == sorted(shown, reverse=True) and len(shown) == len(r.cases)
    assert "<th>error/allowed ▼</th>" in section
    md = render_markdown(r)
    assert re.findall(r"\| \*\*([^*]+)\*\* \|", md)[:4] == [fmt_ratio(x) for x in (53.0, 52.0, 51.0, 50.0)]


def test_root_cause_line_names_the_sink_in_every_format(sink_html):
    r = sink_report()
    line = "sink finite/+inf: 4/4 failed with, 0/11 without"
    assert line in render_markdown(r)
    page = sink_html
    assert line in page and page.index(line) < page.index("id='details'")


def test_gate_verdict_and_regressions_in_every_format():
    r = dataclasses.replace(sink_report(), gate=GATE)
    assert r.verdict == "FAIL"
    md = render_markdown(r)
    assert "**gate FAIL against reports/base.json" in md and "1 regressions" in md
    assert "Gate: Regressions (1)" in md and "| dense_decode/v32/b1-h8-sq1-sk32-pb16-s20 | out | max ulp | 1.5 | 9 |" \
        in md
    page = render_html(r)
    assert "id='gate'" in page and "Regressions (1)" in page and "Missing cases" in page
    root = ET.fromstring(render_junit(r))
    gate_cases = {tc.get("name"): tc for tc in root.iter("testcase") if tc.get("name").startswith("gate/")}
    reg = gate_cases["gate/regression/dense_decode/v32/b1-h8-sq1-sk32-pb16-s20/out/max_ulp"]
    assert "max ulp 1.5 -> 9 (x6" in reg.find("failure").get("message")
    assert gate_cases["gate/missing/sparse_decode/v32/b1-h8-sq1-sk64-topk16-pb64-s99"].find("failure") is not None
    assert int(root.get("failures")) == 4 + 2  # the 4 failing cases and the 2 gate findings


def test_gate_not_verified_is_not_green():
    gate = dict(GATE, verdict="NOT VERIFIED", compared=0, missing=[], regressions=[])
    r = dataclasses.replace(sink_report(), cases=[c for c in sink_report().cases if c.status == "pass"], gate=gate)
    assert r.verdict == "NOT VERIFIED"
    assert render_markdown(r).startswith("## ⚠️ mla-verify: NOT VERIFIED")
    names = [tc.get("name") for tc in ET.fromstring(render_junit(r)).iter("testcase")
             if tc.find("failure") is not None]
    assert names == ["gate/verdict"]


def test_markdown_fits_a_pr_comment_with_many_failures():
    cases = [result(Case(op="sparse_decode", model="model1", b=2, s_q=2, h_q=64, s_kv=300, topk=128,
                         page_block_size=61, extra_s_kv=200, extra_topk=64, extra_page_block_size=2,
                         topk_length="mixed", extra_topk_length="partial", sink="mixed", seed=i), "fail", 30.0)
             for i in range(60)]
    md = render_markdown(Report(cases=cases + [result(decode(1000), "pass", 0.1)]))
    assert len(md) <= MAX_CHARS + 2000  # the summary and tables after the details fit in the rest
    assert "left out to fit a PR comment" in md or md.count("<summary>1") >= 1


def test_junit_one_testcase_per_case(report):
    root = ET.fromstring(render_junit(report))
    cases = root.findall(".//testcase")
    assert sorted(c.get("name") for c in cases) == sorted(c.id for c in report.cases)
    assert root.get("tests") == "4" and root.get("failures") == "1" and root.get("skipped") == "1"
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == [PREFILL.id]
    body = failed[0].find("failure").text
    assert "max_logits" in body and "replay: mlaverify replay" in body and re.search(r"worst at q=\d h=\d", body)
    assert [c.get("name") for c in cases if c.find("skipped") is not None] == [MHA.id]
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert suites["dense_decode/v32"].get("failures") == "0"


def test_plots_have_no_overlapping_text_and_keep_clipped_points(report):
    r = sink_report()
    # ratios 0 (exact) and inf (misplaced NaN) stay on the plot, at the edges
    extra = [result(decode(40), "pass", 0.0), result(decode(41, h_q=128, topk=2048), "fail", math.inf)]
    figures = [ratio_scatter("sparse_decode", r.cases + extra), ratio_histograms("sparse_decode", r.cases + extra),
               ratio_scatter("dense_decode", report.cases), ratio_histograms("sparse_prefill", report.cases)]
    for fig in figures:
        assert fig is not None
        assert text_overlaps(fig) == []
    ys = [y for coll in figures[0].axes[0].collections for _, y in coll.get_offsets()]
    assert min(ys) == RATIO_LO and max(ys) == RATIO_HI
    assert ratio_scatter("mha_prefill", []) is None


def test_text_overlaps_detects_overlap():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    ax = fig.add_subplot()
    ax.set_title("a title long enough to run into the next one", fontsize=9)
    fig.suptitle("a suptitle long enough to sit on the axes title", y=0.9)
    assert text_overlaps(fig)


def test_progress_tty_bar_and_eta():
    clock = iter([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    stream = io.StringIO()
    p = Progress(total=4, stream=stream, is_tty=True, clock=lambda: next(clock))
    p.update("pass")
    p.update("fail")
    text = stream.getvalue()
    assert text.startswith("\r[") and "2/4 cases (fail 1 pass 1)" in text
    assert "ETA 0:02" in text  # 2 s for 2 cases, 2 left
    p.close()
    assert stream.getvalue().endswith("\n")


def test_progress_plain_lines_are_periodic():
    now = [0.0]
    stream = io.StringIO()
    p = Progress(total=100, stream=stream, is_tty=False, interval_s=10.0, clock=lambda: now[0])
    for _ in range(30):
        now[0] += 1.0
        p.update("pass")
    p.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4  # at 10 s, 20 s, 30 s, and the final line
    assert "\r" not in stream.getvalue() and lines[-1].startswith("30/100 cases (pass 30)")
    assert format_duration(3725) == "1:02:05"
