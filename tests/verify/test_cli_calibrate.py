"""`mlaverify calibrate` and `--tolerance-policy` on the command line."""
from __future__ import annotations

import json
import subprocess
import sys

from mlaverify.verify.cli import main


def test_calibrate_prints_ratios_and_suggests_k(tmp_path, capsys):
    path = tmp_path / "calib.json"
    code = main(["calibrate", "--impl", "mlaverify.reference", "--profile", "ci", "--ops", "sparse_prefill",
                 "--models", "v32", "--max-examples", "1", "--device", "cpu", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "suggested k" in out and "sparse_prefill" in out
    rows = json.loads(path.read_text())["rows"]
    out_rows = [r for r in rows if r["output"] == "out"]
    assert {r["metric"] for r in out_rows} == {"max abs", "p99 abs", "cos diff"}
    # the reference rounds once, the emulation also rounds P: its error is never larger than the emulation's
    assert all(r["n"] >= 3 and 0 < r["max"] <= 1.0 + 1e-9 for r in out_rows), out_rows
    assert all(r["suggested_k"] >= 1.25 * r["max"] for r in rows)
    assert not [r for r in rows if r["output"] == "lse"]  # the emulation's lse is exact: no ratio, the floor judges


def test_calibrate_usage_errors_exit_2(capsys):
    assert main(["calibrate", "--impl", "mlaverify.reference", "--max-examples", "0"]) == 2
    assert main(["calibrate"]) == 2
    assert main(["check", "--impl", "mlaverify.reference", "--tolerance-policy", "loose"]) == 2


def test_calibrate_module_imports_without_torch():
    code = "import sys, mlaverify.verify.cli_calibrate, mlaverify.verify.budgets; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
