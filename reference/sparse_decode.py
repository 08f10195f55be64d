"""Sparse decode over an FP8 paged cache (operations.md section 1), before output rounding."""

from __future__ import annotations

import torch

from .cache_format import gather_dequantized
from .model_type import ModelType
from .softmax import apply_sink, compute_dtype, masked_attention, rows_per_chunk
from .validation import check_sparse_decode_inputs


def _row_lengths(lengths: torch.Tensor | None, topk: int, b: int, s_q: int, device) -> torch.Tensor:
    """Per (batch, query) row: how many leading entries are considered. [b * s_q] int64."""
    if lengths is None:
        return torch.full((b * s_q,), topk, dtype=torch.int64, device=device)
    return lengths.long().repeat_interleave(s_q)  # rows are batch-major


def _gather_list(cache: torch.Tensor, indices: torch.Tensor, lengths: torch.Tensor, model: ModelType):
    """Keys and validity of one index list. indices [r, T] int32, lengths [r] -> ([r, T, d_qk] bf16, [r, T])."""
    slots = torch.arange(indices.shape[-1], device=indices.device)
    valid = (indices != -1) & (slots.view(1, -1) < lengths.view(-1, 1))  # only -1 is invalid in decode
    if cache.shape[0] * cache.shape[1] == 0:  # an empty cache can only be referenced by invalid entries
        keys = torch.zeros(*indices.shape, model.d_qk, dtype=torch.bfloat16, device=indices.device)
        return keys, valid
    positions = torch.where(valid, indices, 0).long()  # masked entries read slot 0, then get masked
    return gather_dequantized(cache, positions, model), valid


def sparse_decode_reference(
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
    dtype: torch.dtype = torch.float32,
    chunk_bytes: int | None = None,
    p_dtype: torch.dtype | None = None,
):
    """Unrounded sparse decode: out [b, s_q, h_q, 512] and lse [b, h_q, s_q], both in ``dtype``.

    Attention runs over the union of the considered main entries (indices[i, j, :topk_length[i]]
    that are not -1) and the considered extra entries, on the exact dequantized bf16 keys.
    """
    shapes = check_sparse_decode_inputs(
        q, k_cache, indices, topk_length, attn_sink, extra_k_cache, extra_indices, extra_topk_length, head_dim_v
    )
    dtype = compute_dtype(dtype)
    model = shapes.model_type
    b, s_q, h_q, d_qk = q.shape
    scale = d_qk**-0.5 if softmax_scale is None else float(softmax_scale)
    rows = b * s_q
    q_rows = q.reshape(rows, h_q, d_qk)  # [R, h_q, d_qk], R = b * s_q
    lists = [(k_cache, indices.reshape(rows, -1), _row_lengths(topk_length, shapes.topk, b, s_q, q.device))]
    if extra_k_cache is not None:
        extra_len = _row_lengths(extra_topk_length, shapes.extra_topk, b, s_q, q.device)
        lists.append((extra_k_cache, extra_indices.reshape(rows, -1), extra_len))

    total = shapes.topk + shapes.extra_topk
    dsize = torch.finfo(dtype).bits // 8
    per_row = total * (model.bytes_per_token + 2 * d_qk + 2 * d_qk * dsize) + 4 * h_q * total * dsize
    step = rows_per_chunk(per_row, chunk_bytes)
    out = torch.empty(rows, h_q, model.d_v, dtype=dtype, device=q.device)
    lse = torch.empty(rows, h_q, dtype=dtype, device=q.device)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        gathered = [_gather_list(cache, idx[r0:r1], length[r0:r1], model) for cache, idx, length in lists]
        keys = torch.cat([k for k, _ in gathered], dim=1).to(dtype)  # [r, T_main + T_extra, d_qk]
        valid = torch.cat([v for _, v in gathered], dim=1)  # [r, T]
        values = keys[..., : model.d_v]  # V = K[:512]: NoPE only (V32), RoPE included (MODEL1)
        o, l, _ = masked_attention(q_rows[r0:r1].to(dtype), keys, values, valid.unsqueeze(1), scale,
                                   p_dtype=p_dtype)
        out[r0:r1], lse[r0:r1] = o, l

    out = out.view(b, s_q, h_q, model.d_v)
    lse = lse.view(b, s_q, h_q)
    out = apply_sink(out, lse, attn_sink, head_dim=2)
    return out, lse.transpose(1, 2).contiguous()  # lse [b, h_q, s_q]
