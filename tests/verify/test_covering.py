"""The greedy pairwise generator covers every pair of levels, deterministically, and its rows are valid Cases."""
from __future__ import annotations

from itertools import combinations

import pytest

from mlaverify.verify import covering
from mlaverify.verify.cases import DIST_MODES, MODELS


def test_every_pair_of_levels_meets_in_some_row():
    factors = {"a": (1, 2, 3), "b": ("x", "y"), "c": (True, False), "d": tuple(range(4))}
    rows = covering.pairwise(factors, seed=3)
    for (f, levels_f), (g, levels_g) in combinations(factors.items(), 2):
        for x in levels_f:
            for y in levels_g:
                assert any(r[f] == x and r[g] == y for r in rows), (f, x, g, y)
    assert len(rows) < 3 * 2 * 2 * 4  # far fewer than all combinations
    assert rows == covering.pairwise(factors, seed=3)


@pytest.mark.parametrize("op", list(covering.FACTORS))
def test_each_op_array_is_complete_and_split_by_model(op):
    factors = covering._factors(op)
    assert factors["dist"] == DIST_MODES  # the value distribution is a factor of every op
    rows = covering.pairwise(factors)
    assert not covering.uncovered_pairs(factors, rows)
    per_model = {m: covering.covering_cases(op, m) for m in MODELS[op]}
    assert sum(len(v) for v in per_model.values()) == len(rows)
    for model, cases in per_model.items():
        assert cases and all(c.op == op and c.model == model for c in cases)
        assert len({c.id for c in cases}) == len(cases)
    cases = [c for v in per_model.values() for c in v]
    assert {c.dist for c in cases} == set(DIST_MODES)
    for other in ("heads", "group", "topk", "keys", "length"):  # each distribution meets each level of them
        if other in factors:
            assert {(r["dist"], r[other]) for r in rows} == {(d, x) for d in DIST_MODES for x in factors[other]}


def test_value_factor_hook_adds_a_factor(monkeypatch):
    monkeypatch.setattr(covering, "VALUE_FACTOR", ("values", ("normal", "outliers")))
    assert "values" in covering._factors("sparse_decode")
    cases = covering.covering_cases("sparse_decode", "v32") + covering.covering_cases("sparse_decode", "model1")
    assert {c.values for c in cases} == {"normal", "outliers"}
