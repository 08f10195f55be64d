"""Triton dense decode (split-KV + combine) against the unrounded reference.

On CPU the kernels run in Triton's interpreter; shapes stay tiny. Tolerances are the spec's
table (mlaverify.verify.tolerances); NaN / inf positions must match exactly. Cache slots and
block-table entries that no sequence uses hold garbage (NaN keys, huge block ids).
"""

from __future__ import annotations

import dataclasses
import zlib

import pytest
import torch

from mlaverify.kernels.dense_decode import MIN_SPLIT_TOKENS, _split_tokens, dense_decode, dense_decode_launch
from mlaverify.reference import dense_decode_reference
from tests.kernels.judge import assert_within_budget
from mlaverify.verify.compare import bits_equal

GARBAGE_BLOCK_IDS = (2**31 - 1, -(2**31), 1 << 20)


@dataclasses.dataclass(frozen=True)
class Case:
    lens: tuple[int, ...]  # cache_seqlens, one per sequence
    s_q: int
    h_q: int
    h_kv: int
    d: int  # 576 or 512 (head_dim_v is 512)
    page_block_size: int
    causal: bool = False
    dtype: torch.dtype = torch.bfloat16
    split_tokens: int | None = None  # None: the kernel's own shape-derived choice
    strided: bool = False  # q and k_cache non-contiguous outside the last dim

    @property
    def id(self) -> str:
        parts = [
            "bf16" if self.dtype == torch.bfloat16 else "fp16", f"d{self.d}", f"pb{self.page_block_size}",
            f"hq{self.h_q}", f"hkv{self.h_kv}", f"sq{self.s_q}", "lens" + "_".join(map(str, self.lens)),
        ]
        parts += ["causal"] if self.causal else []
        parts += [f"split{self.split_tokens}"] if self.split_tokens else []
        parts += ["strided"] if self.strided else []
        return "-".join(parts)


CASES = [
    Case((0, 7, 130), 1, 4, 1, 576, 3),
    Case((2, 150), 3, 6, 3, 512, 1, causal=True, dtype=torch.float16, split_tokens=64),
    Case((300, 1), 2, 16, 2, 576, 64, causal=True, split_tokens=64),
    Case((0, 0), 2, 2, 1, 512, 64, causal=True),  # nothing to attend anywhere
    Case((5, 70, 1), 1, 1, 1, 576, 64, dtype=torch.float16),  # a single head
    Case((90, 3), 4, 9, 3, 576, 7, causal=True, split_tokens=64, strided=True),
    Case((200,), 1, 3, 1, 512, 64, split_tokens=64, strided=True),  # h_q not a power of two
    Case((64, 129, 33), 2, 4, 2, 576, 64, dtype=torch.float16, causal=True),
    # more than 16 query rows per KV head: the rows-first loop (the cases above take the keys-first one)
    Case((100, 260), 2, 32, 2, 576, 16, causal=True, split_tokens=128),
    Case((70,), 1, 64, 1, 512, 64),
]


def make_inputs(case: Case, seed: int):
    """q, k_cache, block_table, cache_seqlens; every unused slot and table entry holds garbage."""
    g = torch.Generator().manual_seed(seed)
    b, pbs = len(case.lens), case.page_block_size
    max_blocks = max(1, -(-max(case.lens) // pbs)) + 1  # one spare entry past the longest sequence
    num_blocks = b * max_blocks + 1
    k = torch.randn(num_blocks, pbs, case.h_kv, case.d, generator=g).to(case.dtype)
    order = torch.randperm(num_blocks, generator=g).int()
    table = order[: b * max_blocks].view(b, max_blocks).clone()
    used_slots = torch.zeros(num_blocks, pbs, dtype=torch.bool)
    for i, length in enumerate(case.lens):
        n_used = -(-length // pbs)
        for blk in range(max_blocks):
            if blk < n_used:
                used_slots[table[i, blk], : min(pbs, length - blk * pbs)] = True
            else:  # past the sequence: garbage ids (huge, negative) or real blocks full of NaN
                table[i, blk] = GARBAGE_BLOCK_IDS[(i + blk) % len(GARBAGE_BLOCK_IDS)] if blk % 2 else table[i, blk]
    k[~used_slots] = float("nan")
    q = torch.randn(b, case.s_q, case.h_q, case.d, generator=g).to(case.dtype)
    if case.strided:
        q = torch.cat([q, q], dim=2)[:, :, : case.h_q]  # batch and token strides doubled
        k = torch.cat([k, k], dim=2)[:, :, : case.h_kv]
    return q, k, table, torch.tensor(case.lens, dtype=torch.int32)


def run(case: Case, q, k, table, lens):
    if case.split_tokens is None:
        return dense_decode(q, k, table, lens, 512, None, case.causal)
    return dense_decode_launch(q, k, table, lens, None, case.causal, split_tokens=case.split_tokens)


def assert_matches(got, ref, q: torch.Tensor, emu) -> None:
    """Within the calibrated budget of the reference (`judge`); emu: the reference with P rounded to q's dtype."""
    b, s_q, h_q, _ = q.shape
    for name, actual, reference, emulated, shape, dtype in (
        ("out", got[0], ref[0], emu[0].to(q.dtype), (b, s_q, h_q, 512), q.dtype),
        ("lse", got[1], ref[1], emu[1], (b, h_q, s_q), torch.float32),
    ):
        assert_within_budget("dense_decode", name, actual, reference, emulated, shape, dtype)


def _with_q(ref_emu, q):
    """(ref, q, emu): assert_matches' argument order."""
    return ref_emu[0], q, ref_emu[1]


def reference_and_emulation(q, k, table, lens, **kwargs):
    return (dense_decode_reference(q, k, table, lens, 512, **kwargs),
            dense_decode_reference(q, k, table, lens, 512, p_dtype=q.dtype, **kwargs))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_reference(case: Case):
    q, k, table, lens = make_inputs(case, seed=zlib.crc32(case.id.encode()))
    got = run(case, q, k, table, lens)
    ref, emu = reference_and_emulation(q, k, table, lens, causal=case.causal)
    assert_matches(got, ref, q, emu)


def test_softmax_scale_is_used():
    case = Case((40, 9), 1, 2, 1, 512, 16)
    q, k, table, lens = make_inputs(case, seed=2)
    got = dense_decode(q, k, table, lens, 512, 0.3, False)
    assert_matches(got, *_with_q(reference_and_emulation(q, k, table, lens, softmax_scale=0.3), q))


def test_no_visible_token_gives_zero_out_and_inf_lse():
    """Length 0, and causal early queries of a sequence shorter than s_q."""
    case = Case((0, 2), 4, 2, 1, 576, 3, causal=True)
    q, k, table, lens = make_inputs(case, seed=4)
    out, lse = dense_decode(q, k, table, lens, 512, None, True)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and bool(torch.isposinf(lse[0]).all())
    # sequence 1 (length 2, s_q 4): query j sees t <= j - 2, so queries 0 and 1 see nothing
    assert torch.equal(out[1, :2], torch.zeros_like(out[1, :2])) and bool(torch.isposinf(lse[1, :, :2]).all())
    assert bool(torch.isfinite(lse[1, :, 2:]).all())


@pytest.mark.parametrize("split_tokens", [None, 64], ids=["shape-derived-split", "split64"])
def test_repeat_and_batch_permutation_are_bit_identical(split_tokens):
    case = Case((600, 0, 65, 300), 2, 4, 2, 576, 16, causal=True, split_tokens=split_tokens)
    q, k, table, lens = make_inputs(case, seed=9)
    first = run(case, q, k, table, lens)
    assert all(bits_equal(a, b) for a, b in zip(first, run(case, q, k, table, lens)))
    perm = torch.tensor([2, 0, 3, 1])
    permuted = run(case, q[perm], k, table[perm], lens[perm])
    assert bits_equal(permuted[0], first[0][perm]) and bits_equal(permuted[1], first[1][perm])


def test_split_size_comes_from_shapes_only():
    """Few long sequences get several splits, a full batch one; in the interpreter never below
    MIN_SPLIT_TOKENS; compiled, whole waves of the target."""
    from mlaverify.kernels.dense_decode import COMPILED_TILES, COMPILED_TILES_FEW_ROWS, ONE_ROUNDING_TILES
    from mlaverify.kernels._targets import INTERPRETER, TARGETS

    interp = dataclasses.replace(COMPILED_TILES, block_n=64)
    few = _split_tokens(b=2, h_kv=1, row_tiles=1, max_len=8192, tiles=interp, target=INTERPRETER)
    assert MIN_SPLIT_TOKENS <= few < 8192 and few % 64 == 0
    assert _split_tokens(b=128, h_kv=1, row_tiles=8, max_len=8192, tiles=interp, target=INTERPRETER) == 8192
    h200 = TARGETS["sm_90"]
    # 128 x 4 row tiles of 64 rows: 512 programs, 3.9 waves of one block per SM: no split pays
    assert _split_tokens(128, 1, 4, 8192, ONE_ROUNDING_TILES, h200) == 8192
    # memory-bound (16 rows): 128 programs, two blocks per SM: 2 splits fill 256 of 264 slots
    assert _split_tokens(128, 1, 1, 8192, COMPILED_TILES_FEW_ROWS, h200) == 4096
    # two sequences: as many splits as fit one wave of 132 SMs
    assert 8192 // _split_tokens(2, 1, 4, 8192, ONE_ROUNDING_TILES, h200) == 16


@pytest.mark.parametrize(
    "mutate, error, fragment",
    [
        (lambda a: a.update(cache_seqlens=a["cache_seqlens"].long()), TypeError, "cache_seqlens"),
        (lambda a: a.update(k_cache=a["k_cache"].half()), TypeError, "k_cache"),
        (lambda a: a.update(head_dim_v=576), ValueError, "head_dim_v"),
        (lambda a: a.update(softmax_scale="0.1"), TypeError, "softmax_scale"),
    ],
    ids=["seqlens-int64", "cache-dtype", "head_dim_v-576", "softmax_scale-str"],
)
def test_bad_input_raises(mutate, error, fragment):
    q, k, table, lens = make_inputs(Case((5, 3), 1, 2, 1, 512, 4), seed=1)
    args = dict(q=q, k_cache=k, block_table=table, cache_seqlens=lens, head_dim_v=512, softmax_scale=None, causal=False)
    mutate(args)
    with pytest.raises(error, match=fragment):
        dense_decode(**args)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_production_shape_on_gpu(causal: bool):
    """b=16 of the production dense shape (h_q 128, h_kv 1, d 576, s_q 2), varied lengths up to 4096."""
    g = torch.Generator().manual_seed(0)
    b, s_q, h_q, pbs, max_blocks = 16, 2, 128, 64, 64
    lens = torch.randint(1, max_blocks * pbs + 1, (b,), generator=g, dtype=torch.int32)
    k = torch.randn(b * max_blocks, pbs, 1, 576, generator=g).bfloat16()
    table = torch.randperm(b * max_blocks, generator=g).int().view(b, max_blocks)
    q = torch.randn(b, s_q, h_q, 576, generator=g).bfloat16()
    q, k, table, lens = (x.cuda() for x in (q, k, table, lens))
    got = dense_decode(q, k, table, lens, 512, None, causal)
    assert_matches(got, *_with_q(reference_and_emulation(q, k, table, lens, causal=causal), q))


@pytest.mark.parametrize("p_split", ["0", "1"])
def test_scores_one_step_ahead_change_no_bit(p_split, monkeypatch):
    """QK_AHEAD (the 64-row sm_90 tiles' loop) and the plain loop (every other compiled tile) agree bit for bit."""
    from mlaverify.kernels._launch import run_all
    from mlaverify.kernels._targets import INTERPRETER
    from mlaverify.kernels.dense_decode import dense_decode_plan

    monkeypatch.setenv("MLAVERIFY_P_SPLIT", p_split)
    case = Case((300, 150), 2, 32, 2, 576, 16, causal=True)  # 32 rows per KV head: rows first
    q, k, table, lens = make_inputs(case, seed=23)
    results = []
    for ahead in (0, 1):
        (split, combine), outputs = dense_decode_plan(q, k, table, lens, None, True, INTERPRETER, split_tokens=128)
        assert split.constexprs["QK_AHEAD"] == 1  # the interpreter's own choice
        run_all([dataclasses.replace(split, constexprs={**split.constexprs, "QK_AHEAD": ahead}), combine])
        results.append(outputs)
    assert all(bits_equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("rows,keys_first", [(1, True), (16, True), (17, False), (64, False)])
def test_keys_first_for_at_most_16_rows(rows, keys_first):
    """At most 16 query rows per KV head: the transposed products, in the interpreter as on sm_90 (where
    the 64 keys of a step fill wgmma's M); more rows: the rows-first tiles."""
    from mlaverify.kernels._targets import INTERPRETER, get_target
    from mlaverify.kernels.dense_decode import launch_tiles

    for target in (INTERPRETER, get_target("sm_90")):
        tiles = launch_tiles(rows, target, split_p=False)
        assert tiles.keys_first is keys_first, (target.name, tiles)
        if keys_first:
            assert tiles.block_n == 64 and tiles.block_m == 16 and not tiles.qk_ahead


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_keys_first_and_rows_first_agree(causal):
    """The transposed products (KEYS_FIRST) and the rows-first loop on the same launch: the same sums
    in another order, so float32 results within a few ulp and bf16 outputs within one rounding step
    (a float32 difference can cross a bf16 rounding boundary), and the same empty rows."""
    from mlaverify.kernels._launch import run_all
    from mlaverify.kernels._targets import INTERPRETER
    from mlaverify.kernels.dense_decode import dense_decode_plan

    case = Case((300, 0, 45), 2, 8, 1, 576, 16, causal=causal)
    q, k, table, lens = make_inputs(case, seed=29)
    results = []
    for keys_first in (1, 0):
        (split, combine), outputs = dense_decode_plan(q, k, table, lens, None, causal, INTERPRETER, split_tokens=128)
        assert split.constexprs["KEYS_FIRST"] == 1  # 16 rows: the interpreter's own choice
        run_all([dataclasses.replace(split, constexprs={**split.constexprs, "KEYS_FIRST": keys_first}), combine])
        results.append(outputs)
    (out_t, lse_t), (out_r, lse_r) = results
    assert torch.equal(torch.isinf(lse_t), torch.isinf(lse_r)) and torch.isinf(lse_t).any()
    finite = torch.isfinite(lse_r)
    torch.testing.assert_close(lse_t[finite], lse_r[finite], rtol=1e-6, atol=1e-6)
    ulp = torch.finfo(torch.bfloat16).eps * out_r.float().abs().clamp_min(2.0**-126)
    assert ((out_t.float() - out_r.float()).abs() <= ulp).all()
