"""`mlaverify accuracy` end to end at tiny sizes: files written, report contents, exit codes, activations."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mlaverify.verify.accuracy import AccuracySettings, OpShape, Row, run_accuracy
from mlaverify.verify.accuracy_formats import parse_formats
from mlaverify.verify.accuracy_report import ACCURACY_SCHEMA_VERSION, AccuracyReport, conclusions, render_html, \
    render_markdown
from mlaverify.verify.cli import main

TINY = ["--h-q", "2", "--rows", "2", "--s-kv", "256", "--topk", "32", "--quiet"]


def _run(tmp_path, *extra) -> tuple[int, dict | None]:
    out = tmp_path / "acc"
    code = main(["accuracy", *TINY, "--out", str(out), *extra])
    report = json.loads((out / "accuracy.json").read_text()) if (out / "accuracy.json").exists() else None
    return code, report


def test_end_to_end_writes_the_three_reports(tmp_path, capsys):
    code, report = _run(tmp_path, "--models", "v32", "--distributions", "flashmla,outlier_channels",
                        "--formats", "v32,model1,model1-f32,bf16", "--no-sweeps")
    assert code == 0
    assert report["schema"] == "mla-verify-accuracy" and report["schema_version"] == ACCURACY_SCHEMA_VERSION
    assert len(report["rows"]) == 2 * 2 * 4  # ops x distributions x formats
    assert {r["format"] for r in report["rows"]} == {"v32", "model1", "model1-f32", "bf16"}
    assert all(r["metrics"]["rel_fro"] == 0 for r in report["rows"] if r["format"] == "bf16")
    md = (tmp_path / "acc" / "accuracy.md").read_text()
    assert "## Conclusions" in md and "| distribution | v32 | model1 | model1-f32 | bf16 |" in md
    html = (tmp_path / "acc" / "accuracy.html").read_text()
    assert html.startswith("<!doctype html>") and "<script" not in html
    stdout = capsys.readouterr().out
    assert "bf16 has zero quantization error" in stdout and "wrote" in stdout
    assert report["conclusions"] in stdout


def test_sweeps_are_plotted_inline(tmp_path):
    code, report = _run(tmp_path, "--models", "model1", "--distributions", "outlier_channels", "--formats",
                        "model1,bf16", "--ops", "sparse_decode")
    assert code == 0
    sweeps = {r["sweep"] for r in report["rows"]}
    assert sweeps == {None, "outlier_ratio", "topk", "s_kv"}
    html = (tmp_path / "acc" / "accuracy.html").read_text()
    assert html.count("<svg") == 3 and "<?xml" not in html  # one plot per sweep, inline
    assert "vs outlier channel magnitude" in (tmp_path / "acc" / "accuracy.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--formats", "v64"], "--formats: expected names"),
    (["--distributions", "spiky"], "--distributions: expected names"),
    (["--models", "v4"], "--models: expected names"),
    (["--ops", "dense_decode"], "--ops: expected names"),
    (["--preset", "v33"], "--preset: expected one of"),
    (["--s-kv", "100"], "--s-kv: expected a multiple of the page block 64"),
    (["--rows", "0"], "--rows: expected a positive integer"),
    (["--activations", "missing.safetensors"], "no such file"),
    (["--impl", "no_such_module_xyz"], "no_such_module_xyz"),
])
def test_usage_errors_exit_2(tmp_path, capsys, args, message):
    code, report = _run(tmp_path, "--no-sweeps", *args)
    assert code == 2 and report is None
    assert message in capsys.readouterr().err


def test_missing_out_is_a_usage_error(capsys):
    assert main(["accuracy", *TINY]) == 2
    assert "--out" in capsys.readouterr().err


def _keys(n: int = 200, d: int = 512) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    k = torch.randn(n, d, generator=g) * 0.1
    k[:, 7] *= 30.0  # an outlier channel, as real caches have
    return k


def test_activations_from_safetensors_with_queries(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "acts.safetensors"
    g = torch.Generator().manual_seed(1)
    save_file({"keys": _keys().to(torch.bfloat16), "queries": torch.randn(3, 2, 512, generator=g)}, str(path))
    code, report = _run(tmp_path, "--activations", str(path), "--distributions", "flashmla", "--models", "v32",
                        "--no-sweeps", "--formats", "model1,bf16")
    assert code == 0
    file_rows = [r for r in report["rows"] if r["distribution"] == "file:acts.safetensors"]
    assert {(r["model"], r["format"]) for r in file_rows} == {("model1", "model1"), ("model1", "bf16")}
    assert all(r["metrics"]["rel_fro"] > 0 for r in file_rows if r["format"] == "model1")
    assert report["distributions"]["file:acts.safetensors"].startswith("real activations from")


def test_activations_from_pt_with_indices(tmp_path):
    path = tmp_path / "acts.pt"
    indices = torch.randint(0, 200, (4, 16))
    indices[0, :3] = -1
    torch.save({"k": _keys(d=576), "indices": indices}, path)
    code, report = _run(tmp_path, "--activations", str(path), "--distributions", "flashmla", "--models", "model1",
                        "--no-sweeps", "--formats", "v32,bf16")
    assert code == 0
    assert {r["format"] for r in report["rows"] if r["distribution"] == "file:acts.pt"} == {"v32", "bf16"}


class NotATensor:  # torch.load(weights_only=True) refuses to unpickle arbitrary classes
    pass


@pytest.mark.parametrize("content, message", [
    ({"values": torch.zeros(4, 512)}, "expected a tensor named one of"),
    ({"keys": torch.zeros(4, 300)}, "expected d_qk 576 (V32) or 512 (MODEL1)"),
    ({"keys": torch.full((4, 512), float("nan"))}, "expected finite values"),
    ({"keys": torch.zeros(4, 512), "indices": torch.full((2, 3), 9)}, "expected -1 or key rows in [0, 4)"),
    ({"keys": torch.zeros(4, 512), "object": NotATensor()}, "not loadable with weights_only=True"),
])
def test_bad_activation_files_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    code, _ = _run(tmp_path, "--activations", str(path), "--no-sweeps", "--distributions", "flashmla")
    assert code == 2
    assert message in capsys.readouterr().err


def test_impl_failure_exits_1_and_the_report_says_where(tmp_path):
    impl = tmp_path / "exploding.py"
    impl.write_text("def flash_mla_sparse_fwd(*a, **k):\n    raise RuntimeError('boom')\n")
    code, report = _run(tmp_path, "--impl", str(impl), "--ops", "sparse_prefill", "--models", "model1",
                        "--distributions", "flashmla", "--formats", "bf16", "--no-sweeps")
    assert code == 1
    assert report["rows"][0]["impl_error"] == "RuntimeError: boom"
    assert "failed on 1 rows" in report["conclusions"]


def test_impl_reference_end_to_end(tmp_path):
    code, report = _run(tmp_path, "--impl", "mlaverify.reference", "--models", "v32", "--distributions", "peaked",
                        "--formats", "v32,bf16", "--no-sweeps")
    assert code == 0
    v32 = [r for r in report["rows"] if r["format"] == "v32"]
    assert all(r["impl"]["rel_fro"] > 0 for r in v32)
    assert "the quantization error dominates" in report["conclusions"]
    assert "impl rel Frobenius" in (tmp_path / "acc" / "accuracy.md").read_text()


def test_conclusions_are_computed_from_the_numbers():
    def row(fmt, dist, rel):
        return Row("sparse_decode", "v32", dist, fmt, None, None, "p", {"rel_fro": rel})
    rows = [row("model1", "a", 0.04), row("model1-f32", "a", 0.01), row("model1", "b", 0.02),
            row("model1-f32", "b", 0.01), row("bf16", "a", 0.0), row("bf16", "b", 0.0)]
    text = conclusions(AccuracyReport({}, [], {}, rows))
    assert "bf16 has zero quantization error" in text
    assert "a model1-f32 0.01 vs model1 0.04 (4x); b model1-f32 0.01 vs model1 0.02 (2x)" in text
    assert "(model1 / model1-f32 error): median 3.00x over 2 rows, largest 4.00x on a" in text
    rows[2].metrics["rel_fro"] = 0.012  # b: 1.2x apart, within the seed-to-seed spread: not called a difference
    assert "Within 1.5x of each other, the seed-to-seed spread at the default sizes: b (0.01-0.012)" in \
        conclusions(AccuracyReport({}, [], {}, rows))
    rows[-1].metrics["rel_fro"] = 1e-3
    assert "NOT zero" in conclusions(AccuracyReport({}, [], {}, rows))


def test_report_renders_from_a_run():
    small = OpShape(h_q=2, s_kv=256, topk=32, rows=2)
    settings = AccuracySettings(decode=small, prefill=small, outlier_sweep=(1.0, 30.0), topk_sweep=(16, 64),
                                seq_sweep=(256, 512))
    rows = run_accuracy(settings, parse_formats("model1,model1-f32,bf16"), ["peaked"], ["model1"], ["sparse_decode"])
    report = AccuracyReport(settings.to_dict(), [{"name": n, "description": n} for n in ("model1", "model1-f32",
                                                                                        "bf16")], {"peaked": "r"}, rows)
    md, html = render_markdown(report), render_html(report)
    assert "| outlier_ratio | model1 | model1-f32 |" in md and "| 30 |" in md
    assert html.count("<svg") == 3 and "top-k mass mean" in html
    assert json.loads(report.to_json())["rows"][0]["format"] == "model1"


def test_importing_the_command_does_not_import_torch():
    code = "import sys, mlaverify.verify.cli_accuracy; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
