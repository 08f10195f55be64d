"""The strategies reach every case feature issue 4 lists; drawing is deterministic; presets."""
from __future__ import annotations

import pytest
from hypothesis import given

from mlaverify.verify.cases import HEAD_DIMS, MODELS, Case
from mlaverify.verify.distributions import flashmla_softmax_scale
from mlaverify.verify.presets import PRESETS, preset_cases
from mlaverify.verify.strategies import PROFILES, case_strategy, corner_cases, draw_cases

DRAWS = 250
PAIRS = [(op, m) for op, models in MODELS.items() for m in models]

_SPARSE_COMMON = {
    "h64", "h128", "h8",                                     # FlashMLA's h_q and others
    "topk1", "topk7", "topk100", "topk576", "topk>seq",       # small and irregular top-k
    "len:none", "len:zero", "len:partial", "len:full",
    "sink:none", "sink:finite", "sink:mixed", "sink:neg_inf", "sink:pos_inf",
    "invalid:rows", "invalid:all", "invalid:some",
    "nan:all", "nan:unused", "scale:default", "scale:explicit", "noncontiguous",
}
REQUIRED = {
    "sparse_decode": _SPARSE_COMMON | {
        "sq1", "sq2", "sq3", "sq4", "invalid:batch",
        "pb1", "pb2", "pb61", "pb64", "pb69", "pb256", "pb576", "extra", "extra_pb_differs",
        "xlen:none", "xlen:zero", "xlen:partial", "xlen:full",
        "values:outliers", "values:zero_tiles", "values:near_max",
    },
    "sparse_prefill": _SPARSE_COMMON,
    "dense_decode": {"h_kv>1", "causal_sq>1", "dtype:fp16", "dtype:bf16", "seqlens:zero", "seqlens:varlen",
                     "nan:all", "scale:default", "scale:explicit", "noncontiguous", "h1", "h3", "h128",
                     "pb1", "pb64", "pb61"},
    "mha_prefill": {"gqa", "h_kv>1", "causal_sq>1", "dtype:fp16", "dtype:bf16", "backward", "seqlens:varlen",
                    "scale:default", "scale:explicit", "noncontiguous", "window", "causal+window",
                    *(f"{side}:{kind}" for side in ("wleft", "wright") for kind in ("unbounded", "zero", "small",
                                                                                     "beyond"))},
}


@pytest.fixture(scope="module")
def drawn() -> dict[tuple[str, str], list[Case]]:
    return {(op, m): draw_cases(case_strategy(op, m), DRAWS, seed=0) for op, m in PAIRS}


@pytest.mark.parametrize("op, model", PAIRS)
def test_strategies_reach_every_listed_feature(drawn, op, model):
    cases = drawn[(op, model)]
    assert len(cases) > DRAWS // 2
    seen = set().union(*(c.features() for c in cases))
    missing = REQUIRED[op] - seen
    if op == "sparse_decode" and model == "v32":
        missing |= {"scales:float32", "scales:ue8m0"} - seen
    assert not missing, f"{op}/{model}: the strategy never drew {sorted(missing)}"


def test_short_causal_sequences_are_drawn(drawn):
    cases = drawn[("dense_decode", "v32")]
    assert any(c.causal and c.s_q > 1 and c.s_kv < c.s_q for c in cases)
    assert any(c.seqlens == "zero" for c in cases)


def test_sinks_mixed_across_heads_have_enough_heads(drawn):
    assert any(c.sink == "mixed" and c.h_q >= 3 for c in drawn[("sparse_decode", "model1")])


def test_drawing_is_deterministic_and_seeded():
    strategy = case_strategy("sparse_decode", "model1")
    first = [c.id for c in draw_cases(strategy, 20, seed=5)]
    assert first == [c.id for c in draw_cases(strategy, 20, seed=5)]
    assert first != [c.id for c in draw_cases(strategy, 20, seed=6)]
    assert len(draw_cases(strategy, seed=0, profile="ci")) == PROFILES["ci"].max_examples


def test_ci_profile_is_deterministic():
    ci = PROFILES["ci"]
    assert ci.derandomize and ci.database is None
    assert PROFILES["thorough"].max_examples > PROFILES["dev"].max_examples > ci.max_examples


@pytest.mark.parametrize("call, match", [
    (lambda: case_strategy("bogus", "v32"), "op"),
    (lambda: case_strategy("mha_prefill", "v32"), "model"),
    (lambda: case_strategy("sparse_decode", "v32", scale="huge"), "scale"),
    (lambda: draw_cases(case_strategy("dense_decode", "v32"), 0), "max_examples"),
    (lambda: draw_cases(case_strategy("dense_decode", "v32"), 3, profile="nightly"), "profile"),
])
def test_bad_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@PROFILES["ci"]
@given(case_strategy("sparse_prefill", "v32"))
def test_drawn_cases_round_trip(case):
    assert Case.from_id(case.id) == case
    assert case.topk >= 1 and case.s_q <= 6


def test_corner_cases_are_valid_and_distinct():
    for op, model in PAIRS:
        ids = [c.id for c in corner_cases(op, model)]
        assert ids and len(set(ids)) == len(ids)


def test_presets_match_the_production_table():
    v32 = preset_cases("v32")
    assert {c.b for c in v32} == {2, 64, 74, 128}
    assert all((c.h_q, c.s_q, c.s_kv, c.topk, c.page_block_size) == (128, 2, 32768, 2048, 64) for c in v32)
    c3 = preset_cases("model1-config3")[0]
    assert (c3.h_q, c3.topk, c3.page_block_size, c3.extra_topk, c3.extra_page_block_size) == (64, 128, 256, 1024, 2)
    assert c3.extra_topk_length != "none" and preset_cases("model1-config1")[0].extra_topk_length == "none"
    assert {c.s_q for c in preset_cases("prefill-v32")} == {4096}
    for name in PRESETS:
        small = preset_cases(name, size="cpu", seed=9)
        assert small and all(c.seed == 9 and c.s_kv <= 700 and c.topk <= 576 for c in small)
        full = PRESETS[name].full[0]
        assert (small[0].op, small[0].model, small[0].h_q, small[0].page_block_size) == \
               (full.op, full.model, full.h_q, full.page_block_size)
    with pytest.raises(ValueError, match="preset"):
        preset_cases("v4")


@pytest.mark.parametrize("op, model", PAIRS)
def test_flashmla_own_softmax_scale_is_drawn(drawn, op, model):
    ours = float(f"{flashmla_softmax_scale(op, HEAD_DIMS[(op, model)][0]):.4g}")
    assert any(c.softmax_scale == ours for c in drawn[(op, model)])


def test_windows_are_valid_and_mixed_with_causal(drawn):
    cases = [c for m in MODELS["mha_prefill"] for c in drawn[("mha_prefill", m)]]
    windowed = [c for c in cases if c.has_window]
    assert 0.15 < len(windowed) / len(cases) < 0.5  # a window on about a third of the cases
    assert all(c.window_right in (-1, 0) for c in windowed if c.causal)
    assert any(c.window_left >= max(c.s_q, c.s_kv) for c in windowed)  # larger than the sequence
    assert any(c.has_window for c in corner_cases("mha_prefill", "d192"))
