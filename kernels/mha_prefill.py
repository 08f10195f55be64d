"""Dense MHA prefill in Triton: FlashMLA's ``flash_attn_varlen_func`` and its packed variants.

operations.md section 4. Forward and backward are Triton kernels (``_mha_prefill_fwd``,
``_mha_prefill_bwd``) behind one ``torch.autograd.Function``. GQA is supported in both
directions; dk/dv are summed over the query heads of a group without atomics, so repeated
runs are bit-identical. Input checks are the ones of ``mlaverify.reference.mha_prefill``.
Keyword-only extension: ``window_size=(left, right)`` (sliding window, as in ``flash_attn``).

Precision: every operand of the P @ V, dS^T @ Q and dS @ K products is 16-bit; P and dS are
rounded to 16 bits once, as FlashMLA does (``MLAVERIFY_P_SPLIT=1``: as two 16-bit terms hi + lo,
see ``_options``). The backward's ``delta = rowsum(dout * out)`` uses the unrounded out (the
forward stores out's rounding residual when a gradient is needed).
"""

from __future__ import annotations

from . import _runtime  # first: decides compiled vs interpreter mode before any kernel is built

import math
from dataclasses import dataclass

import torch
import triton

from mlaverify.reference.mha_prefill import (
    AttentionMask,
    MhaPrefillShapes,
    check_mha_options,
    check_mha_prefill_inputs,
    check_window_size,
    resolve_softmax_scale,
    split_kv_packed,
    split_qkv_packed,
)

from ._launch import KernelLaunch, run_all
from ._options import p_split
from ._targets import INTERPRETER, GpuTarget, target_of_device
from ._mha_prefill_bwd import _mha_bwd_dkdv_kernel, _mha_bwd_dq_kernel
from ._mha_prefill_fwd import _mha_bwd_preprocess_kernel, _mha_fwd_kernel

__all__ = ["flash_attn_varlen_func", "flash_attn_varlen_kvpacked_func", "flash_attn_varlen_qkvpacked_func"]

ROPE_PIECE = 64  # d_qk is split as (d_qk - 64) + 64: 192 = 128 + 64, 128 = 64 + 64 (power-of-two tiles)


@dataclass(frozen=True)
class _Tiles:
    """Tile sizes and launch settings of one kernel."""

    block_m: int  # query rows per tile
    block_n: int  # keys per tile
    num_warps: int  # ignored by the interpreter
    num_stages: int  # software-pipelining depth (compiled mode)
    smem_sm90: int = 0  # shared memory of the sm_90 build (d_qk 192), from `python -m mlaverify.kernels.inspect`


# Compiled mode (Hopper-class GPU): picked from ptxas register/spill reports for sm_90 with
# d_qk = 192, not yet from timings on a GPU. Interpreter: 16 x 16 tiles so that tiny test shapes
# still cross several blocks, diagonal blocks and partial blocks.
# dq at 128 query rows: each warpgroup owns 64 rows (at 64 rows both ran the whole tile): 56 B of spill
# instead of 176, issued/counted tensor work 0.88 instead of 1.52. dk/dv: 32 keys per program with its
# products dims first (_mha_prefill_bwd: M = the dims or the 64 query rows, wgmma), one warpgroup (with two,
# both computed S and dP); at 128 keys it spilled 616 B (hi + lo dS).
_GPU_TILES = {"fwd": _Tiles(128, 64, 8, 2, 131072), "dkdv": _Tiles(64, 32, 4, 2, 107520),
              "dq": _Tiles(128, 64, 8, 2, 163840)}
_INTERPRETER_TILES = _Tiles(16, 16, 1, 1)


def _tiles(kind: str, target: GpuTarget) -> _Tiles:
    """The tiles of kernel `kind` on `target`; ValueError when they need more shared memory than it has."""
    if target is INTERPRETER:
        return _INTERPRETER_TILES
    tiles = _GPU_TILES[kind]
    if tiles.smem_sm90 > target.smem_per_block:
        raise ValueError(
            f"mha prefill {kind}: tiles {tiles.block_m}x{tiles.block_n} need {tiles.smem_sm90} bytes of shared "
            f"memory per block, more than {target.name}'s {target.smem_per_block}; this target is not supported"
        )
    return tiles


def _pieces(shapes: MhaPrefillShapes) -> tuple[int, int]:
    return shapes.d_qk - ROPE_PIECE, ROPE_PIECE


def _mask_args(mask: AttentionMask) -> dict:
    """Kernel arguments for a mask: runtime bounds and the constexpr switches."""
    return dict(win_left=mask.left or 0, win_right=mask.right or 0,
                MASK_LO=mask.left is not None, MASK_HI=mask.right is not None)


def _split_mask(mask: AttentionMask) -> tuple[tuple, dict]:
    args = _mask_args(mask)
    return (args.pop("win_left"), args.pop("win_right")), args


def mha_forward_plan(q, k, v, cu_q, cu_k, shapes: MhaPrefillShapes, scale: float, mask: AttentionMask,
                     store_lo: bool, target: GpuTarget):
    """(launches, (out, lse, out_lo)) for validated inputs (real or meta tensors) on `target`.

    out_lo = out's rounding residual when store_lo (for the backward), else None.
    """
    out = torch.empty(shapes.total_q, shapes.h_q, shapes.d_v, dtype=q.dtype, device=q.device)
    out_lo = torch.empty_like(out) if store_lo else None
    lse_buf = torch.empty(shapes.h_q, shapes.total_q, dtype=torch.float32, device=q.device)  # lse.T is returned
    if shapes.total_q == 0:
        return [], (out, lse_buf.T, out_lo)
    t = _tiles("fwd", target)
    d0, d1 = _pieces(shapes)
    window, switches = _split_mask(mask)
    blocks = triton.cdiv(shapes.max_seqlen_q, t.block_m)
    # (sequence, query block) on axis 0 (limit 2^31 - 1): the batch is not capped at 65,535
    launch = KernelLaunch(
        "mha_prefill.fwd", _mha_fwd_kernel, (blocks * shapes.batch, shapes.h_q),
        (q, k, v, out, lse_buf, out if out_lo is None else out_lo, cu_q, cu_k, blocks,
         *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse_buf.stride(),
         scale * math.log2(math.e), *window),
        dict(GROUP=shapes.group, D0=d0, D1=d1, DV=shapes.d_v, BLOCK_M=t.block_m, BLOCK_N=t.block_n, **switches,
             STORE_LO=store_lo, UPCAST=target is INTERPRETER, P_SPLIT=p_split()),
        t.num_warps, t.num_stages,
    )
    return [launch], (out, lse_buf.T, out_lo)


def mha_backward_plan(dout, q, k, v, out, out_lo, lse, cu_q, cu_k, shapes: MhaPrefillShapes, scale: float,
                      mask: AttentionMask, target: GpuTarget):
    """(launches, (dq, dk, dv)) for validated inputs (real or meta tensors) on `target`.

    With no query or no key token there is nothing to launch and the gradients are zero.
    """
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    if shapes.total_q == 0 or shapes.total_k == 0:
        return [], (dq.zero_(), dk.zero_(), dv.zero_())
    interpreted = target is INTERPRETER
    lse_buf = lse.T  # [h_q, total_q] view of the forward's buffer
    delta = torch.empty(shapes.h_q, shapes.total_q, dtype=torch.float32, device=q.device)
    d0, d1 = _pieces(shapes)
    window, switches = _split_mask(mask)
    pre = 16 if interpreted else 64
    launches = [KernelLaunch(
        "mha_prefill.bwd_preprocess", _mha_bwd_preprocess_kernel, (triton.cdiv(shapes.total_q, pre), shapes.h_q),
        (out, out_lo, dout, delta, shapes.total_q, *out.stride(), *dout.stride(), *delta.stride()),
        dict(DV=shapes.d_v, BLOCK_M=pre),
    )]
    scale_log2 = scale * math.log2(math.e)
    t = _tiles("dkdv", target)
    blocks = triton.cdiv(shapes.max_seqlen_k, t.block_n)
    launches.append(KernelLaunch(
        "mha_prefill.bwd_dkdv", _mha_bwd_dkdv_kernel, (blocks * shapes.batch, shapes.h_kv),
        (q, k, v, dout, lse_buf, delta, dk, dv, cu_q, cu_k, blocks,
         *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *lse_buf.stride(), *dk.stride(), *dv.stride(),
         scale, scale_log2, *window),
        dict(GROUP=shapes.group, D0=d0, D1=d1, DV=shapes.d_v, **switches, BLOCK_M=t.block_m, BLOCK_N=t.block_n,
             UPCAST=interpreted, P_SPLIT=p_split()),
        t.num_warps, t.num_stages,
    ))
    t = _tiles("dq", target)
    blocks = triton.cdiv(shapes.max_seqlen_q, t.block_m)
    launches.append(KernelLaunch(
        "mha_prefill.bwd_dq", _mha_bwd_dq_kernel, (blocks * shapes.batch, shapes.h_q),
        (q, k, v, dout, lse_buf, delta, dq, cu_q, cu_k, blocks,
         *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *lse_buf.stride(), *dq.stride(),
         scale, scale_log2, *window),
        dict(GROUP=shapes.group, D0=d0, D1=d1, DV=shapes.d_v, **switches, BLOCK_M=t.block_m, BLOCK_N=t.block_n,
             UPCAST=interpreted, P_SPLIT=p_split()),
        t.num_warps, t.num_stages,
    ))
    return launches, (dq, dk, dv)


def _forward(q, k, v, cu_q, cu_k, shapes: MhaPrefillShapes, scale: float, mask: AttentionMask, store_lo: bool):
    launches, outputs = mha_forward_plan(q, k, v, cu_q, cu_k, shapes, scale, mask, store_lo,
                                         target_of_device(q.device))
    run_all(launches)
    return outputs


def _backward(dout, q, k, v, out, out_lo, lse, cu_q, cu_k, shapes: MhaPrefillShapes, scale: float,
              mask: AttentionMask):
    launches, outputs = mha_backward_plan(dout, q, k, v, out, out_lo, lse, cu_q, cu_k, shapes, scale, mask,
                                          target_of_device(q.device))
    run_all(launches)
    return outputs


class _FlashAttnVarlen(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, shapes, scale, mask):
        out, lse, out_lo = _forward(q, k, v, cu_q, cu_k, shapes, scale, mask, any(ctx.needs_input_grad[:3]))
        ctx.save_for_backward(q, k, v, out, out_lo, lse, cu_q, cu_k)
        ctx.config = (shapes, scale, mask)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):  # lse gets no gradient (operations.md section 4)
        q, k, v, out, out_lo, lse, cu_q, cu_k = ctx.saved_tensors
        shapes, scale, mask = ctx.config
        dq, dk, dv = _backward(dout, q, k, v, out, out_lo, lse, cu_q, cu_k, shapes, scale, mask)
        return dq, dk, dv, None, None, None, None, None


def flash_attn_varlen_func(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, dropout_p=0.0,
                           softmax_scale=None, causal=False, deterministic=False, is_varlen=True, *,
                           window_size=(-1, -1)):
    """(out in q's dtype [total_q, h_q, d_v], lse float32 [total_q, h_q] natural log); differentiable.

    ``window_size=(left, right)`` (keyword-only extension, -1 = unbounded) as in the reference.
    """
    check_mha_options(dropout_p, softmax_scale, causal, deterministic, is_varlen)
    mask = check_window_size(window_size, causal)
    shapes = check_mha_prefill_inputs(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv,
                                      is_varlen=is_varlen)
    _runtime.require_same_device({"q": q, "k": k, "v": v, "cu_seqlens_qo": cu_seqlens_qo,
                                  "cu_seqlens_kv": cu_seqlens_kv})
    scale = resolve_softmax_scale(softmax_scale, shapes.d_qk)
    return _FlashAttnVarlen.apply(q, k, v, cu_seqlens_qo, cu_seqlens_kv, shapes, scale, mask)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, head_dim_qk, dropout_p=0.0, softmax_scale=None,
                                     causal=False, deterministic=False, is_varlen=True, *, window_size=(-1, -1)):
    """qkv [total, h, 2 * head_dim_qk + d_v]; one set of lengths for queries and keys."""
    q, k, v = split_qkv_packed(qkv, head_dim_qk)
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p,
                                  softmax_scale, causal, deterministic, is_varlen, window_size=window_size)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, head_dim_qk,
                                    dropout_p=0.0, softmax_scale=None, causal=False, deterministic=False,
                                    is_varlen=True, *, window_size=(-1, -1)):
    """kv [total_k, h_kv, head_dim_qk + d_v]."""
    k, v = split_kv_packed(kv, head_dim_qk)
    return flash_attn_varlen_func(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, dropout_p,
                                  softmax_scale, causal, deterministic, is_varlen, window_size=window_size)
