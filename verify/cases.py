"""The `Case` record: one verification case, as plain data.

A case names an operation, a model (shape family), every shape and flag of the inputs, and a
seed. `mlaverify.verify.materialize.materialize(case)` turns it into tensors, the same ones on
every run and machine. A case is frozen, hashable and JSON-safe:

    case = Case(op="sparse_decode", model="model1", b=2, s_q=2, h_q=64, s_kv=300, topk=128,
                page_block_size=256, extra_s_kv=200, extra_topk=64, extra_page_block_size=2,
                topk_length="partial", sink="mixed", seed=1234)
    case.id       # 'sparse_decode/model1/b2-h64-sq2-sk300+200-topk128+64-pb256+2-lenpart-sinkmix-s1234'
    Case.from_id(case.id) == case
    Case.from_dict(json.loads(json.dumps(case.to_dict()))) == case

Ops and models (`MODELS`):
- "sparse_decode", "sparse_prefill": "v32" (d_qk 576, float32 scales) and "model1" (d_qk 512, ue8m0).
- "dense_decode": "v32" means d = 576, "model1" means d = 512 (head_dim_v 512 for both).
- "mha_prefill": "d192" means (d_qk, d_v) = (192, 128); "d128" means (128, 128).

Meaning of the shape fields per op:
- b: batch (decode ops), number of packed sequences (mha_prefill); always 1 for sparse_prefill.
- s_q: query tokens per batch entry (decode), query rows (sparse prefill), longest query
  sequence (mha_prefill).
- s_kv: tokens per sequence behind the main cache (sparse decode), kv rows (sparse prefill),
  longest cache sequence (dense decode), longest key sequence (mha_prefill).
- topk / extra_topk: index list lengths (sparse ops); extra_topk 0 means no extra cache.

Modes (string enums, see the *_MODES tuples):
- topk_length / extra_topk_length: none (argument absent), zero, partial, full, mixed (per row
  one of 0 / partial / full).
- sink: none, finite, neg_inf, pos_inf, mixed (finite, -inf and +inf across heads).
- invalid: none, some (scattered invalid entries; prefill uses every invalid kind), rows (some
  query rows with no valid entry), batch (a whole batch entry invalid), all.
- nan_fill: none; unused (NaN bytes in slots no index entry references); all (NaN in every slot
  no *considered* entry references, including slots referenced only past topk_length).
- scales: ue8m0 (production power-of-two scales) or float32 (arbitrary float32 scales; V32 only).
- values: normal, outliers (per-tile outliers), zero_tiles (all-zero quant tiles), near_max
  (many values quantizing near the fp8 limit 448), mixed (all of the above across tokens).
- dist (every op): the value distribution of keys and queries (`distributions.PRODUCTION_DISTRIBUTIONS`):
  flashmla (FlashMLA's own flat test data, the default), peaked, wide_logits, outlier_channels,
  rope_scaled, near_duplicate. Id token ``dist<name without underscores>``, e.g. ``distwidelogits``;
  feature ``dist:<name>``.
- seqlens (dense decode, mha): full (all at the maximum), varlen, zero (some length 0); mha only:
  zero_q / zero_k (one q sequence, or one key sequence, of length 0; the others varlen).
- q_transposed (decode ops, sparse prefill): q is a transposed view, its head stride differs from d_qk.
- duplicates (sparse ops): some list slots repeat the position of another slot of the same list.
- window_left / window_right (mha_prefill only): the sliding window ``window_size=(left, right)``
  of the flash_attn convention, -1 = unbounded; (-1, -1) is no window. With causal the right bound
  is -1 or 0 (both mean the diagonal). Id token ``win<left>.<right>`` with ``inf`` for -1, e.g.
  ``win3.inf``; features ``window``, ``wleft:<kind>``/``wright:<kind>`` with kind unbounded, zero,
  small (below the longest sequence) or beyond (at least the longest sequence), ``causal+window``.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping

from mlaverify.verify.case_rules import (DECODE_OPS, DIST_MODES, DTYPES, HEAD_DIMS, INVALID_MODES, MODELS,
                                        NAN_FILL_MODES,
                                        OPS, SCALE_MODES, SEQLEN_MODES, SINK_MODES, SPARSE_OPS,
                                        TOPK_LENGTH_MODES, VALUE_MODES, validate)

__all__ = ["Case", "DECODE_OPS", "DIST_MODES", "DTYPES", "HEAD_DIMS", "INVALID_MODES", "MODELS", "NAN_FILL_MODES",
           "OPS",
           "SCALE_MODES", "SEQLEN_MODES", "SINK_MODES", "SPARSE_OPS", "TOPK_LENGTH_MODES", "VALUE_MODES"]


@dataclass(frozen=True)
class Case:
    """One verification case. Defaults are the plain choice for each knob."""

    op: str                       # one of OPS
    model: str                    # one of MODELS[op]
    seed: int = 0                 # every tensor is derived from this seed alone
    b: int = 1                    # batch / number of sequences (1 for sparse_prefill)
    s_q: int = 1                  # query tokens (see module docstring per op)
    h_q: int = 64                 # query heads; FlashMLA supports 64 and 128 for sparse ops
    h_kv: int = 1                 # kv heads: 1 for sparse ops (MQA); GQA for dense ops
    s_kv: int = 64                # key tokens (see module docstring per op)
    topk: int = 0                 # main index list length (sparse ops)
    page_block_size: int = 64     # decode ops; FlashMLA dense decode needs 64
    extra_s_kv: int = 0           # tokens behind the extra cache (0: no extra cache)
    extra_topk: int = 0           # extra index list length (0: no extra cache)
    extra_page_block_size: int = 0
    topk_length: str = "none"
    extra_topk_length: str = "none"
    sink: str = "none"
    invalid: str = "none"
    nan_fill: str = "none"
    softmax_scale: float | None = None   # None: the API default d_qk ** -0.5
    noncontiguous: bool = False   # q, caches and indices as strided views of larger buffers
    scales: str = "ue8m0"
    values: str = "normal"
    dtype: str = "bf16"           # dense decode and mha: bf16 or fp16
    causal: bool = False          # dense decode and mha
    seqlens: str = "full"         # dense decode and mha
    backward: bool = False        # mha: also check dq, dk, dv
    window_left: int = -1         # mha: sliding window, keys t >= diag - left (-1: unbounded)
    window_right: int = -1        # mha: keys t <= diag + right (-1: unbounded; causal: -1 or 0)
    dist: str = "flashmla"        # value distribution of keys and queries (DIST_MODES): FlashMLA's flat data
    q_transposed: bool = False    # decode/sparse prefill: q a transposed view (head stride != d_qk), issue 11
    duplicates: bool = False      # sparse ops: some positions repeated inside one index list, issue 11

    def __post_init__(self) -> None:
        validate(self)

    # ---- derived ---------------------------------------------------------------------
    @property
    def d_qk(self) -> int:
        return HEAD_DIMS[(self.op, self.model)][0]

    @property
    def d_v(self) -> int:
        return HEAD_DIMS[(self.op, self.model)][1]

    @property
    def has_extra(self) -> bool:
        return self.extra_topk > 0

    @property
    def window_size(self) -> tuple[int, int]:
        return (self.window_left, self.window_right)

    @property
    def has_window(self) -> bool:
        return self.window_size != (-1, -1)

    @property
    def id(self) -> str:
        return f"{self.op}/{self.model}/" + "-".join(_tokens(self))

    def features(self) -> frozenset[str]:
        """Feature labels of this case (used for coverage statistics and report matrices)."""
        f = {f"h{self.h_q}"}
        if self.op in DECODE_OPS:
            f.add(f"sq{self.s_q}")
        if self.topk:
            f.add(f"topk{self.topk}")
            if self.topk > self.s_kv:
                f.add("topk>seq")
        if self.op in DECODE_OPS:
            f.add(f"pb{self.page_block_size}")
        if self.has_extra:
            f.add("extra")
            f.add(f"xpb{self.extra_page_block_size}")
            if self.extra_page_block_size != self.page_block_size:
                f.add("extra_pb_differs")
            f.add(f"xlen:{self.extra_topk_length}")
        if self.op in SPARSE_OPS:
            f.add(f"len:{self.topk_length}")
            f.add(f"sink:{self.sink}")
            f.add(f"invalid:{self.invalid}")
        f.add(f"nan:{self.nan_fill}")
        f.add(f"dist:{self.dist}")
        f.add("scale:default" if self.softmax_scale is None else "scale:explicit")
        if self.noncontiguous:
            f.add("noncontiguous")
        if self.op == "sparse_decode":
            f.add(f"scales:{self.scales}")
            f.add(f"values:{self.values}")
        if self.op in ("dense_decode", "mha_prefill"):
            f.add(f"dtype:{self.dtype}")
            f.add(f"seqlens:{self.seqlens}")
            if self.h_kv > 1:
                f.add("h_kv>1")
            if self.h_q != self.h_kv:
                f.add("gqa")  # grouped query heads (MQA included): h_q > h_kv
            if self.causal:
                f.add("causal")
                if self.s_q > 1:
                    f.add("causal_sq>1")
        if self.backward:
            f.add("backward")
        if self.q_transposed:
            f.add("q_head_stride")
        if self.duplicates:
            f.add("duplicates")
        if self.has_window:
            longest = max(self.s_q, self.s_kv)
            f.add("window")
            f.add(f"wleft:{_window_kind(self.window_left, longest)}")
            f.add(f"wright:{_window_kind(self.window_right, longest)}")
            if self.causal:
                f.add("causal+window")
        return frozenset(f)

    # ---- serialization ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field (plus the id, ignored by from_dict)."""
        d = dataclasses.asdict(self)
        d["id"] = self.id
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Case":
        if not isinstance(data, Mapping):
            raise TypeError(f"case: expected a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"id"})
        if unknown:
            raise ValueError(f"case: unknown fields {unknown}; expected a subset of {sorted(names)}")
        kwargs = {k: v for k, v in data.items() if k in names}
        if kwargs.get("softmax_scale") is not None:
            kwargs["softmax_scale"] = float(kwargs["softmax_scale"])
        return cls(**kwargs)

    @classmethod
    def from_id(cls, case_id: str) -> "Case":
        """Parse an id made by `Case.id` back into the case (ids are injective)."""
        parts = case_id.split("/")
        if len(parts) != 3:
            raise ValueError(f"case id: expected 'op/model/tokens', got {case_id!r}")
        op, model, rest = parts
        kwargs: dict[str, Any] = {"op": op, "model": model}
        for token in rest.split("-"):
            _parse_token(token, kwargs, case_id)
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "Case":
        return dataclasses.replace(self, **changes)


def _window_kind(bound: int, longest: int) -> str:
    if bound < 0:
        return "unbounded"
    if bound == 0:
        return "zero"
    return "small" if bound < longest else "beyond"


# ---- id encoding ----------------------------------------------------------------------
_LEN_TOKEN = {"zero": "0", "partial": "part", "full": "full", "mixed": "mix"}
_SINK_TOKEN = {"finite": "sink", "neg_inf": "sinkninf", "pos_inf": "sinkpinf", "mixed": "sinkmix"}
_NAN_TOKEN = {"unused": "nanu", "all": "nan"}
_SEQ_TOKEN = {"varlen": "seqvar", "zero": "seqzero", "zero_q": "seqzq", "zero_k": "seqzk"}


def _plus(a: int, b: int, has_extra: bool) -> str:
    return f"{a}+{b}" if has_extra else f"{a}"


def _tokens(c: Case) -> list[str]:
    t = [f"b{c.b}", f"h{c.h_q}"]
    if c.h_kv != 1:
        t.append(f"kv{c.h_kv}")
    t += [f"sq{c.s_q}", "sk" + _plus(c.s_kv, c.extra_s_kv, c.has_extra)]
    if c.topk:
        t.append("topk" + _plus(c.topk, c.extra_topk, c.has_extra))
    if c.op in DECODE_OPS:
        t.append("pb" + _plus(c.page_block_size, c.extra_page_block_size, c.has_extra))
    if c.topk_length != "none":
        t.append("len" + _LEN_TOKEN[c.topk_length])
    if c.extra_topk_length != "none":
        t.append("xlen" + _LEN_TOKEN[c.extra_topk_length])
    if c.sink != "none":
        t.append(_SINK_TOKEN[c.sink])
    if c.invalid != "none":
        t.append("inv" + c.invalid)
    if c.nan_fill != "none":
        t.append(_NAN_TOKEN[c.nan_fill])
    if c.softmax_scale is not None:
        t.append("scale" + repr(c.softmax_scale).replace("-", "m"))   # 1e-05 -> 1em05
    if c.noncontiguous:
        t.append("nc")
    if c.scales != "ue8m0":
        t.append("f32scales")
    if c.values != "normal":
        t.append("val" + c.values.replace("_", ""))
    if c.dtype != "bf16":
        t.append(c.dtype)
    if c.causal:
        t.append("causal")
    if c.seqlens != "full":
        t.append(_SEQ_TOKEN[c.seqlens])
    if c.backward:
        t.append("bwd")
    if c.dist != "flashmla":
        t.append("dist" + c.dist.replace("_", ""))
    if c.q_transposed:
        t.append("qt")
    if c.duplicates:
        t.append("dup")
    if c.has_window:
        t.append("win" + ".".join("inf" if w < 0 else str(w) for w in c.window_size))
    t.append(f"s{c.seed}")
    return t


def _inverse(table: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in table.items()}


_FLAGS = {"nc": ("noncontiguous", True), "f32scales": ("scales", "float32"), "fp16": ("dtype", "fp16"),
          "causal": ("causal", True), "bwd": ("backward", True), "qt": ("q_transposed", True),
          "dup": ("duplicates", True)}
_ENUM_TOKENS: dict[str, tuple[str, str]] = {}
for _mode, _tok in _SINK_TOKEN.items():
    _ENUM_TOKENS[_tok] = ("sink", _mode)
for _mode, _tok in _NAN_TOKEN.items():
    _ENUM_TOKENS[_tok] = ("nan_fill", _mode)
for _mode, _tok in _SEQ_TOKEN.items():
    _ENUM_TOKENS[_tok] = ("seqlens", _mode)
for _mode, _tok in _LEN_TOKEN.items():
    _ENUM_TOKENS["len" + _tok] = ("topk_length", _mode)
    _ENUM_TOKENS["xlen" + _tok] = ("extra_topk_length", _mode)
for _mode in INVALID_MODES[1:]:
    _ENUM_TOKENS["inv" + _mode] = ("invalid", _mode)
for _mode in VALUE_MODES[1:]:
    _ENUM_TOKENS["val" + _mode.replace("_", "")] = ("values", _mode)
for _mode in DIST_MODES[1:]:
    _ENUM_TOKENS["dist" + _mode.replace("_", "")] = ("dist", _mode)

_NUM_TOKENS = [  # (regex, fields)
    (re.compile(r"b(\d+)"), ("b",)),
    (re.compile(r"h(\d+)"), ("h_q",)),
    (re.compile(r"kv(\d+)"), ("h_kv",)),
    (re.compile(r"sq(\d+)"), ("s_q",)),
    (re.compile(r"sk(\d+)(?:\+(\d+))?"), ("s_kv", "extra_s_kv")),
    (re.compile(r"topk(\d+)(?:\+(\d+))?"), ("topk", "extra_topk")),
    (re.compile(r"pb(\d+)(?:\+(\d+))?"), ("page_block_size", "extra_page_block_size")),
    (re.compile(r"s(\d+)"), ("seed",)),
    (re.compile(r"win(\d+|inf)\.(\d+|inf)"), ("window_left", "window_right")),
]


def _parse_token(token: str, kwargs: dict[str, Any], case_id: str) -> None:
    if token in _FLAGS:
        name, value = _FLAGS[token]
        kwargs[name] = value
        return
    if token in _ENUM_TOKENS:
        name, value = _ENUM_TOKENS[token]
        kwargs[name] = value
        return
    if token.startswith("scale"):
        try:
            kwargs["softmax_scale"] = float(token[len("scale"):].replace("m", "-"))
        except ValueError:
            raise ValueError(f"case id: bad scale token {token!r} in {case_id!r}") from None
        return
    for regex, fields in _NUM_TOKENS:
        m = regex.fullmatch(token)
        if m:
            for name, value in zip(fields, m.groups()):
                if value is not None:
                    kwargs[name] = -1 if value == "inf" else int(value)
            return
    raise ValueError(f"case id: unknown token {token!r} in {case_id!r}")
