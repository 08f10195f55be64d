"""Sparse MLA prefill in Triton: ``flash_mla_sparse_fwd``.

One program handles one query token and one tile of ``BLOCK_H`` query heads. It walks that
token's top-k list ``BLOCK_K`` entries at a time, gathers the referenced kv rows (bf16, not
quantized) and runs an online softmax over them. All query heads share the single kv head, so
a gathered tile feeds ``BLOCK_H`` heads at once; V is the first 512 columns of the same tile.

Semantics (operations.md, section 2): an index ``t`` counts only when ``0 <= t < s_kv`` and it
sits before ``topk_length[j]``; rows with no such entry give out 0, max_logits -inf, lse +inf;
the attention sink scales ``out`` by ``1 / (1 + exp(sink - lse))`` and leaves lse alone.
"""

from __future__ import annotations

import dataclasses

from mlaverify.kernels import _runtime  # first: it selects compiled vs interpreted mode

import torch
import triton
import triton.language as tl

from mlaverify.reference.validation import check_softmax_scale, check_sparse_prefill_inputs

from ._checks import resolve_check_inputs
from ._options import p_split
from ._launch import KernelLaunch, run_all
from ._targets import INTERPRETER, GpuTarget, target_of_device
from ._unchained_qk import dot_f32 as _dot, qk_scores

D_V = 512  # V width and the first (power-of-two) piece of K for both model types
D_ROPE = 64  # the second piece of K when d_qk == 576


@triton.jit
def _round(x, DTYPE: tl.constexpr, UPCAST: tl.constexpr):
    """float32 -> DTYPE (bf16 or fp16) with round-to-nearest-even.

    Compiled Triton rounds to nearest even already; the interpreter truncates to bf16, so
    interpreted launches round the float32 bit pattern by hand first (NaN and inf survive).
    """
    if UPCAST and DTYPE == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & -65536  # keep the top 16 bits, ties to even
        x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)


@triton.jit
def _dot_pv(p, v, UPCAST: tl.constexpr, P_SPLIT: tl.constexpr):
    """p [M, N] float32 times v [N, D] (bf16/fp16) in float32.

    p is rounded to 16 bits once, as FlashMLA does (up to 2^-9 relative per weight: within the
    calibrated budget); with P_SPLIT (MLAVERIFY_P_SPLIT=1, mlaverify.kernels._options) it is
    carried as two 16-bit terms p_hi + p_lo (~2^-17), at twice the tensor-core work.
    """
    p_hi = _round(p, v.dtype, UPCAST)
    res = _dot(p_hi, v, UPCAST)
    if P_SPLIT:
        p_lo = _round(p - p_hi.to(tl.float32), v.dtype, UPCAST)
        res = res + _dot(p_lo, v, UPCAST)
    return res


@triton.jit
def _online_softmax_step(acc, m_i, l_i, scores, v, UPCAST: tl.constexpr, P_SPLIT: tl.constexpr):
    """Fold one block of scaled scores [M, N] (-inf where masked) and values v [N, D] into the
    running (acc, max, sum) of a natural-log online softmax."""
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    # rows that have seen nothing yet keep m = -inf; shift by 0 there to avoid inf - inf
    m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_shift)  # rescales the old sums; 0 while m_i is -inf
    p = tl.exp(scores - m_shift[:, None])  # masked entries give exp(-inf) = 0
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + _dot_pv(p, v, UPCAST, P_SPLIT)
    return acc, m_new, l_i


@triton.jit
def _step_rows(t, idx_row, stride_ik, kv_ptr, stride_kvs, limit, s_kv, BLOCK_K: tl.constexpr):
    """(valid [BLOCK_K], kv row pointers) of step t's index entries; none valid for t < 0 or past `limit`.

    An index counts when 0 <= idx < s_kv and it sits before `limit`; invalid ones are masked before they
    form addresses (an index up to 2^31 - 1 never enters them).
    """
    offs_k = t * BLOCK_K + tl.arange(0, BLOCK_K)
    in_list = (offs_k < limit) & (t >= 0)
    idx = tl.load(idx_row + offs_k * stride_ik, mask=in_list, other=-1)
    valid = in_list & (idx >= 0) & (idx < s_kv)
    rows = tl.where(valid, idx, 0).to(tl.int64)
    return valid, kv_ptr + rows[:, None] * stride_kvs


@triton.jit
def _sparse_prefill_kernel(
    q_ptr,  # [s_q, h_q, d_qk] bf16
    kv_ptr,  # [s_kv, 1, d_qk] bf16
    idx_ptr,  # [s_q, 1, topk] int32
    topk_len_ptr,  # [s_q] int32 (unused unless HAS_TOPK_LEN)
    sink_ptr,  # [h_q] f32 (unused unless HAS_SINK)
    out_ptr,  # [s_q, h_q, 512] bf16
    max_ptr,  # [s_q, h_q] f32, contiguous
    lse_ptr,  # [s_q, h_q] f32, contiguous
    s_kv,  # number of kv rows: valid indices lie in [0, s_kv)
    h_q,  # number of query heads
    topk,  # length of each index list
    sm_scale,  # softmax scale applied to <q, k>
    stride_qs, stride_qh, stride_qd,  # q strides (elements)
    stride_kvs, stride_kvd,  # kv strides (elements); the head dim has size 1
    stride_is, stride_ik,  # indices strides (elements)
    stride_os, stride_oh, stride_od,  # out strides (elements)
    HAS_ROPE: tl.constexpr,  # d_qk == 576: K has a second 64-wide piece
    HAS_TOPK_LEN: tl.constexpr,  # topk_length given
    HAS_SINK: tl.constexpr,  # attn_sink given
    DV: tl.constexpr,  # 512
    DR: tl.constexpr,  # 64
    BLOCK_H: tl.constexpr,  # query heads per program
    BLOCK_K: tl.constexpr,  # index-list entries per step
    UPCAST: tl.constexpr,  # interpreted launch: dot on float32 copies (see _dot)
    P_SPLIT: tl.constexpr,  # P @ V with P as hi + lo 16-bit terms (mlaverify.kernels._options)
    QK_AHEAD: tl.constexpr,  # 1: scores one step ahead of the softmax (see the loop), 0: in step
):
    tl.static_assert(DV == 512)
    tl.static_assert(BLOCK_H >= 16)  # tl.dot needs >= 16 rows when compiled
    tl.static_assert(BLOCK_K >= 16)
    # One grid axis, head tiles fastest: the tiles of one query token run side by side and gather the
    # same kv rows, so those are read from HBM about once (L2 serves the other tiles).
    # 64-bit program ids: s_q * stride_qs overflows int32 at production sizes (s_q = 70000)
    head_tiles = tl.cdiv(h_q, BLOCK_H)
    pid = tl.program_id(0).to(tl.int64)
    pid_s = pid // head_tiles
    pid_h = (pid % head_tiles).to(tl.int32)

    heads = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    head_ok = heads < h_q
    heads64 = heads.to(tl.int64)
    offs_v = tl.arange(0, DV)
    offs_r = tl.arange(0, DR)

    # query tile, padded heads read as 0
    q_row = q_ptr + pid_s * stride_qs + heads64[:, None] * stride_qh
    q_main = tl.load(q_row + offs_v[None, :] * stride_qd, mask=head_ok[:, None], other=0.0)
    q_rope = q_main  # MODEL1: no second piece; unused
    if HAS_ROPE:
        q_rope = tl.load(q_row + (DV + offs_r)[None, :] * stride_qd, mask=head_ok[:, None], other=0.0)

    limit = topk
    if HAS_TOPK_LEN:
        limit = tl.minimum(tl.load(topk_len_ptr + pid_s), topk)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)  # running max of scaled logits
    l_i = tl.zeros([BLOCK_H], tl.float32)  # running sum of exp(logit - m_i)
    acc = tl.zeros([BLOCK_H, DV], tl.float32)  # running sum of exp(logit - m_i) * V

    # QK_AHEAD (kernels/_unchained_qk.py): iteration t computes the scores of step t and folds those of
    # step t - 1 (carried) into the softmax, with that step's kv rows gathered again as V; step -1 has no
    # entry and leaves the state as initialised, the scores of the step past the list go unused.
    # Otherwise iteration t does all of step t.
    idx_row = idx_ptr + pid_s * stride_is
    scores = tl.full([BLOCK_H, BLOCK_K], float("-inf"), tl.float32)  # step -1
    for t in range(0, tl.cdiv(limit, BLOCK_K) + QK_AHEAD):
        valid, kv_row = _step_rows(t, idx_row, stride_ik, kv_ptr, stride_kvs, limit, s_kv, BLOCK_K)
        # masked loads give 0 for ignored entries, so NaN bytes they point at never enter K or V
        k_main = tl.load(kv_row + offs_v[None, :] * stride_kvd, mask=valid[:, None], other=0.0)
        k_rope = k_main  # MODEL1: no second piece; unused
        if HAS_ROPE:
            k_rope = tl.load(kv_row + (DV + offs_r)[None, :] * stride_kvd, mask=valid[:, None], other=0.0)
        s_next = qk_scores(q_main, q_rope, k_main, k_rope, HAS_ROPE, QK_AHEAD, UPCAST)  # [BLOCK_H, BLOCK_K]
        s_next = tl.where(valid[None, :], s_next * sm_scale, float("-inf"))

        v = k_main  # V = K[:, :512]
        if QK_AHEAD:
            valid, kv_row = _step_rows(t - 1, idx_row, stride_ik, kv_ptr, stride_kvs, limit, s_kv, BLOCK_K)
            v = tl.load(kv_row + offs_v[None, :] * stride_kvd, mask=valid[:, None], other=0.0)
        else:
            scores = s_next
        acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, scores, v, UPCAST, P_SPLIT)
        scores = s_next

    has_any = l_i > 0.0
    l_safe = tl.where(has_any, l_i, 1.0)
    lse = tl.where(has_any, m_i + tl.log(l_safe), float("inf"))
    out = tl.where(has_any[:, None], acc / l_safe[:, None], 0.0)
    if HAS_SINK:
        sink = tl.load(sink_ptr + heads, mask=head_ok, other=float("-inf"))
        # 1 / (1 + exp(sink - lse)): sink -inf -> 1, sink +inf -> 0; empty rows stay 0
        factor = tl.where(has_any, 1.0 / (1.0 + tl.exp(sink - tl.where(has_any, lse, 0.0))), 1.0)
        out = out * factor[:, None]

    out_row = out_ptr + pid_s * stride_os + heads64[:, None] * stride_oh
    tl.store(out_row + offs_v[None, :] * stride_od, _round(out, tl.bfloat16, UPCAST), mask=head_ok[:, None])
    stat = pid_s * h_q + heads64
    tl.store(max_ptr + stat, m_i, mask=head_ok)
    tl.store(lse_ptr + stat, lse, mask=head_ok)


@dataclasses.dataclass(frozen=True)
class SparsePrefillTiles:
    """Tile sizes of one compiled launch, with the shared memory they compile to for sm_90."""

    block_h: int  # query heads per program: the M dim of the dots
    block_k: int  # index-list entries per step
    num_warps: int
    num_stages: int
    smem_sm90: int  # bytes, from `python -m mlaverify.kernels.inspect` (tests/kernels/test_inspect.py checks it)
    # scores one step ahead of the softmax (kernels/_unchained_qk.py): on 64-head wgmma tiles it keeps the
    # second warpgroup from computing QK again; on mma.sync tiles it saves no MMA and costs registers and
    # shared memory (the kv rows of a step are gathered twice), so off by default
    qk_ahead: bool = False


# Compiled candidates, best first; a target takes the first whose shared memory fits its per-block limit.
# sm_90, P as hi + lo: 32 x 32 tiles with 8 warps compile without spills (64 heads spill ~3.9 KB of stack
# per thread); two stages pipeline the kv gathers with cp.async (255 registers, 0 spills, and less shared
# memory than one stage: 75,904 B instead of 102,400).
COMPILED_TILES = (
    SparsePrefillTiles(32, 32, 8, 2, smem_sm90=75904),  # V32; MODEL1 (no RoPE piece) needs less
    SparsePrefillTiles(16, 32, 4, 1, smem_sm90=83968),  # smallest; MODEL1 81,920 (sm_86 build: the same)
)
# With one bf16 rounding of P (MLAVERIFY_P_SPLIT=0) 64-head tiles fit the registers and use wgmma: tried
# first in that mode. Scores one step ahead: QK once (ratio 1.00 instead of 1.53), 0 B of spill instead of
# 128 (V32), shared memory 217,088 B instead of 147,584 (the second gather of a step's kv rows as V).
ONE_ROUNDING_TILES = (SparsePrefillTiles(64, 32, 8, 2, smem_sm90=217088, qk_ahead=True),)
# The interpreter pays per operation, not per element: few large programs are fastest.
INTERPRETER_BLOCK_K = 64


def launch_tiles(h_q: int, target: GpuTarget, split_p: bool | None = None) -> SparsePrefillTiles:
    """The tiles of a launch with h_q heads on `target`; ValueError when no candidate fits its shared memory.

    ``split_p``: P enters P @ V as hi + lo (None: from MLAVERIFY_P_SPLIT, mlaverify.kernels._options).
    """
    split_p = p_split() if split_p is None else split_p
    if target is INTERPRETER:
        # scores one step ahead, as the default compiled build (bit-identical results either way)
        return SparsePrefillTiles(max(16, min(64, triton.next_power_of_2(h_q))), INTERPRETER_BLOCK_K, 4, 1, 0,
                                  qk_ahead=True)
    candidates = COMPILED_TILES if split_p else ONE_ROUNDING_TILES + COMPILED_TILES
    for tiles in candidates:
        if tiles.block_h > max(16, triton.next_power_of_2(h_q)):
            continue  # more heads per program than the call has: padding work
        if tiles.smem_sm90 <= target.smem_per_block:
            return tiles
    raise ValueError(
        f"sparse prefill: no tile configuration fits {target.name}'s {target.smem_per_block} bytes of shared "
        f"memory per block (smallest needs {min(t.smem_sm90 for t in candidates)})"
    )


def sparse_prefill_plan(q, kv, indices, sm_scale, attn_sink, topk_length, target: GpuTarget):
    """(launches, (out, max_logits, lse)) for validated inputs (real or meta tensors) on `target`."""
    s_q, h_q, d_qk = q.shape
    s_kv, topk = kv.shape[0], indices.shape[-1]
    out = torch.empty((s_q, h_q, D_V), dtype=torch.bfloat16, device=q.device)
    max_logits = torch.empty((s_q, h_q), dtype=torch.float32, device=q.device)
    lse = torch.empty((s_q, h_q), dtype=torch.float32, device=q.device)
    if s_q == 0 or h_q == 0:
        return [], (out, max_logits, lse)
    interpreted = target is INTERPRETER
    split_p = p_split()
    t = launch_tiles(h_q, target, split_p)
    # (query token, head tile) on grid axis 0 (limit 2^31 - 1), head tiles fastest
    grid = (s_q * triton.cdiv(h_q, t.block_h),)
    args = (
        q, kv, indices,
        topk_length if topk_length is not None else indices,
        attn_sink if attn_sink is not None else max_logits,
        out, max_logits, lse,
        s_kv, h_q, topk, float(sm_scale),
        q.stride(0), q.stride(1), q.stride(2),
        kv.stride(0), kv.stride(2),
        indices.stride(0), indices.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
    )
    constexprs = dict(
        HAS_ROPE=d_qk == D_V + D_ROPE, HAS_TOPK_LEN=topk_length is not None, HAS_SINK=attn_sink is not None,
        DV=D_V, DR=D_ROPE, BLOCK_H=t.block_h, BLOCK_K=t.block_k, UPCAST=interpreted, P_SPLIT=split_p,
        QK_AHEAD=int(t.qk_ahead),
    )
    launch = KernelLaunch("sparse_prefill", _sparse_prefill_kernel, grid, args, constexprs, t.num_warps, t.num_stages)
    return [launch], (out, max_logits, lse)


def sparse_prefill_launch(q, kv, indices, sm_scale, attn_sink, topk_length):
    """Launch the kernel on already validated inputs; returns (out, max_logits, lse)."""
    launches, outputs = sparse_prefill_plan(q, kv, indices, sm_scale, attn_sink, topk_length,
                                            target_of_device(q.device))
    run_all(launches)
    return outputs


def flash_mla_sparse_fwd(q, kv, indices, sm_scale, d_v=512, attn_sink=None, topk_length=None, *, check_inputs=None):
    """FlashMLA's sparse prefill: (out [s_q, h_q, 512] bf16, max_logits [s_q, h_q] f32, lse [s_q, h_q] f32).

    ``max_logits`` and ``lse`` are natural-log quantities of the scaled logits ``sm_scale * <q, k>``.
    ``check_inputs`` (keyword-only extension): see ``mlaverify.kernels._checks``.
    """
    check_sparse_prefill_inputs(q, kv, indices, d_v, attn_sink, topk_length,
                                check_values=resolve_check_inputs(check_inputs))
    sm_scale = check_softmax_scale(sm_scale, "sm_scale", required=True)
    _runtime.require_device(q, "q")  # validation has put every other tensor on q's device
    return sparse_prefill_launch(q, kv, indices, sm_scale, attn_sink, topk_length)
