"""The masked softmax-attention core every reference op shares, plus the attention-sink rule."""

from __future__ import annotations

import torch

# Working-set budget of one chunk (bytes). Chunking only groups independent rows, so results do
# not depend on it beyond float rounding order (and the tests check chunked == unchunked).
DEFAULT_CHUNK_BYTES = 256 * 2**20


def masked_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, scale: float,
                     p_dtype: torch.dtype | None = None):
    """Softmax attention of each row's heads over that row's own key list.

    q [R, h, d_qk], keys [R, T, d_qk], values [R, T, d_v], valid [R, h or 1, T] (bool), all in the
    compute dtype. Invalid keys and values are masked before use, so NaN in them never leaks.
    Returns out [R, h, d_v], lse [R, h] (natural log, +inf when no entry is valid), max_logits [R, h]
    (-inf when none is valid).
    p_dtype: None (the reference: no rounding), or the dtype the weights exp(l - max) are rounded to
    before P @ V, the row sum still taken from the unrounded weights (the numerics emulation,
    `numerics_emulation`: what a correct fast kernel's bf16 tensor-core product does).
    """
    keys = torch.where(valid.any(dim=1).unsqueeze(-1), keys, 0.0)  # [R, T, d_qk]
    values = torch.where(valid.any(dim=1).unsqueeze(-1), values, 0.0)  # [R, T, d_v]
    logits = torch.einsum("rhd,rtd->rht", q, keys) * scale  # [R, h, T]
    logits = torch.where(valid, logits, float("-inf"))
    max_logits = logits.amax(dim=-1) if logits.shape[-1] > 0 else logits.new_full(logits.shape[:2], float("-inf"))
    empty = torch.isneginf(max_logits)  # [R, h]: no valid entry
    shift = torch.where(empty, 0.0, max_logits)
    weights = torch.exp(logits - shift.unsqueeze(-1))  # exp(-inf) = 0 for masked entries
    total = weights.sum(dim=-1)  # [R, h]
    pv = weights if p_dtype is None else weights.to(p_dtype).to(weights.dtype)
    out = torch.einsum("rht,rtd->rhd", pv, values) / torch.where(empty, 1.0, total).unsqueeze(-1)
    lse = torch.where(empty, float("inf"), torch.log(total) + shift)
    return out, lse, max_logits


def apply_sink(out: torch.Tensor, lse: torch.Tensor, attn_sink: torch.Tensor | None, head_dim: int) -> torch.Tensor:
    """out *= 1 / (1 + exp(sink[h] - lse)); lse is untouched. -inf sink: no-op, +inf: zeros.

    out [..., h, ..., d_v] with heads at ``head_dim``; lse broadcastable to out without its last dim.
    Rows with no valid entry already hold 0 and stay 0.
    """
    if attn_sink is None:
        return out
    shape = [1] * (out.dim() - 1)
    shape[head_dim] = -1
    sink = attn_sink.to(lse.dtype).view(shape)
    factor = torch.sigmoid(lse - sink)  # = 1 / (1 + exp(sink - lse)); sigmoid(+inf)=1, sigmoid(-inf)=0
    factor = torch.where(torch.isposinf(lse), 0.0, factor)  # no valid entry: out is 0 regardless
    return out * factor.unsqueeze(-1)


def rows_per_chunk(bytes_per_row: int, chunk_bytes: int | None) -> int:
    budget = DEFAULT_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    return max(1, budget // max(1, bytes_per_row))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
    return dtype
