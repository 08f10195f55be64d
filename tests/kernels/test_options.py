"""MLAVERIFY_P_SPLIT: a compile-time option of the kernels; the default is one bf16 rounding of P, hi + lo on request."""

from __future__ import annotations

import pytest
import torch

from mlaverify.kernels import _options, flash_mla_sparse_fwd, sparse_decode
from mlaverify.kernels._inspect_cases import select
from mlaverify.kernels._targets import INTERPRETER, TARGETS
from mlaverify.reference import sparse_prefill_reference


def _split_switches(target) -> dict:
    """kernel launch name -> its P_SPLIT / SPLIT_P constexpr, over one case of every op."""
    found = {}
    for case in select(["v32", "prefill-v32", "dense-v32", "mha"], full=False):
        for launch in case.build(target):
            for key in ("P_SPLIT", "SPLIT_P"):
                if key in launch.constexprs:
                    found[launch.name] = launch.constexprs[key]
    return found


def test_default_is_one_rounding_everywhere(monkeypatch):
    monkeypatch.delenv(_options.P_SPLIT_ENV, raising=False)
    switches = _split_switches(TARGETS["sm_90"])
    assert set(switches) == {"sparse_decode.split", "sparse_prefill", "dense_decode.split", "mha_prefill.fwd",
                             "mha_prefill.bwd_dkdv", "mha_prefill.bwd_dq"}
    assert not any(switches.values())
    assert sparse_decode.choose_config(2, 2, 16, 64, INTERPRETER).split_p is False
    assert _split_switches(INTERPRETER) == switches  # the interpreter runs the same numerics


def test_switch_on_gives_hi_plus_lo_and_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv(_options.P_SPLIT_ENV, "1")
    switches = _split_switches(TARGETS["sm_90"])
    assert switches and all(switches.values())
    assert sparse_decode.choose_config(2, 2, 16, 64, INTERPRETER, split_p=None).split_p is True
    monkeypatch.setenv(_options.P_SPLIT_ENV, "yes")
    with pytest.raises(ValueError, match="MLAVERIFY_P_SPLIT: expected '0' .* got 'yes'"):
        _options.p_split()


def test_one_rounding_of_p_stays_within_its_error_bound_in_the_interpreter(monkeypatch):
    """One bf16 rounding of P moves each weight by at most 2^-9 relative, so out moves by at most
    2^-9 * max|v| (weights sum to 1), plus out's own bf16 rounding (2^-9 relative)."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 16, 576, generator=g).bfloat16()
    kv = torch.randn(80, 1, 576, generator=g).bfloat16()
    idx = torch.randint(0, 80, (3, 1, 48), generator=g, dtype=torch.int32)
    ref, _, _ = sparse_prefill_reference(q, kv, idx, 0.05)
    monkeypatch.setenv(_options.P_SPLIT_ENV, "1")
    split, _, _ = flash_mla_sparse_fwd(q, kv, idx, 0.05)
    monkeypatch.setenv(_options.P_SPLIT_ENV, "0")
    single, _, _ = flash_mla_sparse_fwd(q, kv, idx, 0.05)
    v_max = kv[:, 0, :512].float().abs().max()
    bound = 2.0**-9 * v_max + 2.0**-9 * ref.abs()
    assert bool(((single.float() - ref).abs() <= bound).all())
    assert not torch.equal(single, split)  # the option takes effect


def test_sparse_decode_block_n_switch(monkeypatch):
    """MLAVERIFY_SPARSE_DECODE_BLOCK_N: unset gives 32 entries per step on every target and in the interpreter
    (the step the CPU verifies is the H200's default); 64 where the 64-head, two-stage, one-rounding tile fits
    (and in the interpreter); anything else, or 64 where it does not fit, is refused by name."""
    monkeypatch.delenv(_options.SPARSE_DECODE_BLOCK_N_ENV, raising=False)
    h200, sm89 = TARGETS["sm_90"], TARGETS["sm_89"]
    for target in (h200, INTERPRETER, sm89):
        assert sparse_decode.choose_config(128, 2, 128, 2048, target).block_n == 32
    assert sparse_decode.choose_config(128, 2, 128, 2048, h200, block_n=64).block_n == 64  # asked for
    monkeypatch.setenv(_options.SPARSE_DECODE_BLOCK_N_ENV, "64")
    for target in (h200, INTERPRETER):
        assert sparse_decode.choose_config(128, 2, 128, 2048, target).block_n == 64
    assert sparse_decode.choose_config(128, 2, 128, 2048, h200, block_n=32).block_n == 32  # the argument wins
    with pytest.raises(ValueError, match="block_n: 64 entries per step do not fit sm_89 here: .* 32 heads"):
        sparse_decode.choose_config(128, 2, 128, 2048, sm89)
    with pytest.raises(ValueError, match="64 entries per step do not fit sm_90 here: .* P hi \\+ lo"):
        sparse_decode.choose_config(128, 2, 128, 2048, h200, split_p=True)
    with pytest.raises(ValueError, match="64 entries per step do not fit sm_90 here: .* this launch has 16 heads"):
        sparse_decode.choose_config(128, 2, 16, 2048, h200)
    monkeypatch.setenv(_options.SPARSE_DECODE_BLOCK_N_ENV, "48")
    with pytest.raises(ValueError, match="MLAVERIFY_SPARSE_DECODE_BLOCK_N: expected one of \\[32, 64\\] .* got '48'"):
        sparse_decode.choose_config(128, 2, 128, 2048, h200)
    monkeypatch.delenv(_options.SPARSE_DECODE_BLOCK_N_ENV)
    with pytest.raises(ValueError, match="block_n: expected one of \\[32, 64\\] or None, got 16"):
        sparse_decode.choose_config(128, 2, 128, 2048, h200, block_n=16)
