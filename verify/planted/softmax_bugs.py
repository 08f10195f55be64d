"""Planted bugs in the softmax core that only peaked, production-like data exposes.

On FlashMLA's flat test data (logit spread 0.01-0.1, top-1 weight ~1/T) a kernel that gets the
online softmax's bookkeeping wrong still returns almost the right numbers: every exp(m_old - m_new)
is ~1, the max is ~0, and scaling the logits changes a near-uniform softmax very little. With real,
peaked attention (logit spread 5-50) each of these mistakes moves the output by a lot. Each bug
passes a flat case and fails the same shapes on a production-like distribution (tests prove both).

Each planted module is the reference API with the reference's softmax core (`softmax.masked_attention`,
and for the sink bug `softmax.apply_sink`) replaced, during the call only, by the buggy one in the
op modules that use it, so everything else (input checks, gathers, FP8 dequantization, output
rounding) stays the reference's. A lock keeps concurrent calls from seeing each other's core.
"""
from __future__ import annotations

import contextlib
import functools
import math
import threading
from unittest import mock

import torch

import mlaverify.reference as ref
from mlaverify.reference import dense_decode as _dd
from mlaverify.reference import sparse_decode as _sd
from mlaverify.reference import sparse_prefill as _sp
from mlaverify.reference.softmax import apply_sink, masked_attention

from ._base import PlantedBug

TILE = 64        # keys per tile of the online softmax, as in the kernels
D_ROPE = 64      # the RoPE part is the last 64 dims of d_qk in every MLA op
_LOCK = threading.Lock()
_OP_MODULES = {"sparse_decode": _sd, "sparse_prefill": _sp, "dense_decode": _dd}


def _masked_logits(q, keys, values, valid, scale):
    used = valid.any(dim=1).unsqueeze(-1)
    keys, values = torch.where(used, keys, 0.0), torch.where(used, values, 0.0)
    logits = torch.where(valid, torch.einsum("rhd,rtd->rht", q, keys) * scale, float("-inf"))
    return logits, values


def _online_softmax(q, keys, values, valid, scale, p_dtype=None, *, bug: str):
    """Tiled online softmax with a bookkeeping bug in the accumulator's rescale (the row sum is right).

    bug "rescale_forgotten": acc is never multiplied by exp(m_old - m_new) when a tile raises the max;
    bug "stale_max": the accumulator's rescale uses a running max never updated after the first tile.
    """
    logits, values = _masked_logits(q, keys, values, valid, scale)
    rows, heads, t_total = logits.shape
    m = logits.new_full((rows, heads), float("-inf"))  # the row sum's running max (correct)
    m_acc = m.clone()                                   # the accumulator's idea of the running max
    total = logits.new_zeros(rows, heads)
    acc = logits.new_zeros(rows, heads, values.shape[-1])
    for t0 in range(0, t_total, TILE):
        s = logits[..., t0:t0 + TILE]
        m_new = torch.maximum(m, s.amax(-1))
        shift = torch.where(torch.isneginf(m_new), 0.0, m_new)
        p = torch.exp(s - shift.unsqueeze(-1))
        total = total * torch.exp(m - shift) + p.sum(-1)
        alpha = torch.exp(m_acc - shift)  # exp(-inf) = 0 before the first valid tile
        if bug == "rescale_forgotten":
            alpha = torch.where(torch.isneginf(m_acc), 0.0, 1.0)
        acc = acc * alpha.unsqueeze(-1) + torch.einsum("rht,rtd->rhd", p, values[:, t0:t0 + TILE])
        m = m_new
        if bug != "stale_max" or t0 == 0:
            m_acc = m_new
        else:
            m_acc = torch.where(torch.isneginf(m_acc), m_new, m_acc)  # set once, by the first valid tile
    empty = torch.isneginf(m)
    out = acc / torch.where(empty, 1.0, total).unsqueeze(-1)
    lse = torch.where(empty, float("inf"), torch.log(total) + torch.where(empty, 0.0, m))
    return out, lse, m


def _rope_scaled_twice(q, keys, values, valid, scale, p_dtype=None):
    """The softmax scale is folded into q's RoPE part and then applied to the whole logit again."""
    q = torch.cat([q[..., :-D_ROPE], q[..., -D_ROPE:] * scale], dim=-1)
    return masked_attention(q, keys, values, valid, scale)


def _exp_not_exp2(q, keys, values, valid, scale, p_dtype=None):
    """log2(e) folded into the scale for exp2, but exp is called: P = exp(log2(e) (l - m)).

    The max and lse come from the kernel's separate (correct) natural-log path."""
    out, _, _ = masked_attention(q, keys, values, valid, scale * math.log2(math.e))
    _, lse, m = masked_attention(q, keys, values, valid, scale)
    return out, lse, m


class _SinkBeforeMax:
    """The sink's exp(sink) is added to the row sum exp(l - max) without subtracting the max first:
    out *= sum / (sum + exp(sink)) instead of sum / (sum + exp(sink - max))."""

    def __init__(self) -> None:
        self.maxima: list[torch.Tensor] = []

    def core(self, q, keys, values, valid, scale, p_dtype=None):
        out, lse, m = masked_attention(q, keys, values, valid, scale)
        self.maxima.append(m)
        return out, lse, m

    def sink(self, out, lse, attn_sink, head_dim):
        m = torch.cat(self.maxima).reshape(lse.shape).to(lse.dtype) if self.maxima else torch.zeros_like(lse)
        return apply_sink(out, lse - torch.where(torch.isfinite(m), m, 0.0), attn_sink, head_dim)


def _patched(api_name: str, ops: tuple[str, ...], make):
    """The reference API function `api_name` with the op modules' core replaced during the call."""
    api = getattr(ref, api_name)

    @functools.wraps(api)
    def call(*args, **kwargs):
        core, sink = make()
        with _LOCK, contextlib.ExitStack() as stack:
            for op in ops:
                stack.enter_context(mock.patch.object(_OP_MODULES[op], "masked_attention", core))
                if sink is not None and hasattr(_OP_MODULES[op], "apply_sink"):
                    stack.enter_context(mock.patch.object(_OP_MODULES[op], "apply_sink", sink))
            return api(*args, **kwargs)

    return call


def _overrides(ops: tuple[str, ...], make) -> dict:
    names = set()
    if "sparse_prefill" in ops:
        names.add("flash_mla_sparse_fwd")
    if "sparse_decode" in ops or "dense_decode" in ops:
        names.add("flash_mla_with_kvcache")
    return {name: _patched(name, ops, make) for name in names}


def _fixed(core):
    return lambda: (core, None)


def _sink_bug():
    bug = _SinkBeforeMax()
    return bug.core, bug.sink


_CORE_OPS = ("sparse_decode", "sparse_prefill", "dense_decode")
_ALL = ("v32", "model1")

BUGS = [
    PlantedBug("softmax_rescale_forgotten", "online softmax: acc *= exp(m_old - m_new) forgotten when a tile "
               "raises the max", _CORE_OPS, _ALL,
               _overrides(_CORE_OPS, _fixed(functools.partial(_online_softmax, bug="rescale_forgotten")))),
    PlantedBug("softmax_stale_running_max", "online softmax: the accumulator's running max is never updated "
               "after the first tile", _CORE_OPS, _ALL,
               _overrides(_CORE_OPS, _fixed(functools.partial(_online_softmax, bug="stale_max")))),
    PlantedBug("softmax_scale_twice_on_rope", "softmax scale applied twice to the RoPE part of the logits",
               ("dense_decode",), _ALL, _overrides(("dense_decode",), _fixed(_rope_scaled_twice))),
    PlantedBug("softmax_exp_not_exp2", "exp instead of exp2 with log2(e) folded into the scale (P only)",
               ("sparse_prefill", "dense_decode"), _ALL,
               _overrides(("sparse_prefill", "dense_decode"), _fixed(_exp_not_exp2))),
    PlantedBug("softmax_sink_before_max", "attention sink added to the row sum before the max subtraction",
               ("sparse_decode", "sparse_prefill"), _ALL,
               _overrides(("sparse_decode", "sparse_prefill"), _sink_bug)),
]
