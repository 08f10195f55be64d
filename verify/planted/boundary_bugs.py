"""Planted bugs that live only at a corner the boundary cases reach (issue 11): decode and sparse prefill.

Each is the reference with one realistic kernel mistake that changes no output bit unless the case
crosses that corner (a second head tile, a page of a size with a fast path, a list longer than the
CPU draws, a transposed q, repeated positions). `tests/verify/test_boundary_bugs.py` proves both
halves: the boundary cases kill each, the old `ci` cases (corners plus draws) do not.
"""
from __future__ import annotations

import torch

from ._base import PlantedBug, is_sparse, kvcache_wrapper, sparse_fwd_wrapper

_BOTH = ("v32", "model1")
_SD, _SP, _DD = ("sparse_decode",), ("sparse_prefill",), ("dense_decode",)
_HEAD_TILE = 64        # the hypothetical kernel's heads per program
_SUB_TILE = 64         # tokens of one page the hypothetical kernel handles per step
_MAX_ENTRIES = 1024    # 16 splits of 64 entries: what the hypothetical kernel's split loop reaches
_PREFILL_CPU_CAP = 576  # lists longer than this are never drawn on CPU


def _sink_head_tile_local(kw: dict) -> dict:
    sink = kw["attn_sink"]
    if sink is None or sink.shape[0] <= _HEAD_TILE:
        return kw
    h = torch.arange(sink.shape[0], device=sink.device)
    return {**kw, "attn_sink": sink[h % _HEAD_TILE]}  # the sink loaded with the tile-local head index


def _offset_mod64(indices: torch.Tensor | None, cache: torch.Tensor | None) -> torch.Tensor | None:
    if indices is None or cache is None:
        return indices
    block = cache.shape[1]
    if block <= _SUB_TILE or block % _SUB_TILE:
        return indices
    idx = indices.long()
    wrapped = (idx // block) * block + (idx % block) % _SUB_TILE
    return torch.where(idx >= 0, wrapped, idx).to(indices.dtype)


def _page_offset_mod64(kw: dict) -> dict:
    return {**kw, "indices": _offset_mod64(kw["indices"], kw["k_cache"]),
            "extra_indices_in_kvcache": _offset_mod64(kw["extra_indices_in_kvcache"], kw["extra_k_cache"])}


def _head_stride_d(q: torch.Tensor) -> torch.Tensor:
    strides = list(q.stride())
    strides[-2] = q.shape[-1]  # head stride assumed to be d_qk
    return q.as_strided(q.shape, strides, q.storage_offset())


def _q_head_stride_assumed(kw: dict) -> dict:
    return {**kw, "q": _head_stride_d(kw["q"])}


def _dedup(indices: torch.Tensor | None, invalid: int = -1) -> torch.Tensor | None:
    """Later repeats of a position inside one list dropped (as if each position were counted once)."""
    if indices is None:
        return None
    idx = indices.long()
    eq = idx[..., :, None] == idx[..., None, :]
    earlier = torch.ones(idx.shape[-1], idx.shape[-1], dtype=torch.bool, device=idx.device).tril(-1)
    repeat = (eq & earlier).any(-1) & (idx >= 0)
    return torch.where(repeat, invalid, idx).to(indices.dtype)


def _decode_dedup(kw: dict) -> dict:
    return {**kw, "indices": _dedup(kw["indices"]), "extra_indices_in_kvcache": _dedup(kw["extra_indices_in_kvcache"])}


def _drop_past(indices: torch.Tensor | None, start: int) -> torch.Tensor | None:
    if indices is None or indices.shape[-1] <= start:
        return indices
    out = indices.clone()
    out[..., start:] = -1
    return out


def _entries_past_1024(kw: dict) -> dict:
    return {**kw, "indices": _drop_past(kw["indices"], _MAX_ENTRIES),
            "extra_indices_in_kvcache": _drop_past(kw["extra_indices_in_kvcache"], _MAX_ENTRIES)}


def _prefill_q_stride(kw: dict) -> dict:
    return {**kw, "q": _head_stride_d(kw["q"])}


def _prefill_dedup(kw: dict) -> dict:
    return {**kw, "indices": _dedup(kw["indices"])}


def _prefill_tail_past_cap(kw: dict) -> dict:
    topk = kw["indices"].shape[-1]
    if topk <= _PREFILL_CPU_CAP or topk % 64 == 0:
        return kw
    return {**kw, "indices": _drop_past(kw["indices"], topk - topk % 64)}  # last partial 64-entry tile lost


# ---- dense decode ----------------------------------------------------------------------------
def _dense(fn):
    def pre(kw: dict) -> dict:
        return kw if is_sparse(kw) else fn(kw)
    return pre


def _gqa_nonpow2(kw: dict) -> dict:
    q, cache = kw["q"], kw["k_cache"]
    h_q, h_kv = q.shape[2], cache.shape[2]
    group = h_q // h_kv
    if h_kv == 1 or group & (group - 1) == 0:
        return kw
    shift = group.bit_length()  # kv head = h >> ceil(log2(group)), as if the group were a power of two
    mapping = (torch.arange(h_q, device=q.device) >> shift).clamp_max(h_kv - 1)
    return {**kw, "k_cache": cache[:, :, mapping]}  # one kv head per query head, wrongly chosen


def _keys_past_1024(kw: dict) -> dict:
    return {**kw, "cache_seqlens": kw["cache_seqlens"].clamp_max(_MAX_ENTRIES)}


def _page_offset_wrap(kw: dict) -> dict:
    cache = kw["k_cache"]
    block = cache.shape[1]
    if not _SUB_TILE < block < 2 * _SUB_TILE:
        return kw
    wrong = cache.clone()
    wrong[:, _SUB_TILE:] = cache[:, : block - _SUB_TILE]  # offsets >= 64 read 64 tokens too early
    return {**kw, "k_cache": wrong}


BUGS = [
    PlantedBug("head_tile2_sink_local", "sink loaded with the head index inside its 64-head tile", _SD, _BOTH,
               {"flash_mla_with_kvcache": kvcache_wrapper(pre=_sink_head_tile_local)}),
    PlantedBug("page_offset_mod64", "pages of 128/256/576 tokens: offset inside the page taken mod 64", _SD, _BOTH,
               {"flash_mla_with_kvcache": kvcache_wrapper(pre=_page_offset_mod64)}),
    PlantedBug("decode_q_head_stride_assumed", "q's head stride assumed to be d_qk", _SD + _DD, _BOTH,
               {"flash_mla_with_kvcache": kvcache_wrapper(pre=_q_head_stride_assumed)}),
    PlantedBug("decode_duplicate_once", "a position repeated in one index list counted once", _SD, _BOTH,
               {"flash_mla_with_kvcache": kvcache_wrapper(pre=_decode_dedup)}),
    PlantedBug("decode_entries_past_1024", "split loop capped at 16 x 64 entries: list entries past 1024 ignored",
               _SD, _BOTH, {"flash_mla_with_kvcache": kvcache_wrapper(pre=_entries_past_1024)}),
    PlantedBug("prefill_q_head_stride_assumed", "q's head stride assumed to be d_qk", _SP, _BOTH,
               {"flash_mla_sparse_fwd": sparse_fwd_wrapper(pre=_prefill_q_stride)}),
    PlantedBug("prefill_duplicate_once", "a position repeated in one index list counted once", _SP, _BOTH,
               {"flash_mla_sparse_fwd": sparse_fwd_wrapper(pre=_prefill_dedup)}),
    PlantedBug("prefill_tail_past_576", "lists over 576 entries: the last partial 64-entry tile skipped", _SP, _BOTH,
               {"flash_mla_sparse_fwd": sparse_fwd_wrapper(pre=_prefill_tail_past_cap)}),
    PlantedBug("dense_gqa_nonpow2", "kv head = h >> ceil(log2(group)): wrong for groups 3, 5, 6, 7", _DD, _BOTH,
               {"flash_mla_with_kvcache": kvcache_wrapper(pre=_dense(_gqa_nonpow2))}),
    PlantedBug("dense_keys_past_1024", "dense decode reads at most 1024 keys of a sequence", _DD, _BOTH,
               {"flash_mla_with_kvcache": kvcache_wrapper(pre=_dense(_keys_past_1024))}),
    PlantedBug("dense_page_offset_wrap", "pages of 65..127 tokens: offsets >= 64 read 64 tokens early", _DD, _BOTH,
               {"flash_mla_with_kvcache": kvcache_wrapper(pre=_dense(_page_offset_wrap))}),
]
