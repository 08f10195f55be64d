"""Planted bugs in dense MHA prefill (``flash_attn_varlen_func`` forward and backward)."""
from __future__ import annotations

import torch

from mlaverify.reference import mha_prefill as mha_ref

from ._base import PlantedBug


def _top_left_attention(q, k, v, cu_q, cu_k, scale):
    """Causal attention with the mask aligned top-left (query j sees keys t <= j); autograd backward."""
    h_q, h_kv = q.shape[1], k.shape[1]
    group = h_q // h_kv
    outs, lses = [], []
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    for i in range(len(bounds_q) - 1):
        qs = q[bounds_q[i]:bounds_q[i + 1]].float()  # [s_q, h_q, d_qk]
        ks = k[bounds_k[i]:bounds_k[i + 1]].float().repeat_interleave(group, dim=1)  # [s_k, h_q, d_qk]
        vs = v[bounds_k[i]:bounds_k[i + 1]].float().repeat_interleave(group, dim=1)  # [s_k, h_q, d_v]
        scores = torch.einsum("qhd,khd->hqk", qs, ks) * scale  # [h_q, s_q, s_k]
        j = torch.arange(qs.shape[0], device=q.device)[:, None]
        t = torch.arange(ks.shape[0], device=q.device)[None, :]
        scores = scores.masked_fill(~(t <= j), float("-inf"))  # should be t <= s_k - s_q + j
        lse = torch.logsumexp(scores, dim=-1)  # [h_q, s_q]
        empty = torch.isneginf(lse)
        probs = torch.exp(scores - lse.masked_fill(empty, 0.0)[..., None])
        outs.append(torch.einsum("hqk,khv->qhv", probs, vs))
        lses.append(lse.masked_fill(empty, float("inf")).T)
    return torch.cat(outs).to(q.dtype), torch.cat(lses).float().detach()


def _causal_top_left(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, dropout_p=0.0,
                     softmax_scale=None, causal=False, deterministic=False, is_varlen=True):
    if not causal:
        return mha_ref.flash_attn_varlen_func(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv,
                                              dropout_p, softmax_scale, causal, deterministic, is_varlen)
    mha_ref.check_mha_options(dropout_p, softmax_scale, causal, deterministic, is_varlen)
    shapes = mha_ref.check_mha_prefill_inputs(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv,
                                              is_varlen=is_varlen)
    scale = mha_ref.resolve_softmax_scale(softmax_scale, shapes.d_qk)
    return _top_left_attention(q, k, v, cu_seqlens_qo, cu_seqlens_kv, scale)


def _window_left_off_by_one(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, dropout_p=0.0,
                            softmax_scale=None, causal=False, deterministic=False, is_varlen=True, *,
                            window_size=(-1, -1)):
    mha_ref.check_window_size(window_size, causal)  # bad input still raises as in the reference
    left, right = window_size
    left = left + 1 if left >= 0 else left  # should be keys t >= diag - left: one key too many on the left
    return mha_ref.flash_attn_varlen_func(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv,
                                          dropout_p, softmax_scale, causal, deterministic, is_varlen,
                                          window_size=(left, right))


def _dk_unscaled(dq, dk, dv, grads_last_head, scale):
    return dq, dk / scale, dv  # the softmax_scale factor of dK = scale * dS^T Q forgotten


def _dkdv_last_head(dq, dk, dv, grads_last_head, scale):
    _, dk_last, dv_last = grads_last_head()
    return dq, dk_last, dv_last  # each query head overwrote dk/dv instead of accumulating


class _PerturbedBackward(torch.autograd.Function):
    """Reference forward; reference backward, then ``perturb`` applied to (dq, dk, dv)."""

    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, perturb):
        with torch.no_grad():
            out, lse = mha_ref.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, scale, causal)
        ctx.save_for_backward(q, k, v, cu_q, cu_k)
        ctx.config = (scale, causal, perturb)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, cu_q, cu_k = ctx.saved_tensors
        scale, causal, perturb = ctx.config

        def grads(d):
            return mha_ref.mha_prefill_backward_reference(d, q, k, v, cu_q, cu_k, softmax_scale=scale, causal=causal)

        def grads_last_head():
            group = q.shape[1] // k.shape[1]
            keep = torch.zeros(q.shape[1], dtype=torch.bool, device=q.device)
            keep[group - 1::group] = True  # the last query head of every group
            return grads(dout * keep.view(1, -1, 1))

        dq, dk, dv = perturb(*grads(dout), grads_last_head, scale)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None, None, None


def _backward_bug(perturb):
    def flash_attn_varlen_func(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, dropout_p=0.0,
                               softmax_scale=None, causal=False, deterministic=False, is_varlen=True):
        mha_ref.check_mha_options(dropout_p, softmax_scale, causal, deterministic, is_varlen)
        shapes = mha_ref.check_mha_prefill_inputs(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo,
                                                  max_seqlen_kv, is_varlen=is_varlen)
        scale = mha_ref.resolve_softmax_scale(softmax_scale, shapes.d_qk)
        return _PerturbedBackward.apply(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv,
                                        scale, causal, perturb)
    return flash_attn_varlen_func


def _api(varlen) -> dict:
    """The three MHA entry points, the packed ones routed through the buggy ``varlen`` (a sliding
    window, when given, is passed on as the keyword-only ``window_size``)."""

    def window(window_size) -> dict:
        return {} if tuple(window_size) == (-1, -1) else {"window_size": window_size}

    def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, head_dim_qk, dropout_p=0.0,
                                         softmax_scale=None, causal=False, deterministic=False, is_varlen=True, *,
                                         window_size=(-1, -1)):
        q, k, v = mha_ref.split_qkv_packed(qkv, head_dim_qk)
        return varlen(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p, softmax_scale, causal,
                      deterministic, is_varlen, **window(window_size))

    def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv,
                                        head_dim_qk, dropout_p=0.0, softmax_scale=None, causal=False,
                                        deterministic=False, is_varlen=True, *, window_size=(-1, -1)):
        k, v = mha_ref.split_kv_packed(kv, head_dim_qk)
        return varlen(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, dropout_p,
                      softmax_scale, causal, deterministic, is_varlen, **window(window_size))

    return {"flash_attn_varlen_func": varlen,
            "flash_attn_varlen_qkvpacked_func": flash_attn_varlen_qkvpacked_func,
            "flash_attn_varlen_kvpacked_func": flash_attn_varlen_kvpacked_func}


_OPS = ("mha_prefill",)
_MODELS = ("d192", "d128")

BUGS = [
    PlantedBug("mha_causal_top_left", "causal mask aligned top-left instead of bottom-right", _OPS, _MODELS,
               _api(_causal_top_left)),
    PlantedBug("mha_dk_unscaled", "dk not multiplied by softmax_scale", _OPS, _MODELS,
               _api(_backward_bug(_dk_unscaled))),
    PlantedBug("mha_dkdv_not_summed", "dk/dv of a KV head taken from one query head, not its GQA group", _OPS,
               _MODELS, _api(_backward_bug(_dkdv_last_head))),
    PlantedBug("mha_window_left_off_by_one", "sliding window left bound off by one (one key too many on the left)",
               _OPS, _MODELS, _api(_window_left_off_by_one)),
]
