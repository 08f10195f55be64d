"""The calibrated tolerance policy: budgets from the numerics emulation, policies, report fields, overrides."""
from __future__ import annotations

import math

import pytest
import torch

from mlaverify.verify import budgets
from mlaverify.verify.cases import Case
from mlaverify.verify.compare import compare_tensor
from mlaverify.verify.implementations import load_implementation
from mlaverify.verify.results import TensorMetrics, Tolerance
from mlaverify.verify.runner import run_case
from mlaverify.verify.tolerances import load_tolerances

TOL = Tolerance(1e-3, 2.01 / 128, 5e-6)  # defaults: k 2, floor_rel 2^-8, cos_floor 1e-6
PEAKED = Case(op="sparse_prefill", model="v32", s_q=3, h_q=8, s_kv=200, topk=128, sink="finite", dist="peaked",
              seed=7)


def _judge(actual, emulated, reference, dist="peaked", policy="both"):
    m = compare_tensor("out", actual, reference, TOL)
    return budgets.judge(m, actual, emulated, reference, TOL, dist, policy)


def test_policies_that_apply_per_distribution():
    assert budgets.policies_for("flashmla", "both") == ("flashmla", "calibrated")
    assert budgets.policies_for("peaked", "both") == ("calibrated",)
    assert budgets.policies_for("peaked", "flashmla") == ("flashmla",)
    assert budgets.policies_for("flashmla", "calibrated") == ("calibrated",)
    with pytest.raises(ValueError, match="tolerance_policy: expected one of"):
        budgets.policies_for("flashmla", "loose")


def test_budget_is_k_times_the_emulation_error_above_the_floor():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(4096, generator=g, dtype=torch.float64)
    emu = ref + 1e-2 * torch.randn(4096, generator=g, dtype=torch.float64)  # emulation error >> the floor
    within = ref + 1.5 * (emu - ref)  # 1.5x the emulation's error everywhere: inside k = 2
    beyond = ref + 2.5 * (emu - ref)
    m = _judge(within, emu, ref)
    assert m.passed and m.calibrated_passed and m.policy == "calibrated"
    assert m.budget_max_abs == pytest.approx(2 * m.emu_max_abs)
    assert m.emu_ratio == pytest.approx(1.5) and m.budget_ratio == pytest.approx(0.75)
    assert m.budget_cos == pytest.approx(4 * m.emu_cos_diff)  # the cosine difference is quadratic in the error
    bad = _judge(beyond, emu, ref)
    assert not bad.passed and "exceeds its calibrated budget" in bad.message and bad.budget_ratio > 1


def test_floor_holds_when_the_emulation_is_exact():
    ref = torch.linspace(-1.0, 1.0, 1000, dtype=torch.float64)
    small = ref + 2.0**-11  # below floor_rel x max|ref| = 2^-8 (cos diff 3.6e-7: below cos_floor too)
    m = _judge(small, ref.clone(), ref)
    assert m.passed and m.emu_max_abs == 0.0 and m.budget_max_abs == pytest.approx(2.0**-8)
    assert m.emu_ratio is None  # no ratio to an exact emulation
    assert not _judge(ref + 2.0**-7, ref.clone(), ref).passed


def test_misplaced_nan_fails_the_calibrated_policy():
    ref = torch.ones(100, dtype=torch.float64)
    actual = ref.clone()
    actual[3] = float("nan")
    m = _judge(actual, ref.clone(), ref)
    assert not m.passed and m.budget_ratio == math.inf and "NaN/inf" in m.message


def test_both_judges_flat_data_by_the_fixed_table_too():
    ref = torch.full((100,), 0.5, dtype=torch.float64)
    emu = ref + 0.1  # a huge emulation error makes the budget loose ...
    actual = ref + 0.05  # ... but the fixed table (atol 1e-3, rtol 1.6%) still judges flashmla data
    assert _judge(actual, emu, ref, dist="peaked").passed
    flat = _judge(actual, emu, ref, dist="flashmla")
    assert not flat.passed and flat.flashmla_passed is False and flat.calibrated_passed is True
    assert flat.policy == "flashmla+calibrated" and "[fixed table]" in flat.message


def test_old_metrics_and_tolerances_load_with_defaults():
    old = {"atol": 1e-3, "rtol": 0.01, "cos": None}
    assert Tolerance.from_dict(old) == Tolerance(1e-3, 0.01)
    m = TensorMetrics("out", True, "ok", Tolerance(1e-3, 0.01))
    d = m.to_dict()
    for key in ("policy", "budget_ratio", "emu_max_abs", "calibrated_passed"):
        d.pop(key)
    assert TensorMetrics.from_dict(d).policy == "flashmla"
    assert TensorMetrics.from_dict(m.to_dict()) == m


def test_k_and_floor_are_overridable_like_atol():
    table = load_tolerances(use_pyproject=False,
                            overrides={"sparse_prefill.out.k": 3, "sparse_prefill.lse.floor_rel": 0})
    assert table["sparse_prefill"]["out"].k == 3.0 and table["sparse_prefill"]["lse"].floor_rel == 0.0
    assert load_tolerances(use_pyproject=False, overrides={"sparse_prefill.out.cos_floor": None}
                           )["sparse_prefill"]["out"].cos_floor is None
    with pytest.raises(ValueError, match="k: expected a finite number >= 0"):
        load_tolerances(use_pyproject=False, overrides={"sparse_prefill.out.k": -1})


def test_a_run_records_policy_emulation_error_kernel_error_and_ratio():
    impl = load_implementation("mlaverify.reference")
    r = run_case(impl, PEAKED, device="cpu", checks=())
    assert r.status == "pass"
    out = r.outputs["out"]
    assert out.policy == "calibrated" and out.calibrated_passed
    assert out.emu_max_abs > 0 and out.max_abs <= out.budget_max_abs and out.budget_ratio <= 1.0
    assert r.outputs["lse"].emu_max_abs == 0.0  # the emulation's lse is the reference's own float32 path
    flat = run_case(impl, PEAKED.replace(dist="flashmla"), device="cpu", checks=(), policy="flashmla")
    assert flat.outputs["out"].policy == "flashmla" and flat.outputs["out"].emu_max_abs is None


def test_the_emulation_rounds_p_and_passes_its_own_budget():
    from mlaverify.reference import numerics_emulation

    impl = load_implementation(numerics_emulation)
    r = run_case(impl, PEAKED, device="cpu", checks=())
    out = r.outputs["out"]
    assert r.status == "pass" and out.max_abs == pytest.approx(out.emu_max_abs) and out.max_abs > 0


def test_suggested_k_leaves_a_margin_over_the_data():
    from mlaverify.verify.cli_calibrate import suggest_k

    assert suggest_k([0.3, 0.5]) == 1.0
    assert suggest_k([1.0]) == 1.5
    assert suggest_k([1.7]) == 3.0
    assert suggest_k([20.0]) == 32.0


def test_the_fixed_table_reports_the_emulation_on_outlier_channels_the_default_policy_does_not():
    from mlaverify.reference import numerics_emulation

    case = Case(op="sparse_prefill", model="v32", seed=2, s_q=4, h_q=128, s_kv=300, topk=64, topk_length="partial",
                sink="finite", invalid="rows", nan_fill="unused", softmax_scale=0.1, dist="outlier_channels")
    impl = load_implementation(numerics_emulation)
    fixed = run_case(impl, case, device="cpu", checks=(), policy="flashmla")
    assert fixed.status == "fail" and fixed.outputs["out"].elem_ratio > 2.0  # measured 3.17x
    default = run_case(impl, case, device="cpu", checks=())
    assert default.status == "pass" and default.outputs["out"].flashmla_passed is False
