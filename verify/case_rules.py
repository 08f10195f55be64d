"""What a `Case` may hold: ops, models, head dims, the string enums of its modes, and its validation.

`mlaverify.verify.cases` re-exports every name here; see its docstring for what each mode means.
"""
from __future__ import annotations

from typing import Any

OPS = ("sparse_decode", "sparse_prefill", "dense_decode", "mha_prefill")
MODELS: dict[str, tuple[str, ...]] = {
    "sparse_decode": ("v32", "model1"),
    "sparse_prefill": ("v32", "model1"),
    "dense_decode": ("v32", "model1"),
    "mha_prefill": ("d192", "d128"),
}
# (d_qk, d_v) per op and model.
HEAD_DIMS: dict[tuple[str, str], tuple[int, int]] = {
    ("sparse_decode", "v32"): (576, 512), ("sparse_decode", "model1"): (512, 512),
    ("sparse_prefill", "v32"): (576, 512), ("sparse_prefill", "model1"): (512, 512),
    ("dense_decode", "v32"): (576, 512), ("dense_decode", "model1"): (512, 512),
    ("mha_prefill", "d192"): (192, 128), ("mha_prefill", "d128"): (128, 128),
}
TOPK_LENGTH_MODES = ("none", "zero", "partial", "full", "mixed")
SINK_MODES = ("none", "finite", "neg_inf", "pos_inf", "mixed")
INVALID_MODES = ("none", "some", "rows", "batch", "all")
NAN_FILL_MODES = ("none", "unused", "all")
SCALE_MODES = ("ue8m0", "float32")
VALUE_MODES = ("normal", "outliers", "zero_tiles", "near_max", "mixed")
DTYPES = ("bf16", "fp16")
SEQLEN_MODES = ("full", "varlen", "zero", "zero_q", "zero_k")  # zero_q/zero_k: mha only
# value distributions of keys and queries (`distributions.PRODUCTION_DISTRIBUTIONS`, same names and order;
# listed here so that cases stay importable without torch): FlashMLA's flat test data first, then the
# production-like ones (peaked attention, wide logits, outlier K channels, RoPE scale, near-duplicate keys)
DIST_MODES = ("flashmla", "peaked", "wide_logits", "outlier_channels", "rope_scaled", "near_duplicate")

SPARSE_OPS = ("sparse_decode", "sparse_prefill")
DECODE_OPS = ("sparse_decode", "dense_decode")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"case.{name}: expected one of {list(choices)}, got {value!r}")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"case.{name}: expected int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"case.{name}: expected >= {low}, got {value}")


def validate(c) -> None:
    """Raise ValueError/TypeError naming the field when a `Case` is inconsistent."""
    _check_choice("op", c.op, OPS)
    _check_choice("model", c.model, MODELS[c.op])
    for name, low in (("seed", 0), ("b", 1), ("s_q", 1), ("h_q", 1), ("h_kv", 1), ("s_kv", 0),
                      ("topk", 0), ("page_block_size", 1), ("extra_s_kv", 0), ("extra_topk", 0),
                      ("extra_page_block_size", 0), ("window_left", -1), ("window_right", -1)):
        _check_int(name, getattr(c, name), low)
    _check_choice("topk_length", c.topk_length, TOPK_LENGTH_MODES)
    _check_choice("extra_topk_length", c.extra_topk_length, TOPK_LENGTH_MODES)
    _check_choice("sink", c.sink, SINK_MODES)
    _check_choice("invalid", c.invalid, INVALID_MODES)
    _check_choice("nan_fill", c.nan_fill, NAN_FILL_MODES)
    _check_choice("scales", c.scales, SCALE_MODES)
    _check_choice("values", c.values, VALUE_MODES)
    _check_choice("dtype", c.dtype, DTYPES)
    _check_choice("seqlens", c.seqlens, SEQLEN_MODES)
    _check_choice("dist", c.dist, DIST_MODES)
    for name in ("noncontiguous", "causal", "backward", "q_transposed", "duplicates"):
        if not isinstance(getattr(c, name), bool):
            raise TypeError(f"case.{name}: expected bool, got {type(getattr(c, name)).__name__}")
    if c.softmax_scale is not None and not (isinstance(c.softmax_scale, float) and c.softmax_scale > 0):
        raise ValueError(f"case.softmax_scale: expected None or a positive float, got {c.softmax_scale!r}")
    sparse = c.op in SPARSE_OPS
    if sparse and c.topk < 1:
        raise ValueError(f"case.topk: expected >= 1 for {c.op}, got {c.topk}")
    if not sparse and (c.topk or c.topk_length != "none" or c.sink != "none" or c.invalid != "none"):
        raise ValueError(f"case: topk/topk_length/sink/invalid only apply to sparse ops, not {c.op}")
    if c.op != "sparse_decode":
        if c.has_extra or c.extra_s_kv or c.extra_page_block_size or c.extra_topk_length != "none":
            raise ValueError(f"case: the extra cache only applies to sparse_decode, not {c.op}")
        if c.scales != "ue8m0" or c.values != "normal":
            raise ValueError(f"case: scales/values only apply to sparse_decode (FP8 cache), not {c.op}")
    else:
        extra = (c.extra_topk > 0, c.extra_s_kv > 0, c.extra_page_block_size > 0)
        if any(extra) and not all(extra):
            raise ValueError("case: extra_topk, extra_s_kv and extra_page_block_size must all be > 0 "
                             f"or all 0; got {c.extra_topk}, {c.extra_s_kv}, {c.extra_page_block_size}")
        if not c.has_extra and c.extra_topk_length != "none":
            raise ValueError("case.extra_topk_length: needs an extra cache (extra_topk > 0)")
        if c.scales == "float32" and c.model != "v32":
            raise ValueError(f"case.scales: 'float32' scales exist only for v32, got model {c.model!r}")
    if sparse and c.h_kv != 1:
        raise ValueError(f"case.h_kv: sparse ops are MQA (1 kv head), got {c.h_kv}")
    if c.h_q % c.h_kv:
        raise ValueError(f"case.h_kv: h_q={c.h_q} must be a multiple of h_kv={c.h_kv}")
    if c.op == "sparse_prefill":
        if c.b != 1:
            raise ValueError(f"case.b: sparse_prefill has no batch, expected 1, got {c.b}")
        if c.invalid == "batch":
            raise ValueError("case.invalid: 'batch' needs a batch; sparse_prefill has none")
        if c.s_kv < 1:
            raise ValueError(f"case.s_kv: sparse_prefill needs at least one kv row, got {c.s_kv}")
    if c.op in ("sparse_prefill", "sparse_decode") and c.causal:
        raise ValueError(f"case.causal: not supported by {c.op}")
    if c.op in SPARSE_OPS and (c.dtype != "bf16" or c.seqlens != "full"):
        raise ValueError(f"case: dtype/seqlens only apply to dense ops, not {c.op}")
    if c.backward and c.op != "mha_prefill":
        raise ValueError(f"case.backward: only mha_prefill has a backward pass, not {c.op}")
    if c.op == "dense_decode" and c.nan_fill == "unused":
        raise ValueError("case.nan_fill: dense_decode has no index lists; use 'none' or 'all'")
    if c.op == "mha_prefill" and c.nan_fill != "none":
        raise ValueError("case.nan_fill: mha_prefill has no unused slots; use 'none'")
    if c.op == "mha_prefill" and c.s_kv < 1:
        raise ValueError(f"case.s_kv: mha_prefill needs s_kv >= 1, got {c.s_kv}")
    if c.q_transposed and c.op == "mha_prefill":
        raise ValueError("case.q_transposed: mha_prefill varies q's strides with noncontiguous; not for mha_prefill")
    if c.duplicates and not sparse:
        raise ValueError(f"case.duplicates: only sparse ops have index lists, not {c.op}")
    if c.seqlens in ("zero_q", "zero_k") and c.op != "mha_prefill":
        raise ValueError(f"case.seqlens: {c.seqlens!r} only applies to mha_prefill, not {c.op}")
    if c.has_window and c.op != "mha_prefill":
        raise ValueError(f"case.window_left/window_right: the sliding window only applies to mha_prefill, "
                         f"not {c.op}; got {c.window_size}")
    if c.causal and c.window_right > 0:
        raise ValueError(f"case.window_right: with causal the right bound is the diagonal, expected -1 or 0, "
                         f"got {c.window_right}")
