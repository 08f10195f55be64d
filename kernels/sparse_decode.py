"""Sparse FP8 decode (operations.md section 1) as a split-KV Triton kernel plus a combine kernel.

Work layout. One program of ``_sparse_decode_split_kernel`` takes one query row (batch ``i``,
query token ``j``), a tile of up to ``BLOCK_H`` heads, and one split of the row's index lists.
It walks its share of the main list, then its share of the extra list, ``BLOCK_N`` entries at
a time: each key is dequantized from FP8 once and serves every head of the tile as the
M dimension of ``tl.dot``. The online softmax runs in the exp2 domain (log2(e) folded into
the scale). Masked entries load nothing, so NaN bytes in unreferenced slots never reach V.
The loop (``_sparse_decode_steps.attend_lists``) runs both lists as one sequence of steps and
computes the scores one step ahead of the softmax, which keeps Triton from computing the QK
product in both warpgroups of a 64-head sm_90 tile.

Splits. The number of splits comes from the problem shape only (never from data of other
sequences); each sequence cuts its own considered lengths (``topk_length``,
``extra_topk_length``) into that many chunks, so permuting the batch permutes the outputs bit
for bit, and there are no atomics, so repeated runs are bit-identical. With one split the
split kernel writes the final output itself; otherwise ``_sparse_decode_combine_kernel``
merges the partial results by natural-log logsumexp and applies the attention sink.
"""

from __future__ import annotations

from . import _runtime  # decides compiled/interpreted before any kernel below is built

import dataclasses
import math

import torch
import triton
import triton.language as tl

from mlaverify.reference.model_type import ModelType
from mlaverify.reference.validation import SparseDecodeShapes, check_softmax_scale, check_sparse_decode_inputs

from ._checks import resolve_check_inputs
from ._options import SPARSE_DECODE_BLOCK_NS, p_split, sparse_decode_block_n
from ._launch import KernelLaunch, run_all
from ._splits import slots, whole_wave_splits
from ._targets import INTERPRETER, GpuTarget, target_of_device

from ._sparse_decode_fp8 import bf16_operand, store_bf16
from ._sparse_decode_steps import CHUNK_V, D_V, HEAD_DIM_V, attend_lists

D_ROPE = tl.constexpr(64)  # V32's second key piece
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _apply_sink(out, lse, empty, sink_ptr, heads, head_ok):
    """out [BLOCK_H, D_V] times 1 / (1 + exp(sink - lse)) per head; rows with no valid entry stay 0."""
    sink = tl.load(sink_ptr + heads, mask=head_ok, other=float("-inf"))
    sink_gap = sink - tl.where(empty, 0.0, lse)  # empty rows: keep inf - inf out of the math
    return out * tl.where(empty, 0.0, 1.0 / (1.0 + tl.exp(sink_gap)))[:, None]


@triton.jit
def _chunk(length, split, num_splits, BLOCK_N: tl.constexpr):
    """Entries [start, end) of split `split` when this row's `length` entries are cut in `num_splits`."""
    chunk = tl.cdiv(tl.cdiv(length, num_splits), BLOCK_N) * BLOCK_N
    start = split * chunk
    return start, tl.minimum(start + chunk, length)


@triton.jit
def _list_lengths(i, len_ptr, topk, x_len_ptr, x_topk, HAS_LEN: tl.constexpr, HAS_EXTRA: tl.constexpr,
                  HAS_X_LEN: tl.constexpr):
    """(entries of batch row i's main list, of its extra list): topk_length / extra_topk_length where
    given, else the lists' widths; the extra length is the main one when there is no extra list (unused).
    Tensors even where the widths come as Python ints (interpreter), so that masks built from them load."""
    length = i * 0 + topk
    if HAS_LEN:
        length = tl.load(len_ptr + i)
    x_length = length
    if HAS_EXTRA:
        x_length = i * 0 + x_topk
        if HAS_X_LEN:
            x_length = tl.load(x_len_ptr + i)
    return length, x_length


@triton.jit
def _split_has_entries(length, x_length, split, num_splits, HAS_EXTRA: tl.constexpr, BLOCK_N: tl.constexpr):
    """Whether split `split` (a scalar or a vector of splits) holds an entry of the main or the extra list."""
    start, end = _chunk(length, split, num_splits, BLOCK_N)
    has = start < end
    if HAS_EXTRA:
        x_start, x_end = _chunk(x_length, split, num_splits, BLOCK_N)
        has = has | (x_start < x_end)
    return has


@triton.jit
def _sparse_decode_split_kernel(
    q_ptr, stride_qb, stride_qs, stride_qh,  # q [b, s_q, h_q, d_qk] bf16, last dim contiguous
    cache_ptr, stride_cache, page_block,  # main cache as uint8 bytes; block stride (bytes); B
    idx_ptr, stride_ib, stride_is, stride_it,  # indices [b, s_q, topk] int32
    len_ptr, topk,  # topk_length [b] int32 (when HAS_LEN); topk
    x_cache_ptr, stride_x_cache, x_page_block,  # extra cache (when HAS_EXTRA)
    x_idx_ptr, stride_xb, stride_xs, stride_xt,  # extra indices [b, s_q, extra_topk]
    x_len_ptr, x_topk,  # extra_topk_length [b] (when HAS_X_LEN); extra_topk
    sink_ptr,  # attn_sink [h_q] f32 (when HAS_SINK and FINAL)
    out_ptr, lse_ptr,  # FINAL: out [b, s_q, h_q, 512] bf16, lse [b, h_q, s_q] f32
    part_out_ptr, part_lse_ptr,  # not FINAL: [rows, splits, h_q, 512] f32, [rows, splits, h_q] f32
    s_q, h_q, num_splits, head_tiles,
    qk_scale_log2,  # softmax_scale * log2(e)
    IS_MODEL1: tl.constexpr, HAS_LEN: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_X_LEN: tl.constexpr,
    HAS_SINK: tl.constexpr, FINAL: tl.constexpr, SPLIT_P: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, INTERPRET: tl.constexpr,
):
    tl.static_assert(BLOCK_H >= 16 and BLOCK_N >= 16, "tl.dot needs tiles of at least 16")
    # Head tiles vary fastest: the tiles of one (row, split) run side by side and share its keys in L2.
    pid = tl.program_id(0)
    head_tile = pid % head_tiles
    split = (pid // head_tiles) % num_splits
    row = pid // (head_tiles * num_splits)  # = i * s_q + j
    i = row // s_q
    j = row % s_q
    heads = head_tile * BLOCK_H + tl.arange(0, BLOCK_H)
    head_ok = heads < h_q  # padded heads compute on zeros and are never stored
    dims = tl.arange(0, CHUNK_V)  # one 128-dim chunk of the query, the keys and the output

    length, x_length = _list_lengths(i, len_ptr, topk, x_len_ptr, x_topk, HAS_LEN, HAS_EXTRA, HAS_X_LEN)
    start, end = _chunk(length, split, num_splits, BLOCK_N)
    idx_row = idx_ptr + i.to(tl.int64) * stride_ib + j.to(tl.int64) * stride_is
    x_start = start
    x_end = start
    x_row = idx_row
    if HAS_EXTRA:
        x_start, x_end = _chunk(x_length, split, num_splits, BLOCK_N)
        x_row = x_idx_ptr + i.to(tl.int64) * stride_xb + j.to(tl.int64) * stride_xs
    if not FINAL:  # a split with no entry in either list loads nothing and writes nothing (combine skips it)
        if (start >= end) & (x_start >= x_end):
            return

    # Query pieces, loaded once: dims [0, 512) as four chunks and (V32) [512, 576).
    q_row = q_ptr + i.to(tl.int64) * stride_qb + j.to(tl.int64) * stride_qs + heads[:, None] * stride_qh
    q0 = bf16_operand(tl.load(q_row + dims[None, :], mask=head_ok[:, None], other=0.0), INTERPRET)
    q1 = bf16_operand(tl.load(q_row + CHUNK_V + dims[None, :], mask=head_ok[:, None], other=0.0), INTERPRET)
    q2 = bf16_operand(tl.load(q_row + 2 * CHUNK_V + dims[None, :], mask=head_ok[:, None], other=0.0), INTERPRET)
    q3 = bf16_operand(tl.load(q_row + 3 * CHUNK_V + dims[None, :], mask=head_ok[:, None], other=0.0), INTERPRET)
    if IS_MODEL1:
        q_b = q0  # MODEL1 has no second piece; unused
    else:
        rope = tl.arange(0, D_ROPE)
        q_b = bf16_operand(tl.load(q_row + D_V + rope[None, :], mask=head_ok[:, None], other=0.0), INTERPRET)

    acc0, acc1, acc2, acc3, m_i, l_i = attend_lists(
        q0, q1, q2, q3, q_b, start, end, x_start, x_end, idx_row, stride_it, x_row, stride_xt,
        cache_ptr, stride_cache, page_block, x_cache_ptr, stride_x_cache, x_page_block,
        qk_scale_log2, IS_MODEL1, HAS_EXTRA, SPLIT_P, BLOCK_H, BLOCK_N, INTERPRET,
    )

    empty = l_i == 0.0  # no valid entry in this split
    l_div = tl.where(empty, 1.0, l_i)  # empty rows: acc is 0, keep 0 / 0 out
    lse = (m_i + tl.log2(l_div)) * LN2  # back to natural log
    if FINAL:
        lse = tl.where(empty, float("inf"), lse)
        out_rows = out_ptr + (row.to(tl.int64) * h_q + heads)[:, None] * D_V + dims[None, :]
        _store_final(out_rows, acc0 / l_div[:, None], lse, empty, sink_ptr, heads, head_ok, HAS_SINK, INTERPRET)
        _store_final(out_rows + CHUNK_V, acc1 / l_div[:, None], lse, empty, sink_ptr, heads, head_ok, HAS_SINK,
                     INTERPRET)
        _store_final(out_rows + 2 * CHUNK_V, acc2 / l_div[:, None], lse, empty, sink_ptr, heads, head_ok, HAS_SINK,
                     INTERPRET)
        _store_final(out_rows + 3 * CHUNK_V, acc3 / l_div[:, None], lse, empty, sink_ptr, heads, head_ok, HAS_SINK,
                     INTERPRET)
        tl.store(lse_ptr + (i.to(tl.int64) * h_q + heads) * s_q + j, lse, mask=head_ok)
    else:
        lse = tl.where(empty, float("-inf"), lse)
        slot = (row.to(tl.int64) * num_splits + split) * h_q + heads  # [BLOCK_H]
        part_rows = part_out_ptr + slot[:, None] * D_V + dims[None, :]
        tl.store(part_rows, acc0 / l_div[:, None], mask=head_ok[:, None])
        tl.store(part_rows + CHUNK_V, acc1 / l_div[:, None], mask=head_ok[:, None])
        tl.store(part_rows + 2 * CHUNK_V, acc2 / l_div[:, None], mask=head_ok[:, None])
        tl.store(part_rows + 3 * CHUNK_V, acc3 / l_div[:, None], mask=head_ok[:, None])
        tl.store(part_lse_ptr + slot, lse, mask=head_ok)


@triton.jit
def _store_final(ptrs, out, lse, empty, sink_ptr, heads, head_ok, HAS_SINK: tl.constexpr, INTERPRET: tl.constexpr):
    """One 128-column chunk of the final output (attention sink applied), as bfloat16."""
    if HAS_SINK:
        out = _apply_sink(out, lse, empty, sink_ptr, heads, head_ok)
    store_bf16(ptrs, out, head_ok[:, None], INTERPRET)


@triton.jit
def _sparse_decode_combine_kernel(
    part_out_ptr, part_lse_ptr,  # [rows, splits, h_q, 512] f32, [rows, splits, h_q] f32 (-inf: empty)
    sink_ptr,  # attn_sink [h_q] f32 (when HAS_SINK)
    out_ptr, lse_ptr,  # out [b, s_q, h_q, 512] bf16, lse [b, h_q, s_q] f32
    len_ptr, topk, x_len_ptr, x_topk,  # the lists' lengths, as the split kernel reads them
    s_q, h_q, num_splits,
    HAS_LEN: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_X_LEN: tl.constexpr,
    HAS_SINK: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    row = tl.program_id(0)
    i = row // s_q
    j = row % s_q
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    head_ok = heads < h_q
    dims = tl.arange(0, D_V)
    splits = tl.arange(0, BLOCK_S)
    length, x_length = _list_lengths(i, len_ptr, topk, x_len_ptr, x_topk, HAS_LEN, HAS_EXTRA, HAS_X_LEN)
    used = (splits < num_splits) & _split_has_entries(length, x_length, splits, num_splits, HAS_EXTRA, BLOCK_N)
    base = row.to(tl.int64) * num_splits
    lse_ptrs = part_lse_ptr + (base + splits)[:, None] * h_q + heads[None, :]
    parts = tl.load(lse_ptrs, mask=used[:, None] & head_ok[None, :], other=float("-inf"))
    m = tl.max(parts, 0)  # [BLOCK_H]
    empty = m == float("-inf")
    m_use = tl.where(empty, 0.0, m)
    total = tl.sum(tl.exp(parts - m_use[None, :]), 0)  # natural-log logsumexp of the partials
    lse = tl.where(empty, float("inf"), m_use + tl.log(tl.where(empty, 1.0, total)))
    acc = tl.zeros([BLOCK_H, D_V], dtype=tl.float32)
    for s in range(0, num_splits):  # fixed order: bit-identical runs
        slot = (base + s) * h_q + heads
        # a split without entries wrote nothing: its slots are not read
        use = tl.where(_split_has_entries(length, x_length, s, num_splits, HAS_EXTRA, BLOCK_N), head_ok, False)
        part_lse = tl.load(part_lse_ptr + slot, mask=use, other=float("-inf"))
        weight = tl.where(empty, 0.0, tl.exp(part_lse - lse))  # empty split: exp(-inf) = 0
        part = tl.load(part_out_ptr + slot[:, None] * D_V + dims[None, :], mask=use[:, None], other=0.0)
        acc += weight[:, None] * part
    if HAS_SINK:
        acc = _apply_sink(acc, lse, empty, sink_ptr, heads, head_ok)
    out_rows = out_ptr + (row.to(tl.int64) * h_q + heads)[:, None] * D_V
    store_bf16(out_rows + dims[None, :], acc, head_ok[:, None], INTERPRET)
    tl.store(lse_ptr + (i.to(tl.int64) * h_q + heads) * s_q + j, lse, mask=head_ok)


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes of one launch; chosen from shapes only (never from tensor contents)."""

    block_h: int  # heads per program: the M dim of tl.dot, >= 16; each key is dequantized once per tile
    block_n: int  # index entries per loop step
    num_splits: int  # programs per (query row, head tile); 1: the split kernel writes the output
    num_warps: int  # compiled mode only
    num_stages: int  # compiled mode only
    # P @ V as two bf16 dots (p = p_hi + p_lo, ~2^-17) instead of one bf16 rounding of P (2^-9 per
    # weight, as FlashMLA): choose_config takes it from MLAVERIFY_P_SPLIT (mlaverify.kernels._options,
    # default one rounding).
    split_p: bool = False


MAX_SPLITS = 64  # the combine kernel reads all partial lse of a row at once
MIN_STEPS_PER_SPLIT = 4  # a split shorter than this many BLOCK_N steps costs more than it saves


def choose_config(b: int, s_q: int, h_q: int, total_topk: int, target: GpuTarget, num_splits=None,
                  split_p: bool | None = None, list_lengths: tuple[int, ...] | None = None,
                  block_n: int | None = None) -> LaunchConfig:
    """Heads per program up to 64, and the split count.

    Splits: on a compiled target, the count whose whole waves finish first (`_splits`: programs x
    splits against SMs x resident blocks, each program's steps over the main and extra lists,
    ``list_lengths``, default ``(total_topk,)``); in the interpreter, enough splits for ~2 rounds of
    its 4 slots, each at least MIN_STEPS_PER_SPLIT steps (CPU cases exercise the combine). The choice
    depends on (b, s_q, h_q, the list lengths) and the target only, so a sequence's result never
    depends on what its batch mates contain. ValueError when the tiles do not fit the target's shared
    memory per block. ``split_p``: P as hi + lo (None: from MLAVERIFY_P_SPLIT). ``block_n``: entries
    per step, 32 or 64 (None: from MLAVERIFY_SPARSE_DECODE_BLOCK_N, else 32); ValueError for 64
    where the 64-entry tile does not fit.
    """
    asked_n = sparse_decode_block_n() if block_n is None else block_n
    if asked_n is not None and (isinstance(asked_n, bool) or asked_n not in SPARSE_DECODE_BLOCK_NS):
        raise ValueError(f"block_n: expected one of {list(SPARSE_DECODE_BLOCK_NS)} or None, got {asked_n!r}")
    block_h = min(64, max(16, triton.next_power_of_2(h_q)))
    # 32 entries per step in every mode and on every target: on sm_90 the only step without local-memory
    # traffic in its loop (64: 0-18 reloads per step with one rounding of P, 24-46 with hi + lo), with
    # 78 KB of shared memory to spare where 64 entries leave 1 KB; the interpreter runs the same step,
    # so a CPU verdict covers the H200's default build. 64 on request (SPARSE_DECODE_BLOCK_NS) where it fits.
    block_n = 32
    if target is not INTERPRETER and target.capability < MIN_CAPABILITY:
        raise ValueError(
            f"sparse decode: {target.name} is not supported: the FP8 (e4m3) cache needs sm_{MIN_CAPABILITY} or "
            "later in Triton 3.9"
        )
    num_stages = 2  # the key loads double-buffered in shared memory (cp.async)
    if target is not INTERPRETER:
        fits = [h for h, smem in SMEM_SM90.items() if h <= block_h and smem <= target.smem_per_block]
        if not fits:  # one stage: no double buffers (a target below the 59,392 B of 16 heads, 2 stages)
            num_stages = 1
            fits = [h for h, smem in SMEM_SM90_ONE_STAGE.items() if h <= block_h and smem <= target.smem_per_block]
        if not fits:
            raise ValueError(
                f"sparse decode: no head tile fits {target.name}'s {target.smem_per_block} bytes of shared memory "
                f"per block at BLOCK_N={block_n} (BLOCK_H 16 needs {SMEM_SM90_ONE_STAGE[16]} with one stage)"
            )
        block_h = max(fits)  # fewer heads per program where the target has less shared memory
    split_p = p_split() if split_p is None else split_p
    one_rounding_fits = SMEM_SM90_ONE_ROUNDING_BN64 <= target.smem_per_block
    fits_64 = target is INTERPRETER or (not split_p and block_h == 64 and num_stages == 2 and one_rounding_fits)
    if asked_n == 64 and not fits_64:
        raise ValueError(
            f"block_n: 64 entries per step do not fit {target.name} here: they need 64 heads per program, two "
            f"stages and one bf16 rounding of P ({SMEM_SM90_ONE_ROUNDING_BN64} B of shared memory per block); "
            f"this launch has {block_h} heads, {num_stages} stage(s), P {'hi + lo' if split_p else 'rounded once'}"
        )
    if asked_n is not None:
        block_n = asked_n
    programs = b * s_q * math.ceil(h_q / block_h)
    num_warps = 8  # 4 warps spill the [BLOCK_N, 512] float32 dequantization temporaries
    if num_splits is None and target is INTERPRETER:
        want = math.ceil(2 * target.sm_count / programs)
        useful = math.ceil(total_topk / (MIN_STEPS_PER_SPLIT * block_n))
        num_splits = max(1, min(want, useful, MAX_SPLITS))
    elif num_splits is None:
        tiles = SMEM_SM90 if num_stages == 2 else SMEM_SM90_ONE_STAGE
        smem = SMEM_SM90_ONE_ROUNDING_BN64 if block_n == 64 else tiles[block_h]
        if block_n == 32 and block_h == 64 and num_stages == 2 and not split_p:
            smem = SMEM_SM90_ONE_ROUNDING_BN32
        num_splits = whole_wave_splits(max(programs, 1), list_lengths or (total_topk,), block_n,
                                       slots(target, num_warps, smem), MAX_SPLITS)
    elif isinstance(num_splits, bool) or not isinstance(num_splits, int) or not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits: expected an int in [1, {MAX_SPLITS}] or None, got {num_splits!r}")
    return LaunchConfig(block_h, block_n, num_splits, num_warps, num_stages, split_p=split_p)


# Shared memory of the split kernel for sm_90 at BLOCK_N = 32 by BLOCK_H, two stages: the largest of the
# V32 and MODEL1 config4 builds, P rounded once / P as hi + lo (64 -> hi + lo 148,480 / 131,072; P rounded
# once at 64 heads is SMEM_SM90_ONE_ROUNDING_BN32; 32 -> 76,800 / 71,680, 78,848 / 75,776; 16 -> 57,344 / 53,248,
# 58,368 / 59,392), from the sm_90 build (tests/kernels/test_inspect.py checks the production one). The
# scores one step ahead (attend_lists) load each step's keys twice, both loads double-buffered; the keys
# are dequantized in 128-dim chunks (no whole [BLOCK_N, 512] tile in shared memory: 40 KB less at 64 heads).
SMEM_SM90 = {64: 148480, 32: 78848, 16: 59392}
# The same with num_stages 1 (64 -> 110,592 / 102,400 P rounded once; 32 -> 40,960 / 36,864 both modes;
# 16 -> 22,528 / 20,480 both modes).
SMEM_SM90_ONE_STAGE = {64: 110592, 32: 40960, 16: 22528}
# BLOCK_H 64, BLOCK_N 64, P rounded once (MLAVERIFY_SPARSE_DECODE_BLOCK_N=64): V32 231,424 / MODEL1 196,608 B
# (with hi + lo 223,232 / 188,416 B, refused: it spills more, see choose_config).
SMEM_SM90_ONE_ROUNDING_BN64 = 231424
# BLOCK_H 64, BLOCK_N 32, P rounded once (the default sm_90 build): V32 152,576 / MODEL1 131,072 B.
SMEM_SM90_ONE_ROUNDING_BN32 = 152576
# Triton 3.9 has float8e4nv (e4m3) only from sm_89 on ("type fp8e4nv not supported in this architecture").
MIN_CAPABILITY = 89


def _byte_view(cache: torch.Tensor) -> torch.Tensor:
    """The cache as uint8 (same strides: all accepted dtypes are one byte wide).

    An empty cache (only -1 entries can point into it, and nothing is read) is replaced by one
    byte so that the kernel never receives a null pointer.
    """
    if cache.numel() == 0:
        return torch.zeros(1, 1, 1, 1, dtype=torch.uint8, device=cache.device)
    return cache if cache.dtype == torch.uint8 else cache.view(torch.uint8)


def sparse_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    indices: torch.Tensor,
    *,
    softmax_scale: float | None = None,
    attn_sink: torch.Tensor | None = None,
    topk_length: torch.Tensor | None = None,
    extra_k_cache: torch.Tensor | None = None,
    extra_indices: torch.Tensor | None = None,
    extra_topk_length: torch.Tensor | None = None,
    head_dim_v: int = 512,
    num_splits: int | None = None,
    check_inputs: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse FP8 decode: out [b, s_q, h_q, 512] bf16 and lse [b, h_q, s_q] float32.

    Same arguments and semantics as ``mlaverify.reference.sparse_decode_reference``; inputs are
    checked by the reference's validation. ``num_splits`` overrides the split count (tests).
    ``check_inputs``: see ``mlaverify.kernels._checks`` (False: no check reads tensor values).
    """
    shapes = check_sparse_decode_inputs(
        q, k_cache, indices, topk_length, attn_sink, extra_k_cache, extra_indices, extra_topk_length, head_dim_v,
        check_values=resolve_check_inputs(check_inputs),
    )
    device = _runtime.require_same_device({
        "q": q, "k_cache": k_cache, "indices": indices, "topk_length": topk_length, "attn_sink": attn_sink,
        "extra_k_cache": extra_k_cache, "extra_indices_in_kvcache": extra_indices,
        "extra_topk_length": extra_topk_length,
    })
    softmax_scale = check_softmax_scale(softmax_scale)
    launches, outputs = sparse_decode_plan(
        q, k_cache, indices, shapes, softmax_scale=softmax_scale, attn_sink=attn_sink, topk_length=topk_length,
        extra_k_cache=extra_k_cache, extra_indices=extra_indices, extra_topk_length=extra_topk_length,
        target=target_of_device(device), num_splits=num_splits,
    )
    run_all(launches)
    return outputs


def sparse_decode_plan(
    q, k_cache, indices, shapes: SparseDecodeShapes, *, softmax_scale, attn_sink, topk_length, extra_k_cache,
    extra_indices, extra_topk_length, target: GpuTarget, num_splits=None,
):
    """(launches, (out, lse)) for validated inputs (real or meta tensors) on `target`."""
    device = q.device
    interpreted = target is INTERPRETER
    b, s_q, h_q, d_qk = q.shape
    scale = d_qk**-0.5 if softmax_scale is None else float(softmax_scale)
    has_extra = extra_k_cache is not None
    cfg = choose_config(b, s_q, h_q, shapes.topk + shapes.extra_topk, target, num_splits,
                        list_lengths=(shapes.topk, shapes.extra_topk))
    final = cfg.num_splits == 1

    out = torch.empty(b, s_q, h_q, HEAD_DIM_V, dtype=torch.bfloat16, device=device)
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device=device)
    if final:
        part_out = part_lse = out  # unused placeholders
    else:
        part_out = torch.empty(b * s_q, cfg.num_splits, h_q, HEAD_DIM_V, dtype=torch.float32, device=device)
        part_lse = torch.empty(b * s_q, cfg.num_splits, h_q, dtype=torch.float32, device=device)

    cache = _byte_view(k_cache)
    x_cache = _byte_view(extra_k_cache) if has_extra else cache
    x_idx = extra_indices if has_extra else indices
    head_tiles = triton.cdiv(h_q, cfg.block_h)
    split = KernelLaunch(
        "sparse_decode.split", _sparse_decode_split_kernel, (b * s_q * cfg.num_splits * head_tiles,),
        (q, q.stride(0), q.stride(1), q.stride(2),
         cache, cache.stride(0), shapes.page_block_size,
         indices, indices.stride(0), indices.stride(1), indices.stride(2),
         topk_length if topk_length is not None else indices, shapes.topk,
         x_cache, x_cache.stride(0), shapes.extra_page_block_size if has_extra else 1,
         x_idx, x_idx.stride(0), x_idx.stride(1), x_idx.stride(2),
         extra_topk_length if extra_topk_length is not None else x_idx, shapes.extra_topk,
         attn_sink if attn_sink is not None else lse,
         out, lse, part_out, part_lse,
         s_q, h_q, cfg.num_splits, head_tiles, scale * math.log2(math.e)),
        dict(IS_MODEL1=shapes.model_type is ModelType.MODEL1, HAS_LEN=topk_length is not None,
             HAS_EXTRA=has_extra, HAS_X_LEN=extra_topk_length is not None,
             HAS_SINK=attn_sink is not None, FINAL=final, SPLIT_P=cfg.split_p,
             BLOCK_H=cfg.block_h, BLOCK_N=cfg.block_n, INTERPRET=interpreted),
        None if interpreted else cfg.num_warps, None if interpreted else cfg.num_stages,
    )
    launches = [split]
    if not final:
        combine_h = min(16, cfg.block_h)
        launches.append(KernelLaunch(
            "sparse_decode.combine", _sparse_decode_combine_kernel, (b * s_q, triton.cdiv(h_q, combine_h)),
            (part_out, part_lse, attn_sink if attn_sink is not None else lse, out, lse,
             topk_length if topk_length is not None else indices, shapes.topk,
             extra_topk_length if extra_topk_length is not None else x_idx, shapes.extra_topk,
             s_q, h_q, cfg.num_splits),
            dict(HAS_LEN=topk_length is not None, HAS_EXTRA=has_extra, HAS_X_LEN=extra_topk_length is not None,
                 HAS_SINK=attn_sink is not None, BLOCK_H=combine_h,
                 BLOCK_S=max(2, triton.next_power_of_2(cfg.num_splits)), BLOCK_N=cfg.block_n,
                 INTERPRET=interpreted),
            None if interpreted else 4, None,
        ))
    return launches, (out, lse)
