"""The self-test: every planted bug is killed (by the right check), the clean reference passes."""
from __future__ import annotations

import importlib

import pytest

from mlaverify.verify import planted, selftest
from mlaverify.verify.cli import main

# For bugs that only a particular comparison or behavioural check can see: what must be in the reason.
EXPECTED_SIGNAL = {
    "input_mutated": "inputs_unmodified",
    "nondeterministic": "repeat_bitwise",
    "batch_position_dependent": "batch_permutation",
    "dense_fp16_out_as_bf16": "expected dtype torch.float16",
    "sink_applied_to_lse": "lse mismatch",
    "lse_base2": "lse mismatch",
    "lse_not_transposed": "lse mismatch",
    "prefill_lse_base2": "max_logits mismatch",
    "prefill_max_logits_unscaled": "max_logits mismatch",
    "mha_dk_unscaled": "dk mismatch",
    "mha_dkdv_not_summed": "dk mismatch",
}


@pytest.fixture(scope="module")
def result():
    return selftest.run_selftest(device="cpu")


def test_every_planted_bug_is_killed_and_clean_passes(result):
    survivors = [b.name for b in result.survivors]
    assert not survivors, f"planted bugs survived: {survivors}\n{result.format()}"
    assert not result.clean_failures and result.clean_cases == len(selftest.selftest_cases("explicit"))
    assert result.drift_caught, result.drift_verdict  # and the gate catches a regression inside tolerance
    assert result.passed


@pytest.mark.parametrize("name", sorted(EXPECTED_SIGNAL))
def test_bug_is_killed_by_the_right_check(result, name):
    outcome = next(b for b in result.bugs if b.name == name)
    assert EXPECTED_SIGNAL[name] in outcome.reason, outcome.reason


def test_bug_catalogue_spans_ops_and_models():
    bugs = planted.BUGS
    assert len(bugs) >= 15 and len({b.name for b in bugs}) == len(bugs)
    assert {op for b in bugs for op in b.ops} == {"sparse_decode", "sparse_prefill", "dense_decode", "mha_prefill"}
    assert {"v32", "model1"} <= {m for b in bugs for m in b.models}
    assert any(b.models == ("v32",) for b in bugs) and any(b.models == ("model1",) for b in bugs)


@pytest.mark.parametrize("name", ["clean", "sink_ignored", "mha_causal_top_left"])
def test_planted_modules_import_by_name(name):
    module = importlib.import_module(f"mlaverify.verify.planted.{name}")
    for fn in ("get_mla_metadata", "flash_mla_with_kvcache", "flash_mla_sparse_fwd", "flash_attn_varlen_func"):
        assert callable(getattr(module, fn)), fn


def test_kill_matrix_lists_every_bug(result):
    matrix = result.kill_matrix()
    for bug in planted.BUGS:
        assert bug.name in matrix
    assert "(clean reference)" in matrix and "SURVIVED" not in matrix


def test_a_surviving_bug_fails_the_selftest(monkeypatch, capsys):
    real = planted.module_for
    # pretend "sink_ignored" was implemented correctly: it then survives, and the selftest must say so
    monkeypatch.setattr(planted, "module_for", lambda name: real("clean") if name == "sink_ignored" else real(name))
    assert main(["selftest", "--bugs", "sink_ignored", "lse_base2"]) == 1
    out = capsys.readouterr().out
    assert "SURVIVED" in out and "selftest: FAIL: 1/2 planted bugs killed" in out


def test_unknown_bug_name_is_a_usage_error(capsys):
    assert main(["selftest", "--bugs", "no_such_bug"]) == 2
    assert "planted bug" in capsys.readouterr().err
