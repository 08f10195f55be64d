"""A gate recorded on one CPU gives the same verdict on another, and still catches a real drift.

Another x86-64 CPU runs other float32 BLAS and SIMD kernels: the reference comes out a float32 ulp
away here and there. That must not be a regression; one bf16 ulp more on 0.01% of the output must.
"""
from __future__ import annotations

import dataclasses
import types

import pytest
import torch

import mlaverify.reference as ref
from mlaverify.verify.cases import Case
from mlaverify.verify.gate import compare_to_baseline
from mlaverify.verify.implementations import load_implementation
from mlaverify.verify.ops import ADAPTERS
from mlaverify.verify.runner import generate_cases, run_check

OPS = ("sparse_decode", "sparse_prefill", "dense_decode", "mha_prefill")


_MODEL = {"sparse_decode": "v32", "sparse_prefill": "model1", "dense_decode": "v32", "mha_prefill": "d192"}


def _cases():
    """The first corner case of each op (one model each): sinks, NaN-poisoned slots, GQA, MHA backward (where
    the near-zero references live that made ulp errors CPU-dependent)."""
    return [c for c in generate_cases(OPS, profile="ci", max_examples=1) if c.seed == 1 and c.model == _MODEL[c.op]]


class _Recorded:
    """The implementation's side of each case, run once: only the reference changes between the two runs."""

    mode = "in-process"

    def __init__(self, runner) -> None:
        self.runner, self.runs = runner, {}

    def run(self, case, device, checks):
        if case.id not in self.runs:
            self.runs[case.id] = self.runner.run(case, device, checks)
        return self.runs[case.id]

    def close(self) -> None:
        pass


def _one_f32_ulp_off(reference):
    """The adapter's reference with every element moved one float32 ulp up or down (seeded)."""
    def perturbed(inputs):
        g = torch.Generator().manual_seed(inputs.case.seed + 99)
        result = {}
        for name, t in reference(inputs).items():
            t32 = t.float()
            up = torch.rand(t32.shape, generator=g) < 0.5
            moved = torch.where(up, torch.nextafter(t32, torch.full_like(t32, float("inf"))),
                                torch.nextafter(t32, torch.full_like(t32, float("-inf"))))
            result[name] = torch.where(t32.isfinite(), moved, t32).to(t.dtype)
        return result
    return perturbed


@pytest.fixture(scope="module")
def kernels_baseline():
    impl = load_implementation("mlaverify.kernels")
    impl = dataclasses.replace(impl, runner=_Recorded(impl.runner))
    return impl, run_check(impl, cases=_cases(), device="cpu", checks=())


def test_a_float32_ulp_in_the_reference_is_not_a_regression(kernels_baseline, monkeypatch):
    impl, baseline = kernels_baseline
    assert baseline.passed and len(baseline.cases) == 4
    assert any(c.outputs.get("dq") for c in baseline.cases)  # the MHA backward, where near-zero refs live
    for op in OPS:
        monkeypatch.setitem(ADAPTERS, op, dataclasses.replace(ADAPTERS[op],
                                                              reference=_one_f32_ulp_off(ADAPTERS[op].reference)))
    elsewhere = run_check(impl, cases=_cases(), device="cpu", checks=())
    verdict = compare_to_baseline(baseline, elsewhere, factor=2.0)
    assert verdict.passed, verdict.format()
    assert verdict.compared == len(baseline.cases)


def _drifting_module(every: int) -> types.ModuleType:
    """The reference API, except that 1 in ``every`` elements of sparse decode's out moves one bf16 ulp away
    from zero: a regression far inside every tolerance."""
    def flash_mla_with_kvcache(*args, **kwargs):
        out, lse = ref.flash_mla_with_kvcache(*args, **kwargs)
        flat = out.view(torch.int16).reshape(-1).clone()
        pick = torch.arange(0, flat.numel(), every)
        flat[pick] += torch.where(out.reshape(-1)[pick] != 0, 1, 0).to(torch.int16)  # +1 in the bits: one ulp
        return flat.view(torch.bfloat16).view(out.shape), lse

    module = types.ModuleType("drift_one_in_ten_thousand")
    module.get_mla_metadata = ref.get_mla_metadata
    module.flash_mla_with_kvcache = flash_mla_with_kvcache
    module.MLAVERIFY_CAPABILITIES = {"base": "reference"}
    return module


def test_one_bf16_ulp_on_a_ten_thousandth_of_the_output_fails_the_gate():
    cases = [Case(op="sparse_decode", model=model, b=2, s_q=2, h_q=64, s_kv=300, topk=96, page_block_size=64,
                  sink="finite", topk_length="partial", seed=7) for model in ("v32", "model1")]  # 131072 elements
    clean = load_implementation(ref)
    baseline = run_check(clean, cases=cases, device="cpu", checks=())
    drifted = run_check(load_implementation(_drifting_module(10_000)), cases=cases, device="cpu", checks=())
    assert baseline.passed and drifted.passed  # within every tolerance
    verdict = compare_to_baseline(baseline, drifted, factor=2.0)
    assert not verdict.passed and {m.metric for m in verdict.regressions} & {"max_ulp"}, verdict.format()
