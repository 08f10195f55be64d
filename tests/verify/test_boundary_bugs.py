"""The issue-11 planted bugs live only at corners: the boundary cases kill each, the old `ci` cases do not.

The second half runs every new bug over the `ci` cases as they were before the boundary cases
(the corner cases plus the derandomized draws): a few minutes on two cores, so it is `slow`.
"""
from __future__ import annotations

import pytest

from mlaverify.verify import planted
from mlaverify.verify.boundary_cases import boundary_cases
from mlaverify.verify.cases import MODELS
from mlaverify.verify.implementations import load_implementation
from mlaverify.verify.planted.boundary_bugs import BUGS as DECODE_BUGS
from mlaverify.verify.planted.boundary_mha_bugs import BUGS as MHA_BUGS
from mlaverify.verify.runner import run_case
from mlaverify.verify.strategies import case_strategy, corner_cases, draw_cases
from mlaverify.verify.tolerances import load_tolerances

NEW = [b.name for b in DECODE_BUGS + MHA_BUGS]
TOL = load_tolerances(use_pyproject=False)


def _first_failure(name: str, cases) -> str | None:
    impl = load_implementation(planted.module_for(name))
    bug = planted.get(name)
    for case in cases:
        if case.op in bug.ops and case.model in bug.models and run_case(impl, case, TOL, "cpu").status == "fail":
            return case.id
    return None


def test_at_least_twenty_new_bugs_registered_for_both_model_types():
    assert len(NEW) >= 20
    assert set(NEW) <= set(planted.names())
    for name in NEW:
        bug = planted.get(name)
        assert len(bug.models) == 2, name


@pytest.mark.parametrize("name", NEW)
def test_boundary_cases_kill_each_new_bug_in_every_model(name):
    bug = planted.get(name)
    for model in bug.models:
        cases = [c for op in bug.ops if model in MODELS[op] for c in boundary_cases(op, model)]
        assert _first_failure(name, cases), f"{name} survives every {model} boundary case"


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW)
def test_old_ci_cases_do_not_kill_the_new_bugs(name):
    bug = planted.get(name)
    old = [c for op in bug.ops for m in MODELS[op]
           for c in (*corner_cases(op, m), *draw_cases(case_strategy(op, m, "cpu"), None, 0, "ci"))]
    assert _first_failure(name, old) is None
