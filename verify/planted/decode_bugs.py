"""Planted bugs in the decode entry point ``flash_mla_with_kvcache`` (sparse FP8 mode, mostly)."""
from __future__ import annotations

import itertools
import math

import torch

import mlaverify.reference as ref

from ._base import PlantedBug, as_cache_dtype, block_bytes, clone_cache_bytes, is_sparse, kvcache_wrapper

_V32_BPT, _MODEL1_BPT = 656, 584


def _sink_ignored(kw: dict) -> dict:
    return {**kw, "attn_sink": None}


def _sink_on_lse(called: dict, outputs: tuple) -> tuple:
    out, lse = outputs
    sink = called["attn_sink"]
    if sink is None:
        return out, lse
    # lse [b, h_q, s_q]; the sink is folded into the normalizer as if it were one more logit.
    return out, torch.logaddexp(lse, sink.to(lse.dtype).view(1, -1, 1))


def _topk_length_minus_one(kw: dict) -> dict:
    if kw["topk_length"] is None:
        return kw
    return {**kw, "topk_length": (kw["topk_length"] - 1).clamp_min(0).to(torch.int32)}


def _extra_ignored(kw: dict) -> dict:
    return {**kw, "extra_k_cache": None, "extra_indices_in_kvcache": None, "extra_topk_length": None}


def _extra_topk_length_ignored(kw: dict) -> dict:
    return {**kw, "extra_topk_length": None}


def _rewrite_scales(cache: torch.Tensor | None, bytes_per_token: int, rewrite) -> torch.Tensor | None:
    if cache is None or cache.shape[-1] != bytes_per_token:
        return cache
    u8 = clone_cache_bytes(cache)
    rewrite(u8)
    return as_cache_dtype(u8, cache)


def _model1_per_128(u8: torch.Tensor) -> None:
    """Tile t (NoPE dims 64t..64t+63) gets the scale of dims 128*(t//2)..: scales read per 128."""
    nb, block = u8.shape[0], u8.shape[1]
    region = block_bytes(u8)[:, 576 * block: 584 * block].view(nb, block, 8)  # [nb, B, 8]
    stored = region[..., :7].clone()
    region[..., :7] = stored[..., [0, 0, 1, 1, 2, 2, 3]]


def _v32_scales_pow2(u8: torch.Tensor) -> None:
    """FlashMLA issue #184: the float32 scale's mantissa dropped, as if it were a ue8m0 exponent."""
    nb, block = u8.shape[0], u8.shape[1]
    records = u8.as_strided((nb, block, 656), (u8.stride(0), 656, 1), u8.storage_offset())
    bits = records[..., 512:528].contiguous().view(torch.int32)  # [nb, B, 4] float32 bit patterns
    records[..., 512:528] = (bits & 0x7F800000).view(torch.uint8)


def _scales(rewrite, bpt):
    def pre(kw: dict) -> dict:
        return {**kw, "k_cache": _rewrite_scales(kw["k_cache"], bpt, rewrite),
                "extra_k_cache": _rewrite_scales(kw["extra_k_cache"], bpt, rewrite)}
    return pre


def _lse_base2(called: dict, outputs: tuple) -> tuple:
    out, lse = outputs
    return out, lse / math.log(2.0)


def _lse_not_transposed(called: dict, outputs: tuple) -> tuple:
    out, lse = outputs
    b, h_q, s_q = lse.shape
    # written in [b, s_q, h_q] order into a buffer that is returned as [b, h_q, s_q]
    return out, lse.transpose(1, 2).contiguous().view(b, h_q, s_q)


def _nan_for_empty_rows(called: dict, outputs: tuple) -> tuple:
    out, lse = outputs
    empty = torch.isposinf(lse).transpose(1, 2)  # [b, s_q, h_q]
    out = out.masked_fill(empty.unsqueeze(-1), float("nan"))  # acc / l with l = 0
    return out, lse.masked_fill(torch.isposinf(lse), float("-inf"))  # m + log(0)


def _leaky_rows(cache, indices, topk_length) -> torch.Tensor:
    """[b, s_q] bool: rows where an entry the kernel loads but must ignore points at a NaN value."""
    if cache is None or indices is None:
        return torch.zeros(1, 1, dtype=torch.bool)
    deq = ref.dequantize_kv_cache(cache)  # [nb, B, 1, d_qk]
    v_nan = torch.isnan(deq[:, :, 0, :512].float()).any(-1).reshape(-1)  # [nb * B]
    idx = indices.long()  # [b, s_q, topk]
    ignored = idx == -1
    if topk_length is not None:
        past = torch.arange(idx.shape[-1], device=idx.device) >= topk_length.long().view(-1, 1, 1)
        ignored = ignored | past
    # scores are masked, but V is still loaded (slot 0 for -1) and multiplied by p = 0
    return (ignored & v_nan[idx.clamp_min(0)]).any(-1)


def _nan_leak(called: dict, outputs: tuple) -> tuple:
    out, lse = outputs
    if not is_sparse(called):
        return out, lse
    leak = _leaky_rows(called["k_cache"], called["indices"], called["topk_length"])
    extra = _leaky_rows(called["extra_k_cache"], called["extra_indices_in_kvcache"], called["extra_topk_length"])
    leak = leak | extra
    return out.masked_fill(leak[:, :, None, None], float("nan")), lse


def _default_scale_d_v(kw: dict) -> dict:
    if kw["softmax_scale"] is not None:
        return kw
    return {**kw, "softmax_scale": kw["head_dim_v"] ** -0.5}  # should be d_qk ** -0.5


def _mutates_q(called: dict, outputs: tuple) -> tuple:
    q = called["q"]
    scale = called["softmax_scale"] or q.shape[-1] ** -0.5
    q.mul_(scale)  # "pre-scales q in place" for the next call
    return outputs


_calls = itertools.count()


def _flip_low_bit(t: torch.Tensor, flat_index: int) -> torch.Tensor:
    t = t.clone()
    view = t.view(torch.int16).reshape(-1)
    if view.numel():
        view[flat_index % view.numel()] ^= 1
    return t


def _nondeterministic(called: dict, outputs: tuple) -> tuple:
    out, lse = outputs
    return _flip_low_bit(out, next(_calls) * 7919), lse  # split order varies between runs


def _batch_position_dependent(called: dict, outputs: tuple) -> tuple:
    out, lse = outputs
    if out.shape[0] < 2:
        return out, lse
    # sequence 0 takes a different split path: one element of it rounds the other way
    first = _flip_low_bit(out[0], 0)
    out = out.clone()
    out[0] = first
    return out, lse


_SPARSE = ("sparse_decode",)
_DECODE = ("sparse_decode", "dense_decode")
_BOTH = ("v32", "model1")

BUGS = [
    PlantedBug("sink_ignored", "attention sink never applied", _SPARSE, _BOTH,
               {"flash_mla_with_kvcache": kvcache_wrapper(pre=_sink_ignored)}),
    PlantedBug("sink_applied_to_lse", "sink folded into the returned lse as one more logit", _SPARSE, _BOTH,
               {"flash_mla_with_kvcache": kvcache_wrapper(post=_sink_on_lse)}),
    PlantedBug("topk_length_off_by_one", "topk_length - 1 entries considered", _SPARSE, _BOTH,
               {"flash_mla_with_kvcache": kvcache_wrapper(pre=_topk_length_minus_one)}),
    PlantedBug("extra_cache_ignored", "extra k cache and its indices never read", _SPARSE, ("model1", "v32"),
               {"flash_mla_with_kvcache": kvcache_wrapper(pre=_extra_ignored)}),
    PlantedBug("extra_topk_length_ignored", "whole extra index list used despite extra_topk_length", _SPARSE,
               ("model1", "v32"), {"flash_mla_with_kvcache": kvcache_wrapper(pre=_extra_topk_length_ignored)}),
    PlantedBug("model1_scales_per_128", "MODEL1 ue8m0 scales applied per 128 elements instead of 64", _SPARSE,
               ("model1",), {"flash_mla_with_kvcache": kvcache_wrapper(pre=_scales(_model1_per_128, _MODEL1_BPT))}),
    PlantedBug("v32_scales_as_pow2", "V32 float32 scales read as power-of-two exponents (FlashMLA #184)",
               _SPARSE, ("v32",),
               {"flash_mla_with_kvcache": kvcache_wrapper(pre=_scales(_v32_scales_pow2, _V32_BPT))}),
    PlantedBug("lse_base2", "lse returned in base 2 (log2 of the sum)", _DECODE, _BOTH,
               {"flash_mla_with_kvcache": kvcache_wrapper(post=_lse_base2)}),
    PlantedBug("lse_not_transposed", "lse written [b, s_q, h_q] into the [b, h_q, s_q] result", _DECODE, _BOTH,
               {"flash_mla_with_kvcache": kvcache_wrapper(post=_lse_not_transposed)}),
    PlantedBug("nan_for_empty_rows", "rows with no valid entry give NaN out and -inf lse", _DECODE, _BOTH,
               {"flash_mla_with_kvcache": kvcache_wrapper(post=_nan_for_empty_rows)}),
    PlantedBug("nan_leak_unreferenced", "V of masked entries (-1, past topk_length) multiplied by p = 0",
               _SPARSE, _BOTH, {"flash_mla_with_kvcache": kvcache_wrapper(post=_nan_leak)}),
    PlantedBug("default_scale_head_dim_v", "softmax_scale=None defaults to head_dim_v ** -0.5", _DECODE,
               ("v32",), {"flash_mla_with_kvcache": kvcache_wrapper(pre=_default_scale_d_v)}),
    PlantedBug("input_mutated", "q pre-scaled in place by softmax_scale", _DECODE, _BOTH,
               {"flash_mla_with_kvcache": kvcache_wrapper(post=_mutates_q)}),
    PlantedBug("nondeterministic", "one output element differs by one ulp between runs", _DECODE, _BOTH,
               {"flash_mla_with_kvcache": kvcache_wrapper(post=_nondeterministic)}),
    PlantedBug("batch_position_dependent", "sequence 0 of a batch rounds differently from the others",
               _DECODE, _BOTH, {"flash_mla_with_kvcache": kvcache_wrapper(post=_batch_position_dependent)},
               capabilities="full"),
]
