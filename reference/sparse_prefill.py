"""Sparse prefill over a bf16 KV tensor (operations.md section 2), before output rounding."""

from __future__ import annotations

import torch

from .softmax import apply_sink, compute_dtype, masked_attention, rows_per_chunk
from .validation import check_sparse_prefill_inputs


def sparse_prefill_reference(
    q: torch.Tensor,
    kv: torch.Tensor,
    indices: torch.Tensor,
    sm_scale: float,
    *,
    d_v: int = 512,
    attn_sink: torch.Tensor | None = None,
    topk_length: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    chunk_bytes: int | None = None,
    p_dtype: torch.dtype | None = None,
):
    """Unrounded sparse prefill: out [s_q, h_q, d_v], max_logits [s_q, h_q], lse [s_q, h_q].

    An index t is valid only when 0 <= t < s_kv (and its slot is below topk_length); every other
    value is ignored. max_logits and lse are natural-log quantities of sm_scale * <q, k>.
    """
    shapes = check_sparse_prefill_inputs(q, kv, indices, d_v, attn_sink, topk_length)
    dtype = compute_dtype(dtype)
    s_q, h_q, d_qk = q.shape
    s_kv, topk = shapes.s_kv, shapes.topk
    idx = indices[:, 0, :]  # [s_q, topk]
    lengths = topk_length.long() if topk_length is not None else torch.full((s_q,), topk, device=q.device)
    slots = torch.arange(topk, device=q.device)
    keys_all = kv[:, 0, :]  # [s_kv, d_qk]

    dsize = torch.finfo(dtype).bits // 8
    per_row = topk * d_qk * (2 + 2 * dsize) + 4 * h_q * topk * dsize
    step = rows_per_chunk(per_row, chunk_bytes)
    out = torch.empty(s_q, h_q, d_v, dtype=dtype, device=q.device)
    lse = torch.empty(s_q, h_q, dtype=dtype, device=q.device)
    max_logits = torch.empty(s_q, h_q, dtype=dtype, device=q.device)
    for r0 in range(0, s_q, step):
        r1 = min(s_q, r0 + step)
        chunk = idx[r0:r1]  # [r, topk]
        valid = (chunk >= 0) & (chunk < s_kv) & (slots.view(1, -1) < lengths[r0:r1].view(-1, 1))
        if s_kv == 0:
            keys = torch.zeros(*chunk.shape, d_qk, dtype=dtype, device=q.device)
        else:
            keys = keys_all[torch.where(valid, chunk, 0).long()].to(dtype)  # [r, topk, d_qk]
        o, l, m = masked_attention(q[r0:r1].to(dtype), keys, keys[..., :d_v], valid.unsqueeze(1), float(sm_scale),
                                   p_dtype=p_dtype)
        out[r0:r1], lse[r0:r1], max_logits[r0:r1] = o, l, m

    out = apply_sink(out, lse, attn_sink, head_dim=1)
    return out, max_logits, lse
