"""Planted MHA prefill bugs that live only at a corner the boundary cases reach (issue 11).

Multi-tile sequences (more than 128 tokens), empty sequences, non-power-of-two GQA groups and
one-sided windows. Each wraps the reference ``flash_attn_varlen_func``; autograd runs through
the perturbation, so dq, dk and dv are what the buggy forward implies.
"""
from __future__ import annotations

import torch

from mlaverify.reference import mha_prefill as mha_ref

from ._base import PlantedBug
from .mha_bugs import _api

_OPS = ("mha_prefill",)
_MODELS = ("d192", "d128")
_LONG = 128    # sequences longer than one 128-row tile of the hypothetical kernel
_TILE = 16     # its key / query tile for the remainder loop


def _call(q, k, v, cu_q, cu_k, max_q, max_k, args, window=(-1, -1)):
    dropout_p, softmax_scale, causal, deterministic, is_varlen = args
    extra = {} if tuple(window) == (-1, -1) else {"window_size": tuple(window)}
    return mha_ref.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal,
                                          deterministic, is_varlen, **extra)


def _lengths(cu: torch.Tensor) -> list[int]:
    c = cu.tolist()
    return [c[i + 1] - c[i] for i in range(len(c) - 1)]


def _bug(body):
    """flash_attn_varlen_func with FlashMLA's signature, its body replaced by ``body``."""
    def flash_attn_varlen_func(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, dropout_p=0.0,
                               softmax_scale=None, causal=False, deterministic=False, is_varlen=True, *,
                               window_size=(-1, -1)):
        args = (dropout_p, softmax_scale, causal, deterministic, is_varlen)
        return body(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, args, window_size)
    return flash_attn_varlen_func


def _row_mask(cu: torch.Tensor, total: int, select) -> torch.Tensor:
    """[total] bool: rows of sequence i at offset r where select(i, r, length) holds."""
    mask = torch.zeros(total, dtype=torch.bool)
    c = cu.tolist()
    for i, n in enumerate(_lengths(cu)):
        for r in range(n):
            mask[c[i] + r] = select(i, r, n)
    return mask


def _long_tail(i, r, n) -> bool:
    return n > _LONG and n % _TILE != 0 and r >= n - n % _TILE


def _gqa_nonpow2(q, k, v, cu_q, cu_k, max_q, max_k, args, window):
    h_q, h_kv = q.shape[1], k.shape[1]
    group = h_q // h_kv
    if h_kv > 1 and group & (group - 1):
        mapping = (torch.arange(h_q, device=q.device) >> group.bit_length()).clamp_max(h_kv - 1)
        k, v = k[:, mapping], v[:, mapping]  # kv head = h >> ceil(log2(group))
    return _call(q, k, v, cu_q, cu_k, max_q, max_k, args, window)


def _key_tail_dropped(q, k, v, cu_q, cu_k, max_q, max_k, args, window):
    keep = ~_row_mask(cu_k, k.shape[0], _long_tail).to(k.device)
    if bool(keep.all()):
        return _call(q, k, v, cu_q, cu_k, max_q, max_k, args, window)
    lens = [int(keep[a:b].sum()) for a, b in zip(cu_k.tolist()[:-1], cu_k.tolist()[1:])]
    new_cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0).tolist()), dtype=cu_k.dtype, device=cu_k.device)
    return _call(q, k[keep], v[keep], cu_q, new_cu, max_q, max(lens), args, window)


def _query_tail_zero(q, k, v, cu_q, cu_k, max_q, max_k, args, window):
    out, lse = _call(q, k, v, cu_q, cu_k, max_q, max_k, args, window)
    tail = _row_mask(cu_q, q.shape[0], _long_tail).to(out.device)
    return out.masked_fill(tail[:, None, None], 0.0), lse  # the remainder tile is never stored


def _bwd_key_tail_no_grad(q, k, v, cu_q, cu_k, max_q, max_k, args, window):
    tail = _row_mask(cu_k, k.shape[0], _long_tail).to(k.device)[:, None, None]
    k = torch.where(tail, k.detach(), k)  # same forward; the remainder key tile gets no dk, dv
    v = torch.where(tail, v.detach(), v)
    return _call(q, k, v, cu_q, cu_k, max_q, max_k, args, window)


def _empty_k_nan(q, k, v, cu_q, cu_k, max_q, max_k, args, window):
    out, lse = _call(q, k, v, cu_q, cu_k, max_q, max_k, args, window)
    empty = _lengths(cu_k)
    rows = _row_mask(cu_q, q.shape[0], lambda i, r, n: empty[i] == 0).to(out.device)
    return out.masked_fill(rows[:, None, None], float("nan")), lse  # acc / l with l = 0


def _empty_k_lse(q, k, v, cu_q, cu_k, max_q, max_k, args, window):
    out, lse = _call(q, k, v, cu_q, cu_k, max_q, max_k, args, window)
    empty = _lengths(cu_k)
    rows = _row_mask(cu_q, q.shape[0], lambda i, r, n: empty[i] == 0).to(lse.device)
    return out, lse.masked_fill(rows[:, None], float("-inf"))  # m + log(0) instead of +inf


def _empty_q_next_zero(q, k, v, cu_q, cu_k, max_q, max_k, args, window):
    out, lse = _call(q, k, v, cu_q, cu_k, max_q, max_k, args, window)
    lens = _lengths(cu_q)
    after = {i + 1 for i, n in enumerate(lens) if n == 0}
    rows = _row_mask(cu_q, q.shape[0], lambda i, r, n: i in after and r == 0).to(out.device)
    return out.masked_fill(rows[:, None, None], 0.0), lse  # the empty sequence's program clears the next row


def _right_only_ignored(q, k, v, cu_q, cu_k, max_q, max_k, args, window):
    left, right = window
    causal = args[2]
    if not causal and left < 0 <= right:
        window = (-1, -1)
    return _call(q, k, v, cu_q, cu_k, max_q, max_k, args, window)


def _left_only_ignored(q, k, v, cu_q, cu_k, max_q, max_k, args, window):
    left, right = window
    causal = args[2]
    if not causal and right < 0 <= left:
        window = (-1, -1)
    return _call(q, k, v, cu_q, cu_k, max_q, max_k, args, window)


def _bug_of(name: str, description: str, body) -> PlantedBug:
    return PlantedBug(name, description, _OPS, _MODELS, _api(_bug(body)))


BUGS = [
    _bug_of("mha_gqa_nonpow2", "kv head = h >> ceil(log2(group)): wrong for groups 3, 5, 6, 7", _gqa_nonpow2),
    _bug_of("mha_long_key_tail_dropped", "sequences over 128 keys: the last partial 16-key tile skipped",
            _key_tail_dropped),
    _bug_of("mha_long_query_tail_unstored", "sequences over 128 queries: the last partial 16-row tile not stored",
            _query_tail_zero),
    _bug_of("mha_bwd_long_key_tail", "backward: the last partial key tile of sequences over 128 gets no dk, dv",
            _bwd_key_tail_no_grad),
    _bug_of("mha_empty_k_nan", "a query sequence with no keys gives NaN out", _empty_k_nan),
    _bug_of("mha_empty_k_lse", "a query sequence with no keys gives lse -inf instead of +inf", _empty_k_lse),
    _bug_of("mha_empty_q_clears_next", "an empty query sequence's program zeroes the next sequence's first row",
            _empty_q_next_zero),
    _bug_of("mha_right_only_window_ignored", "non-causal window (-1, right): the right bound ignored",
            _right_only_ignored),
    _bug_of("mha_left_only_window_ignored", "non-causal window (left, -1): the left bound ignored",
            _left_only_ignored),
]
