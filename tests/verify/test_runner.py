"""run_case / run_check: failures of every kind are recorded, never crash, never pass."""
from __future__ import annotations

import json
import types

import pytest
import torch

import mlaverify.reference as ref
from mlaverify.reference import mha_prefill as ref_mha
from mlaverify.verify.cases import Case
from mlaverify.verify.implementations import (FLASH_MLA, FULL, Capabilities, ImplementationError,
                                              load_implementation)
from mlaverify.verify.results import SCHEMA_VERSION, Report
from mlaverify.verify.runner import run_case, run_check, shard_of

PREFILL = Case(op="sparse_prefill", model="v32", s_q=3, h_q=8, s_kv=40, topk=16, sink="finite",
               topk_length="partial", seed=3)
DECODE = Case(op="sparse_decode", model="model1", b=3, s_q=2, h_q=4, s_kv=30, topk=16, page_block_size=7,
              extra_s_kv=20, extra_topk=8, extra_page_block_size=2, sink="mixed", seed=4)
DENSE = Case(op="dense_decode", model="v32", b=3, s_q=2, h_q=4, h_kv=2, s_kv=20, page_block_size=8, causal=True,
             seqlens="zero", nan_fill="all", seed=5)
MHA = Case(op="mha_prefill", model="d128", b=2, s_q=7, s_kv=9, h_q=2, causal=True, backward=True, seed=6)
SMALL = [PREFILL, DECODE, DENSE, MHA]


def reference_module(name: str = "fake_impl", **overrides) -> types.ModuleType:
    module = types.ModuleType(name)
    for attr in ("get_mla_metadata", "flash_mla_with_kvcache", "flash_mla_sparse_fwd"):
        setattr(module, attr, getattr(ref, attr))
    module.flash_attn_varlen_func = ref_mha.flash_attn_varlen_func
    for attr, fn in overrides.items():
        setattr(module, attr, fn)
    return module


def run(case: Case, **overrides):
    return run_case(load_implementation(reference_module(**overrides)), case, device="cpu")


@pytest.mark.parametrize("case", SMALL, ids=lambda c: c.op)
def test_reference_passes_with_the_checks_it_claims(case):
    """The reference's profile claims every check but bit-for-bit batch permutation: its vectorized float32
    math is not batch invariant by construction on every CPU (a row's SIMD lane changes with its position)."""
    result = run_case(load_implementation(ref), case, device="cpu")
    assert result.status == "pass", result.reason
    assert set(result.outputs) == ({"out", "lse", "dq", "dk", "dv"} if case.backward else
                                   {"out", "max_logits", "lse"} if case.op == "sparse_prefill" else {"out", "lse"})
    assert set(result.checks) == {"inputs_unmodified", "repeat_bitwise"}
    assert all(c.passed for c in result.checks.values())


@pytest.mark.parametrize("case", [DECODE, DENSE], ids=lambda c: c.op)
def test_batch_permutation_is_checked_for_full_profiles(case):
    result = run(case, MLAVERIFY_CAPABILITIES={"base": "full", "checks": ["batch_permutation"]})
    assert set(result.checks) == {"batch_permutation"}


def _raises(*args, **kwargs):
    raise RuntimeError("kernel launch failed: too many resources requested")


def _two_outputs(*args, **kwargs):
    out, _max_logits, lse = ref.flash_mla_sparse_fwd(*args, **kwargs)
    return out, lse


def _float32_out(*args, **kwargs):
    out, max_logits, lse = ref.flash_mla_sparse_fwd(*args, **kwargs)
    return out.float(), max_logits, lse


def _only_out(*args, **kwargs):
    return ref.flash_mla_sparse_fwd(*args, **kwargs)[0]


def _lse_not_transposed(*args, **kwargs):
    out, lse = ref.flash_mla_with_kvcache(*args, **kwargs)
    return out, lse.transpose(1, 2)


def _ignores_sink(*args, **kwargs):
    kwargs["attn_sink"] = None
    return ref.flash_mla_sparse_fwd(*args, **kwargs)


@pytest.mark.parametrize("case, attr, fn, match", [
    (PREFILL, "flash_mla_sparse_fwd", _raises, "implementation raised RuntimeError: kernel launch failed"),
    (PREFILL, "flash_mla_sparse_fwd", _two_outputs, "expected a tuple of 3 tensors (out, max_logits, lse), got 2"),
    (PREFILL, "flash_mla_sparse_fwd", _float32_out, "out: expected dtype torch.bfloat16, got torch.float32"),
    (PREFILL, "flash_mla_sparse_fwd", _only_out, "expected a tuple of 3 tensors"),
    (DECODE, "flash_mla_with_kvcache", _lse_not_transposed, "lse: expected shape [3, 4, 2], got [3, 2, 4]"),
    (PREFILL, "flash_mla_sparse_fwd", _ignores_sink, "out mismatch"),
])
def test_broken_implementations_fail_with_reason(case, attr, fn, match):
    result = run(case, **{attr: fn})
    assert result.status == "fail"
    assert match in result.reason


def _mutates_q(q, *args, **kwargs):
    result = ref.flash_mla_sparse_fwd(q, *args, **kwargs)
    q[0, 0, 0] += 1.0
    return result


def _noisy():
    calls = []

    def fn(*args, **kwargs):
        out, max_logits, lse = ref.flash_mla_sparse_fwd(*args, **kwargs)
        calls.append(1)
        if len(calls) % 2 == 0:
            out.view(torch.int16)[0, 0, 0] ^= 1  # one bf16 ulp: within tolerance, not bit-identical
        return out, max_logits, lse
    return fn


def _batch_dependent(*args, **kwargs):
    out, lse = ref.flash_mla_with_kvcache(*args, **kwargs)
    out.view(torch.int16)[0, 0, 0, 0] ^= 1  # batch entry 0 gets one ulp more, whoever it is
    return out, lse


@pytest.mark.parametrize("case, attr, fn, check", [
    (PREFILL, "flash_mla_sparse_fwd", _mutates_q, "inputs_unmodified"),
    (PREFILL, "flash_mla_sparse_fwd", _noisy(), "repeat_bitwise"),
    (DECODE, "flash_mla_with_kvcache", _batch_dependent, "batch_permutation"),
])
def test_behavioural_checks_catch_their_bug(case, attr, fn, check):
    result = run(case, **{attr: fn})
    assert result.status == "fail"
    assert not result.checks[check].passed and check in result.reason
    others = [c for name, c in result.checks.items() if name != check]
    assert all(c.passed for c in others)


def test_capability_profiles_skip_never_pass():
    impl = load_implementation(reference_module(), capabilities=FLASH_MLA)
    result = run_case(impl, PREFILL, device="cpu")
    assert result.status == "skip" and "cuda" in result.reason
    assert "h_q in [64, 128]" in FLASH_MLA.unsupported_reason(PREFILL)
    assert "page_block_size" in FLASH_MLA.unsupported_reason(DENSE)
    prefill_nan = PREFILL.replace(h_q=64, topk=64, nan_fill="all")
    assert "nan_fill" in FLASH_MLA.unsupported_reason(prefill_nan)
    assert FLASH_MLA.unsupported_reason(prefill_nan.replace(nan_fill="unused"), "cuda") is None


def test_module_declared_capabilities():
    module = reference_module(MLAVERIFY_CAPABILITIES={"ops": ["sparse_prefill"],
                                                      "allow": {"sparse_prefill": {"h_q": [8]}}})
    impl = load_implementation(module)
    assert impl.capabilities.name.endswith("MLAVERIFY_CAPABILITIES")
    assert run_case(impl, DECODE, device="cpu").status == "skip"
    assert run_case(impl, PREFILL.replace(h_q=16), device="cpu").status == "skip"
    assert run_case(impl, PREFILL, device="cpu").status == "pass"
    with pytest.raises(ImplementationError, match="unknown keys"):
        Capabilities.from_dict({"opz": []})
    with pytest.raises(ImplementationError, match="unknown case field"):
        Capabilities.from_dict({"allow": {"sparse_decode": {"hq": [1]}}})


def test_missing_api_functions_skip_their_ops():
    module = reference_module()
    del module.flash_attn_varlen_func
    result = run_case(load_implementation(module), MHA, device="cpu")
    assert result.status == "skip" and "flash_attn_varlen_func" in result.reason


def test_loading_implementations(tmp_path):
    path = tmp_path / "my_kernels.py"
    path.write_text("from mlaverify.reference import flash_mla_sparse_fwd\n")
    impl = load_implementation(str(path))
    assert impl.module.flash_mla_sparse_fwd is ref.flash_mla_sparse_fwd
    assert impl.capabilities.name == "full"
    with pytest.raises(ImplementationError, match="cannot import"):
        load_implementation("no_such_module_xyz")
    with pytest.raises(ImplementationError, match="does not exist"):
        load_implementation(str(tmp_path / "missing.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('needs CUDA')\n")
    with pytest.raises(ImplementationError, match="needs CUDA"):
        load_implementation(str(broken))
    with pytest.raises(ImplementationError, match="exposes none"):
        load_implementation("json")


def test_run_check_report_and_shards():
    module = reference_module()
    report = run_check(module, cases=SMALL[:3], device="cpu", checks=("inputs_unmodified",))
    assert report.passed and report.summary["pass"] == 3
    data = json.loads(report.to_json())
    assert data["schema_version"] == SCHEMA_VERSION and data["tool"]["name"] == "mla-verify"
    assert data["implementation"]["profile"] == "full" and data["settings"]["device"] == "cpu"
    assert data["cases"][0]["outputs"]["out"]["tolerance"]["atol"] == 8e-4
    again = Report.from_json(report.to_json())
    assert [c.case for c in again.cases] == SMALL[:3] and again.to_json() == report.to_json()
    shards = [run_check(module, cases=SMALL[:3], device="cpu", shard=(k, 2), checks=()) for k in range(2)]
    ids = sorted(c.id for r in shards for c in r.cases)
    assert ids == sorted(c.id for c in SMALL[:3])
    assert all(shard_of(c.case, 2) == k for k, r in enumerate(shards) for c in r.cases)
    with pytest.raises(ValueError, match="shard"):
        run_check(module, cases=SMALL, device="cpu", shard=(2, 2))


def test_run_check_draws_cases_deterministically():
    module = reference_module()
    a = run_check(module, ops=["sparse_prefill"], models=["model1"], max_examples=2, device="cpu", checks=(),
                  corners=False)
    b = run_check(module, ops=["sparse_prefill"], models=["model1"], max_examples=2, device="cpu", checks=(),
                  corners=False)
    assert [c.id for c in a.cases] == [c.id for c in b.cases] and len(a.cases) == 2
    assert a.passed and all(c.case.op == "sparse_prefill" for c in a.cases)
    with pytest.raises(ValueError, match="ops"):
        run_check(module, ops=["decode"], device="cpu")


def test_flash_mla_profile_skips_window_cases():
    windowed = MHA.replace(h_q=4, h_kv=4, window_left=3)
    assert "window_left" in FLASH_MLA.unsupported_reason(windowed, "cuda")
    assert "window_right" in FLASH_MLA.unsupported_reason(MHA.replace(h_q=4, h_kv=4, window_right=0), "cuda")
    assert FULL.unsupported_reason(windowed, "cpu") is None


def test_window_cases_reach_the_implementation_and_the_reference():
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("window_size"))
        return ref.flash_attn_varlen_func(*args, **kwargs)

    impl = load_implementation(reference_module(flash_attn_varlen_func=spy))
    case = MHA.replace(h_q=2, h_kv=2, causal=True, window_left=2, window_right=0, backward=False)
    assert run_case(impl, case, device="cpu", checks=()).status == "pass"
    assert run_case(impl, case.replace(window_left=-1, window_right=-1), device="cpu", checks=()).status == "pass"
    assert seen == [(2, 0), None]  # no window: called with FlashMLA's exact signature

    def ignores_window(*args, window_size=(-1, -1), **kwargs):
        return ref.flash_attn_varlen_func(*args, **kwargs)

    broken = load_implementation(reference_module(flash_attn_varlen_func=ignores_window))
    result = run_case(broken, case.replace(s_q=6, s_kv=6), device="cpu", checks=())
    assert result.status == "fail" and "out mismatch" in result.reason


def test_flash_mla_profile_skips_gqa_backward_only():
    assert "backward" in FLASH_MLA.unsupported_reason(MHA.replace(h_q=4, h_kv=1), "cuda")
    assert FLASH_MLA.unsupported_reason(MHA.replace(h_q=4, h_kv=4), "cuda") is None
    assert FLASH_MLA.unsupported_reason(MHA.replace(h_q=4, h_kv=1, backward=False), "cuda") is None


def _wrong_batch(*args, **kwargs):
    out, lse = ref.flash_mla_with_kvcache(*args, **kwargs)
    return out[:1], lse[:1]


def test_wrong_batch_size_fails_without_crashing_the_checks():
    result = run(DECODE, flash_mla_with_kvcache=_wrong_batch)
    assert result.status == "fail" and "expected shape [3, 2, 4, 512], got [1, 2, 4, 512]" in result.reason
    assert not result.checks["batch_permutation"].passed
