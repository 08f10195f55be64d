"""Per-op glue between materialized inputs, an implementation's FlashMLA API and the references.

For each op (`ADAPTERS[op]`):
- `outputs`: the output names, in the order the API returns them (backward adds dq, dk, dv).
- `expected(inputs)`: {name: (shape, dtype)} the contract prescribes.
- `call(module, inputs)`: run the implementation; returns its raw result (forward tuple, plus the
  gradients for mha backward) without judging it.
- `reference(inputs)`: {name: tensor} from mlaverify.reference, before output rounding (float32).
- `permute(inputs, perm)`: the same inputs with the batch permuted (decode ops only; None else).
- `unpack(raw, inputs)`: the result as {name: object} or a reason string when its structure is wrong.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from mlaverify import reference as ref
from mlaverify.verify.materialize import Inputs

_DT = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class OpAdapter:
    forward_outputs: tuple[str, ...]
    expected: Callable[[Inputs], dict[str, tuple[tuple[int, ...], torch.dtype]]]
    call: Callable[[Any, Inputs], Any]
    reference: Callable[[Inputs], dict[str, torch.Tensor]]
    permute: Callable[[Inputs, torch.Tensor], Inputs] | None = None

    def outputs(self, inputs: Inputs) -> tuple[str, ...]:
        return self.forward_outputs + (("dq", "dk", "dv") if inputs.case.backward else ())

    def unpack(self, raw: Any, inputs: Inputs) -> dict[str, Any] | str:
        names = self.forward_outputs
        if inputs.case.backward:
            forward, grads = raw
        else:
            forward, grads = raw, ()
        if not isinstance(forward, (tuple, list)):
            return f"expected a tuple of {len(names)} tensors ({', '.join(names)}), got {type(forward).__name__}"
        if len(forward) != len(names):
            return f"expected a tuple of {len(names)} tensors ({', '.join(names)}), got {len(forward)} values"
        return dict(zip(self.outputs(inputs), (*forward, *grads)))


def _permute_tensors(inputs: Inputs, perm: torch.Tensor, names: tuple[str, ...]) -> Inputs:
    tensors = dict(inputs.tensors)
    for name in names:
        t = tensors.get(name)
        if t is not None:
            tensors[name] = t[perm.to(t.device)]
    return Inputs(inputs.case, tensors, dict(inputs.scalars))


# ---- sparse decode ---------------------------------------------------------------------------
def _sd_expected(x: Inputs):
    c = x.case
    return {"out": ((c.b, c.s_q, c.h_q, 512), torch.bfloat16), "lse": ((c.b, c.h_q, c.s_q), torch.float32)}


def _sd_call(module, x: Inputs):
    t = x.tensors
    meta, _ = module.get_mla_metadata()
    return module.flash_mla_with_kvcache(
        t["q"], t["k_cache"], None, None, 512, meta, num_splits=None, softmax_scale=x.scalars["softmax_scale"],
        causal=False, is_fp8_kvcache=True, indices=t["indices"], attn_sink=t["attn_sink"],
        extra_k_cache=t["extra_k_cache"], extra_indices_in_kvcache=t["extra_indices"],
        topk_length=t["topk_length"], extra_topk_length=t["extra_topk_length"])


def _sd_reference(x: Inputs):
    t = x.tensors
    out, lse = ref.sparse_decode_reference(
        t["q"], t["k_cache"], t["indices"], softmax_scale=x.scalars["softmax_scale"], attn_sink=t["attn_sink"],
        topk_length=t["topk_length"], extra_k_cache=t["extra_k_cache"], extra_indices=t["extra_indices"],
        extra_topk_length=t["extra_topk_length"])
    return {"out": out, "lse": lse}


# ---- sparse prefill --------------------------------------------------------------------------
def _sp_expected(x: Inputs):
    c = x.case
    return {"out": ((c.s_q, c.h_q, 512), torch.bfloat16), "max_logits": ((c.s_q, c.h_q), torch.float32),
            "lse": ((c.s_q, c.h_q), torch.float32)}


def _sp_call(module, x: Inputs):
    t = x.tensors
    return module.flash_mla_sparse_fwd(t["q"], t["kv"], t["indices"], x.scalars["sm_scale"], d_v=512,
                                       attn_sink=t["attn_sink"], topk_length=t["topk_length"])


def _sp_reference(x: Inputs):
    t = x.tensors
    out, max_logits, lse = ref.sparse_prefill_reference(t["q"], t["kv"], t["indices"], x.scalars["sm_scale"],
                                                        attn_sink=t["attn_sink"], topk_length=t["topk_length"])
    return {"out": out, "max_logits": max_logits, "lse": lse}


# ---- dense decode ----------------------------------------------------------------------------
def _dd_expected(x: Inputs):
    c = x.case
    return {"out": ((c.b, c.s_q, c.h_q, 512), _DT[c.dtype]), "lse": ((c.b, c.h_q, c.s_q), torch.float32)}


def _dd_call(module, x: Inputs):
    t = x.tensors
    meta, _ = module.get_mla_metadata()
    return module.flash_mla_with_kvcache(t["q"], t["k_cache"], t["block_table"], t["cache_seqlens"], 512, meta,
                                         softmax_scale=x.scalars["softmax_scale"], causal=x.case.causal)


def _dd_reference(x: Inputs):
    t = x.tensors
    out, lse = ref.dense_decode_reference(t["q"], t["k_cache"], t["block_table"], t["cache_seqlens"], 512,
                                          softmax_scale=x.scalars["softmax_scale"], causal=x.case.causal)
    return {"out": out, "lse": lse}


# ---- mha prefill -----------------------------------------------------------------------------
def _mha_expected(x: Inputs):
    c, t = x.case, x.tensors
    dt = _DT[c.dtype]
    tq, tk = t["q"].shape[0], t["k"].shape[0]
    exp = {"out": ((tq, c.h_q, c.d_v), dt), "lse": ((tq, c.h_q), torch.float32)}
    if c.backward:
        exp.update(dq=((tq, c.h_q, c.d_qk), dt), dk=((tk, c.h_kv, c.d_qk), dt), dv=((tk, c.h_kv, c.d_v), dt))
    return exp


def _mha_call(module, x: Inputs):
    t, s = x.tensors, x.scalars
    backward = x.case.backward
    q, k, v = (t[n].detach().requires_grad_(backward) for n in ("q", "k", "v"))
    # the window is a keyword-only extension: passed only when the case has one, so that implementations
    # without it (flash_mla) are called with FlashMLA's exact signature
    window = {"window_size": s["window_size"]} if x.case.has_window else {}
    with torch.enable_grad():
        result = module.flash_attn_varlen_func(q, k, v, t["cu_seqlens_q"], t["cu_seqlens_k"], s["max_seqlen_q"],
                                               s["max_seqlen_k"], softmax_scale=s["softmax_scale"],
                                               causal=x.case.causal, **window)
        if not backward:
            return result
        out = result[0] if isinstance(result, (tuple, list)) and result else result
        if not isinstance(out, torch.Tensor) or out.shape != t["dout"].shape:
            return result, (None, None, None)
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), t["dout"], allow_unused=True)
    return result, (dq, dk, dv)


def _mha_reference(x: Inputs):
    from mlaverify.reference.mha_prefill import mha_prefill_backward_reference, mha_prefill_reference

    t, s, c = x.tensors, x.scalars, x.case
    args = (t["q"], t["k"], t["v"], t["cu_seqlens_q"], t["cu_seqlens_k"])
    with torch.no_grad():
        out, lse = mha_prefill_reference(*args, softmax_scale=s["softmax_scale"], causal=c.causal,
                                         window_size=c.window_size)
    result = {"out": out, "lse": lse}
    if c.backward:
        dq, dk, dv = mha_prefill_backward_reference(t["dout"], *args, softmax_scale=s["softmax_scale"], causal=c.causal,
                                                    window_size=c.window_size)
        result.update(dq=dq, dk=dk, dv=dv)
    return result


ADAPTERS: dict[str, OpAdapter] = {
    "sparse_decode": OpAdapter(("out", "lse"), _sd_expected, _sd_call, _sd_reference,
                               lambda x, p: _permute_tensors(x, p, ("q", "indices", "topk_length", "extra_indices",
                                                                    "extra_topk_length"))),
    "sparse_prefill": OpAdapter(("out", "max_logits", "lse"), _sp_expected, _sp_call, _sp_reference),
    "dense_decode": OpAdapter(("out", "lse"), _dd_expected, _dd_call, _dd_reference,
                              lambda x, p: _permute_tensors(x, p, ("q", "block_table", "cache_seqlens"))),
    "mha_prefill": OpAdapter(("out", "lse"), _mha_expected, _mha_call, _mha_reference),
}
