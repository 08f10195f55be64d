"""Keys and queries of a case drawn from its production-like distribution (`Case.dist`).

`materialize` calls these for every case whose ``dist`` is not "flashmla" (FlashMLA's flat data keeps
its own draws, so existing case ids keep their exact tensors). Each op keeps FlashMLA's base scale
for its keys (std and clamp of `distributions.BASE_VALUES`); the distribution then reshapes them
(outlier channels, RoPE scale, near duplicates), and the queries are built *from the keys each query
actually attends to*: the considered entries of its own index lists (sparse ops), its sequence's
visible tokens (dense decode: causal included; MHA: causal and sliding window included), so that a
peaked query is peaked over exactly the keys the kernel sees.

RoPE dims: the last 64 of d_qk for the MLA ops (576 = 512 + 64, 512 = 448 + 64) and d192 MHA
(128 + 64); d128 MHA has no RoPE part.
"""
from __future__ import annotations

import dataclasses

import torch

from mlaverify.verify.distributions import BASE_VALUES, PRODUCTION_DISTRIBUTIONS

_KEY_TENSOR = {"sparse_decode": "k", "sparse_prefill": "kv", "dense_decode": "k", "mha_prefill": "k"}


def rope_dims(op: str, d_qk: int) -> int:
    return 0 if (op == "mha_prefill" and d_qk == 128) else 64


def draw_keys(g, case, n_tokens: int, d: int | None = None, tensor: str | None = None,
              d_rope: int | None = None) -> torch.Tensor:
    """float32 keys [n_tokens, d] of the case's distribution at the op's base scale (tensor: BASE_VALUES name)."""
    dist = PRODUCTION_DISTRIBUTIONS[case.dist]
    d = case.d_qk if d is None else d
    std, clamp, _ = BASE_VALUES[(case.op, tensor or _KEY_TENSOR[case.op])]
    params = dataclasses.replace(dist.key_params, std=std, clamp=clamp)
    rope = rope_dims(case.op, case.d_qk) if d_rope is None else d_rope
    return dataclasses.replace(dist, key_params=params).make_keys(g, n_tokens, d - rope, rope)


def draw_queries(g, case, keys: torch.Tensor, attended: torch.Tensor, scale: float, n_heads: int) -> torch.Tensor:
    """float32 queries [*attended.shape[:-1], n_heads, d] peaked (or spread) over the attended key rows.

    attended [..., T] int64 names key rows of `keys`; -1 (or anything outside [0, n)) is not attended."""
    dist = PRODUCTION_DISTRIBUTIONS[case.dist]
    std, clamp, _ = BASE_VALUES[(case.op, "q")]
    params = dataclasses.replace(dist.query_params, std=std, clamp=clamp)
    return dataclasses.replace(dist, query_params=params).make_queries(g, keys, attended, scale, n_heads)


def grouped_queries(g, case, keys: torch.Tensor, attended: torch.Tensor, scale: float, h_q: int) -> torch.Tensor:
    """GQA: keys [n, h_kv, d]; query head h reads kv head h // (h_q // h_kv). -> [*lead, h_q, d]."""
    h_kv = keys.shape[1]
    parts = [draw_queries(g, case, keys[:, j].contiguous(), attended, scale, h_q // h_kv) for j in range(h_kv)]
    return torch.cat(parts, dim=-2)


def considered_rows(positions: torch.Tensor, considered: torch.Tensor) -> torch.Tensor:
    """Index entries the op considers, others -1 (so a query is never peaked on a key it does not see)."""
    return torch.where(considered, positions.long(), -1)


def dense_decode_rows(table: torch.Tensor, lens: torch.Tensor, s_q: int, block: int, causal: bool,
                      t_max: int) -> torch.Tensor:
    """[b, s_q, t_max] cache rows (block * page_block_size + offset) query j of sequence i sees, else -1."""
    t = torch.arange(max(t_max, 1))
    blocks = table.long()[:, (t // block).clamp_max(table.shape[1] - 1)]  # [b, T]
    rows = blocks * block + t % block
    visible = (t.view(1, 1, -1) < lens.view(-1, 1, 1)).expand(-1, s_q, -1)
    if causal:
        last = lens.view(-1, 1) - s_q + torch.arange(s_q).view(1, -1)  # [b, s_q]
        visible = visible & (t.view(1, 1, -1) <= last.unsqueeze(-1))
    return torch.where(visible, rows.unsqueeze(1), -1)


def mha_rows(lq: torch.Tensor, lk: torch.Tensor, case) -> torch.Tensor:
    """[total_q, max s_k] packed key rows each query token sees (causal, window), else -1."""
    from mlaverify.reference.mha_prefill import check_window_size, visible_keys

    mask = check_window_size(case.window_size, case.causal)  # causal: right bound 0 (the diagonal)
    t_max = max(int(lk.max()), 1)
    out = torch.full((int(lq.sum()), t_max), -1, dtype=torch.int64)
    q0 = k0 = 0
    for s_q, s_k in zip(lq.tolist(), lk.tolist()):
        if s_q and s_k:
            vis = visible_keys(s_q, s_k, range(s_q), mask, torch.device("cpu"))  # [s_q, s_k]
            rows = torch.arange(k0, k0 + s_k).expand(s_q, -1)
            out[q0:q0 + s_q, :s_k] = torch.where(vis, rows, -1)
        q0, k0 = q0 + s_q, k0 + s_k
    return out
