"""The softmax-core planted bugs hide on FlashMLA's flat data and fail on production-like data.

Each bug's flat case passes FlashMLA's fixed table (the engine's only policy before the calibrated
one); the same shapes with a production-like distribution fail under the default policy. Two of them
(exp instead of exp2, sink before the max) also pass the default policy on their flat case; the other
three are caught on flat data by the calibrated budget already (1.2-13x), never by the fixed table alone.
"""
from __future__ import annotations

import pytest

from mlaverify.verify import planted
from mlaverify.verify.cases import Case
from mlaverify.verify.implementations import load_implementation
from mlaverify.verify.runner import run_case

_SP = dict(op="sparse_prefill", s_q=2, h_q=8, s_kv=200)
FLAT_CASES = {  # bug -> (flat case, passes the default policy on it too)
    "softmax_rescale_forgotten": (Case(model="model1", topk=128, seed=61, **_SP), False),
    "softmax_stale_running_max": (Case(model="model1", topk=150, seed=71, **_SP), False),
    "softmax_scale_twice_on_rope": (Case(op="dense_decode", model="v32", s_q=1, h_q=8, s_kv=64, page_block_size=64,
                                         softmax_scale=0.03125, seed=81), False),
    "softmax_exp_not_exp2": (Case(op="sparse_prefill", model="v32", s_q=4, h_q=16, s_kv=300, topk=256,
                                  sink="finite", seed=51), True),
    "softmax_sink_before_max": (Case(op="sparse_prefill", model="model1", s_q=4, h_q=16, s_kv=300, topk=200,
                                     topk_length="partial", sink="finite", seed=52), True),
}


def test_every_softmax_bug_has_a_flat_case():
    assert sorted(FLAT_CASES) == sorted(b.name for b in planted.BUGS if b.name.startswith("softmax_"))


@pytest.mark.parametrize("name", sorted(FLAT_CASES))
def test_bug_hides_on_flat_data_and_fails_on_peaked_data(name):
    impl = load_implementation(planted.module_for(name), "full")
    flat, passes_default = FLAT_CASES[name]
    assert flat.op in planted.get(name).ops
    assert run_case(impl, flat, device="cpu", checks=(), policy="flashmla").status == "pass"
    assert (run_case(impl, flat, device="cpu", checks=()).status == "pass") == passes_default
    for dist in ("peaked", "wide_logits"):
        result = run_case(impl, flat.replace(dist=dist), device="cpu", checks=())
        assert result.status == "fail", (dist, result.reason)
        assert max(m.budget_ratio for m in result.outputs.values()) > 100  # not a marginal failure
    clean = load_implementation(planted.module_for("clean"), "full")
    assert run_case(clean, flat.replace(dist="peaked"), device="cpu", checks=()).status == "pass"
