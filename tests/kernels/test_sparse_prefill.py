"""Triton sparse prefill (flash_mla_sparse_fwd) against the unrounded reference.

On CPU the kernel runs in Triton's interpreter; shapes stay tiny. Tolerances are the spec's
table (mlaverify.verify.tolerances); NaN / inf positions must match exactly.
"""

from __future__ import annotations

import dataclasses
import zlib

import pytest
import torch

from mlaverify.kernels.sparse_prefill import flash_mla_sparse_fwd
from mlaverify.reference import sparse_prefill_reference
from tests.kernels.judge import assert_within_budget
from mlaverify.verify.compare import bits_equal

# every kind of out-of-range index FlashMLA's tests draw (s_kv itself is added per case)
INVALID = (-(2**31), -123456, -1, 114514, 1919810, 2147480000, 2**31 - 1)


@dataclasses.dataclass(frozen=True)
class Case:
    s_q: int
    h_q: int
    d_qk: int  # 576 (V32) or 512 (MODEL1)
    s_kv: int
    topk: int
    invalid_frac: float = 0.25  # share of entries replaced by out-of-range values
    sink: str | None = None  # None, "finite" or "mixed" (finite, +inf and -inf across heads)
    topk_length: bool = False  # draw topk_length in [0, topk], including 0 and topk
    empty_rows: bool = False  # make some rows all-invalid
    strided: bool = False  # q, kv and indices non-contiguous outside the last dim

    @property
    def id(self) -> str:
        name = f"{'v32' if self.d_qk == 576 else 'model1'}-sq{self.s_q}-h{self.h_q}-skv{self.s_kv}-topk{self.topk}"
        flags = [f"sink_{self.sink}" if self.sink else "", "topklen" if self.topk_length else "",
                 "empty_rows" if self.empty_rows else "", "strided" if self.strided else ""]
        return "-".join([name] + [f for f in flags if f])


CASES = [
    Case(3, 3, 576, 50, 64),
    Case(4, 64, 512, 200, 128, sink="finite", topk_length=True),
    Case(2, 1, 576, 592, 128, sink="mixed"),  # irregular s_kv (FlashMLA's 592 / 128)
    Case(3, 16, 512, 95, 100, topk_length=True, strided=True),  # topk not a multiple of the block
    Case(2, 3, 576, 32, 200, sink="mixed", topk_length=True),  # s_kv < topk: most entries invalid
    Case(5, 8, 512, 60, 64, invalid_frac=0.5, empty_rows=True, sink="finite"),
    Case(3, 5, 576, 40, 48, invalid_frac=1.0, sink="mixed"),  # every entry invalid
    Case(2, 80, 512, 100, 64, sink="mixed", topk_length=True),  # two head tiles, the last one partial
]


def make_inputs(case: Case, seed: int):
    """q, kv, indices, attn_sink, topk_length; kv rows no considered valid entry reads are NaN."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(case.s_q, case.h_q, case.d_qk, generator=g).bfloat16()
    kv = torch.randn(case.s_kv, 1, case.d_qk, generator=g).bfloat16()
    idx = torch.randint(0, case.s_kv, (case.s_q, 1, case.topk), generator=g, dtype=torch.int32)
    bad_values = torch.tensor(INVALID + (case.s_kv,), dtype=torch.int32)
    bad = torch.rand(idx.shape, generator=g) < case.invalid_frac
    pick = bad_values[torch.randint(0, len(bad_values), idx.shape, generator=g)]
    idx = torch.where(bad, pick, idx)
    if case.empty_rows:
        idx[::2] = pick[::2]
    lengths = None
    if case.topk_length:
        lengths = torch.randint(0, case.topk + 1, (case.s_q,), generator=g, dtype=torch.int32)
        lengths[0], lengths[-1] = 0, case.topk
    sink = None
    if case.sink:
        sink = torch.randn(case.h_q, generator=g)
        if case.sink == "mixed":
            sink[0::3] = float("inf")
            sink[1::3] = float("-inf")
    # poison every kv row that no considered valid entry reads (entries past topk_length included)
    slots = torch.arange(case.topk).view(1, -1)
    considered = slots < (lengths.view(-1, 1) if lengths is not None else case.topk)
    flat = idx[:, 0, :]
    used = flat[considered & (flat >= 0) & (flat < case.s_kv)].long()
    poison = torch.ones(case.s_kv, dtype=torch.bool)
    poison[used] = False
    kv[poison] = float("nan")
    if case.strided:
        return _spread(q, 1), _spread(kv, 0), _spread(idx, 0), sink, lengths
    return q, kv, idx, sink, lengths


def _spread(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The same values with twice the stride along ``dim`` (last dim stays contiguous)."""
    shape = list(x.shape)
    shape[dim] *= 2
    big = torch.zeros(shape, dtype=x.dtype)
    view = big.narrow(dim, 0, shape[dim]).unflatten(dim, (x.shape[dim], 2)).select(dim + 1, 0)
    view.copy_(x)
    return view


def assert_matches(got, ref, s_q: int, h_q: int, emu) -> None:
    """Within the calibrated budget of the reference (`judge`); emu: the reference with P rounded to bf16."""
    for name, actual, reference, emulated, shape, dtype in zip(
        ("out", "max_logits", "lse"), got, ref, (emu[0].bfloat16(), *emu[1:]),
        ((s_q, h_q, 512), (s_q, h_q), (s_q, h_q)), (torch.bfloat16, torch.float32, torch.float32),
    ):
        assert_within_budget("sparse_prefill", name, actual, reference, emulated, shape, dtype)


def reference_and_emulation(*args, **kwargs):
    return (sparse_prefill_reference(*args, **kwargs),
            sparse_prefill_reference(*args, p_dtype=torch.bfloat16, **kwargs))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_reference(case: Case):
    q, kv, idx, sink, lengths = make_inputs(case, seed=zlib.crc32(case.id.encode()))
    scale = case.d_qk**-0.5
    got = flash_mla_sparse_fwd(q, kv, idx, scale, attn_sink=sink, topk_length=lengths)
    ref, emu = reference_and_emulation(q, kv, idx, scale, attn_sink=sink, topk_length=lengths)
    assert_matches(got, ref, case.s_q, case.h_q, emu)


def test_every_invalid_index_kind_is_skipped():
    """Query row r mixes valid entries with the r-th kind of invalid value (s_kv itself last)."""
    kinds = INVALID + (48,)
    case = Case(len(kinds), 4, 576, 48, 64, invalid_frac=0.0)
    q, kv, idx, _, _ = make_inputs(case, seed=21)
    for r, value in enumerate(kinds):
        idx[r, 0, r % 2 :: 2] = value
    got = flash_mla_sparse_fwd(q, kv, idx, 0.05)
    ref, emu = reference_and_emulation(q, kv, idx, 0.05)
    assert_matches(got, ref, case.s_q, case.h_q, emu)


def test_empty_rows_give_zero_out_neg_inf_max_pos_inf_lse():
    case = Case(2, 4, 512, 16, 32, invalid_frac=1.0, sink="finite")
    q, kv, idx, sink, _ = make_inputs(case, seed=3)
    out, max_logits, lse = flash_mla_sparse_fwd(q, kv, idx, 0.1, attn_sink=sink)
    assert torch.equal(out, torch.zeros_like(out))
    assert bool(torch.isneginf(max_logits).all()) and bool(torch.isposinf(lse).all())


def test_sink_rules_per_head():
    """-inf sink leaves out unchanged, +inf zeroes it, lse and max_logits never move."""
    case = Case(2, 3, 576, 64, 64, invalid_frac=0.0)
    q, kv, idx, _, _ = make_inputs(case, seed=5)
    plain = flash_mla_sparse_fwd(q, kv, idx, 0.05)
    sink = torch.tensor([float("-inf"), float("inf"), 0.5])
    sunk = flash_mla_sparse_fwd(q, kv, idx, 0.05, attn_sink=sink)
    assert bits_equal(sunk[0][:, 0], plain[0][:, 0])
    assert torch.equal(sunk[0][:, 1], torch.zeros_like(sunk[0][:, 1]))
    assert bits_equal(sunk[1], plain[1]) and bits_equal(sunk[2], plain[2])


def test_repeat_is_bit_identical():
    case = Case(3, 16, 576, 80, 96, sink="finite", topk_length=True)
    q, kv, idx, sink, lengths = make_inputs(case, seed=11)
    first = flash_mla_sparse_fwd(q, kv, idx, 0.04, attn_sink=sink, topk_length=lengths)
    second = flash_mla_sparse_fwd(q, kv, idx, 0.04, attn_sink=sink, topk_length=lengths)
    assert all(bits_equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize(
    "mutate, error, fragment",
    [
        (lambda a: a.update(indices=a["indices"].long()), TypeError, "indices"),
        (lambda a: a.update(sm_scale=None), TypeError, "sm_scale"),
        (lambda a: a.update(d_v=448), ValueError, "d_v"),
        (lambda a: a.update(topk_length=torch.full((2,), 99, dtype=torch.int32)), ValueError, "topk_length"),
    ],
    ids=["indices-int64", "sm_scale-none", "d_v-448", "topk_length-too-big"],
)
def test_bad_input_raises(mutate, error, fragment):
    q, kv, idx, _, _ = make_inputs(Case(2, 2, 512, 16, 32), seed=1)
    args = dict(q=q, kv=kv, indices=idx, sm_scale=0.1)
    mutate(args)
    with pytest.raises(error, match=fragment):
        flash_mla_sparse_fwd(**args)


@pytest.mark.gpu
@pytest.mark.parametrize("d_qk", [576, 512], ids=["v32", "model1"])
def test_s_q_beyond_one_grid_axis_on_gpu(d_qk: int):
    """s_q = 70000 > 65535 (a grid axis' limit on y/z): every query must still be computed."""
    s_q, h_q, s_kv, topk = 70000, 64, 1024, 64
    g = torch.Generator().manual_seed(7)
    q = torch.randn(s_q, h_q, d_qk, generator=g).bfloat16().cuda()
    kv = torch.randn(s_kv, 1, d_qk, generator=g).bfloat16().cuda()
    idx = torch.randint(-4, s_kv + 4, (s_q, 1, topk), generator=g, dtype=torch.int32).cuda()
    got = flash_mla_sparse_fwd(q, kv, idx, d_qk**-0.5)
    ref, emu = reference_and_emulation(q, kv, idx, d_qk**-0.5)
    assert_matches(got, ref, s_q, h_q, emu)


@pytest.mark.parametrize("p_split", ["0", "1"])
def test_scores_one_step_ahead_change_no_bit(p_split, monkeypatch):
    """QK_AHEAD (the 64-head sm_90 tiles' loop) and the plain loop (every other compiled tile) agree bit for bit."""
    from mlaverify.kernels._launch import run_all
    from mlaverify.kernels._targets import INTERPRETER
    from mlaverify.kernels.sparse_prefill import sparse_prefill_plan

    monkeypatch.setenv("MLAVERIFY_P_SPLIT", p_split)
    case = Case(3, 16, 576, 300, 200, sink="finite", topk_length=True)
    q, kv, idx, sink, lengths = make_inputs(case, seed=17)
    results = []
    for ahead in (0, 1):
        launches, outputs = sparse_prefill_plan(q, kv, idx, 0.05, sink, lengths, INTERPRETER)
        assert launches[0].constexprs["QK_AHEAD"] == 1  # the interpreter's own choice
        run_all([dataclasses.replace(launches[0], constexprs={**launches[0].constexprs, "QK_AHEAD": ahead})])
        results.append(outputs)
    assert all(bits_equal(a, b) for a, b in zip(*results))
