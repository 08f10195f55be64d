"""Boundary cases (issue 11): lengths from the kernels' tiles, every class present, every feature observable."""
from __future__ import annotations

import pytest

from mlaverify.verify.boundary_cases import BOUNDARY_CLASSES, PAGE_BLOCKS, boundary_cases, case_class, extra_cases
from mlaverify.verify.cases import MODELS, Case
from mlaverify.verify.coverage import coverage_summary, observed_features, required_features, unobserved
from mlaverify.verify.kernel_tiles import kernel_tiles
from mlaverify.verify.materialize import materialize
from mlaverify.verify.results import CaseResult
from mlaverify.verify.strategies import case_strategy, corner_cases, draw_cases

PAIRS = [(op, m) for op in MODELS for m in MODELS[op]]


@pytest.mark.parametrize("op,model", PAIRS)
def test_boundary_cases_are_valid_distinct_and_round_trip(op, model):
    cases = boundary_cases(op, model)
    assert cases == boundary_cases(op, model)  # deterministic
    assert len({c.id for c in cases}) == len(cases)
    for c in cases:
        assert Case.from_id(c.id) == c
        assert case_class(c) in BOUNDARY_CLASSES
        assert c.b <= 3 and c.h_q <= 128


@pytest.mark.parametrize("op,model", PAIRS)
def test_every_required_feature_is_observed_by_the_boundary_cases(op, model):
    seen = set().union(*(observed_features(c) for c in boundary_cases(op, model)))
    assert set(required_features(op)) - seen == set()


@pytest.mark.parametrize("op", list(MODELS))
def test_the_old_ci_cases_leave_features_unobserved(op):
    """What the issue measured: the corner cases and ci draws never reach these corners."""
    for model in MODELS[op]:
        old = [*corner_cases(op, model), *draw_cases(case_strategy(op, model), None, 0, "ci")]
        seen = set().union(*(observed_features(c) for c in old))
        assert set(required_features(op)) - seen, (op, model)


def test_v32_and_model1_get_different_cases():
    for op in ("sparse_decode", "sparse_prefill", "dense_decode"):
        strip = lambda c: c.id.split("/", 2)[2]  # noqa: E731
        v32 = {strip(c) for c in boundary_cases(op, "v32")}
        m1 = {strip(c) for c in boundary_cases(op, "model1")}
        assert not v32 & m1, op


def test_lengths_come_from_the_kernels_tiles():
    sd = kernel_tiles()["sparse_decode"]
    topks = {c.topk for c in boundary_cases("sparse_decode", "v32")}
    for t in sd.list_tiles:
        assert {t - 1, t, t + 1} <= topks
    assert sd.split + 1 in topks and max(topks) > 1024
    dd = {c.s_kv for c in boundary_cases("dense_decode", "model1")}
    assert any(1025 <= n <= 2100 for n in dd)
    mha = [c for c in boundary_cases("mha_prefill", "d192") if case_class(c) == "mha_multitile"]
    assert any(c.causal and 130 <= c.s_q <= 300 for c in mha)


def test_page_blocks_and_groups_of_the_issue_are_drawn():
    for op in ("sparse_decode", "dense_decode"):
        for model in MODELS[op]:
            cases = boundary_cases(op, model)
            pbs = {c.page_block_size for c in cases} | {c.extra_page_block_size for c in cases}
            assert set(PAGE_BLOCKS) <= pbs, (op, model)
    groups = {(c.h_q // c.h_kv, c.h_kv) for op in ("dense_decode", "mha_prefill") for m in MODELS[op]
              for c in boundary_cases(op, m) if c.h_kv > 1}
    assert {g for g, _ in groups} >= {3, 5, 6, 7} and {k for _, k in groups} >= {2, 3, 8}


def test_transposed_q_duplicates_and_empty_sequences_materialize_as_named():
    qt = next(c for c in boundary_cases("sparse_decode", "v32") if c.q_transposed)
    q = materialize(qt).tensors["q"]
    assert q.stride(-1) == 1 and q.stride(-2) != q.shape[-1]
    dup = next(c for c in boundary_cases("sparse_prefill", "model1") if c.duplicates)
    idx = materialize(dup).tensors["indices"][:, 0]
    assert (idx[:, 1] == idx[:, 0]).all()
    for mode, side in (("zero_q", "cu_seqlens_q"), ("zero_k", "cu_seqlens_k")):
        c = next(c for c in boundary_cases("mha_prefill", "d128") if c.seqlens == mode)
        t = materialize(c).tensors
        lens = (t[side][1:] - t[side][:-1]).tolist()
        other = "cu_seqlens_k" if side == "cu_seqlens_q" else "cu_seqlens_q"
        assert 0 in lens and 0 not in (t[other][1:] - t[other][:-1]).tolist()


def test_observability_needs_the_output_to_see_the_feature():
    base = dict(op="sparse_decode", model="model1", b=1, s_q=1, s_kv=800, topk=100, page_block_size=256)
    assert "page256" in observed_features(Case(**base))
    assert "page256" not in observed_features(Case(**base, invalid="all"))        # nothing read
    assert "page256" not in observed_features(Case(**base, topk_length="zero"))   # nothing considered
    assert not observed_features(Case(**base, h_q=128, sink="pos_inf"))           # output forced to zero
    assert "head_tile2" in observed_features(Case(**base, h_q=128, sink="finite"))
    assert "page256" not in observed_features(Case(**{**base, "s_kv": 200}))      # one page only


def test_coverage_summary_lists_unobserved_and_skipped_features():
    case = Case(op="sparse_prefill", model="v32", s_q=2, h_q=2, s_kv=60, topk=31)
    summary = coverage_summary([CaseResult(case, "pass")])
    col = summary["sparse_prefill/v32"]
    assert col["features"]["len:32-1"] == {"run": 1, "observed": 1, "observed_passed": 1, "skipped_observable": 0}
    failed = coverage_summary([CaseResult(case, "fail")])["sparse_prefill/v32"]["features"]["len:32-1"]
    assert failed == {"run": 1, "observed": 1, "observed_passed": 0, "skipped_observable": 0}
    assert "duplicates" in col["unobserved"] and "sparse_prefill/v32: duplicates" in unobserved(summary)
    skipped = coverage_summary([CaseResult(case, "skip")])["sparse_prefill/v32"]
    assert "len:32-1" in skipped["not_claimed"] and "len:32-1" not in skipped["unobserved"]


def test_extra_cases_are_boundary_then_covering():
    cases = extra_cases("dense_decode", "v32")
    assert cases[: len(boundary_cases("dense_decode", "v32"))] == boundary_cases("dense_decode", "v32")
    assert len(cases) > len(boundary_cases("dense_decode", "v32"))
