"""The numerics emulation: the reference with exactly the rounding a correct fast kernel is allowed.

The ``*_reference`` functions compute every op without intermediate rounding. A correct fast kernel
does not: it multiplies bf16 operands on tensor cores. This module is the FlashMLA API computed by
the references' own code paths (`softmax.masked_attention`, `mha_prefill._forward/_backward`, the
same input checks, gathers and sink rule), with the rounding switched on by their ``p_dtype``:

- Q, K, V as given (bf16 / fp16; FP8 caches dequantized exactly to bf16);
- logits, the running max, the row sum and every accumulation in float32;
- the softmax weights P rounded once to bf16 (q's dtype for dense ops) before P @ V;
- in the MHA backward P and dS = P * (dP - D) rounded to q's dtype before dV = P^T dO, dQ = dS K and
  dK = dS^T Q (float32 accumulation);
- one rounding of each output to its API dtype (lse and max_logits stay float32).

The engine runs it on every case: its error against the unrounded reference is the yardstick of
the calibrated tolerance policy (`mlaverify.verify.budgets`). ``emulate(op, inputs)``-style callers
use it as any implementation module: it exposes the FlashMLA API names.
"""
from __future__ import annotations

import torch

from .api import FlashMLASchedMeta, check_call, get_mla_metadata
from .dense_decode import dense_decode_reference
from .mha_prefill import varlen_attention
from .sparse_decode import sparse_decode_reference
from .sparse_prefill import sparse_prefill_reference

__all__ = ["FlashMLASchedMeta", "get_mla_metadata", "flash_mla_with_kvcache", "flash_mla_sparse_fwd",
           "flash_attn_varlen_func", "P_DTYPE_SPARSE"]

P_DTYPE_SPARSE = torch.bfloat16  # sparse ops: P rounded to bf16 (the tensor-core operand type of the FP8/bf16 paths)
MLAVERIFY_CAPABILITIES = {"base": "reference", "name": "numerics emulation (reference profile)"}


def flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata,
                           num_splits=None, softmax_scale=None, causal=False, is_fp8_kvcache=False, indices=None,
                           attn_sink=None, extra_k_cache=None, extra_indices_in_kvcache=None, topk_length=None,
                           extra_topk_length=None):
    """Sparse or dense decode as `mlaverify.reference.flash_mla_with_kvcache`, P rounded before P @ V."""
    mode = check_call(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata, num_splits,
                      causal, is_fp8_kvcache, indices, attn_sink, extra_k_cache, extra_indices_in_kvcache,
                      topk_length, extra_topk_length)
    if mode == "sparse":
        out, lse = sparse_decode_reference(
            q, k_cache, indices, softmax_scale=softmax_scale, attn_sink=attn_sink, topk_length=topk_length,
            extra_k_cache=extra_k_cache, extra_indices=extra_indices_in_kvcache,
            extra_topk_length=extra_topk_length, head_dim_v=head_dim_v, p_dtype=P_DTYPE_SPARSE)
    else:
        out, lse = dense_decode_reference(q, k_cache, block_table, cache_seqlens, head_dim_v,
                                          softmax_scale=softmax_scale, causal=causal, p_dtype=q.dtype)
    return out.to(q.dtype), lse.float()


def flash_mla_sparse_fwd(q, kv, indices, sm_scale, d_v=512, attn_sink=None, topk_length=None):
    """Sparse prefill as `mlaverify.reference.flash_mla_sparse_fwd`, P rounded to bf16 before P @ V."""
    out, max_logits, lse = sparse_prefill_reference(q, kv, indices, sm_scale, d_v=d_v, attn_sink=attn_sink,
                                                    topk_length=topk_length, p_dtype=P_DTYPE_SPARSE)
    return out.to(torch.bfloat16), max_logits.float(), lse.float()


def flash_attn_varlen_func(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, dropout_p=0.0,
                           softmax_scale=None, causal=False, deterministic=False, is_varlen=True, *,
                           window_size=(-1, -1)):
    """Dense MHA prefill (differentiable) as the reference's, P (and dS in the backward) in q's dtype."""
    return varlen_attention(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, dropout_p,
                            softmax_scale, causal, deterministic, is_varlen, window_size, p_dtype=q.dtype)
