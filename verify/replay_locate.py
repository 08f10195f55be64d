"""Where a wrong output element comes from: its coordinates in words, and the input entry behind it.

For an element of an output (out, lse, max_logits, dq, dk, dv) this names batch / query / head /
dim (or packed sequence and position for MHA), the FP8 quantization tile of that dim, and the
list entry that dominates the element: the top-k slot (main or extra list) with its cache
position, page block and offset (sparse decode), the kv row (sparse prefill), the token with its
page block (dense decode), or the key position (MHA). "Dominates" means the largest |p * v|
for a value output and the largest probability p for lse / max_logits, computed in float32
from the reference's own definition.
"""
from __future__ import annotations

import math

import torch

import mlaverify.reference as ref
from mlaverify.reference import ModelType
from mlaverify.verify.compare import bf16_ulp, element_ratios
from mlaverify.verify.materialize import Inputs
from mlaverify.verify.results import Tolerance

__all__ = ["worst_elements", "locate"]


def worst_elements(actual: torch.Tensor, reference: torch.Tensor, tolerance: Tolerance, n: int = 5) -> list[dict]:
    """The ``n`` worst elements: non-finite placement mismatches first, then by error / allowed (the
    comparison's own measure, `compare.element_ratios`). "ulp" is None where the reference is below the
    floor (its ulp error means nothing there)."""
    a = actual.detach().double().cpu()
    r = reference.detach().double().cpu()
    finite = torch.isfinite(a) & torch.isfinite(r)
    placement = ~finite & ~((a == r) | (torch.isnan(a) & torch.isnan(r)))
    err, ratio, above, _ = element_ratios(a, r, tolerance)
    ulp = err / bf16_ulp(torch.where(finite, r, torch.ones_like(r)))
    score = torch.where(placement, torch.full_like(a, math.inf), ratio).reshape(-1)
    k = min(n, score.numel())
    if k == 0:
        return []
    top = torch.topk(score, k).indices
    rows = []
    for flat in top.tolist():
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape))
        rows.append({"index": idx, "got": float(a[idx]), "ref": float(r[idx]), "abs": float(err[idx]),
                     "ratio": float(ratio[idx]), "ulp": float(ulp[idx]) if bool(above[idx]) else None,
                     "nonfinite_mismatch": bool(placement[idx])})
    return rows


def _dim_note(model: ModelType | None, d: int) -> str:
    if model is None:
        return f"dim {d}"
    if d >= model.d_nope:
        return f"dim {d} (RoPE part, bf16, unquantized)"
    t = d // model.tile
    return f"dim {d} (NoPE quant tile {t}: dims {t * model.tile}..{(t + 1) * model.tile - 1})"


def _dominant(q: torch.Tensor, keys: torch.Tensor, scale: float, dim: int | None) -> tuple[int, float] | None:
    """(entry, probability) of the entry dominating one row; keys [n, d_qk] float32 (n may be 0)."""
    if keys.shape[0] == 0:
        return None
    logits = keys.float() @ q.float() * scale  # [n]
    p = torch.softmax(logits, dim=0)
    weight = p if dim is None else (p * keys[:, dim].float()).abs()
    weight = torch.nan_to_num(weight, nan=math.inf)
    k = int(torch.argmax(weight))
    return k, float(p[k])


def _sparse_decode(x: Inputs, name: str, idx: tuple) -> str:
    c, t = x.case, x.tensors
    model = ModelType.V32 if c.model == "v32" else ModelType.MODEL1
    if name == "lse":
        i, h, j = idx
        d = None
    else:
        i, j, h, d = idx
    where = f"batch {i}, query {j}, head {h}" + (f", {_dim_note(model, d)}" if d is not None else "")
    scale = x.scalars["softmax_scale"] or model.d_qk ** -0.5
    entries, keys = [], []
    lists = [("main", t["k_cache"], t["indices"], t["topk_length"], c.page_block_size),
             ("extra", t["extra_k_cache"], t["extra_indices"], t["extra_topk_length"], c.extra_page_block_size)]
    for label, cache, indices, lengths, block in lists:
        if cache is None or indices is None:
            continue
        row = indices[i, j].long()
        n = int(lengths[i]) if lengths is not None else row.shape[0]
        for slot in range(n):
            if int(row[slot]) != -1:
                entries.append((label, slot, int(row[slot]), block))
        pos = torch.tensor([e[2] for e in entries if e[0] == label], dtype=torch.long)
        if pos.numel():
            keys.append(ref.gather_dequantized(cache, pos, model).float())
    if not entries:
        return where + "; the row has no valid entry (expected out 0, lse +inf)"
    dom = _dominant(t["q"][i, j, h], torch.cat(keys), scale, d)
    label, slot, pos, block = entries[dom[0]]
    return (where + f"; dominated by {label} top-k slot {slot} -> cache position {pos} = page block "
            f"{pos // block}, offset {pos % block} (p={dom[1]:.3g})")


def _sparse_prefill(x: Inputs, name: str, idx: tuple) -> str:
    c, t = x.case, x.tensors
    j, h = idx[0], idx[1]
    d = idx[2] if name == "out" else None
    where = f"query {j}, head {h}" + (f", dim {d}" if d is not None else "")
    row = t["indices"][j, 0].long()
    n = int(t["topk_length"][j]) if t["topk_length"] is not None else row.shape[0]
    slots = [s for s in range(n) if 0 <= int(row[s]) < c.s_kv]
    if not slots:
        return where + "; the row has no valid index (expected out 0, max_logits -inf, lse +inf)"
    keys = t["kv"][row[slots], 0].float()
    dom = _dominant(t["q"][j, h], keys, x.scalars["sm_scale"], d)
    slot = slots[dom[0]]
    return where + f"; dominated by top-k slot {slot} -> kv row {int(row[slot])} (p={dom[1]:.3g})"


def _dense_decode(x: Inputs, name: str, idx: tuple) -> str:
    c, t = x.case, x.tensors
    if name == "lse":
        i, h, j = idx
        d = None
    else:
        i, j, h, d = idx
    kvh = h // (c.h_q // c.h_kv)
    where = f"batch {i}, query {j}, head {h} (kv head {kvh})" + (f", dim {d}" if d is not None else "")
    s_k, block = int(t["cache_seqlens"][i]), c.page_block_size
    last = s_k - c.s_q + j if c.causal else s_k - 1
    tokens = list(range(0, min(s_k, last + 1)))
    if not tokens:
        return where + f"; no attendable token (cache_seqlens {s_k}; expected out 0, lse +inf)"
    tok = torch.tensor(tokens)
    blocks = t["block_table"][i].long()[tok // block]
    keys = t["k_cache"][blocks, tok % block, kvh].float()
    dom = _dominant(t["q"][i, j, h], keys, x.scalars["softmax_scale"] or c.d_qk ** -0.5, d)
    tk = tokens[dom[0]]
    return where + (f"; dominated by token {tk} of {s_k} -> page block {int(blocks[dom[0]])}, offset "
                    f"{tk % block} (p={dom[1]:.3g})")


def _seq_pos(cu: torch.Tensor, token: int) -> tuple[int, int]:
    s = int(torch.searchsorted(cu.long(), torch.tensor(token), right=True)) - 1
    return s, token - int(cu[s])


def _mha(x: Inputs, name: str, idx: tuple) -> str:
    c, t = x.case, x.tensors
    if name in ("dk", "dv"):
        s, pos = _seq_pos(t["cu_seqlens_k"], idx[0])
        return f"sequence {s}, key position {pos}, kv head {idx[1]}, dim {idx[2]} (summed over its query-head group)"
    s, j = _seq_pos(t["cu_seqlens_q"], idx[0])
    h = idx[1]
    d = idx[2] if name == "out" else None
    where = f"sequence {s}, query position {j}, head {h}" + (f", dim {d}" if d is not None else "")
    s_q = int(t["cu_seqlens_q"][s + 1] - t["cu_seqlens_q"][s])
    k0, k1 = int(t["cu_seqlens_k"][s]), int(t["cu_seqlens_k"][s + 1])
    s_k = k1 - k0
    visible = s_k if not c.causal else max(0, min(s_k, s_k - s_q + j + 1))
    if visible == 0 or name == "dq":
        return where + ("; sees no key (expected out 0, lse +inf)" if visible == 0 else "")
    kvh = h // (c.h_q // c.h_kv)
    keys = t["k"][k0:k0 + visible, kvh].float()
    values = t["v"][k0:k0 + visible, kvh].float()
    scale = x.scalars["softmax_scale"] or c.d_qk ** -0.5
    p = torch.softmax(keys @ t["q"][idx[0], h].float() * scale, dim=0)
    weight = p if d is None else (p * values[:, d]).abs()
    k = int(torch.argmax(torch.nan_to_num(weight, nan=math.inf)))
    return where + f"; dominated by key position {k} of {s_k} (p={float(p[k]):.3g})"


_LOCATORS = {"sparse_decode": _sparse_decode, "sparse_prefill": _sparse_prefill, "dense_decode": _dense_decode,
             "mha_prefill": _mha}


def locate(inputs: Inputs, output: str, index: tuple) -> str:
    """One line saying where element ``index`` of ``output`` sits and which input entry drives it."""
    try:
        return _LOCATORS[inputs.case.op](inputs, output, tuple(int(i) for i in index))
    except (IndexError, ValueError, RuntimeError, KeyError) as exc:  # a wrong-shaped output: say so, go on
        return f"index {list(index)} (cannot decode against the inputs: {exc})"
