"""Small input builders for the reference tests (deterministic from a seed)."""

from __future__ import annotations

import torch

from mlaverify.reference import ModelType, quantize_kv_cache


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_cache(model: ModelType, num_blocks: int, block_size: int, seed: int, rounding: str = "ue8m0"):
    """(fp8 cache, the bf16 keys it was quantized from [num_blocks, B, 1, d_qk])."""
    k = torch.randn(num_blocks, block_size, 1, model.d_qk, generator=gen(seed)).bfloat16()
    return quantize_kv_cache(k, model, scale_rounding=rounding), k


def random_q(shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed)).bfloat16()


def random_indices(b: int, s_q: int, topk: int, num_positions: int, seed: int, invalid_frac: float = 0.2):
    g = gen(seed)
    idx = torch.randint(0, num_positions, (b, s_q, topk), generator=g, dtype=torch.int32)
    drop = torch.rand(b, s_q, topk, generator=g) < invalid_frac
    return torch.where(drop, torch.tensor(-1, dtype=torch.int32), idx)


def poison_unreferenced(cache: torch.Tensor, referenced: torch.Tensor, model: ModelType) -> None:
    """Fill every byte of every cache slot not in ``referenced`` (positions) with 0xFF (fp8 NaN,
    NaN scales, NaN RoPE), in place."""
    u8 = cache.view(torch.uint8)
    num_blocks, block_size = cache.shape[0], cache.shape[1]
    keep = torch.zeros(num_blocks * block_size, dtype=torch.bool)
    keep[referenced[referenced >= 0].long().unique()] = True
    base, stride0 = u8.storage_offset(), u8.stride(0)
    for p in (~keep).nonzero().flatten().tolist():
        blk, off = divmod(p, block_size)
        if model is ModelType.V32:
            u8[blk, off, 0, :] = 0xFF
        else:
            data = torch.as_strided(u8, (576,), (1,), base + blk * stride0 + 576 * off)
            scales = torch.as_strided(u8, (8,), (1,), base + blk * stride0 + 576 * block_size + 8 * off)
            data.fill_(0xFF)
            scales.fill_(0xFF)


def naive_attention(q: torch.Tensor, keys: torch.Tensor, d_v: int, scale: float):
    """One row: q [h, d], keys [n, d] (float64). Returns out [h, d_v], lse [h], max [h]."""
    if keys.shape[0] == 0:
        h = q.shape[0]
        inf = torch.full((h,), float("inf"), dtype=q.dtype)
        return torch.zeros(h, d_v, dtype=q.dtype), inf, -inf
    logits = q @ keys.T * scale  # [h, n]
    probs = torch.softmax(logits, dim=-1)
    return probs @ keys[:, :d_v], torch.logsumexp(logits, dim=-1), logits.amax(dim=-1)
