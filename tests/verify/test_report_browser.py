"""The HTML report of a failing run, opened in a real browser (headless Chromium, 1400 x 900).

Checks what a developer sees first: the verdict, the failure summary and the root-cause line naming
the planted bug's feature (the sink) lie within the first screen, the first failure's details are
linked from there, and no two texts of any plot overlap as the browser lays them out. Skipped when
Chromium is not installed (Debian: `apt-get install -y chromium`).
"""
from __future__ import annotations

import html as htmllib
import json
import os
import re
import shutil
import subprocess

import pytest

from mlaverify.verify import planted
from mlaverify.verify.cases import Case
from mlaverify.verify.report_html import render_html
from mlaverify.verify.runner import run_check

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# CI sets MLAVERIFY_REQUIRE_BROWSER=1 after installing Chromium, so that a failed install fails the run
# instead of skipping these tests.
_REQUIRED = os.environ.get("MLAVERIFY_REQUIRE_BROWSER") == "1"
pytestmark = pytest.mark.skipif(CHROMIUM is None and not _REQUIRED,
                                reason="chromium not installed (apt-get install -y chromium)")

SCREEN_W, SCREEN_H = 1400, 900
# Headless, no sandbox (root in CI containers), and nothing that reaches the network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--window-size={SCREEN_W},{SCREEN_H}"]

# Injected into a copy of the report (the report itself has no script): writes the layout into the DOM.
_PROBE = """<script>
addEventListener('load', () => {
  const box = id => { const e = document.getElementById(id) || document.querySelector(id);
                      if (!e) return null; const r = e.getBoundingClientRect();
                      return {top: r.top + scrollY, bottom: r.bottom + scrollY, text: e.textContent.slice(0, 300)}; };
  const overlaps = []; let texts = 0;
  document.querySelectorAll('svg').forEach((svg, k) => {
    const boxes = [...svg.querySelectorAll('text')].map(t => [t.textContent.trim(), t.getBoundingClientRect()])
                  .filter(([s, r]) => s && r.width > 0);
    texts += boxes.length;
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
      const [a, ra] = boxes[i], [b, rb] = boxes[j];
      const w = Math.min(ra.right, rb.right) - Math.max(ra.left, rb.left);
      const h = Math.min(ra.bottom, rb.bottom) - Math.max(ra.top, rb.top);
      if (w > 0.5 && h > 0.5) overlaps.push([k, a, b]);
    }
  });
  document.body.dataset.layout = JSON.stringify({
    verdict: box('.verdict'), failures: box('failures'), lead: box('#root-cause + p'), fail1: box('fail-1'),
    link: box("a[href='#fail-1']"), overlaps, texts, svgs: document.querySelectorAll('svg').length,
    width: document.documentElement.scrollWidth});
});
</script>"""


def _sink_cases() -> list[Case]:
    """Sparse decode with and without a sink (the planted bug ignores it), and dense decode (no sink)."""
    cases = []
    for i, sink in enumerate(["finite", "pos_inf", "mixed", "none", "neg_inf", "none"]):
        for model in ("v32", "model1"):
            cases.append(Case(op="sparse_decode", model=model, b=1, s_q=2, h_q=8 * (i + 1), s_kv=40 + 30 * i,
                              topk=16 * (i + 1), page_block_size=16, sink=sink, seed=100 + i))
    for i in range(4):
        cases.append(Case(op="dense_decode", model="v32", b=1, s_q=1, h_q=8, s_kv=24 * (i + 1), page_block_size=16,
                          seed=200 + i))
    return cases


@pytest.fixture()
def layout(tmp_path):
    assert CHROMIUM is not None, "MLAVERIFY_REQUIRE_BROWSER=1 but no chromium on PATH"
    report = run_check(planted.module_for("sink_ignored"), cases=_sink_cases(), device="cpu")
    assert report.verdict == "FAIL" and len(report.failures()) == 6
    d = tmp_path
    page = d / "report.html"
    page.write_text(render_html(report).replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={d / 'profile'}", "--virtual-time-budget=10000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'data-layout="([^"]*)"', out.stdout)
    assert m, f"chromium wrote no layout (exit {out.returncode}): {out.stderr[-2000:]}"
    return json.loads(htmllib.unescape(m.group(1)))


def test_failing_report_in_chromium(layout):
    """One test (the page is rendered once, not once per xdist worker)."""
    # the first screen: the verdict, the failure summary with the first failure's link, the root cause
    assert layout["verdict"]["text"] == "FAIL" and layout["verdict"]["bottom"] <= SCREEN_H
    assert layout["failures"]["top"] < SCREEN_H
    assert layout["link"]["bottom"] <= SCREEN_H
    lead = layout["lead"]
    assert lead["bottom"] <= SCREEN_H and "sink" in lead["text"] and "failed with" in lead["text"]
    assert layout["fail1"]["top"] > layout["lead"]["bottom"]         # details come after the summary
    # nothing wider than the window (the replay box and tables wrap)
    assert layout["width"] <= SCREEN_W
    # no two texts of a plot overlap as the browser lays them out
    assert layout["svgs"] >= 3 and layout["texts"] > 50
    assert layout["overlaps"] == []


def test_screenshot_renders(tmp_path):
    assert CHROMIUM is not None, "MLAVERIFY_REQUIRE_BROWSER=1 but no chromium on PATH"
    page = tmp_path / "r.html"
    page.write_text("<!DOCTYPE html><html><body><h1>mla-verify</h1></body></html>", encoding="utf-8")
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    page.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
