"""The main loop of the sparse decode split kernel: both index lists of one split, one step ahead.

One step is ``BLOCK_N`` index entries: their keys dequantized from FP8 (``_sparse_decode_fp8``),
the scores ``q k^T`` of all heads of the tile, the online softmax (exp2 domain) and ``P @ V``.
``attend_lists`` computes the scores of step t in iteration t and the softmax and ``P @ V`` of
step t - 1 there, so that no dot's result flows into another dot within one iteration. Triton's
AccelerateMatmul gives a dot whose forward slice holds another dot all warps on M (warpsPerCTA
[8, 1]); with 64 rows and 8 warps the second warpgroup then computes the same QK product again.
Unchained, the QK dots get [4, 2]: the two warpgroups split the scores by column.
"""

from __future__ import annotations

from . import _runtime  # noqa: F401  (decides compiled/interpreted before any kernel is built)

import triton
import triton.language as tl

from ._sparse_decode_fp8 import model1_chunk, model1_rows, round_to_bf16, v32_chunk, v32_rope, v32_tokens
from ._unchained_qk import dot_f32, opaque

HEAD_DIM_V = 512  # output dims; also the width of the first key piece (576 = 512 + 64)
D_V = tl.constexpr(HEAD_DIM_V)
CHUNK_V = tl.constexpr(128)  # the accumulator's and the keys' chunk width (_sparse_decode_fp8.CHUNK)


@triton.jit
def _step_entries(
    t,  # step number: the main list's steps first, then the extra list's; nothing for t < 0 or past the end
    main_steps, start, end, x_start, x_end,  # steps of the main list; entries [start, end), [x_start, x_end)
    idx_ptr, stride_it, x_idx_ptr, stride_xt,  # this row's index lists and their element strides
    cache_ptr, stride_block, page_block, x_cache_ptr, stride_x_block, x_page_block,  # the two caches
    HAS_EXTRA: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """(pos, valid, cache, bytes between its page blocks, tokens per block) of the BLOCK_N entries of step t."""
    n0 = start + t * BLOCK_N
    stop = end
    idx = idx_ptr
    stride = stride_it
    cache = cache_ptr
    cache_stride = stride_block
    block = page_block
    if HAS_EXTRA:
        extra = t >= main_steps
        n0 = tl.where(extra, x_start + (t - main_steps) * BLOCK_N, n0)
        stop = tl.where(extra, x_end, stop)
        idx = tl.where(extra, x_idx_ptr, idx)
        stride = tl.where(extra, stride_xt, stride)
        cache = tl.where(extra, x_cache_ptr, cache)
        cache_stride = tl.where(extra, stride_x_block, cache_stride)
        block = tl.where(extra, x_page_block, block)
    offs = n0 + tl.arange(0, BLOCK_N)
    inside = (offs < stop) & (t >= 0)
    pos = tl.load(idx + offs * stride, mask=inside, other=-1)
    valid = inside & (pos != -1)  # only -1 marks an invalid decode entry
    return tl.where(valid, pos, 0), valid, cache, cache_stride, block


@triton.jit
def _keys(cache, stride_block, page_block, pos, valid, IS_MODEL1: tl.constexpr, BLOCK_N: tl.constexpr,
          INTERPRET: tl.constexpr):
    """Dequantized keys of one step as four 128-dim chunks [BLOCK_N, 128] (dims 0-511, = V) and, for
    V32, the RoPE part [BLOCK_N, 64] (MODEL1: its RoPE dims are the last chunk's upper half)."""
    if IS_MODEL1:
        data, scales = model1_rows(cache, pos, stride_block, page_block)
        k0 = model1_chunk(data, scales, valid, 0, BLOCK_N, INTERPRET)
        k1 = model1_chunk(data, scales, valid, 1, BLOCK_N, INTERPRET)
        k2 = model1_chunk(data, scales, valid, 2, BLOCK_N, INTERPRET)
        k3 = model1_chunk(data, scales, valid, 3, BLOCK_N, INTERPRET)
        k_b = k0  # MODEL1 has no second piece; unused
    else:
        token = v32_tokens(cache, pos, stride_block, page_block)
        k0 = v32_chunk(token, valid, 0, INTERPRET)
        k1 = v32_chunk(token, valid, 1, INTERPRET)
        k2 = v32_chunk(token, valid, 2, INTERPRET)
        k3 = v32_chunk(token, valid, 3, INTERPRET)
        k_b = v32_rope(token, valid, INTERPRET)
    return k0, k1, k2, k3, k_b


@triton.jit
def _chunk_scores(q0, q1, q2, q3, q_b, k0, k1, k2, k3, k_b, HAS_B: tl.constexpr, UPCAST: tl.constexpr):
    """q k^T [M, N] float32 as a sum of per-chunk dots (128 dims each, then V32's 64 RoPE dims), in the
    order chunk 0, 1, 2, 3, RoPE. Every summed dot result goes through `opaque`: otherwise Triton folds
    ``dot(a, b) + c`` into a dot accumulating into another, a chained dot (see _unchained_qk)."""
    s = opaque(dot_f32(q0, tl.trans(k0), UPCAST), UPCAST) + opaque(dot_f32(q1, tl.trans(k1), UPCAST), UPCAST)
    s += opaque(dot_f32(q2, tl.trans(k2), UPCAST), UPCAST)
    s += opaque(dot_f32(q3, tl.trans(k3), UPCAST), UPCAST)
    if HAS_B:
        s += opaque(dot_f32(q_b, tl.trans(k_b), UPCAST), UPCAST)
    return s


@triton.jit
def _p_at_v(p_hi, p_lo, v, acc, SPLIT_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """acc + P @ v for one 128-dim chunk of V (acc already rescaled by alpha)."""
    if SPLIT_P:  # p = p_hi + p_lo to ~2^-17: P @ V nearly as exact as in float32
        p2 = tl.reshape(tl.join(p_hi, p_lo), [p_hi.shape[0], 2 * BLOCK_N])  # columns hi0, lo0, hi1, lo1, ...
        v2 = tl.reshape(tl.permute(tl.join(v, v), (0, 2, 1)), [2 * BLOCK_N, v.shape[1]])  # rows v0, v0, v1, ...
        acc = tl.dot(p2, v2, acc)
    else:
        acc = tl.dot(p_hi, v, acc)  # accumulate in place
    return acc


@triton.jit
def attend_lists(
    q0, q1, q2, q3, q_b,  # query pieces: dims [0, 512) as four [BLOCK_H, 128] chunks, [BLOCK_H, 64] (V32 only)
    start, end, x_start, x_end,  # entries [start, end) of the main list, [x_start, x_end) of the extra one
    idx_ptr, stride_it, x_idx_ptr, stride_xt,  # this row's index lists and their element strides
    cache_ptr, stride_block, page_block, x_cache_ptr, stride_x_block, x_page_block,  # uint8 caches
    qk_scale_log2,  # softmax_scale * log2(e)
    IS_MODEL1: tl.constexpr, HAS_EXTRA: tl.constexpr, SPLIT_P: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr, INTERPRET: tl.constexpr,
):
    """(acc0..acc3: the [BLOCK_H, 512] f32 accumulator as four 128-column chunks, row max m (log2 domain),
    row sum l) over both lists' entries of this split.

    Software-pipelined by one step: iteration t does the softmax and P @ V of step t - 1 (with the
    scores carried from the previous iteration and its keys dequantized again), then computes the
    scores of step t. The QK dots' results then only reach the loop's yield, so Triton's AccelerateMatmul does
    not see a chained dot and splits its 64-row wgmma tile between the two warpgroups by N instead of
    computing it in both (a dot whose result flows into another dot gets all warps on M).
    Step 0's softmax sees no entry and leaves the state as initialised; the last step's scores are unused.
    Keys are dequantized and consumed one 128-dim chunk at a time (QK as a sum of chunk dots, P @ V
    into per-chunk accumulators), so no whole [BLOCK_N, 512] tile is live beside the accumulator.
    """
    acc0 = tl.zeros([BLOCK_H, CHUNK_V], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_H, CHUNK_V], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_H, CHUNK_V], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_H, CHUNK_V], dtype=tl.float32)
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    main_steps = tl.cdiv(tl.maximum(end - start, 0), BLOCK_N)
    steps = main_steps
    if HAS_EXTRA:
        steps += tl.cdiv(tl.maximum(x_end - x_start, 0), BLOCK_N)
    s = tl.full([BLOCK_H, BLOCK_N], float("-inf"), dtype=tl.float32)  # scores of step -1: no entry
    for t in range(0, steps + 1):
        # Step t - 1: its keys again (V), and the online softmax on the carried scores.
        pos, valid, cache, cache_stride, block = _step_entries(
            t - 1, main_steps, start, end, x_start, x_end, idx_ptr, stride_it, x_idx_ptr, stride_xt,
            cache_ptr, stride_block, page_block, x_cache_ptr, stride_x_block, x_page_block, HAS_EXTRA, BLOCK_N,
        )
        v0, v1, v2, v3, _unused = _keys(cache, cache_stride, block, pos, valid, IS_MODEL1, BLOCK_N, INTERPRET)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # all masked so far: keep exp2 finite
        p = tl.exp2(s - m_use[:, None])  # masked entries: exp2(-inf) = 0
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        p_hi = round_to_bf16(p, INTERPRET)
        p_lo = p_hi
        if SPLIT_P:
            p_lo = round_to_bf16(p - p_hi.to(tl.float32), INTERPRET)
        acc0 = _p_at_v(p_hi, p_lo, v0, acc0 * alpha[:, None], SPLIT_P, BLOCK_N)
        acc1 = _p_at_v(p_hi, p_lo, v1, acc1 * alpha[:, None], SPLIT_P, BLOCK_N)
        acc2 = _p_at_v(p_hi, p_lo, v2, acc2 * alpha[:, None], SPLIT_P, BLOCK_N)
        acc3 = _p_at_v(p_hi, p_lo, v3, acc3 * alpha[:, None], SPLIT_P, BLOCK_N)

        # Step t: its scores, after step t - 1's P @ V so that they are not live across it (sm_90: 24-120 B
        # of spill and 0-18 local loads per step instead of 96-232 B and 19-55 with the scores first).
        pos, valid, cache, cache_stride, block = _step_entries(
            t, main_steps, start, end, x_start, x_end, idx_ptr, stride_it, x_idx_ptr, stride_xt,
            cache_ptr, stride_block, page_block, x_cache_ptr, stride_x_block, x_page_block, HAS_EXTRA, BLOCK_N,
        )
        k0, k1, k2, k3, k_b = _keys(cache, cache_stride, block, pos, valid, IS_MODEL1, BLOCK_N, INTERPRET)
        s_next = _chunk_scores(q0, q1, q2, q3, q_b, k0, k1, k2, k3, k_b, not IS_MODEL1, INTERPRET)
        s_next = tl.where(valid[None, :], s_next * qk_scale_log2, float("-inf"))  # exp2 domain
        m_i = m_new
        s = s_next
    return acc0, acc1, acc2, acc3, m_i, l_i
