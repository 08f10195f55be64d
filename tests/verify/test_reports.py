"""Markdown, HTML and JUnit reports; progress display; the SVG plots."""
from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET

import pytest

from mlaverify.verify import planted
from mlaverify.verify.cases import Case
from mlaverify.verify.progress import Progress, format_duration
from mlaverify.verify.report_common import merge_reports
from mlaverify.verify.report_html import render_html
from mlaverify.verify.report_junit import render_junit
from mlaverify.verify.report_markdown import render_markdown
from mlaverify.verify.report_svg import histogram, pass_matrix, scatter
from mlaverify.verify.runner import run_check

PREFILL = Case(op="sparse_prefill", model="v32", s_q=3, h_q=8, s_kv=40, topk=16, sink="finite", seed=5)
DENSE_A = Case(op="dense_decode", model="model1", b=2, s_q=1, h_q=4, s_kv=24, page_block_size=16, seed=6)
DENSE_B = Case(op="dense_decode", model="v32", b=1, s_q=2, h_q=8, h_kv=2, s_kv=40, page_block_size=8, causal=True,
               seed=7)
MHA = Case(op="mha_prefill", model="d128", b=1, s_q=4, s_kv=4, h_q=2, seed=8)


@pytest.fixture(scope="module")
def report():
    """pass (dense x2), fail (prefill: max_logits and lse in base 2), skip (mha not claimed)."""
    module = planted.module_for("prefill_lse_base2")
    return run_check(module, cases=[PREFILL, DENSE_A, DENSE_B, MHA], device="cpu",
                     capabilities={"ops": ["sparse_prefill", "dense_decode"]})


def test_fixture_has_every_status(report):
    assert [c.status for c in report.cases] == ["fail", "pass", "pass", "skip"]


def test_markdown(report):
    md = render_markdown(report, replay_files={PREFILL.id: "out/replays/x.json"})
    assert md.startswith("## mla-verify: FAIL")
    assert "| sparse_prefill/v32 | 0 | 1 | 0 | 0 | FAIL |" in md
    assert "| dense_decode/v32 | 1 | 0 | 0 | 0 | PASS |" in md
    assert "### Feature pass matrix" in md and "| `gqa` |" in md
    never = md.split("Features whose every case failed: ")[1].split("\n")[0]
    assert "`sink:finite`" in never and "`gqa`" not in never  # the prefill case failed; the GQA cases passed
    # the failure: its id, the discrepancy table naming the failing outputs, the replay command
    assert f"**`{PREFILL.id}`** — fail" in md
    assert re.search(r"\| max_logits \| FAIL \| [^|]+ \| \d+/24 \|", md)
    assert "mlaverify replay out/replays/x.json --impl mlaverify.verify.planted.prefill_lse_base2" in md
    assert "### Skipped" in md and "op mha_prefill not claimed" in md


def test_markdown_of_passing_report_has_no_failure_section(report):
    passing = merge_reports([type(report)(cases=report.cases[1:3], implementation=report.implementation,
                                          settings=report.settings)])
    md = render_markdown(passing)
    assert md.startswith("## mla-verify: PASS") and "### Failures" not in md


def test_html_is_self_contained_with_svg_plots(report):
    html = render_html(report)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    # no network and nothing executable: no scripts, stylesheets, images or frames from anywhere
    for forbidden in ("<script", "<link", "<img", "<iframe", "src=", "@import", "https://"):
        assert forbidden not in html
    urls = set(re.findall(r"https?://[^\s\"'<>]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}
    svgs = re.findall(r"<svg.*?</svg>", html, re.S)
    for s in svgs:
        ET.fromstring(s)  # every plot is well-formed XML
    titles = re.findall(r"<title>([^<]*)</title>", "".join(svgs))
    assert "cases passed / run, per feature and op/model" in titles                # the feature pass matrix
    assert "sparse_prefill: out max ulp error" in titles                           # error distribution ...
    assert "dense_decode: lse max ulp error" in titles                             # ... per op and output
    assert any(t.startswith("dense_decode: out max ulp vs h_q") for t in titles)   # error against h_q
    assert any(t.startswith("dense_decode: out max ulp vs s_kv") for t in titles)  # ... and sequence length
    assert "Failures (1)" in html and PREFILL.id in html


def test_junit_one_testcase_per_case(report):
    root = ET.fromstring(render_junit(report))
    cases = root.findall(".//testcase")
    assert sorted(c.get("name") for c in cases) == sorted(c.id for c in report.cases)
    assert root.get("tests") == "4" and root.get("failures") == "1" and root.get("skipped") == "1"
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == [PREFILL.id]
    body = failed[0].find("failure").text
    assert "max_logits" in body and "replay: mlaverify replay" in body
    assert [c.get("name") for c in cases if c.find("skipped") is not None] == [MHA.id]
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert suites["dense_decode/v32"].get("failures") == "0"


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


def test_svg_helpers_validate_and_render():
    with pytest.raises(ValueError, match="labels"):
        histogram("t", ["a", "b"], [1], "x")
    ET.fromstring(histogram("h", ["0", "≤1"], [3, 0], "ulp"))
    ET.fromstring(scatter("s", [(1.0, 0.0, True), (64.0, 3.0, False)], "topk", "ulp"))
    ET.fromstring(scatter("empty", [], "topk", "ulp"))
    grid = pass_matrix("m", ["gqa"], ["dense_decode/v32"], {("gqa", "dense_decode/v32"): {"pass": 1, "fail": 1,
                                                                                          "skip": 0}})
    assert "#d64541" in grid and "1/2" in grid  # any failure paints the cell red
