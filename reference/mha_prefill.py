"""Dense MHA prefill (FlashMLA's ``flash_attn_varlen_func``): the pure-PyTorch reference.

operations.md section 4. Sequences are packed along the token axis and delimited by int32
prefix sums (``cu_seqlens``). Query head ``h`` reads KV head ``h // (h_q // h_kv)`` (GQA).
With ``causal=True`` the mask is bottom-right aligned: query ``j`` of a sequence with lengths
``(s_q, s_k)`` sees key ``t <= s_k - s_q + j``. A query that sees no key gets out 0, lse +inf.
The keyword-only extension ``window_size=(left, right)`` (as in the ``flash_attn`` package, -1 =
unbounded) restricts query ``j`` to keys ``s_k - s_q + j - left <= t <= s_k - s_q + j + right``;
with ``causal=True`` the right bound is 0.

For each sequence, query token ``j`` and head ``h`` over its visible keys ``T``:

    l_t = softmax_scale * <q[j, h], k[t, h // g]>      (float32, or float64 on request)
    lse = log(sum_{t in T} exp(l_t))                    natural log
    out = sum_{t in T} exp(l_t - lse) * v[t, h // g]

The work is done per sequence and in chunks of queries, so that one score tensor
``[h_q, chunk, s_k]`` stays below ``_CHUNK_ELEMENTS`` elements; memory stays bounded for
8 sequences of 8192 tokens with ``h_q = 128``. The backward pass recomputes the probabilities
from ``lse`` chunk by chunk (no attention matrix is kept between forward and backward).

The input checks here are the single implementation shared with ``mlaverify.kernels``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from .validation import check_has_data, check_last_dim_contiguous, check_softmax_scale

SUPPORTED_HEAD_DIMS = ((192, 128), (128, 128))  # (d_qk, d_v): V3.2-style MHA prefill and plain 128
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)
_CHUNK_ELEMENTS = 1 << 23  # float32 elements per [h_q, chunk, s_k] tensor (32 MiB); ~6 live at once


@dataclass(frozen=True)
class MhaPrefillShapes:
    """What the input checks learned about a call; kernels size their launch grids from it."""

    total_q: int  # packed query tokens
    total_k: int  # packed key/value tokens
    h_q: int  # query heads
    h_kv: int  # key/value heads; h_q % h_kv == 0
    d_qk: int  # query/key head dimension (192 or 128)
    d_v: int  # value/output head dimension (128)
    seqlens_q: tuple[int, ...]  # per-sequence query lengths (host copy of the diffs of cu_seqlens_qo)
    seqlens_k: tuple[int, ...]  # per-sequence key lengths

    @property
    def batch(self) -> int:
        return len(self.seqlens_q)

    @property
    def group(self) -> int:
        return self.h_q // self.h_kv  # query heads per KV head

    @property
    def max_seqlen_q(self) -> int:
        return max(self.seqlens_q, default=0)

    @property
    def max_seqlen_k(self) -> int:
        return max(self.seqlens_k, default=0)


def _check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    check_has_data(t, name)
    if t.dim() != 3:
        raise ValueError(f"{name}: expected 3 dimensions [tokens, heads, head_dim], got shape {tuple(t.shape)}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name}: expected dtype torch.bfloat16 or torch.float16, got {t.dtype}")
    check_last_dim_contiguous(t, name)
    return t


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


def _check_cu_seqlens(name: str, cu: object, total: int, total_name: str, device: torch.device) -> tuple[int, ...]:
    """Validate one prefix-sum tensor; return the per-sequence lengths."""
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(cu).__name__}")
    if cu.dtype != torch.int32:
        raise ValueError(f"{name}: expected int32, got {cu.dtype}")
    if cu.dim() != 1 or cu.shape[0] < 2:
        raise ValueError(f"{name}: expected shape [batch + 1] with batch >= 1, got {tuple(cu.shape)}")
    if cu.device != device:
        raise ValueError(f"{name}: expected device {device} (as q), got {cu.device}")
    values = cu.tolist()
    if values[0] != 0:
        raise ValueError(f"{name}: expected {name}[0] == 0, got {values[0]}")
    for i in range(1, len(values)):
        if values[i] < values[i - 1]:
            raise ValueError(
                f"{name}: expected non-decreasing values, got {values[i]} < {values[i - 1]} at [{i}]"
            )
    if values[-1] != total:
        raise ValueError(f"{name}: expected last value == {total_name} = {total}, got {values[-1]}")
    return tuple(values[i + 1] - values[i] for i in range(len(values) - 1))


def check_mha_options(dropout_p: object, softmax_scale: object, causal: object, deterministic: object,
                      is_varlen: object) -> None:
    """Check the scalar options of the public functions."""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p: expected a float, got {type(dropout_p).__name__}")
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p: expected 0.0 (dropout is not supported), got {dropout_p}")
    check_softmax_scale(softmax_scale)
    _check_bool("causal", causal)
    _check_bool("deterministic", deterministic)  # always honoured: every implementation here is deterministic
    _check_bool("is_varlen", is_varlen)


@dataclass(frozen=True)
class AttentionMask:
    """Keys query ``j`` sees, relative to its bottom-right diagonal ``d_j = s_k - s_q + j``."""

    left: int | None = None  # keys t >= d_j - left; None: no lower bound
    right: int | None = None  # keys t <= d_j + right; None: no upper bound (causal: 0)


def check_window_size(window_size: object, causal: bool) -> AttentionMask:
    """``window_size=(left, right)``, -1 meaning unbounded; with causal the right bound must be -1 or 0."""
    if not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
        raise TypeError(f"window_size: expected a pair (left, right) of ints, got {window_size!r}")
    left, right = (_check_int(f"window_size[{i}]", w, -1) for i, w in enumerate(window_size))
    if causal and right > 0:
        raise ValueError(f"window_size: causal=True bounds keys by the diagonal, expected window_size[1] in "
                         f"(-1, 0), got {right}")
    return AttentionMask(None if left < 0 else left, 0 if causal else (None if right < 0 else right))


def check_mha_prefill_inputs(q: object, k: object, v: object, cu_seqlens_qo: object, cu_seqlens_kv: object,
                             max_seqlen_qo: object = None, max_seqlen_kv: object = None, *,
                             is_varlen: bool = True) -> MhaPrefillShapes:
    """Validate the tensors of ``flash_attn_varlen_func``; raise ValueError/TypeError naming the argument.

    ``max_seqlen_*`` may be None (the unrounded reference has no such argument); otherwise each
    must be at least the longest sequence. ``is_varlen=False`` promises equal lengths: every
    sequence must then be exactly ``max_seqlen_qo`` / ``max_seqlen_kv`` long.
    """
    q, k, v = _check_tensor("q", q), _check_tensor("k", k), _check_tensor("v", v)
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name}: expected dtype {q.dtype} (as q), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}: expected device {q.device} (as q), got {t.device}")
    total_q, h_q, d_qk = q.shape
    total_k, h_kv, d_k = k.shape
    if d_k != d_qk:
        raise ValueError(f"k: expected head_dim {d_qk} (as q), got shape {tuple(k.shape)}")
    if tuple(v.shape[:2]) != (total_k, h_kv):
        raise ValueError(f"v: expected shape [{total_k}, {h_kv}, d_v] (tokens and heads as k), got {tuple(v.shape)}")
    d_v = v.shape[2]
    if (d_qk, d_v) not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"q, v: expected (d_qk, d_v) in {list(SUPPORTED_HEAD_DIMS)}, got ({d_qk}, {d_v})")
    if h_q < 1 or h_kv < 1 or h_q % h_kv != 0:
        raise ValueError(f"k: expected h_kv >= 1 dividing h_q = {h_q} (GQA), got h_kv = {h_kv}")
    seqlens_q = _check_cu_seqlens("cu_seqlens_qo", cu_seqlens_qo, total_q, "total_q (q.shape[0])", q.device)
    seqlens_k = _check_cu_seqlens("cu_seqlens_kv", cu_seqlens_kv, total_k, "total_k (k.shape[0])", q.device)
    if len(seqlens_q) != len(seqlens_k):
        raise ValueError(
            f"cu_seqlens_kv: expected {len(seqlens_q) + 1} entries (as cu_seqlens_qo), got {len(seqlens_k) + 1}"
        )
    shapes = MhaPrefillShapes(total_q, total_k, h_q, h_kv, d_qk, d_v, seqlens_q, seqlens_k)
    for name, given, longest, lengths in (("max_seqlen_qo", max_seqlen_qo, shapes.max_seqlen_q, seqlens_q),
                                           ("max_seqlen_kv", max_seqlen_kv, shapes.max_seqlen_k, seqlens_k)):
        if given is None:
            continue
        given = _check_int(name, given, 0)
        if given < longest:
            raise ValueError(f"{name}: expected >= the longest sequence ({longest}), got {given}")
        if not is_varlen and any(n != given for n in lengths):
            raise ValueError(f"{name}: is_varlen=False expects every sequence of length {given}, got {list(lengths)}")
    return shapes


def resolve_softmax_scale(softmax_scale: float | None, d_qk: int) -> float:
    """FlashMLA's default: d_qk ** -0.5."""
    scale = check_softmax_scale(softmax_scale)
    return float(d_qk) ** -0.5 if scale is None else scale


def split_qkv_packed(qkv: object, head_dim_qk: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[total, h, 2 * d_qk + d_v] -> views q, k, v (one head count for all three)."""
    if not isinstance(qkv, torch.Tensor):
        raise TypeError(f"qkv: expected a torch.Tensor, got {type(qkv).__name__}")
    d = _check_int("head_dim_qk", head_dim_qk, 1)
    if qkv.dim() != 3 or qkv.shape[2] <= 2 * d:
        raise ValueError(f"qkv: expected shape [total, h, 2 * head_dim_qk + d_v] with head_dim_qk={d}, "
                         f"got {tuple(qkv.shape)}")
    return qkv[:, :, :d], qkv[:, :, d:2 * d], qkv[:, :, 2 * d:]


def split_kv_packed(kv: object, head_dim_qk: object) -> tuple[torch.Tensor, torch.Tensor]:
    """[total_k, h_kv, d_qk + d_v] -> views k, v."""
    if not isinstance(kv, torch.Tensor):
        raise TypeError(f"kv: expected a torch.Tensor, got {type(kv).__name__}")
    d = _check_int("head_dim_qk", head_dim_qk, 1)
    if kv.dim() != 3 or kv.shape[2] <= d:
        raise ValueError(f"kv: expected shape [total_k, h_kv, head_dim_qk + d_v] with head_dim_qk={d}, "
                         f"got {tuple(kv.shape)}")
    return kv[:, :, :d], kv[:, :, d:]


def visible_keys(s_q: int, s_k: int, rows: range, mask: AttentionMask, device: torch.device) -> torch.Tensor:
    """Bottom-right aligned mask for query rows ``rows``: [len(rows), s_k] bool, True = key visible."""
    diag = s_k - s_q + torch.arange(rows.start, rows.stop, device=device)[:, None]  # [c, 1]
    t = torch.arange(s_k, device=device)[None, :]  # [1, s_k]
    visible = torch.ones(len(rows), s_k, dtype=torch.bool, device=device)
    if mask.right is not None:
        visible &= t <= diag + mask.right
    if mask.left is not None:
        visible &= t >= diag - mask.left
    return visible


def _chunk_rows(s_q: int, s_k: int, h_q: int) -> list[range]:
    step = max(1, _CHUNK_ELEMENTS // max(1, h_q * s_k))
    return [range(j, min(j + step, s_q)) for j in range(0, s_q, step)]


def _probs(qc: torch.Tensor, ks: torch.Tensor, s_q: int, rows: range, scale: float,
           mask: AttentionMask) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of one chunk: probabilities [h_kv, g, c, s_k] and lse [h_kv, g, c] (+inf: no key)."""
    s_k = ks.shape[0]
    scores = torch.einsum("cngd,tnd->ngct", qc, ks) * scale  # [h_kv, g, c, s_k]
    if mask.left is not None or mask.right is not None:
        scores = scores.masked_fill(~visible_keys(s_q, s_k, rows, mask, qc.device), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [h_kv, g, c]; -inf where no key is visible
    empty = torch.isneginf(lse)
    probs = torch.exp(scores - lse.masked_fill(empty, 0.0)[..., None])  # masked keys: exp(-inf) = 0
    return probs, lse.masked_fill(empty, float("inf"))


def _rounded(x: torch.Tensor, p_dtype: torch.dtype | None) -> torch.Tensor:
    """x rounded to p_dtype and back (the numerics emulation's bf16 operands); unchanged for None."""
    return x if p_dtype is None else x.to(p_dtype).to(x.dtype)


def _forward(q, k, v, shapes: MhaPrefillShapes, scale: float, mask: AttentionMask, dtype: torch.dtype,
             p_dtype: torch.dtype | None = None):
    out = torch.zeros(shapes.total_q, shapes.h_q, shapes.d_v, dtype=dtype, device=q.device)
    lse = torch.empty(shapes.total_q, shapes.h_q, dtype=dtype, device=q.device)
    g, q0, k0 = shapes.group, 0, 0
    for s_q, s_k in zip(shapes.seqlens_q, shapes.seqlens_k):
        ks = k[k0:k0 + s_k].to(dtype)  # [s_k, h_kv, d_qk]
        vs = v[k0:k0 + s_k].to(dtype)  # [s_k, h_kv, d_v]
        for rows in _chunk_rows(s_q, s_k, shapes.h_q):
            lo, hi = q0 + rows.start, q0 + rows.stop
            qc = q[lo:hi].to(dtype).unflatten(1, (shapes.h_kv, g))  # [c, h_kv, g, d_qk]
            probs, lse_c = _probs(qc, ks, s_q, rows, scale, mask)
            out[lo:hi] = torch.einsum("ngct,tnv->cngv", _rounded(probs, p_dtype), vs).flatten(1, 2)  # [c, h_q, d_v]
            lse[lo:hi] = lse_c.flatten(0, 1).T  # [c, h_q]
        q0, k0 = q0 + s_q, k0 + s_k
    return out, lse


def _backward(dout, q, k, v, shapes: MhaPrefillShapes, scale: float, mask: AttentionMask, dtype: torch.dtype,
              p_dtype: torch.dtype | None = None):
    """p_dtype (the numerics emulation): P and dS rounded to it before the dV, dQ and dK products."""
    dq = torch.zeros(shapes.total_q, shapes.h_q, shapes.d_qk, dtype=dtype, device=q.device)
    dk = torch.zeros(shapes.total_k, shapes.h_kv, shapes.d_qk, dtype=dtype, device=q.device)
    dv = torch.zeros(shapes.total_k, shapes.h_kv, shapes.d_v, dtype=dtype, device=q.device)
    g, q0, k0 = shapes.group, 0, 0
    for s_q, s_k in zip(shapes.seqlens_q, shapes.seqlens_k):
        ks = k[k0:k0 + s_k].to(dtype)  # [s_k, h_kv, d_qk]
        vs = v[k0:k0 + s_k].to(dtype)  # [s_k, h_kv, d_v]
        for rows in _chunk_rows(s_q, s_k, shapes.h_q):
            lo, hi = q0 + rows.start, q0 + rows.stop
            qc = q[lo:hi].to(dtype).unflatten(1, (shapes.h_kv, g))  # [c, h_kv, g, d_qk]
            doc = dout[lo:hi].to(dtype).unflatten(1, (shapes.h_kv, g))  # [c, h_kv, g, d_v]
            probs, _ = _probs(qc, ks, s_q, rows, scale, mask)  # P [h_kv, g, c, s_k]
            dp = torch.einsum("cngv,tnv->ngct", doc, vs)  # dP = dO V^T
            ds = probs * (dp - (probs * dp).sum(-1, keepdim=True))  # dS = P * (dP - rowsum(P * dP))
            ds, probs = _rounded(ds, p_dtype), _rounded(probs, p_dtype)
            dq[lo:hi] = (torch.einsum("ngct,tnd->cngd", ds, ks) * scale).flatten(1, 2)  # [c, h_q, d_qk]
            dk[k0:k0 + s_k] += torch.einsum("ngct,cngd->tnd", ds, qc) * scale  # summed over the group
            dv[k0:k0 + s_k] += torch.einsum("ngct,cngv->tnv", probs, doc)  # summed over the group
        q0, k0 = q0 + s_q, k0 + s_k
    return dq, dk, dv


class _ReferenceAttention(torch.autograd.Function):
    """Forward in ``dtype``, output cast to ``out_dtype``; backward by the chunked explicit formulas."""

    @staticmethod
    def forward(ctx, q, k, v, shapes, scale, mask, dtype, out_dtype, p_dtype=None):
        out, lse = _forward(q, k, v, shapes, scale, mask, dtype, p_dtype)
        ctx.save_for_backward(q, k, v)
        ctx.config = (shapes, scale, mask, dtype, p_dtype)
        lse = lse.to(torch.float32) if out_dtype != dtype else lse
        ctx.mark_non_differentiable(lse)
        return out.to(out_dtype), lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v = ctx.saved_tensors
        shapes, scale, mask, dtype, p_dtype = ctx.config
        dq, dk, dv = _backward(dout, q, k, v, shapes, scale, mask, dtype, p_dtype)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None, None


def _check_compute_dtype(dtype: object) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
    return dtype


def mha_prefill_reference(q, k, v, cu_seqlens_qo, cu_seqlens_kv, *, softmax_scale=None, causal=False,
                          window_size=(-1, -1), dtype=torch.float32, p_dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unrounded forward: (out [total_q, h_q, d_v], lse [total_q, h_q]), both in ``dtype``.

    p_dtype: None, or the dtype P is rounded to before P @ V (the numerics emulation)."""
    check_mha_options(0.0, softmax_scale, causal, False, True)
    mask = check_window_size(window_size, causal)
    shapes = check_mha_prefill_inputs(q, k, v, cu_seqlens_qo, cu_seqlens_kv)
    dtype = _check_compute_dtype(dtype)
    scale = resolve_softmax_scale(softmax_scale, shapes.d_qk)
    return _ReferenceAttention.apply(q, k, v, shapes, scale, mask, dtype, dtype, p_dtype)


def mha_prefill_backward_reference(dout, q, k, v, cu_seqlens_qo, cu_seqlens_kv, *, softmax_scale=None,
                                   causal=False, window_size=(-1, -1), dtype=torch.float32,
                                   p_dtype=None) -> tuple[torch.Tensor, ...]:
    """Unrounded gradients (dq, dk, dv) in ``dtype`` for the upstream gradient ``dout`` of ``out``.

    p_dtype: None, or the dtype P and dS are rounded to before their products (the numerics emulation)."""
    check_mha_options(0.0, softmax_scale, causal, False, True)
    mask = check_window_size(window_size, causal)
    shapes = check_mha_prefill_inputs(q, k, v, cu_seqlens_qo, cu_seqlens_kv)
    if not isinstance(dout, torch.Tensor):
        raise TypeError(f"dout: expected a torch.Tensor, got {type(dout).__name__}")
    expected = (shapes.total_q, shapes.h_q, shapes.d_v)
    if tuple(dout.shape) != expected or not dout.is_floating_point():
        raise ValueError(f"dout: expected a floating tensor of shape {list(expected)}, got {dout.dtype} "
                         f"{tuple(dout.shape)}")
    dtype = _check_compute_dtype(dtype)
    scale = resolve_softmax_scale(softmax_scale, shapes.d_qk)
    with torch.no_grad():
        return _backward(dout, q, k, v, shapes, scale, mask, dtype, p_dtype)


def varlen_attention(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, dropout_p, softmax_scale,
                     causal, deterministic, is_varlen, window_size, p_dtype=None):
    """`flash_attn_varlen_func`'s checks and differentiable call, P (and dS) rounded to ``p_dtype`` when
    given (the numerics emulation); None keeps them unrounded (the reference)."""
    check_mha_options(dropout_p, softmax_scale, causal, deterministic, is_varlen)
    mask = check_window_size(window_size, causal)
    shapes = check_mha_prefill_inputs(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv,
                                      is_varlen=is_varlen)
    scale = resolve_softmax_scale(softmax_scale, shapes.d_qk)
    return _ReferenceAttention.apply(q, k, v, shapes, scale, mask, torch.float32, q.dtype, p_dtype)


def flash_attn_varlen_func(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, dropout_p=0.0,
                           softmax_scale=None, causal=False, deterministic=False, is_varlen=True, *,
                           window_size=(-1, -1)):
    """FlashMLA's API: (out in q's dtype [total_q, h_q, d_v], lse float32 [total_q, h_q]); differentiable."""
    return varlen_attention(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, dropout_p,
                            softmax_scale, causal, deterministic, is_varlen, window_size)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, head_dim_qk, dropout_p=0.0, softmax_scale=None,
                                     causal=False, deterministic=False, is_varlen=True, *, window_size=(-1, -1)):
    """qkv [total, h, 2 * head_dim_qk + d_v]; one set of lengths for queries and keys."""
    q, k, v = split_qkv_packed(qkv, head_dim_qk)
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p,
                                  softmax_scale, causal, deterministic, is_varlen, window_size=window_size)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, head_dim_qk,
                                    dropout_p=0.0, softmax_scale=None, causal=False, deterministic=False,
                                    is_varlen=True, *, window_size=(-1, -1)):
    """kv [total_k, h_kv, head_dim_qk + d_v]."""
    k, v = split_kv_packed(kv, head_dim_qk)
    return flash_attn_varlen_func(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv, dropout_p,
                                  softmax_scale, causal, deterministic, is_varlen, window_size=window_size)
