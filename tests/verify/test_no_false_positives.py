"""The engine reports no bug where there is none, and still reports the bugs that are there.

`flashmla_numerics` (= `mlaverify.reference.numerics_emulation`) is a correct FlashMLA API with
FlashMLA's legitimate rounding (bf16 softmax weights before P @ V, bf16 dS in the MHA backward).
Every case of the `ci` profile (its flat and its production-like cases) must pass it, the reference
and the kernels under the default tolerance policy (`dev` too, behind the slow marker);
every planted bug must still fail on the same cases. A unit-scale variant of the value
distributions shows why materialize draws FlashMLA's distributions: on unit-scale data the same
legitimate numerics exceed FlashMLA's tolerances, which were calibrated on FlashMLA's data.
"""
from __future__ import annotations

import pytest

from mlaverify.verify import distributions
from mlaverify.verify import planted
from mlaverify.verify.implementations import load_implementation
from mlaverify.verify.runner import generate_cases, run_case, run_check

from . import flashmla_numerics

CI_CASES = generate_cases(profile="ci")  # the corner cases plus the derandomized draws, every op and model


def test_ci_cases_cover_every_op_model_and_the_stress_features():
    pairs = {(c.op, c.model) for c in CI_CASES}
    assert len(pairs) == 8
    features = set().union(*(c.features() for c in CI_CASES))
    assert {"values:outliers", "values:near_max", "values:zero_tiles", "scales:float32", "backward", "window",
            "scale:explicit", "scale:default"} <= features


def test_flashmla_numerics_pass_every_ci_case():
    report = run_check(flashmla_numerics, cases=CI_CASES, device="cpu")
    failures = [f"{c.case.id}: {c.status}: {c.reason}" for c in report.cases if c.status != "pass"]
    assert not failures, "legitimate FlashMLA numerics reported as bugs:\n" + "\n".join(failures)
    assert report.summary["pass"] == len(CI_CASES)
    # the emulation is not the reference: its bf16 rounding of P shows up as nonzero errors
    assert max(m.max_abs for c in report.cases for m in c.outputs.values()) > 0


def test_ci_cases_draw_every_production_distribution_for_every_op_and_model():
    from mlaverify.verify.cases import DIST_MODES

    pairs = {(c.op, c.model, c.dist) for c in CI_CASES}
    assert pairs == {(op, model, d) for op, model in {(c.op, c.model) for c in CI_CASES} for d in DIST_MODES}


@pytest.mark.parametrize("impl", ["mlaverify.reference"])  # the emulation: test_flashmla_numerics_pass_every_ci_case
def test_no_false_alarm_under_the_default_policy_on_every_ci_case(impl):
    report = run_check(impl, cases=CI_CASES, device="cpu")
    assert report.settings["tolerance_policy"] == "both"
    failures = [f"{c.case.id}: {c.status}: {c.reason}" for c in report.cases if c.status != "pass"]
    assert not failures, f"{impl} reported as wrong:\n" + "\n".join(failures)
    judged = {m.policy for c in report.cases for m in c.outputs.values()}
    assert judged == {"flashmla+calibrated", "calibrated"}


def test_kernels_pass_every_production_ci_case_under_the_default_policy():
    # the flat ci cases are the committed baseline's (the gate runs them); these are the new ones
    cases = [c for c in CI_CASES if c.dist != "flashmla"]
    report = run_check("mlaverify.kernels", cases=cases, device="cpu")
    failures = [f"{c.case.id}: {c.status}: {c.reason}" for c in report.cases if c.status != "pass"]
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["mlaverify.reference.numerics_emulation", "mlaverify.reference", "mlaverify.kernels"])
@pytest.mark.parametrize("profile", ["ci", "dev"])
def test_no_false_alarm_on_every_case_of_the_profile(impl, profile):
    report = run_check(impl, cases=generate_cases(profile=profile), device="cpu")
    failures = [f"{c.case.id}: {c.status}: {c.reason}" for c in report.cases if c.status != "pass"]
    assert not failures, f"{impl} / {profile}:\n" + "\n".join(failures)


@pytest.mark.parametrize("name", planted.names())
def test_planted_bugs_still_fail_on_the_same_cases(name):
    bug = planted.get(name)
    impl = load_implementation(planted.module_for(name))
    cases = [c for c in CI_CASES if c.op in bug.ops and c.model in bug.models]
    for case in cases:
        if run_case(impl, case, device="cpu").status == "fail":
            return
    pytest.fail(f"planted bug {name!r} ({bug.description}) passed all {len(cases)} ci cases")


def test_unit_scale_values_would_report_bugs_that_are_not_there(monkeypatch):
    corner = next(c for c in CI_CASES if c.op == "sparse_decode" and c.values == "mixed")
    impl = load_implementation(flashmla_numerics)
    assert run_case(impl, corner, device="cpu", checks=()).status == "pass"
    unit = {key: (1.0, None, 0.0) for key in distributions.BASE_VALUES}
    monkeypatch.setattr(distributions, "BASE_VALUES", unit)
    monkeypatch.setattr(distributions, "STRESS_BOUND", 30.0)  # stress values scaled with the base
    result = run_case(impl, corner, device="cpu", checks=())
    assert result.status == "fail" and "out mismatch" in result.reason


def test_window_bug_fails_on_window_cases_only():
    impl = load_implementation(planted.module_for("mha_window_left_off_by_one"))
    mha = [c for c in CI_CASES if c.op == "mha_prefill"]
    verdicts = {c.id: run_case(impl, c, device="cpu", checks=()).status for c in mha}
    assert all(v == "pass" for c_id, v in verdicts.items() if "-win" not in c_id), verdicts
    assert any(v == "fail" for c_id, v in verdicts.items() if "-win" in c_id), verdicts
