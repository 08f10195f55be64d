"""Planted bugs in dense decode (``flash_mla_with_kvcache`` without indices)."""
from __future__ import annotations

import math

import torch

from ._base import PlantedBug, is_sparse, kvcache_wrapper


def _page_block_64(kw: dict) -> dict:
    cache = kw["k_cache"]
    if is_sparse(kw) or cache.shape[1] == 64:
        return kw
    nb, block, h_kv, d = cache.shape
    flat = cache.reshape(nb * block, h_kv, d)  # token slots in storage order
    n64 = max(1, math.ceil(nb * block / 64))
    padded = torch.zeros(n64 * 64, h_kv, d, dtype=cache.dtype, device=cache.device)
    padded[: nb * block] = flat
    table = kw["block_table"]
    max_len = int(kw["cache_seqlens"].max()) if kw["cache_seqlens"].numel() else 0
    cols = max(table.shape[1], math.ceil(max_len / 64))
    table64 = torch.zeros(table.shape[0], cols, dtype=torch.int64, device=table.device)
    table64[:, : table.shape[1]] = table.long()
    # block ids addressed as if every block held 64 tokens (ids past the cache wrap around)
    table64 = torch.remainder(table64, n64).to(torch.int32)
    return {**kw, "k_cache": padded.view(n64, 64, h_kv, d), "block_table": table64}


def _head_perm(h_q: int, h_kv: int, device) -> torch.Tensor:
    """perm[h] = the head the correct mapping would give KV head h % h_kv (h // group)."""
    group = h_q // h_kv
    h = torch.arange(h_q, device=device)
    return (h % h_kv) * group + h // h_kv


def _gqa_pre(kw: dict) -> dict:
    q, h_kv = kw["q"], kw["k_cache"].shape[2]
    if is_sparse(kw) or h_kv == 1 or h_kv == q.shape[2]:
        return kw
    perm = _head_perm(q.shape[2], h_kv, q.device)
    q2 = torch.empty_like(q)
    q2[:, :, perm] = q  # query head h lands where KV head h % h_kv is read
    return {**kw, "q": q2}


def _gqa_post(called: dict, outputs: tuple) -> tuple:
    q, h_kv = called["q"], called["k_cache"].shape[2]
    if is_sparse(called) or h_kv == 1 or h_kv == q.shape[2]:
        return outputs
    out, lse = outputs
    perm = _head_perm(q.shape[2], h_kv, q.device)
    return out[:, :, perm], lse[:, perm]


def _causal_minus_one(kw: dict) -> dict:
    if is_sparse(kw) or not kw["causal"]:
        return kw
    # query j sees t < s_k - s_q + j instead of t <= s_k - s_q + j
    return {**kw, "cache_seqlens": (kw["cache_seqlens"] - 1).clamp_min(0).to(torch.int32)}


def _out_bf16(called: dict, outputs: tuple) -> tuple:
    out, lse = outputs
    return out.to(torch.bfloat16), lse  # fp16 inputs, but the epilogue always stores bf16


def _nan_leak_tail(called: dict, outputs: tuple) -> tuple:
    if is_sparse(called):
        return outputs
    out, lse = outputs
    cache, table, lens = called["k_cache"], called["block_table"].long(), called["cache_seqlens"].long()
    nb, block = cache.shape[0], cache.shape[1]
    v_nan = torch.isnan(cache[..., : called["head_dim_v"]].float()).flatten(2).any(-1)  # [nb, B]
    t = torch.arange(table.shape[1] * block, device=cache.device)  # [T] token slots of the table
    padded_len = (lens + block - 1) // block * block
    tail = (t >= lens[:, None]) & (t < padded_len[:, None])  # [b, T] slots after the last token
    ids = torch.gather(table, 1, (t // block).expand(table.shape[0], -1)).clamp(0, nb - 1)
    # the last block is loaded whole and its tail multiplied by p = 0
    leak = (tail & v_nan[ids, t % block]).any(-1)  # [b]
    return out.masked_fill(leak[:, None, None, None], float("nan")), lse


_OPS = ("dense_decode",)
_MODELS = ("v32", "model1")

BUGS = [
    PlantedBug("dense_page_block_64", "dense cache addressed as if page_block_size were 64", _OPS, _MODELS,
               {"flash_mla_with_kvcache": kvcache_wrapper(pre=_page_block_64)}),
    PlantedBug("dense_gqa_head_mapping", "query head h reads KV head h % h_kv instead of h // group", _OPS,
               _MODELS, {"flash_mla_with_kvcache": kvcache_wrapper(pre=_gqa_pre, post=_gqa_post)}),
    PlantedBug("dense_causal_off_by_one", "causal mask excludes the diagonal token", _OPS, _MODELS,
               {"flash_mla_with_kvcache": kvcache_wrapper(pre=_causal_minus_one)}),
    PlantedBug("dense_fp16_out_as_bf16", "fp16 inputs return a bf16 output", _OPS, _MODELS,
               {"flash_mla_with_kvcache": kvcache_wrapper(post=_out_bf16)}),
    PlantedBug("dense_nan_leak_tail", "NaN slots after the sequence end in its last block reach out", _OPS,
               _MODELS, {"flash_mla_with_kvcache": kvcache_wrapper(post=_nan_leak_tail)}),
]
