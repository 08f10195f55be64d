"""Dense decode over a bf16/fp16 paged cache (operations.md section 3), before output rounding."""

from __future__ import annotations

import torch

from .softmax import compute_dtype, masked_attention, rows_per_chunk
from .validation import check_dense_decode_inputs


def dense_decode_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int = 512,
    *,
    softmax_scale: float | None = None,
    causal: bool = False,
    dtype: torch.dtype = torch.float32,
    chunk_bytes: int | None = None,
    p_dtype: torch.dtype | None = None,
):
    """Unrounded dense decode: out [b, s_q, h_q, head_dim_v] and lse [b, h_q, s_q] in ``dtype``.

    Sequence i attends to its first cache_seqlens[i] tokens; query head h reads KV head
    h // (h_q // h_kv); with causal, query j sees tokens t <= s_k - s_q + j (bottom-right).
    """
    shapes = check_dense_decode_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v)
    dtype = compute_dtype(dtype)
    b, s_q, h_q, d = q.shape
    h_kv, block_size = shapes.h_kv, shapes.page_block_size
    group = h_q // h_kv
    scale = d**-0.5 if softmax_scale is None else float(softmax_scale)
    lengths = cache_seqlens.long()
    dsize = torch.finfo(dtype).bits // 8
    max_len = int(lengths.max()) if b else 0
    per_seq = max(1, max_len) * (h_kv * d * (2 + dsize) + 4 * h_q * s_q * dsize)
    step = rows_per_chunk(per_seq, chunk_bytes)

    out = torch.empty(b, s_q, h_q, head_dim_v, dtype=dtype, device=q.device)
    lse = torch.empty(b, h_q, s_q, dtype=dtype, device=q.device)
    for i0 in range(0, b, step):
        i1 = min(b, i0 + step)
        n = i1 - i0
        seq_len = lengths[i0:i1]  # [n]
        t_max = int(seq_len.max())
        t = torch.arange(t_max, device=q.device)  # [T]
        in_seq = t.view(1, -1) < seq_len.view(-1, 1)  # [n, T]
        blocks = block_table[i0:i1].long()[:, t // block_size]  # [n, T]; entries past a sequence may be garbage
        blocks = torch.where(in_seq, blocks, 0)
        keys = k_cache[blocks, (t % block_size).view(1, -1)]  # [n, T, h_kv, d]
        keys = keys.permute(0, 2, 1, 3).reshape(n * h_kv, t_max, d).to(dtype)  # [n*h_kv, T, d]
        visible = in_seq.unsqueeze(1).expand(n, s_q, t_max)  # [n, s_q, T]
        if causal:
            last = seq_len.view(-1, 1) - s_q + torch.arange(s_q, device=q.device).view(1, -1)  # [n, s_q]
            visible = visible & (t.view(1, 1, -1) <= last.unsqueeze(-1))
        valid = visible.view(n, 1, s_q, 1, t_max).expand(n, h_kv, s_q, group, t_max)
        valid = valid.reshape(n * h_kv, s_q * group, t_max)  # heads of a row: (query j, group member g)
        q_rows = q[i0:i1].view(n, s_q, h_kv, group, d).permute(0, 2, 1, 3, 4)  # [n, h_kv, s_q, g, d]
        q_rows = q_rows.reshape(n * h_kv, s_q * group, d).to(dtype)
        o, l, _ = masked_attention(q_rows, keys, keys[..., :head_dim_v], valid, scale, p_dtype=p_dtype)
        o = o.view(n, h_kv, s_q, group, head_dim_v).permute(0, 2, 1, 3, 4)  # [n, s_q, h_kv, g, d_v]
        out[i0:i1] = o.reshape(n, s_q, h_q, head_dim_v)
        lse[i0:i1] = l.view(n, h_kv, s_q, group).permute(0, 1, 3, 2).reshape(n, h_q, s_q)
    return out, lse
