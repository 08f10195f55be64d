"""`mlaverify` command line: exit codes 0/1/2, files written, shards and merge, report rendering."""
from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET

import pytest

from mlaverify.verify.cli import main
from mlaverify.verify.results import SCHEMA_VERSION, Report

CLEAN = "mlaverify.verify.planted.clean"
SMALL = ["--ops", "sparse_prefill", "--models", "v32", "--quiet"]

_WRONG_DTYPE = textwrap.dedent('''
    """A port whose sparse prefill returns out in float32 instead of bfloat16."""
    import mlaverify.reference as _ref

    def flash_mla_sparse_fwd(q, kv, indices, sm_scale, d_v=512, attn_sink=None, topk_length=None):
        out, max_logits, lse = _ref.flash_mla_sparse_fwd(q, kv, indices, sm_scale, d_v, attn_sink, topk_length)
        return out.float(), max_logits, lse
''')


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a command writes by default lands here, never in the repository


def _ids(path) -> set[str]:
    return {c["id"] for c in json.loads(path.read_text())["cases"]}


def test_check_clean_passes_and_writes_every_format(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["check", "--impl", CLEAN, *SMALL, "--max-examples", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sparse_prefill/v32" in printed and "PASS:" in printed
    for name in ("report.json", "report.md", "report.html", "junit.xml"):
        assert (out / name).is_file(), name
    report = Report.from_json((out / "report.json").read_text())
    assert report.schema_version == SCHEMA_VERSION and report.passed and report.implementation["spec"] == CLEAN
    assert {c.case.op for c in report.cases} == {"sparse_prefill"}
    ET.parse(out / "junit.xml")
    assert not (out / "replays").exists()
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files behind


def test_check_failing_impl_file_exits_1_with_replay(tmp_path, capsys):
    impl = tmp_path / "wrong_dtype.py"
    impl.write_text(_WRONG_DTYPE)
    out = tmp_path / "out"
    assert main(["check", "--impl", str(impl), *SMALL, "--max-examples", "1", "--out", str(out), "--no-shrink"]) == 1
    printed = capsys.readouterr().out
    assert "FAIL sparse_prefill/v32/" in printed
    assert "out: expected dtype torch.bfloat16, got torch.float32" in printed
    report = Report.from_json((out / "report.json").read_text())
    assert report.cases and all(c.status == "fail" for c in report.cases)
    replays = sorted((out / "replays").glob("*.json"))
    assert len(replays) == len(report.cases)  # one replay file per failing case
    assert f"replay: mlaverify replay {replays[0]} --impl {impl}" in printed


def test_check_json_without_out(tmp_path):
    target = tmp_path / "r.json"
    assert main(["check", "--impl", CLEAN, *SMALL, "--max-examples", "1", "--json", str(target)]) == 0
    assert Report.from_json(target.read_text()).passed


def test_check_runs_a_named_preset_and_the_gate_reruns_it(tmp_path, capsys):
    target, report_path = tmp_path / "baseline.json", tmp_path / "r.json"
    argv = ["--impl", CLEAN, "--preset", "prefill-v32", "--preset-size", "cpu", "--quiet"]
    assert main(["check", *argv, "--json", str(report_path)]) == 0
    report = Report.from_json(report_path.read_text())
    assert [c.case.op for c in report.cases] == ["sparse_prefill"]
    assert (report.cases[0].case.s_q, report.cases[0].case.h_q, report.cases[0].case.topk) == (4, 128, 256)
    assert report.settings["presets"] == ["prefill-v32"] and report.settings["preset_size"] == "cpu"
    assert main(["baseline", *argv, "-o", str(target)]) == 0
    assert main(["gate", "--baseline", str(target), "--impl", CLEAN, "--quiet", "--out", str(tmp_path / "g")]) == 0
    assert "1 cases compared" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["check", "--impl", "no_such_module_for_mlaverify"], "cannot import"),
    (["check"], "--impl"),
    (["check", "--impl", CLEAN, "--shard", "3/2"], "--shard"),
    (["check", "--impl", CLEAN, "--shard", "x"], "--shard"),
    (["check", "--impl", CLEAN, "--tolerance", "sparse_decode.out.atol"], "tolerance"),
    (["check", "--impl", CLEAN, "--tolerance", "sparse_decode.nope.atol=1"], "unknown output"),
    (["check", "--impl", CLEAN, "--ops", "warp_decode"], "ops"),
    (["check", "--impl", CLEAN, "--profile", "fast"], "invalid choice"),
    (["check", "--impl", CLEAN, "--preset", "v33"], "preset: expected one of"),
    (["frobnicate"], "invalid choice"),
    (["report", "missing.json", "--format", "md"], "cannot read"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlaverify: error:") and message in err


def test_impl_that_fails_to_import_exits_2(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no GPU here')\n")
    assert main(["check", "--impl", str(broken)]) == 2
    assert "RuntimeError: no GPU here" in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "check" in capsys.readouterr().out


def test_shards_partition_and_merge(tmp_path, capsys):
    args = ["check", "--impl", CLEAN, *SMALL, "--max-examples", "3"]
    full, a, b, merged = (tmp_path / n for n in ("full.json", "a.json", "b.json", "merged.json"))
    assert main([*args, "--json", str(full)]) == 0
    assert main([*args, "--shard", "1/2", "--json", str(a)]) == 0
    assert main([*args, "--shard", "2/2", "--json", str(b)]) == 0
    assert _ids(a).isdisjoint(_ids(b)) and _ids(a) | _ids(b) == _ids(full)
    assert main(["merge", str(a), str(b), "-o", str(merged)]) == 0
    assert _ids(merged) == _ids(full)
    data = json.loads(merged.read_text())
    assert data["settings"]["merged_shards"] == ["1/2", "2/2"]
    assert data["summary"]["total"] == len(_ids(full))
    # merging one shard twice is refused
    assert main(["merge", str(a), str(a), "-o", str(tmp_path / "twice.json")]) == 2
    # the merged report renders like any other
    md = tmp_path / "merged.md"
    assert main(["report", str(a), str(b), "--format", "md", "-o", str(md)]) == 0
    assert "Merged from shards 1/2, 2/2" in md.read_text()


def test_tolerance_override_reaches_the_report(tmp_path):
    target = tmp_path / "r.json"
    assert main(["check", "--impl", CLEAN, *SMALL, "--max-examples", "1", "--json", str(target),
                 "--tolerance", "sparse_prefill.out.atol=0.5"]) == 0
    settings = json.loads(target.read_text())["settings"]
    assert settings["tolerances"]["sparse_prefill"]["out"]["atol"] == 0.5


def test_report_formats_from_json(tmp_path, capsys):
    target = tmp_path / "r.json"
    assert main(["check", "--impl", CLEAN, *SMALL, "--max-examples", "1", "--json", str(target)]) == 0
    capsys.readouterr()
    assert main(["report", str(target), "--format", "md"]) == 0
    assert capsys.readouterr().out.startswith("## ✅ mla-verify: PASS")
    html = tmp_path / "r.html"
    assert main(["report", str(target), "--format", "html", "-o", str(html)]) == 0
    assert "<svg" in html.read_text()
    junit = tmp_path / "r.xml"
    assert main(["report", str(target), "--format", "junit", "-o", str(junit)]) == 0
    assert ET.parse(junit).getroot().tag == "testsuites"


def test_baseline_then_gate_with_impl(tmp_path, capsys):
    base = tmp_path / "base.json"
    assert main(["baseline", "--impl", CLEAN, *SMALL, "--max-examples", "1", "-o", str(base)]) == 0
    # the gate re-runs with the baseline's settings (same ops, models, profile, seed): same cases, passes
    assert main(["gate", "--baseline", str(base), "--impl", CLEAN, "--quiet"]) == 0
    assert "gate: PASS" in capsys.readouterr().out
    written = Report.from_json((tmp_path / "mlaverify-report.json").read_text())  # the run's report, gate inside
    assert written.gate["verdict"] == "PASS" and written.gate["compared"] == written.summary["total"]
    # a bug the cases expose fails the gate, and the gate's own reports say FAIL (not the run's "0 failed")
    bug = "mlaverify.verify.planted.prefill_lse_base2"
    assert main(["gate", "--baseline", str(base), "--impl", bug, "--quiet", "--no-shrink",
                 "--out", str(tmp_path / "g"), "--allow-impl-change"]) == 1
    assert "gate: FAIL" in capsys.readouterr().out
    gated = Report.from_json((tmp_path / "g" / "report.json").read_text())
    assert gated.verdict == "FAIL" and gated.gate["failing"]
    assert "FAIL" in (tmp_path / "g" / "report.md").read_text().splitlines()[0]


def test_baseline_refuses_failing_run(tmp_path, capsys):
    base = tmp_path / "base.json"
    assert main(["baseline", "--impl", "mlaverify.verify.planted.prefill_lse_base2", *SMALL, "--max-examples", "1",
                 "-o", str(base)]) == 1
    assert not base.exists() and "not written" in capsys.readouterr().out
