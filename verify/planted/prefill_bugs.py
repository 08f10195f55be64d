"""Planted bugs in the sparse prefill entry point ``flash_mla_sparse_fwd``."""
from __future__ import annotations

import math

import torch

from ._base import PlantedBug, sparse_fwd_wrapper


def _wrap_high(kw: dict) -> dict:
    s_kv = kw["kv"].shape[0]
    idx = kw["indices"]
    high = idx >= s_kv
    # index s_kv + r read as row r: the kernel bounds-checks only the sign
    wrapped = torch.where(high, torch.remainder(idx.long(), s_kv).to(idx.dtype), idx)
    return {**kw, "indices": wrapped}


def _negatives_valid(kw: dict) -> dict:
    s_kv = kw["kv"].shape[0]
    idx = kw["indices"]
    other_negative = (idx < 0) & (idx != -1)
    # only -1 treated as "no entry"; -2, -2^31 ... index from the end like Python would
    wrapped = torch.where(other_negative, torch.remainder(idx.long(), s_kv).to(idx.dtype), idx)
    return {**kw, "indices": wrapped}


def _base2(called: dict, outputs: tuple) -> tuple:
    out, max_logits, lse = outputs
    # the stale README's convention: logits scaled by log2(e), log2 of the sum
    return out, max_logits / math.log(2.0), lse / math.log(2.0)


def _topk_length_ignored(kw: dict) -> dict:
    return {**kw, "topk_length": None}


def _nan_leak_past_length(called: dict, outputs: tuple) -> tuple:
    out, max_logits, lse = outputs
    topk_length, kv, idx = called["topk_length"], called["kv"], called["indices"]
    if topk_length is None:
        return outputs
    s_kv, d_v = kv.shape[0], called["d_v"]
    rows = idx[:, 0, :].long()  # [s_q, topk]
    in_range = (rows >= 0) & (rows < s_kv)
    past = torch.arange(rows.shape[-1], device=rows.device) >= topk_length.long().view(-1, 1)
    v_nan = torch.isnan(kv[:, 0, :d_v].float()).any(-1)  # [s_kv]
    # past-length entries with in-range indices are loaded and multiplied by p = 0
    leak = (past & in_range & v_nan[rows.clamp(0, s_kv - 1)]).any(-1)  # [s_q]
    return out.masked_fill(leak[:, None, None], float("nan")), max_logits, lse


def _max_logits_unscaled(called: dict, outputs: tuple) -> tuple:
    out, max_logits, lse = outputs
    # max_logits reported before the sm_scale multiply (the raw q.k maximum)
    return out, max_logits / called["sm_scale"], lse


_OPS = ("sparse_prefill",)
_BOTH = ("v32", "model1")

BUGS = [
    PlantedBug("prefill_indices_wrapped", "prefill index >= s_kv wraps around instead of being skipped", _OPS,
               _BOTH, {"flash_mla_sparse_fwd": sparse_fwd_wrapper(pre=_wrap_high)}),
    PlantedBug("prefill_negative_indices_valid", "prefill negatives other than -1 index from the end", _OPS,
               _BOTH, {"flash_mla_sparse_fwd": sparse_fwd_wrapper(pre=_negatives_valid)}),
    PlantedBug("prefill_lse_base2", "prefill max_logits and lse in base 2 (the stale README)", _OPS, _BOTH,
               {"flash_mla_sparse_fwd": sparse_fwd_wrapper(post=_base2)}),
    PlantedBug("prefill_topk_length_ignored", "prefill topk_length never read", _OPS, _BOTH,
               {"flash_mla_sparse_fwd": sparse_fwd_wrapper(pre=_topk_length_ignored)}),
    PlantedBug("prefill_nan_leak_past_length", "NaN kv rows behind entries past topk_length reach out", _OPS,
               _BOTH, {"flash_mla_sparse_fwd": sparse_fwd_wrapper(post=_nan_leak_past_length)}),
    PlantedBug("prefill_max_logits_unscaled", "max_logits returned without sm_scale", _OPS, _BOTH,
               {"flash_mla_sparse_fwd": sparse_fwd_wrapper(post=_max_logits_unscaled)}),
]
