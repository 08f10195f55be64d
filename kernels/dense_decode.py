"""Dense MLA decode over a bf16/fp16 paged KV cache in Triton (split-KV plus combine).

``flash_mla_with_kvcache`` (kernels/__init__.py) calls ``dense_decode`` when ``indices`` is None.

Layout of the work: for one sequence and one KV head, the query "rows" are the pairs
(query token j, head g of the KV head's group), ``s_q * h_q / h_kv`` of them, so that every
loaded key tile feeds all heads that share it. A sequence's cache is cut into splits of
``split_tokens`` tokens; each (sequence, split, KV head, row tile) program writes a partial
output normalised by its own softmax sum plus its natural-log lse, and the combine kernel
merges a sequence's splits by logsumexp weights.

``split_tokens`` is derived from shapes only (batch size, heads, block-table width), never from
the values in ``cache_seqlens``; the number of splits of a sequence is ``ceil(len / split_tokens)``,
decided from its own length. A sequence's result therefore never depends on its batch mates,
and permuting the batch permutes the outputs bit for bit.
"""

from __future__ import annotations

import dataclasses

from mlaverify.kernels import _runtime  # first: it selects compiled vs interpreted mode

import torch
import triton
import triton.language as tl

from mlaverify.kernels.sparse_prefill import _online_softmax_step, _round
from mlaverify.reference.validation import check_dense_decode_inputs, check_softmax_scale

from ._checks import resolve_check_inputs
from ._options import p_split
from ._splits import slots, whole_wave_splits
from ._launch import KernelLaunch, run_all
from ._targets import INTERPRETER, GpuTarget, target_of_device
from ._unchained_qk import dot_f32, qk_scores

D_V = 512  # head_dim_v, and the first (power-of-two) piece of K
D_ROPE = 64  # the second piece of K when d == 576
MIN_SPLIT_TOKENS = 256  # interpreter: shorter splits cost more in partial traffic than they gain in occupancy
MAX_SPLITS_COMPILED = 64  # compiled: caps the float32 partials (b x splits x h_kv x rows x 512 x 4 bytes)


@triton.jit
def _step_tokens(i, start, end, bt_row, stride_btn, k_head, stride_kn, stride_kp, page_block_size,
                 BLOCK_N: tl.constexpr):
    """(tokens [BLOCK_N], in range, key row pointers) of step i of the split [start, end); none for i < 0.

    Block-table entries and cache slots past the split may be garbage: masked before they form addresses.
    """
    t = start + i * BLOCK_N + tl.arange(0, BLOCK_N)
    t_ok = (t < end) & (i >= 0)
    blk = tl.load(bt_row + (t // page_block_size) * stride_btn, mask=t_ok, other=0)
    slot = tl.where(t_ok, blk, 0).to(tl.int64) * stride_kn + (t % page_block_size) * stride_kp
    return t, t_ok, k_head + slot[:, None]


@triton.jit
def _step_keys(k_row, t_ok, stride_kd, HAS_ROPE: tl.constexpr, DV: tl.constexpr, DR: tl.constexpr):
    """(K[:, :512], K[:, 512:576]) of a step's key rows [BLOCK_N, 1] (the second is the first when d == 512)."""
    k_main = tl.load(k_row + tl.arange(0, DV)[None, :] * stride_kd, mask=t_ok[:, None], other=0.0)
    k_rope = k_main  # d == 512: no second piece; unused
    if HAS_ROPE:
        k_rope = tl.load(k_row + (DV + tl.arange(0, DR))[None, :] * stride_kd, mask=t_ok[:, None], other=0.0)
    return k_main, k_rope


@triton.jit
def _online_softmax_step_keys_first(acc_t, m_i, l_i, scores_t, v, UPCAST: tl.constexpr):
    """`_online_softmax_step` on transposed tiles: scores_t [N, M] (keys by rows, -inf where masked),
    acc_t [512, M]; the same natural-log online softmax, reduced over axis 0. acc_t += v^T @ p^T, with
    p rounded to 16 bits once, as `_dot_pv` rounds it (hi + lo P takes the rows-first tiles: 232 B of
    spill here on sm_90)."""
    m_new = tl.maximum(m_i, tl.max(scores_t, axis=0))
    m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen nothing: shift by 0
    alpha = tl.exp(m_i - m_shift)
    p_t = tl.exp(scores_t - m_shift[None, :])
    l_i = l_i * alpha + tl.sum(p_t, axis=0)
    p_hi = _round(p_t, v.dtype, UPCAST)
    return acc_t * alpha[None, :] + dot_f32(tl.trans(v), p_hi, UPCAST), m_new, l_i


@triton.jit
def _dense_decode_split_kernel(
    q_ptr,  # [b, s_q, h_q, d] bf16/fp16
    k_ptr,  # [num_blocks, page_block_size, h_kv, d], same dtype
    bt_ptr,  # [b, max_blocks] int32 block table
    seqlens_ptr,  # [b] int32
    o_part_ptr,  # [b, n_split, h_kv, rows, 512] f32: per-split output, already normalised
    lse_part_ptr,  # [b, n_split, h_kv, rows] f32: per-split natural-log lse (-inf: nothing seen)
    s_q,  # query tokens per sequence
    h_kv,  # KV heads
    group,  # h_q // h_kv
    rows,  # s_q * group
    n_split,  # splits allotted per sequence in the grid
    split_tokens,  # tokens per split (a multiple of BLOCK_N)
    page_block_size,  # tokens per cache block
    sm_scale,  # softmax scale
    stride_qb, stride_qs, stride_qh, stride_qd,  # q strides (elements)
    stride_kn, stride_kp, stride_kh, stride_kd,  # k_cache strides (elements)
    stride_btb, stride_btn,  # block-table strides (elements)
    CAUSAL: tl.constexpr,  # query j sees tokens t <= len - s_q + j
    HAS_ROPE: tl.constexpr,  # d == 576: K has a second 64-wide piece
    DV: tl.constexpr,  # 512
    DR: tl.constexpr,  # 64
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # cache tokens per step
    UPCAST: tl.constexpr,  # interpreted launch: dot on float32 copies (see _dot)
    P_SPLIT: tl.constexpr,  # P @ V with P as hi + lo 16-bit terms (mlaverify.kernels._options)
    QK_AHEAD: tl.constexpr,  # 1: scores one step ahead of the softmax (see the loop), 0: in step
    KEYS_FIRST: tl.constexpr,  # transposed products: S^T = K Q^T, O^T = V^T P^T (the keys fill the M of the MMA)
):
    tl.static_assert(BLOCK_M >= 16)  # tl.dot needs >= 16 rows when compiled
    tl.static_assert(BLOCK_N >= 16)
    tl.static_assert(not (KEYS_FIRST and (P_SPLIT or QK_AHEAD)), "keys first: one rounding of P, scores in step")
    # One grid axis, (KV head, row tile) fastest: the row tiles of one (sequence, split) run side by
    # side and read the same keys, so KV comes from HBM about once (L2 serves the other tiles).
    n_row_tiles = tl.cdiv(rows, BLOCK_M)
    inner = h_kv * n_row_tiles
    pid_seq = tl.program_id(0) // inner  # = seq * n_split + split
    seq = (pid_seq // n_split).to(tl.int64)
    split = pid_seq % n_split
    kvh = (tl.program_id(0) % inner) // n_row_tiles
    tile = (tl.program_id(0) % inner) % n_row_tiles

    seqlen = tl.load(seqlens_ptr + seq)
    start = split * split_tokens
    if start < seqlen:  # splits past the sequence's own length write nothing (combine skips them)
        r = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = r < rows
        j = r // group  # query token of each row
        head = (kvh * group + r % group).to(tl.int64)  # query head of each row
        offs_v = tl.arange(0, DV)
        offs_r = tl.arange(0, DR)
        q_row = q_ptr + seq * stride_qb + j.to(tl.int64)[:, None] * stride_qs + head[:, None] * stride_qh
        q_main = tl.load(q_row + offs_v[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)
        q_rope = q_main  # d == 512: no second piece; unused
        if HAS_ROPE:
            q_rope = tl.load(q_row + (DV + offs_r)[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)

        end = tl.minimum(seqlen, start + split_tokens)
        if CAUSAL:
            limit = seqlen - s_q + j + 1  # [BLOCK_M]: tokens t < limit are visible (may be <= 0)
            j_last = (tl.minimum(rows, (tile + 1) * BLOCK_M) - 1) // group
            end = tl.minimum(end, seqlen - s_q + j_last + 1)  # no row of this tile sees further
        else:
            limit = tl.zeros([BLOCK_M], tl.int32) + seqlen

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max of scaled logits
        l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp(logit - m_i)
        # QK_AHEAD (kernels/_unchained_qk.py): iteration i computes the scores of step i and folds those
        # of step i - 1 (carried) into the softmax, with that step's keys loaded again as V; step -1 has no
        # token and leaves the state as initialised, the scores past `end` go unused. Otherwise iteration
        # i does all of step i.
        bt_row = bt_ptr + seq * stride_btb
        k_head = k_ptr + kvh * stride_kh
        if KEYS_FIRST:
            # Few query rows (<= 16): wgmma's M is 64, so the 64 keys of a step take the M of both products
            # and the rows the N (swap AB): S^T [BLOCK_N, BLOCK_M] = K Q^T and O^T [512, BLOCK_M] += V^T P^T,
            # one warpgroup, wgmma instead of 16-row mma.sync tiles. The same sums, transposed.
            acc_t = tl.zeros([DV, BLOCK_M], tl.float32)  # running sum of exp(logit - m_i) * V, transposed
            # Q^T formed once, before the loop: transposed inside it, its shared-memory copy was rebuilt
            # from registers every step (Triton 3.9 hoists a loop-invariant dot operand, not its transpose)
            q_main_t = tl.trans(q_main)
            q_rope_t = tl.trans(q_rope)
            for i in range(0, tl.cdiv(tl.maximum(end - start, 0), BLOCK_N)):
                t, t_ok, k_row = _step_tokens(i, start, end, bt_row, stride_btn, k_head, stride_kn, stride_kp,
                                              page_block_size, BLOCK_N)
                k_main, k_rope = _step_keys(k_row, t_ok, stride_kd, HAS_ROPE, DV, DR)
                s_t = dot_f32(k_main, q_main_t, UPCAST)  # [BLOCK_N, BLOCK_M]
                if HAS_ROPE:
                    s_t += dot_f32(k_rope, q_rope_t, UPCAST)
                visible = t_ok[:, None] & (t[:, None] < limit[None, :])
                s_t = tl.where(visible, s_t * sm_scale, float("-inf"))
                acc_t, m_i, l_i = _online_softmax_step_keys_first(acc_t, m_i, l_i, s_t, k_main, UPCAST)
            acc = tl.trans(acc_t)
        else:
            acc = tl.zeros([BLOCK_M, DV], tl.float32)  # running sum of exp(logit - m_i) * V
            scores = tl.full([BLOCK_M, BLOCK_N], float("-inf"), tl.float32)  # step -1
            for i in range(0, tl.cdiv(tl.maximum(end - start, 0), BLOCK_N) + QK_AHEAD):
                if QK_AHEAD:  # step i - 1 first: the softmax of the carried scores and P @ V, its keys again as V
                    t, t_ok, k_row = _step_tokens(i - 1, start, end, bt_row, stride_btn, k_head, stride_kn,
                                                  stride_kp, page_block_size, BLOCK_N)
                    v = tl.load(k_row + offs_v[None, :] * stride_kd, mask=t_ok[:, None], other=0.0)
                    acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, scores, v, UPCAST, P_SPLIT)
                t, t_ok, k_row = _step_tokens(i, start, end, bt_row, stride_btn, k_head, stride_kn, stride_kp,
                                              page_block_size, BLOCK_N)
                k_main, k_rope = _step_keys(k_row, t_ok, stride_kd, HAS_ROPE, DV, DR)
                s_next = qk_scores(q_main, q_rope, k_main, k_rope, HAS_ROPE, QK_AHEAD, UPCAST)  # [BLOCK_M, BLOCK_N]
                visible = t_ok[None, :] & (t[None, :] < limit[:, None])
                scores = tl.where(visible, s_next * sm_scale, float("-inf"))
                if not QK_AHEAD:  # V = K[:, :512]
                    acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, scores, k_main, UPCAST, P_SPLIT)

        seen = l_i > 0.0
        l_safe = tl.where(seen, l_i, 1.0)
        part = (seq * n_split + split) * h_kv + kvh  # (seq, split, kvh)
        part_rows = part * rows + r
        tl.store(lse_part_ptr + part_rows, tl.where(seen, m_i + tl.log(l_safe), float("-inf")), mask=row_ok)
        o = tl.where(seen[:, None], acc / l_safe[:, None], 0.0)
        tl.store(o_part_ptr + part_rows[:, None] * DV + offs_v[None, :], o, mask=row_ok[:, None])


@triton.jit
def _dense_decode_combine_kernel(
    o_part_ptr,  # [b, n_split, h_kv, rows, 512] f32
    lse_part_ptr,  # [b, n_split, h_kv, rows] f32
    seqlens_ptr,  # [b] int32
    out_ptr,  # [b, s_q, h_q, 512] q dtype
    lse_ptr,  # [b, h_q, s_q] f32, contiguous
    s_q, h_q, h_kv, group,  # shapes
    n_split,  # splits allotted per sequence
    split_tokens,  # tokens per split
    stride_ob, stride_os, stride_oh, stride_od,  # out strides (elements)
    DV: tl.constexpr,  # 512
    BLOCK_H: tl.constexpr,  # query heads per program
    UPCAST: tl.constexpr,  # interpreted launch: round bf16 by hand (see _round)
):
    seq = (tl.program_id(0) // s_q).to(tl.int64)
    j = tl.program_id(0) % s_q
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    head_ok = heads < h_q
    rows = s_q * group
    row = (heads // group) * rows + j * group + heads % group  # (kvh, row) flattened
    offs_v = tl.arange(0, DV)

    seqlen = tl.load(seqlens_ptr + seq)
    n_used = tl.cdiv(seqlen, split_tokens)  # this sequence's own split count
    part0 = seq * n_split * h_kv * rows
    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    for s in range(0, n_used):
        lse_s = tl.load(lse_part_ptr + part0 + s * h_kv * rows + row, mask=head_ok, other=float("-inf"))
        m = tl.maximum(m, lse_s)
    m_shift = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, DV], tl.float32)
    for s in range(0, n_used):
        at = part0 + s * h_kv * rows + row
        w = tl.exp(tl.load(lse_part_ptr + at, mask=head_ok, other=float("-inf")) - m_shift)  # 0 for empty splits
        o_s = tl.load(o_part_ptr + at.to(tl.int64)[:, None] * DV + offs_v[None, :], mask=head_ok[:, None], other=0.0)
        total += w
        acc += w[:, None] * o_s
    seen = total > 0.0
    t_safe = tl.where(seen, total, 1.0)
    out = tl.where(seen[:, None], acc / t_safe[:, None], 0.0)  # no visible token: out 0
    lse = tl.where(seen, m_shift + tl.log(t_safe), float("inf"))  # ... and lse +inf
    out_row = out_ptr + seq * stride_ob + j * stride_os + heads.to(tl.int64)[:, None] * stride_oh
    tl.store(out_row + offs_v[None, :] * stride_od, _round(out, out_ptr.dtype.element_ty, UPCAST), mask=head_ok[:, None])
    tl.store(lse_ptr + (seq * h_q + heads) * s_q + j, lse, mask=head_ok)


def _split_tokens(b: int, h_kv: int, row_tiles: int, max_len: int, tiles: "DenseDecodeTiles",
                  target: GpuTarget) -> int:
    """Tokens per split, from shapes only (so results never depend on batch mates' lengths).

    Compiled: the split count whose whole waves finish first for the longest possible sequence
    (`_splits.whole_wave_splits`, at most MAX_SPLITS_COMPILED). Interpreter: about two programs per
    slot, never below MIN_SPLIT_TOKENS (nor BLOCK_N) tokens per split.
    """
    block_n = tiles.block_n
    programs = max(1, b * h_kv * row_tiles)
    if target is INTERPRETER:
        n_split = max(1, min(triton.cdiv(2 * target.sm_count, programs),
                             triton.cdiv(max(max_len, 1), MIN_SPLIT_TOKENS)))
    else:
        n_split = whole_wave_splits(programs, (max(max_len, 1),), block_n,
                                    slots(target, tiles.num_warps, tiles.smem_sm90), MAX_SPLITS_COMPILED)
    per_split = triton.cdiv(max(max_len, 1), n_split)
    return triton.cdiv(per_split, block_n) * block_n


@dataclasses.dataclass(frozen=True)
class DenseDecodeTiles:
    """Tile sizes of the split kernel (and the combine's head tile), with the split's sm_90 shared memory."""

    block_m: int  # query rows (token, head) per program
    block_n: int  # cache tokens per step
    num_warps: int
    num_stages: int
    combine_block_h: int  # heads per combine program
    smem_sm90: int  # bytes, from `python -m mlaverify.kernels.inspect` (tests/kernels/test_inspect.py checks it)
    # scores one step ahead of the softmax (kernels/_unchained_qk.py): on 64-row wgmma tiles it keeps the
    # second warpgroup from computing QK again; on mma.sync tiles it saves no MMA and costs registers
    # (the keys of a step are loaded twice), so off by default
    qk_ahead: bool = False
    # transposed products (S^T = K Q^T, O^T = V^T P^T): BLOCK_N keys as the MMA's M, for tiles of too few
    # query rows to fill wgmma's M of 64
    keys_first: bool = False


# Compiled for sm_90 with P as hi + lo: a [BLOCK_M, 512] f32 accumulator with 32-token K tiles compiles
# without spills at 16 rows x 4 warps and 32 rows x 8 warps; two stages pipeline the K loads with cp.async
# (246 registers, 0 spills, 75,776 B instead of 102,400 B at one stage). The combine keeps 16 heads x 512 in f32.
COMPILED_TILES_FEW_ROWS = DenseDecodeTiles(16, 32, 4, 1, 16, smem_sm90=83968)  # also the sm_86/89 fallback
COMPILED_TILES = DenseDecodeTiles(32, 32, 8, 2, 16, smem_sm90=75776)
# With one bf16 rounding of P (MLAVERIFY_P_SPLIT=0): 64-row wgmma tiles (3,656 B of spill with hi + lo).
# Scores one step ahead: QK once (ratio 1.00 instead of 1.53), 0-24 B of spill as before, shared memory
# 217,088 B instead of 147,456 (the second load of a step's keys as V).
ONE_ROUNDING_TILES = DenseDecodeTiles(64, 32, 8, 2, 16, smem_sm90=217088, qk_ahead=True)


# At most 16 query rows per KV head: keys first (S^T = K Q^T, O^T = V^T P^T), so that the 64 keys of a
# step fill wgmma's M of 64 and one warpgroup issues m64n16k16 (the 16-row tile above is mma.sync: wgmma
# needs 64 rows, and padding 16 rows to 64 would issue 4x the counted work). sm_90: 229 registers, 0 B of
# spill, 167,936 B of shared memory (two stages of [64, 576] keys), one block per SM.
KEYS_FIRST_TILES = DenseDecodeTiles(16, 64, 4, 2, 16, smem_sm90=167936, keys_first=True)


def launch_tiles(rows: int, target: GpuTarget, split_p: bool | None = None) -> DenseDecodeTiles:
    """Tiles for this many query rows per KV head on `target`; ValueError when none fits its shared memory.

    ``split_p``: P enters P @ V as hi + lo (None: from MLAVERIFY_P_SPLIT, mlaverify.kernels._options).
    """
    split_p = p_split() if split_p is None else split_p
    if target is INTERPRETER:
        # the interpreter pays per operation, not per element: few large programs are fastest
        # scores one step ahead, as the default compiled build (bit-identical results either way)
        if rows <= 16 and not split_p:  # the compiled tile's transposed products
            return DenseDecodeTiles(16, 64, 4, 1, 64, 0, keys_first=True)
        return DenseDecodeTiles(max(16, min(64, triton.next_power_of_2(rows))), 64, 4, 1, 64, 0, qk_ahead=True)
    if rows <= 16:
        candidates = (COMPILED_TILES_FEW_ROWS,) if split_p else (KEYS_FIRST_TILES, COMPILED_TILES_FEW_ROWS)
    elif rows >= 64 and not split_p:
        candidates = (ONE_ROUNDING_TILES, COMPILED_TILES, COMPILED_TILES_FEW_ROWS)
    else:
        candidates = (COMPILED_TILES, COMPILED_TILES_FEW_ROWS)
    for tiles in candidates:
        if tiles.smem_sm90 <= target.smem_per_block:
            return tiles
    raise ValueError(
        f"dense decode: no tile configuration fits {target.name}'s {target.smem_per_block} bytes of shared "
        f"memory per block (smallest needs {min(t.smem_sm90 for t in candidates)})"
    )


def dense_decode_plan(q, k_cache, block_table, cache_seqlens, softmax_scale, causal, target: GpuTarget,
                      split_tokens=None):
    """(launches, (out, lse)) for validated inputs (real or meta tensors) on `target`.

    ``split_tokens`` (a multiple of the launch's BLOCK_N) overrides the shape-derived split size.
    """
    b, s_q, h_q, d = q.shape
    page_block_size, h_kv = k_cache.shape[1], k_cache.shape[2]
    group, rows = h_q // h_kv, s_q * (h_q // h_kv)
    interpreted = target is INTERPRETER
    split_p = p_split()
    t = launch_tiles(rows, target, split_p)
    row_tiles = triton.cdiv(rows, t.block_m)
    max_len = block_table.shape[1] * page_block_size  # validation: every length is at most this
    if split_tokens is None:
        split_tokens = _split_tokens(b, h_kv, row_tiles, max_len, t, target)
    elif split_tokens < 1 or split_tokens % t.block_n:
        raise ValueError(f"split_tokens: expected a positive multiple of BLOCK_N={t.block_n}, got {split_tokens}")
    n_split = triton.cdiv(max(max_len, 1), split_tokens)

    o_part = torch.empty((b, n_split, h_kv, rows, D_V), dtype=torch.float32, device=q.device)
    lse_part = torch.empty((b, n_split, h_kv, rows), dtype=torch.float32, device=q.device)
    out = torch.empty((b, s_q, h_q, D_V), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, h_q, s_q), dtype=torch.float32, device=q.device)
    scale = d**-0.5 if softmax_scale is None else float(softmax_scale)
    # (sequence, split, KV head, row tile) on grid axis 0 (limit 2^31 - 1), row tiles fastest
    split = KernelLaunch(
        "dense_decode.split", _dense_decode_split_kernel, (b * n_split * h_kv * row_tiles,),
        (q, k_cache, block_table, cache_seqlens, o_part, lse_part,
         s_q, h_kv, group, rows, n_split, split_tokens, page_block_size, scale,
         q.stride(0), q.stride(1), q.stride(2), q.stride(3),
         k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), k_cache.stride(3),
         block_table.stride(0), block_table.stride(1)),
        dict(CAUSAL=bool(causal), HAS_ROPE=d == D_V + D_ROPE, DV=D_V, DR=D_ROPE,
             BLOCK_M=t.block_m, BLOCK_N=t.block_n, UPCAST=interpreted, P_SPLIT=split_p,
             QK_AHEAD=int(t.qk_ahead), KEYS_FIRST=int(t.keys_first)),
        t.num_warps, t.num_stages,
    )
    combine = KernelLaunch(
        "dense_decode.combine", _dense_decode_combine_kernel, (b * s_q, triton.cdiv(h_q, t.combine_block_h)),
        (o_part, lse_part, cache_seqlens, out, lse,
         s_q, h_q, h_kv, group, n_split, split_tokens,
         out.stride(0), out.stride(1), out.stride(2), out.stride(3)),
        dict(DV=D_V, BLOCK_H=t.combine_block_h, UPCAST=interpreted),
        4, None,
    )
    return [split, combine], (out, lse)


def dense_decode_launch(q, k_cache, block_table, cache_seqlens, softmax_scale, causal, split_tokens=None):
    """Launch split + combine on validated inputs; returns (out [b, s_q, h_q, 512], lse [b, h_q, s_q]).

    ``split_tokens`` (a multiple of the launch's BLOCK_N) overrides the shape-derived split size.
    """
    launches, outputs = dense_decode_plan(q, k_cache, block_table, cache_seqlens, softmax_scale, causal,
                                          target_of_device(q.device), split_tokens)
    run_all(launches)
    return outputs


def dense_decode(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal, check_inputs=None):
    """Dense decode: out [b, s_q, h_q, 512] in q's dtype and lse [b, h_q, s_q] float32 (natural log).

    Sequence i attends to its first cache_seqlens[i] tokens; query head h reads KV head
    h // (h_q // h_kv); with ``causal``, query j sees tokens t <= len - s_q + j. A query with no
    visible token gives out 0 and lse +inf. ``check_inputs``: see ``mlaverify.kernels._checks``.
    """
    check_dense_decode_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v,
                              check_values=resolve_check_inputs(check_inputs))
    softmax_scale = check_softmax_scale(softmax_scale)
    _runtime.require_device(q, "q")  # validation has put every other tensor on q's device
    return dense_decode_launch(q, k_cache, block_table, cache_seqlens, softmax_scale, causal)
