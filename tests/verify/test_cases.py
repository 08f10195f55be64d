"""Case records (ids, JSON round trips, validation) and what materialize() builds from them."""
from __future__ import annotations

import json

import pytest
import torch

from mlaverify.reference import ModelType, dequantize_kv_cache
from mlaverify.verify.cases import Case
from mlaverify.verify.distributions import BASE_VALUES, STRESS_BOUND, flashmla_softmax_scale
from mlaverify.verify.materialize import INT32_MAX, INT32_MIN, materialize, to_device
from mlaverify.verify.strategies import corner_cases

EXAMPLE = Case(op="sparse_decode", model="model1", b=2, s_q=2, h_q=64, s_kv=300, topk=128, page_block_size=256,
               extra_s_kv=200, extra_topk=512, extra_page_block_size=2, topk_length="partial",
               extra_topk_length="full", sink="finite", seed=1234)
ALL_CORNERS = [c for op, models in (("sparse_decode", ("v32", "model1")), ("sparse_prefill", ("v32", "model1")),
                                    ("dense_decode", ("v32", "model1")), ("mha_prefill", ("d192", "d128")))
               for m in models for c in corner_cases(op, m)]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def test_id_is_readable_and_stable():
    assert EXAMPLE.id == ("sparse_decode/model1/b2-h64-sq2-sk300+200-topk128+512-pb256+2-lenpart-xlenfull-sink"
                          "-s1234")


@pytest.mark.parametrize("case", ALL_CORNERS, ids=lambda c: c.id)
def test_round_trips(case):
    assert Case.from_dict(json.loads(json.dumps(case.to_dict()))) == case
    assert Case.from_id(case.id) == case


def test_id_round_trip_of_small_scale():
    case = Case(op="dense_decode", model="v32", softmax_scale=1.5e-05, seed=7)
    assert "scale1.5em05" in case.id.split("/")[2].split("-")  # no '-' inside a token
    assert Case.from_id(case.id) == case


@pytest.mark.parametrize("kwargs, match", [
    (dict(op="nope", model="v32"), "case.op"),
    (dict(op="sparse_decode", model="d192", topk=1), "case.model"),
    (dict(op="sparse_decode", model="v32", topk=0), "case.topk"),
    (dict(op="sparse_decode", model="model1", topk=4, scales="float32"), "case.scales"),
    (dict(op="sparse_decode", model="v32", topk=4, extra_topk=4), "extra_topk"),
    (dict(op="sparse_prefill", model="v32", topk=4, b=2), "case.b"),
    (dict(op="dense_decode", model="v32", h_q=3, h_kv=2), "case.h_kv"),
    (dict(op="dense_decode", model="v32", sink="finite"), "sparse ops"),
    (dict(op="sparse_decode", model="v32", topk=4, softmax_scale=-1.0), "case.softmax_scale"),
])
def test_validation_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Case(**kwargs)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown fields"):
        Case.from_dict({**EXAMPLE.to_dict(), "bogus": 1})


@pytest.mark.parametrize("case", ALL_CORNERS, ids=lambda c: c.id)
def test_materialize_is_deterministic(case):
    a, b = materialize(case), materialize(case)
    assert a.tensors.keys() == b.tensors.keys()
    for name, t in a.tensors.items():
        if t is None:
            assert b.tensors[name] is None
            continue
        assert t.shape == b.tensors[name].shape and t.stride() == b.tensors[name].stride(), name
        assert torch.equal(_bits(t), _bits(b.tensors[name])), name
    other = materialize(case.replace(seed=case.seed + 1000))
    assert not torch.equal(_bits(other.tensors["q"]), _bits(a.tensors["q"]))


def test_to_device_keeps_view_geometry():
    buf = torch.arange(60, dtype=torch.float32).view(3, 4, 5)
    view = buf[1:, :, ::2]
    moved = to_device(view, torch.device("meta"))
    assert moved.device.type == "meta"
    assert (moved.shape, moved.stride(), moved.storage_offset()) == (view.shape, view.stride(), view.storage_offset())


def _decode_case(**kw) -> Case:
    base = dict(op="sparse_decode", model="v32", b=3, s_q=2, h_q=8, s_kv=150, topk=64, page_block_size=61, seed=5)
    return Case(**{**base, **kw})


def test_topk_length_modes():
    def lengths(mode):
        return materialize(_decode_case(topk_length=mode, b=6)).tensors["topk_length"]
    assert lengths("none") is None
    assert lengths("zero").tolist() == [0] * 6
    assert lengths("full").tolist() == [64] * 6
    assert all(0 < v < 64 for v in lengths("partial").tolist())
    mixed = lengths("mixed").tolist()
    assert 0 in mixed and 64 in mixed and any(0 < v < 64 for v in mixed)
    assert lengths("zero").dtype == torch.int32


def test_sink_modes():
    sink = materialize(_decode_case(sink="mixed")).tensors["attn_sink"]
    assert sink.dtype == torch.float32 and sink.shape == (8,)
    assert bool(sink.isposinf().any()) and bool(sink.isneginf().any()) and bool(sink.isfinite().any())
    assert bool(materialize(_decode_case(sink="pos_inf")).tensors["attn_sink"].isposinf().all())
    assert materialize(_decode_case()).tensors["attn_sink"] is None


def test_invalid_modes_in_decode():
    rows = materialize(_decode_case(invalid="rows")).tensors["indices"]
    assert bool((rows == -1).all(-1).any()) and not bool((rows == -1).all())
    batch = materialize(_decode_case(invalid="batch", extra_s_kv=40, extra_topk=16,
                                     extra_page_block_size=2)).tensors
    dead = (batch["indices"] == -1).flatten(1).all(-1)
    assert int(dead.sum()) == 1
    assert bool((batch["extra_indices"][dead] == -1).all())
    assert bool((materialize(_decode_case(invalid="all")).tensors["indices"] == -1).all())
    short = materialize(_decode_case(s_kv=10)).tensors["indices"]  # topk 64 > 10 tokens
    assert bool(((short != -1).sum(-1) == 10).all())


def test_nan_bytes_in_every_slot_no_considered_entry_references():
    case = _decode_case(topk_length="partial", nan_fill="all", s_kv=150)
    t = materialize(case).tensors
    keys = dequantize_kv_cache(t["k_cache"]).view(-1, 576)  # [positions, d_qk]
    idx, length = t["indices"].long(), t["topk_length"].long()
    considered = torch.arange(64).view(1, 1, -1) < length.view(-1, 1, 1)
    live = torch.zeros(keys.shape[0], dtype=torch.bool)
    live[idx[considered & (idx >= 0)]] = True
    assert not bool(keys[live].isnan().any())
    assert bool(keys[~live].isnan().any(-1).all())
    past = idx[~considered & (idx >= 0)]
    past = past[~live[past]]  # slots referenced only past topk_length
    assert past.numel() > 0 and bool(keys[past].isnan().any(-1).all())
    unused = materialize(case.replace(nan_fill="unused")).tensors
    keys_u = dequantize_kv_cache(unused["k_cache"]).view(-1, 576)
    assert not bool(keys_u[past].isnan().any())


def test_scale_kinds_and_value_distributions():
    def scales(case):
        cache = materialize(case).tensors["k_cache"].view(torch.uint8)
        return cache[:, :, 0, 512:528].contiguous().view(torch.float32).flatten()
    pow2 = scales(_decode_case())
    assert bool((torch.log2(pow2) == torch.log2(pow2).round()).all())
    arbitrary = scales(_decode_case(scales="float32"))
    assert float((torch.log2(arbitrary) != torch.log2(arbitrary).round()).float().mean()) > 0.9
    zero = scales(_decode_case(values="zero_tiles"))
    assert bool((zero == 2.0**-13).any())  # an all-zero tile: scale_inv clamped at 1e-4, rounded up
    codes = materialize(_decode_case(values="near_max", scales="float32")).tensors["k_cache"][:, :, 0, :512]
    assert float((codes.float().abs() >= 400).float().mean()) > 0.5
    spikes = materialize(_decode_case(values="outliers")).tensors["k_cache"][:, :, 0, :512].float().abs()
    normal = materialize(_decode_case()).tensors["k_cache"][:, :, 0, :512].float().abs()
    assert float(spikes.median()) < float(normal.median()) / 4  # outliers push the other codes down


def test_noncontiguous_views():
    t = materialize(_decode_case(noncontiguous=True, model="model1", s_kv=100)).tensors
    assert not t["q"].is_contiguous() and t["q"].stride(-1) == 1 and bool(t["q"].isfinite().all())
    assert t["k_cache"].stride(0) == ModelType.MODEL1.block_stride_bytes(61) + 576
    assert not t["indices"].is_contiguous() and t["indices"].stride(-1) == 1
    p = materialize(Case(op="sparse_prefill", model="v32", s_q=3, s_kv=20, topk=8, noncontiguous=True)).tensors
    assert not p["kv"].is_contiguous() and not p["q"].is_contiguous() and not p["indices"].is_contiguous()


def test_prefill_invalid_kinds():
    t = materialize(Case(op="sparse_prefill", model="model1", s_q=6, h_q=4, s_kv=100, topk=128, invalid="some",
                         seed=2)).tensors
    values = t["indices"].flatten().long()
    invalid = values[(values < 0) | (values >= 100)]
    assert {-1, INT32_MIN, 100, INT32_MAX} <= set(invalid.tolist())
    assert bool(((invalid < -1) & (invalid > INT32_MIN)).any())
    assert bool(((invalid > 100) & (invalid < INT32_MAX)).any())


def test_prefill_nan_rows():
    case = Case(op="sparse_prefill", model="v32", s_q=4, h_q=4, s_kv=300, topk=64, topk_length="partial",
                nan_fill="all", seed=3)
    t = materialize(case).tensors
    idx, length = t["indices"][:, 0].long(), t["topk_length"].long()
    considered = (torch.arange(64).view(1, -1) < length.view(-1, 1)) & (idx >= 0) & (idx < 300)
    nan_rows = t["kv"][:, 0].isnan().any(-1)
    assert not bool(nan_rows[idx[considered]].any())
    assert int(nan_rows.sum()) == 300 - int(torch.unique(idx[considered]).numel())


def test_dense_decode_inputs():
    case = Case(op="dense_decode", model="model1", b=4, s_q=3, h_q=8, h_kv=2, s_kv=40, page_block_size=16,
                seqlens="zero", dtype="fp16", nan_fill="all", causal=True, seed=1)
    t = materialize(case).tensors
    assert t["q"].dtype == torch.float16 and t["k_cache"].shape[2] == 2
    lens = t["cache_seqlens"]
    assert lens.dtype == torch.int32 and 0 in lens.tolist()
    flat = t["k_cache"].view(-1, 2, 512)
    i = int(lens.argmax())
    blocks = t["block_table"][i].long()
    tokens = torch.arange(int(lens[i]))
    live = flat[blocks[tokens // 16] * 16 + tokens % 16]
    assert not bool(live.isnan().any())
    assert int(flat.isnan().any(-1).any(-1).sum()) == flat.shape[0] - int(lens.sum())


def test_mha_inputs():
    case = Case(op="mha_prefill", model="d192", b=3, s_q=10, s_kv=7, h_q=4, h_kv=2, seqlens="varlen",
                backward=True, seed=4)
    inputs = materialize(case)
    t, s = inputs.tensors, inputs.scalars
    assert t["q"].shape[-1] == 192 and t["v"].shape[-1] == 128
    assert int(t["cu_seqlens_q"][-1]) == t["q"].shape[0] and t["dout"].shape == (t["q"].shape[0], 4, 128)
    assert s["max_seqlen_q"] == int(t["cu_seqlens_q"].diff().max())


# ---- value distributions: FlashMLA's generators, which the tolerance table was calibrated on -------------
def _stats(t: torch.Tensor) -> tuple[float, float]:
    x = t.float()
    x = x[x.isfinite()]
    return float(x.std()), float(x.abs().max())


def test_base_distributions_follow_flashmla_generators():
    t = materialize(_decode_case(s_kv=300)).tensors
    q_std, q_max = _stats(t["q"])
    assert q_max <= 1.0 and 0.6 < q_std < 0.9  # randn clamped to [-1, 1]
    k_std, k_max = _stats(dequantize_kv_cache(t["k_cache"]))
    assert k_max <= 1.0 and 0.08 < k_std < 0.12  # randn * 0.1 clamped to [-1, 1], before quantization
    p = materialize(Case(op="sparse_prefill", model="v32", s_q=4, h_q=8, s_kv=200, topk=64, seed=3)).tensors
    for name in ("q", "kv"):
        std, _ = _stats(p[name])
        assert 0.08 < std < 0.12, name
        assert abs(float(p[name].float().mean())) < 0.06, name  # the per-tensor offset is within +-0.05
    d = materialize(Case(op="dense_decode", model="v32", b=2, h_q=8, s_kv=100, seed=1)).tensors
    for name in ("q", "k_cache"):
        std, top = _stats(d[name])
        assert 0.08 < std < 0.12 and top <= 1.0, name
    m = materialize(Case(op="mha_prefill", model="d192", b=2, s_q=20, s_kv=20, h_q=4, backward=True, seed=1)).tensors
    for name in ("q", "k", "v", "dout"):
        assert 0.08 < _stats(m[name])[0] < 0.12, name


@pytest.mark.parametrize("values", ["outliers", "near_max", "mixed", "zero_tiles"])
def test_stress_values_stay_in_flashmla_clamp_range(values):
    keys = dequantize_kv_cache(materialize(_decode_case(values=values, s_kv=300)).tensors["k_cache"]).float()
    assert float(keys.abs().max()) <= STRESS_BOUND * 1.07  # 1.0 plus the fp8 rounding of the largest codes
    if values == "outliers":  # spikes 30-100x the bulk of their tile
        tiles = keys[..., :512].reshape(-1, 128).abs()
        ratio = tiles.amax(-1) / tiles.median(-1).values.clamp_min(1e-6)
        assert float(ratio.median()) > 20


def test_flashmla_softmax_scales():
    assert flashmla_softmax_scale("sparse_decode", 576) == 576 ** -0.55
    assert flashmla_softmax_scale("dense_decode", 512) == 512 ** -0.55
    assert flashmla_softmax_scale("sparse_prefill", 576) == 0.5
    assert flashmla_softmax_scale("mha_prefill", 192) == 292 ** -0.5
    with pytest.raises(ValueError, match="op"):
        flashmla_softmax_scale("decode", 576)
    assert BASE_VALUES[("sparse_decode", "k")] == (0.1, 1.0, 0.0)


# ---- sliding window (mha_prefill) ------------------------------------------------------------------------
WINDOWED = Case(op="mha_prefill", model="d128", b=2, s_q=9, s_kv=12, h_q=4, h_kv=2, causal=True, window_left=3,
                window_right=0, backward=True, seed=8)


def test_window_id_features_and_round_trip():
    assert WINDOWED.id == "mha_prefill/d128/b2-h4-kv2-sq9-sk12-causal-bwd-win3.0-s8"
    assert {"window", "wleft:small", "wright:zero", "causal+window"} <= WINDOWED.features()
    beyond = WINDOWED.replace(causal=False, window_left=-1, window_right=40)
    assert "wininf.40" in beyond.id and {"wleft:unbounded", "wright:beyond"} <= beyond.features()
    assert "window" not in WINDOWED.replace(window_left=-1, window_right=-1).features()
    for case in (WINDOWED, beyond):
        assert Case.from_id(case.id) == case
        assert Case.from_dict(json.loads(json.dumps(case.to_dict()))) == case
    assert materialize(WINDOWED).scalars["window_size"] == (3, 0)
    assert materialize(WINDOWED.replace(window_left=-1, window_right=-1)).scalars["window_size"] == (-1, -1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(op="dense_decode", model="v32", window_left=4), "sliding window"),
    (dict(op="mha_prefill", model="d128", causal=True, window_right=2), "case.window_right"),
    (dict(op="mha_prefill", model="d128", window_left=-2), "case.window_left"),
])
def test_window_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Case(**kwargs)
