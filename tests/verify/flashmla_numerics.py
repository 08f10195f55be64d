"""FlashMLA's legitimate numerics behind the FlashMLA API (test-only): the engine's false-positive guard.

The references compute every op without intermediate rounding. FlashMLA's kernels do not: they
round the softmax weights to bf16 before the P @ V tensor-core product. This module is a correct
implementation of the API that rounds exactly where FlashMLA does, built on mlaverify.reference's
building blocks (input validation, call checks, FP8 cache dequantization, the sink rule):

- keys are the exactly dequantized bf16 values; logits q . k * scale in float32;
- P = exp(l - max) in float32; the row sum is taken from the float32 P; P is rounded to bf16 and
  P @ V accumulates in float32; out = (P_bf16 @ V) / sum, the sink factor applied, then rounded to
  the output dtype once; lse = log(sum) + max in float32 (max_logits: the float32 max);
- dense MHA prefill: the forward as above (P rounded to q's dtype); the backward rounds P and
  dS = P * (dP - D), D = rowsum(dO * O), to q's dtype before the dV = P^T dO, dQ = dS K and
  dK = dS^T Q products (float32 accumulation).

An engine that reports a failure for this module reports a bug that is not there.
"""
from __future__ import annotations

import torch

from mlaverify.reference import gather_dequantized
from mlaverify.reference import mha_prefill as mha_ref
from mlaverify.reference.api import FlashMLASchedMeta, check_call, get_mla_metadata
from mlaverify.reference.softmax import apply_sink
from mlaverify.reference.validation import (check_dense_decode_inputs, check_sparse_decode_inputs,
                                            check_sparse_prefill_inputs)

__all__ = ["FlashMLASchedMeta", "get_mla_metadata", "flash_mla_with_kvcache", "flash_mla_sparse_fwd",
           "flash_attn_varlen_func"]


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, scale: float,
            p_dtype: torch.dtype = torch.bfloat16):
    """q [R, h, d] f32, keys [R, T, d] f32 (bf16 values), values [R, T, d_v], valid [R, h or 1, T].

    Returns out [R, h, d_v] f32 (before output rounding), lse [R, h] (+inf: no entry), max [R, h].
    """
    used = valid.any(dim=1).unsqueeze(-1)
    keys, values = torch.where(used, keys, 0.0), torch.where(used, values, 0.0)  # NaN behind masked slots
    logits = torch.where(valid, torch.einsum("rhd,rtd->rht", q, keys) * scale, float("-inf"))
    if logits.shape[-1]:
        m = logits.amax(dim=-1)
    else:
        m = logits.new_full(logits.shape[:2], float("-inf"))
    empty = torch.isneginf(m)
    p = torch.exp(logits - torch.where(empty, 0.0, m).unsqueeze(-1))  # float32
    total = p.sum(dim=-1)
    acc = torch.einsum("rht,rtd->rhd", p.to(p_dtype).float(), values)  # bf16 P, float32 accumulation
    out = acc / torch.where(empty, 1.0, total).unsqueeze(-1)
    lse = torch.where(empty, float("inf"), torch.log(total) + m)
    return out, lse, m


# ---- sparse decode ---------------------------------------------------------------------------
def _list_keys(cache, indices, lengths, rows: int, s_q: int, model):
    idx = indices.reshape(rows, -1)
    slots = torch.arange(idx.shape[1], device=idx.device)
    limit = lengths.long().repeat_interleave(s_q).view(-1, 1) if lengths is not None else idx.shape[1]
    valid = (idx != -1) & (slots.view(1, -1) < limit)
    if cache.shape[0] * cache.shape[1] == 0:
        return torch.zeros(*idx.shape, model.d_qk), valid
    keys = gather_dequantized(cache, torch.where(valid, idx, 0).long(), model)
    return keys.float(), valid


def _sparse_decode(q, k_cache, indices, scale, attn_sink, topk_length, extra_k_cache, extra_indices,
                   extra_topk_length, head_dim_v):
    shapes = check_sparse_decode_inputs(q, k_cache, indices, topk_length, attn_sink, extra_k_cache, extra_indices,
                                        extra_topk_length, head_dim_v)
    model = shapes.model_type
    b, s_q, h_q, d_qk = q.shape
    scale = d_qk ** -0.5 if scale is None else float(scale)
    rows = b * s_q
    lists = [_list_keys(k_cache, indices, topk_length, rows, s_q, model)]
    if extra_k_cache is not None:
        lists.append(_list_keys(extra_k_cache, extra_indices, extra_topk_length, rows, s_q, model))
    keys = torch.cat([k for k, _ in lists], dim=1)
    valid = torch.cat([v for _, v in lists], dim=1)
    out, lse, _ = _attend(q.reshape(rows, h_q, d_qk).float(), keys, keys[..., :model.d_v], valid.unsqueeze(1),
                          scale)
    out, lse = out.view(b, s_q, h_q, -1), lse.view(b, s_q, h_q)
    out = apply_sink(out, lse, attn_sink, head_dim=2)
    return out.to(torch.bfloat16), lse.transpose(1, 2).contiguous()


# ---- dense decode ----------------------------------------------------------------------------
def _dense_decode(q, k_cache, block_table, cache_seqlens, head_dim_v, scale, causal):
    shapes = check_dense_decode_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v)
    b, s_q, h_q, d = q.shape
    h_kv, block, group = shapes.h_kv, shapes.page_block_size, h_q // shapes.h_kv
    scale = d ** -0.5 if scale is None else float(scale)
    out = torch.zeros(b, s_q, h_q, head_dim_v)
    lse = torch.full((b, h_q, s_q), float("inf"))
    for i in range(b):  # a plain loop: this is a numerics model, not a fast kernel
        n = int(cache_seqlens[i])
        t = torch.arange(n)
        keys = k_cache[block_table[i, t // block].long(), t % block].float()  # [n, h_kv, d]
        keys = keys.repeat_interleave(group, dim=1).transpose(0, 1)  # [h_q, n, d]
        visible = torch.ones(s_q, n, dtype=torch.bool)
        if causal:
            visible &= t.view(1, -1) <= (n - s_q + torch.arange(s_q)).view(-1, 1)
        o, l, _ = _attend(q[i].transpose(0, 1).float(), keys, keys[..., :head_dim_v], visible.unsqueeze(0), scale)
        out[i], lse[i] = o.transpose(0, 1), l
    return out.to(q.dtype), lse


def flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata,
                           num_splits=None, softmax_scale=None, causal=False, is_fp8_kvcache=False, indices=None,
                           attn_sink=None, extra_k_cache=None, extra_indices_in_kvcache=None, topk_length=None,
                           extra_topk_length=None):
    mode = check_call(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata, num_splits,
                      causal, is_fp8_kvcache, indices, attn_sink, extra_k_cache, extra_indices_in_kvcache,
                      topk_length, extra_topk_length)
    if mode == "sparse":
        return _sparse_decode(q, k_cache, indices, softmax_scale, attn_sink, topk_length, extra_k_cache,
                              extra_indices_in_kvcache, extra_topk_length, head_dim_v)
    return _dense_decode(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal)


# ---- sparse prefill --------------------------------------------------------------------------
def flash_mla_sparse_fwd(q, kv, indices, sm_scale, d_v=512, attn_sink=None, topk_length=None):
    shapes = check_sparse_prefill_inputs(q, kv, indices, d_v, attn_sink, topk_length)
    idx = indices[:, 0, :]
    slots = torch.arange(shapes.topk)
    limit = topk_length.long().view(-1, 1) if topk_length is not None else shapes.topk
    valid = (idx >= 0) & (idx < shapes.s_kv) & (slots.view(1, -1) < limit)
    if shapes.s_kv:
        keys = kv[:, 0, :][torch.where(valid, idx, 0).long()].float()
    else:
        keys = torch.zeros(*idx.shape, q.shape[-1])
    out, lse, m = _attend(q.float(), keys, keys[..., :d_v], valid.unsqueeze(1), float(sm_scale))
    out = apply_sink(out, lse, attn_sink, head_dim=1)
    return out.to(torch.bfloat16), m, lse


# ---- dense MHA prefill -----------------------------------------------------------------------
def _mha_sequences(shapes):
    q0 = k0 = 0
    for s_q, s_k in zip(shapes.seqlens_q, shapes.seqlens_k):
        yield slice(q0, q0 + s_q), slice(k0, k0 + s_k), s_q, s_k
        q0, k0 = q0 + s_q, k0 + s_k


def _mha_probs(qs, ks, s_q, s_k, scale, mask):
    """qs [h, s_q, d], ks [h, s_k, d] float32 -> float32 exp(l - max) [h, s_q, s_k], its row sum, lse [h, s_q]."""
    visible = mha_ref.visible_keys(s_q, s_k, range(s_q), mask, qs.device).unsqueeze(0)
    logits = torch.where(visible, torch.einsum("hqd,hkd->hqk", qs, ks) * scale, float("-inf"))
    m = logits.amax(dim=-1) if s_k else logits.new_full(logits.shape[:2], float("-inf"))
    empty = torch.isneginf(m)
    p = torch.exp(logits - torch.where(empty, 0.0, m).unsqueeze(-1))
    total = torch.where(empty, 1.0, p.sum(-1))
    return p, total, torch.where(empty, float("inf"), torch.log(total) + m)


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, shapes, scale, mask):
        group, dt = shapes.group, q.dtype
        out = torch.zeros(shapes.total_q, shapes.h_q, shapes.d_v)
        lse = torch.empty(shapes.total_q, shapes.h_q)
        for sq_, sk_, s_q, s_k in _mha_sequences(shapes):
            qs = q[sq_].float().transpose(0, 1)
            ks = k[sk_].float().repeat_interleave(group, 1).transpose(0, 1)
            vs = v[sk_].float().repeat_interleave(group, 1).transpose(0, 1)
            p, total, l = _mha_probs(qs, ks, s_q, s_k, scale, mask)
            acc = torch.einsum("hqk,hkv->hqv", p.to(dt).float(), vs)  # exp(l - max) rounded to q's dtype
            out[sq_] = (acc / total.unsqueeze(-1)).transpose(0, 1)
            lse[sq_] = l.T
        out = out.to(dt)
        ctx.save_for_backward(q, k, v, out)
        ctx.config = (shapes, scale, mask)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out = ctx.saved_tensors
        shapes, scale, mask = ctx.config
        group, dt = shapes.group, q.dtype
        dq, dk, dv = torch.zeros(q.shape), torch.zeros(k.shape), torch.zeros(v.shape)
        for sq_, sk_, s_q, s_k in _mha_sequences(shapes):
            qs = q[sq_].float().transpose(0, 1)
            ks = k[sk_].float().repeat_interleave(group, 1).transpose(0, 1)
            vs = v[sk_].float().repeat_interleave(group, 1).transpose(0, 1)
            do = dout[sq_].to(dt).float().transpose(0, 1)  # [h, s_q, d_v]
            p, total, _ = _mha_probs(qs, ks, s_q, s_k, scale, mask)
            p = p / total.unsqueeze(-1)  # P = exp(l - lse), recomputed in float32
            d = (do * out[sq_].float().transpose(0, 1)).sum(-1, keepdim=True)  # D = rowsum(dO * O)
            ds = (p * (torch.einsum("hqv,hkv->hqk", do, vs) - d)).to(dt).float()  # dS rounded
            p = p.to(dt).float()
            dq[sq_] = (torch.einsum("hqk,hkd->qhd", ds, ks) * scale)
            dk[sk_] = (torch.einsum("hqk,hqd->khd", ds, qs) * scale).unflatten(1, (shapes.h_kv, group)).sum(2)
            dv[sk_] = torch.einsum("hqk,hqv->khv", p, do).unflatten(1, (shapes.h_kv, group)).sum(2)
        return dq.to(dt), dk.to(dt), dv.to(dt), None, None, None


def flash_attn_varlen_func(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, dropout_p=0.0,
                           softmax_scale=None, causal=False, deterministic=False, is_varlen=True, *,
                           window_size=(-1, -1)):
    mha_ref.check_mha_options(dropout_p, softmax_scale, causal, deterministic, is_varlen)
    mask = mha_ref.check_window_size(window_size, causal)
    shapes = mha_ref.check_mha_prefill_inputs(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv,
                                              is_varlen=is_varlen)
    scale = mha_ref.resolve_softmax_scale(softmax_scale, shapes.d_qk)
    return _FlashAttention.apply(q, k, v, shapes, scale, mask)
