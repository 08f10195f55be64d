"""Turn a `Case` into tensors: the same ones every time, from the case's seed alone.

    inputs = materialize(case, device="cpu")
    inputs.tensors["q"], inputs.tensors["k_cache"], ...   # API argument name -> tensor (or None)
    inputs.scalars["softmax_scale"]                          # None means "use the API default"

Every random draw comes from one `torch.Generator` on the CPU seeded with `case.seed`, in a fixed
order; the finished tensors are then moved to `device` with their strides and storage offsets
kept (non-contiguous views stay non-contiguous). Tensor names per op:
- sparse_decode: q, k_cache, indices, topk_length, attn_sink, extra_k_cache, extra_indices,
  extra_topk_length.
- sparse_prefill: q, kv, indices, topk_length, attn_sink (scalar sm_scale is softmax_scale or
  d_qk ** -0.5, since that API has no default).
- dense_decode: q, k_cache, block_table, cache_seqlens.
- mha_prefill: q, k, v, cu_seqlens_q, cu_seqlens_k, dout (backward only); scalars max_seqlen_q,
  max_seqlen_k, window_size ((-1, -1): no window).
Gaps of non-contiguous views hold NaN (or, for index tensors, 0), so an implementation that
ignores strides reads garbage and fails.

Value distributions: every op draws its base values as FlashMLA's test generator for that op does,
because the tolerance table (operations.md) is FlashMLA's and was calibrated on FlashMLA's data; on
unit-scale data a legitimate kernel that rounds the softmax weights to bf16 before P @ V (as FlashMLA
does) exceeds it, and the engine would report bugs that are not there. The stress distributions of
sparse decode are layered on top of that base. The table, the reasons and the stress values live in
`mlaverify.verify.distributions`. A case whose ``dist`` is not "flashmla" draws its keys from that
production-like distribution and builds its queries from the keys each query attends to
(`mlaverify.verify.production_values`); flashmla cases keep their draws unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mlaverify.reference import ModelType, cache_positions, quantize_kv_cache
from mlaverify.verify.cases import Case
from mlaverify.verify import production_values as prod
from mlaverify.verify.distributions import base_values, stress_values

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Inputs:
    case: Case
    tensors: dict[str, torch.Tensor | None]
    scalars: dict[str, Any] = field(default_factory=dict)


def materialize(case: Case, device: str | torch.device = "cpu") -> Inputs:
    if not isinstance(case, Case):
        raise TypeError(f"case: expected a Case, got {type(case).__name__}")
    g = torch.Generator(device="cpu").manual_seed(case.seed)
    build = {"sparse_decode": _sparse_decode, "sparse_prefill": _sparse_prefill,
             "dense_decode": _dense_decode, "mha_prefill": _mha_prefill}[case.op]
    tensors, scalars = build(case, g)
    device = torch.device(device)
    moved = {k: None if t is None else to_device(t, device) for k, t in tensors.items()}
    return Inputs(case, moved, scalars)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move t to device keeping its exact view geometry (size, strides, storage offset)."""
    if t.device == device:
        return t
    n = t.untyped_storage().nbytes() // t.element_size()
    base = t.as_strided((n,), (1,), 0).to(device)
    return base.as_strided(t.size(), t.stride(), t.storage_offset())


# ---- small random helpers --------------------------------------------------------------------
def _randint(g, low: int, high: int, shape=()) -> torch.Tensor:
    """Uniform int64 in [low, high)."""
    return torch.randint(low, high, shape, generator=g, dtype=torch.int64)


def _rand(g, *shape) -> torch.Tensor:
    return torch.rand(*shape, generator=g)


def _randn(g, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


def _strided_copy(values: torch.Tensor, pad_dim: int, pad: int, fill: float) -> torch.Tensor:
    """values as a view into a larger buffer (dim pad_dim grown by pad, gaps = fill)."""
    shape = list(values.shape)
    shape[pad_dim] += pad
    buf = torch.full(shape, fill, dtype=values.dtype)
    view = buf.narrow(pad_dim, 0, values.shape[pad_dim])
    view.copy_(values)
    return view


def _transposed(q: torch.Tensor) -> torch.Tensor:
    """q ([..., s, h, d]) as a transposed view of a [..., h, s, d] buffer: head stride s * d, not d (issue 11)."""
    return q.transpose(-3, -2).contiguous().transpose(-3, -2)


def _duplicated(tokens: torch.Tensor) -> torch.Tensor:
    """Every 4th slot from 1 repeats the slot before it: duplicate positions inside one list (issue 11)."""
    out = tokens.clone()
    n = out[..., 1::4].shape[-1]
    out[..., 1::4] = tokens[..., 0::4][..., :n]
    return out


def _lengths(g, mode: str, n: int, full: int) -> torch.Tensor | None:
    """topk_length-style tensor [n] int32 for a mode of cases.TOPK_LENGTH_MODES."""
    if mode == "none":
        return None
    partial = _randint(g, 1 if full > 1 else 0, max(full, 1), (n,))
    if mode == "zero":
        out = torch.zeros(n, dtype=torch.int64)
    elif mode == "partial":
        out = partial
    elif mode == "full":
        out = torch.full((n,), full, dtype=torch.int64)
    else:  # mixed: each row one of 0 / partial / full, every kind present when n >= 3
        kind = torch.randperm(max(n, 3), generator=g)[:n] % 3
        out = torch.where(kind == 0, 0, torch.where(kind == 1, partial, full))
    return out.to(torch.int32)


def _sink(g, mode: str, h_q: int) -> torch.Tensor | None:
    if mode == "none":
        return None
    finite = _randn(g, h_q) * 2.0 + 2.0  # comparable to typical lse values
    if mode == "finite":
        return finite
    if mode == "neg_inf":
        return torch.full((h_q,), float("-inf"))
    if mode == "pos_inf":
        return torch.full((h_q,), float("inf"))
    kind = torch.randperm(max(h_q, 3), generator=g)[:h_q] % 3  # mixed: finite, -inf, +inf
    inf = torch.tensor(float("inf"))
    return torch.where(kind == 0, finite, torch.where(kind == 1, -inf, inf))


def _considered(lengths: torch.Tensor | None, rows_per_len: int, shape) -> torch.Tensor:
    """Mask [..., topk] of list slots below topk_length (lengths per batch, rows follow)."""
    slots = torch.arange(shape[-1])
    if lengths is None:
        return torch.ones(shape, dtype=torch.bool)
    per_row = lengths.long().repeat_interleave(rows_per_len).view(*shape[:-1], 1)
    return slots < per_row


# ---- index lists -----------------------------------------------------------------------------
def _token_lists(g, rows: int, topk: int, seq: int) -> torch.Tensor:
    """[rows, topk] int64: per row min(topk, seq) distinct tokens of [0, seq), the rest -1, shuffled."""
    out = torch.full((rows, topk), -1, dtype=torch.int64)
    n = min(topk, seq)
    for r in range(rows):
        picked = torch.randperm(seq, generator=g)[:n] if n else torch.empty(0, dtype=torch.int64)
        row = torch.cat([picked, torch.full((topk - n,), -1, dtype=torch.int64)])
        out[r] = row[torch.randperm(topk, generator=g)]
    return out


def _invalid_mask(g, mode: str, b: int, s_q: int, topk: int) -> torch.Tensor:
    """[b, s_q, topk] bool: entries the case's `invalid` mode turns invalid."""
    mask = torch.zeros(b, s_q, topk, dtype=torch.bool)
    if mode == "some":
        mask = _rand(g, b, s_q, topk) < 0.25
        mask.view(-1)[_randint(g, 0, b * s_q * topk, ())] = True
    elif mode == "rows":
        rows = _rand(g, b * s_q) < 0.4
        rows[_randint(g, 0, b * s_q, ())] = True
        mask[rows.view(b, s_q)] = True
    elif mode == "batch":
        mask[_randint(g, 0, b, ())] = True
    elif mode == "all":
        mask[:] = True
    return mask


# ---- FP8 caches ------------------------------------------------------------------------------
def _fp8_cache(g, case: Case, model: ModelType, num_blocks: int, block: int, keys: list) -> torch.Tensor:
    """Quantized cache [num_blocks, block, 1, bytes_per_token]; a larger block stride when non-contiguous."""
    tokens = num_blocks * block
    if case.dist == "flashmla":
        k = base_values(g, "sparse_decode", "k", tokens, model.d_qk)
    else:
        k = prod.draw_keys(g, case, tokens)
    nope = stress_values(g, k[:, :model.d_nope].contiguous(), model.tile, case.values)
    k = torch.cat([nope, k[:, model.d_nope:]], dim=-1)
    keys.append(k)  # the float keys before quantization: the queries of a production distribution aim at them
    k = k.to(torch.bfloat16).view(num_blocks, block, 1, model.d_qk)
    rounding = "none" if case.scales == "float32" else "ue8m0"
    cache = quantize_kv_cache(k, model, scale_rounding=rounding)
    u8 = cache.view(torch.uint8)
    stride0 = model.block_stride_bytes(block)
    flat = torch.as_strided(u8, (num_blocks, stride0), (stride0, 1), u8.storage_offset())
    if not case.noncontiguous:
        return flat.clone().as_strided(cache.shape, (stride0, model.bytes_per_token, model.bytes_per_token, 1)
                                       ).view(torch.float8_e4m3fn)
    wide = stride0 + (656 if model is ModelType.V32 else 576)  # MODEL1 block strides stay multiples of 576
    buf = torch.full((num_blocks, wide), 0xFF, dtype=torch.uint8)
    buf[:, :stride0] = flat
    view = buf.as_strided(cache.shape, (wide, model.bytes_per_token, model.bytes_per_token, 1))
    return view.view(torch.float8_e4m3fn)


def _poison_fp8(cache: torch.Tensor, positions: torch.Tensor, model: ModelType) -> None:
    """Write 0xFF (NaN in fp8, float32 scales and bf16) into every byte of the given slots."""
    if positions.numel() == 0:
        return
    u8 = cache.view(torch.uint8)
    flat = u8.as_strided((u8.untyped_storage().nbytes(),), (1,), 0)
    block, off = positions // cache.shape[1], positions % cache.shape[1]
    base = u8.storage_offset() + block * u8.stride(0)
    if model is ModelType.V32:
        spans = [(base + off * 656, 656)]
    else:
        spans = [(base + off * 576, 576), (base + 576 * cache.shape[1] + off * 8, 8)]
    for start, length in spans:
        flat[(start.view(-1, 1) + torch.arange(length).view(1, -1)).reshape(-1)] = 0xFF


def _decode_list(g, case: Case, model, seq: int, topk: int, block: int, length_mode: str, invalid, keys: list):
    """One sparse-decode index list: (cache, indices [b, s_q, topk] int32, topk_length); appends to `keys`
    (float keys before quantization) and to `keys` the considered cache rows [b, s_q, topk] (-1 else)."""
    b, s_q = case.b, case.s_q
    per_seq = max(1, -(-seq // block))
    num_blocks = b * per_seq + 1  # one spare block nobody references
    table = torch.randperm(b * per_seq, generator=g).view(b, per_seq)
    tokens = _token_lists(g, b * s_q, topk, seq).view(b, s_q, topk)
    tokens = _duplicated(tokens) if case.duplicates else tokens
    tokens = torch.where(invalid, -1, tokens)
    positions = cache_positions(tokens, table, block)  # [b, s_q, topk] int64, -1 kept
    lengths = _lengths(g, length_mode, b, topk)
    cache = _fp8_cache(g, case, model, num_blocks, block, keys)
    considered = _considered(lengths, s_q, positions.shape) & (positions >= 0)
    keys.append(prod.considered_rows(positions, considered))
    keep = positions[considered] if case.nan_fill == "all" else positions[positions >= 0]
    if case.nan_fill != "none":
        unused = torch.ones(num_blocks * block, dtype=torch.bool)
        unused[keep] = False
        _poison_fp8(cache, unused.nonzero().view(-1), model)
    return cache, positions.to(torch.int32), lengths


def _sparse_decode(case: Case, g):
    model = ModelType.V32 if case.model == "v32" else ModelType.MODEL1
    b, s_q, h_q = case.b, case.s_q, case.h_q
    flat = case.dist == "flashmla"
    q = base_values(g, "sparse_decode", "q", b, s_q, h_q, model.d_qk).to(torch.bfloat16) if flat else None
    invalid = _invalid_mask(g, case.invalid, b, s_q, case.topk)
    keys: list = []  # per list: float keys [N, d_qk], considered rows [b, s_q, topk]
    cache, indices, lengths = _decode_list(g, case, model, case.s_kv, case.topk, case.page_block_size,
                                           case.topk_length, invalid, keys)
    extra = (None, None, None)
    if case.has_extra:
        x_invalid = _invalid_mask(g, case.invalid, b, s_q, case.extra_topk)
        if case.invalid == "batch":  # the same batch entry is invalid in both lists
            x_invalid = invalid.all(-1, keepdim=True).expand(b, s_q, case.extra_topk)
        extra = _decode_list(g, case, model, case.extra_s_kv, case.extra_topk, case.extra_page_block_size,
                             case.extra_topk_length, x_invalid, keys)
    sink = _sink(g, case.sink, h_q)
    if not flat:  # the main and extra keys as one table, the extra rows offset past the main ones
        n_main = keys[0].shape[0]
        rows = [keys[1]] + ([torch.where(keys[3] >= 0, keys[3] + n_main, -1)] if case.has_extra else [])
        scale = case.softmax_scale if case.softmax_scale is not None else model.d_qk ** -0.5
        q = prod.draw_queries(g, case, torch.cat(keys[0::2]), torch.cat(rows, dim=-1), scale, h_q).to(torch.bfloat16)
    if case.noncontiguous:
        q = _strided_copy(q, 2, h_q, float("nan"))
        indices = _strided_copy(indices, 1, 1, 0)
        if extra[1] is not None:
            extra = (extra[0], _strided_copy(extra[1], 1, 1, 0), extra[2])
    q = _transposed(q) if case.q_transposed else q
    tensors = {"q": q, "k_cache": cache, "indices": indices, "topk_length": lengths, "attn_sink": sink,
               "extra_k_cache": extra[0], "extra_indices": extra[1], "extra_topk_length": extra[2]}
    return tensors, {"softmax_scale": case.softmax_scale}


# ---- sparse prefill --------------------------------------------------------------------------
def _invalid_values(g, count: int, s_kv: int) -> torch.Tensor:
    """count invalid prefill indices cycling through every kind, from a random starting kind."""
    kinds = torch.stack([
        torch.full((count,), -1, dtype=torch.int64),
        torch.full((count,), INT32_MIN, dtype=torch.int64),
        _randint(g, INT32_MIN + 1, -1, (count,)),          # other negatives in [-2^31+1, -2]
        torch.full((count,), s_kv, dtype=torch.int64),
        _randint(g, s_kv + 1, INT32_MAX, (count,)),        # beyond s_kv, below 2^31-1
        torch.full((count,), INT32_MAX, dtype=torch.int64),
    ])  # [6, count]
    which = (torch.arange(count) + _randint(g, 0, 6, ())) % 6
    return kinds[which, torch.arange(count)]


def _sparse_prefill(case: Case, g):
    d_qk, s_q, s_kv, topk = case.d_qk, case.s_q, case.s_kv, case.topk
    flat = case.dist == "flashmla"
    q = base_values(g, "sparse_prefill", "q", s_q, case.h_q, d_qk).to(torch.bfloat16) if flat else None
    kv_f = base_values(g, "sparse_prefill", "kv", s_kv, 1, d_qk) if flat else prod.draw_keys(g, case, s_kv)
    kv = kv_f.view(s_kv, 1, d_qk).to(torch.bfloat16)
    tokens = _token_lists(g, s_q, topk, s_kv)  # [s_q, topk], -1 where topk > s_kv
    tokens = _duplicated(tokens) if case.duplicates else tokens
    tokens = torch.where(_invalid_mask(g, case.invalid, 1, s_q, topk)[0], -1, tokens)
    bad = tokens < 0
    tokens[bad] = _invalid_values(g, int(bad.sum()), s_kv)
    lengths = _lengths(g, case.topk_length, s_q, topk)
    sink = _sink(g, case.sink, case.h_q)
    valid = (tokens >= 0) & (tokens < s_kv)
    scale = case.softmax_scale if case.softmax_scale is not None else d_qk ** -0.5
    if not flat:
        rows = prod.considered_rows(tokens, valid & _considered(lengths, 1, tokens.shape))
        q = prod.draw_queries(g, case, kv_f.view(s_kv, d_qk), rows, scale, case.h_q).to(torch.bfloat16)
    if case.nan_fill != "none":
        use = valid & _considered(lengths, 1, tokens.shape) if case.nan_fill == "all" else valid
        unused = torch.ones(s_kv, dtype=torch.bool)
        unused[tokens[use]] = False
        kv[unused] = float("nan")
    indices = tokens.to(torch.int32).view(s_q, 1, topk)
    if case.noncontiguous:
        q = _strided_copy(q, 1, case.h_q, float("nan"))
        kv = _strided_copy(kv, 1, 1, float("nan"))
        indices = _strided_copy(indices, 1, 1, 0)
    q = _transposed(q) if case.q_transposed else q
    tensors = {"q": q, "kv": kv, "indices": indices, "topk_length": lengths, "attn_sink": sink}
    return tensors, {"softmax_scale": case.softmax_scale, "sm_scale": scale}


# ---- dense ops -------------------------------------------------------------------------------
def _seqlens(g, mode: str, n: int, longest: int) -> torch.Tensor:
    if mode == "full":
        return torch.full((n,), longest, dtype=torch.int64)
    lens = _randint(g, 1 if longest else 0, longest + 1, (n,))
    if mode == "zero":
        lens[_randint(g, 0, n, ())] = 0
    return lens


def _dense_decode(case: Case, g):
    dtype = _DTYPES[case.dtype]
    b, s_q, h_q, h_kv, d, block = case.b, case.s_q, case.h_q, case.h_kv, case.d_qk, case.page_block_size
    lens = _seqlens(g, case.seqlens, b, case.s_kv)
    per_seq = max(1, -(-case.s_kv // block))
    num_blocks = b * per_seq + 1
    spare = num_blocks - 1
    table = torch.randperm(b * per_seq, generator=g).view(b, per_seq)
    used = torch.arange(per_seq).view(1, -1) * block < lens.view(-1, 1)
    table = torch.where(used, table, spare)  # entries past a sequence: garbage (the spare block)
    if case.dist == "flashmla":
        q = base_values(g, "dense_decode", "q", b, s_q, h_q, d).to(dtype)
        k = base_values(g, "dense_decode", "k", num_blocks, block, h_kv, d).to(dtype)
    else:
        k_f = torch.stack([prod.draw_keys(g, case, num_blocks * block) for _ in range(h_kv)], dim=1)
        rows = prod.dense_decode_rows(table, lens, s_q, block, case.causal, case.s_kv)
        scale = case.softmax_scale if case.softmax_scale is not None else d ** -0.5
        q = prod.grouped_queries(g, case, k_f, rows, scale, h_q).to(dtype)
        k = k_f.view(num_blocks, block, h_kv, d).to(dtype)
    if case.nan_fill == "all":
        live = torch.zeros(num_blocks * block, dtype=torch.bool)
        for i in range(b):
            t = torch.arange(int(lens[i]))
            live[table[i, t // block] * block + t % block] = True
        k.view(num_blocks * block, h_kv, d)[~live] = float("nan")
    if case.noncontiguous:
        q = _strided_copy(q, 2, h_q, float("nan"))
        k = _strided_copy(k, 3, 64, float("nan"))
    table = table.to(torch.int32)
    if case.noncontiguous:
        table = _strided_copy(table, 1, 1, 0)
    q = _transposed(q) if case.q_transposed else q
    tensors = {"q": q, "k_cache": k, "block_table": table, "cache_seqlens": lens.to(torch.int32)}
    return tensors, {"softmax_scale": case.softmax_scale}


def _mha_prefill(case: Case, g):
    dtype = _DTYPES[case.dtype]
    one_zero = {"zero_q": ("zero", "varlen"), "zero_k": ("varlen", "zero")}  # one side empty, the other not
    q_mode, k_mode = one_zero.get(case.seqlens, (case.seqlens, case.seqlens))
    lq = _seqlens(g, q_mode, case.b, case.s_q)
    lk = _seqlens(g, k_mode, case.b, case.s_kv)
    cu_q = torch.cat([torch.zeros(1, dtype=torch.int64), lq.cumsum(0)]).to(torch.int32)
    cu_k = torch.cat([torch.zeros(1, dtype=torch.int64), lk.cumsum(0)]).to(torch.int32)
    tq, tk = int(cu_q[-1]), int(cu_k[-1])
    if case.dist == "flashmla":
        q = base_values(g, "mha_prefill", "q", tq, case.h_q, case.d_qk).to(dtype)
        k = base_values(g, "mha_prefill", "k", tk, case.h_kv, case.d_qk).to(dtype)
        v = base_values(g, "mha_prefill", "v", tk, case.h_kv, case.d_v).to(dtype)
    else:  # v takes the key kind too (outlier channels, near duplicates), without a RoPE part
        k_f = prod.draw_keys(g, case, tk * case.h_kv).view(tk, case.h_kv, case.d_qk)
        v = prod.draw_keys(g, case, tk * case.h_kv, case.d_v, "v", d_rope=0).view(tk, case.h_kv, case.d_v).to(dtype)
        scale = case.softmax_scale if case.softmax_scale is not None else case.d_qk ** -0.5
        q = prod.grouped_queries(g, case, k_f, prod.mha_rows(lq, lk, case), scale, case.h_q).to(dtype)
        k = k_f.to(dtype)
    dout = base_values(g, "mha_prefill", "dout", tq, case.h_q, case.d_v).to(dtype) if case.backward else None
    if case.noncontiguous:
        q = _strided_copy(q, 2, 16, float("nan"))
        k = _strided_copy(k, 2, 16, float("nan"))
        v = _strided_copy(v, 2, 16, float("nan"))
    tensors = {"q": q, "k": k, "v": v, "cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k, "dout": dout}
    scalars = {"softmax_scale": case.softmax_scale, "max_seqlen_q": int(lq.max()), "max_seqlen_k": int(lk.max()),
               "window_size": case.window_size}
    return tensors, scalars
