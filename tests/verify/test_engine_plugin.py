"""The pytest plugin (entry point `mlaverify`): one test per case, only with --mla-impl."""
from __future__ import annotations

import json
import os
import subprocess
import sys

BROKEN = '''
import mlaverify.reference as ref

def flash_mla_sparse_fwd(q, kv, indices, sm_scale, d_v=512, attn_sink=None, topk_length=None):
    return ref.flash_mla_sparse_fwd(q, kv, indices, sm_scale, d_v, None, topk_length)  # ignores the sink
'''


def _pytest(cwd, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def test_plugin_is_inert_without_the_option(tmp_path):
    result = _pytest(tmp_path)
    assert result.returncode == 5, result.stdout  # "no tests collected"
    assert "--mla-impl=MODULE" in _pytest(tmp_path, "--help").stdout


def test_plugin_runs_cases_and_reports_failures(tmp_path):
    (tmp_path / "broken_kernels.py").write_text(BROKEN)
    result = _pytest(tmp_path, "--mla-impl=broken_kernels.py", "--mla-ops=sparse_prefill", "--mla-models=v32",
                     "--mla-max-examples=2", "-rs", "--mla-replays=replays")
    assert result.returncode == 1, result.stdout[-3000:]
    assert "mlaverify: sparse_prefill/v32/" in result.stdout
    assert "out mismatch" in result.stdout and "failed" in result.stdout
    replays = sorted((tmp_path / "replays").glob("*.json"))
    assert replays and "replay: " in result.stdout
    data = json.loads(replays[0].read_text())
    assert data["status"] == "fail" and data["case"]["sink"] != "none" and data["implementation"] == "broken_kernels.py"
    usage = _pytest(tmp_path, "--mla-impl=no_such_module_xyz")
    assert usage.returncode == 4 and "cannot import" in usage.stderr + usage.stdout
