"""`mlaverify accuracy`'s computation: formats, the two reference paths, metrics, sweeps, --impl."""
from __future__ import annotations

import dataclasses
import textwrap

import pytest
import torch

from mlaverify.reference import ModelType
from mlaverify.verify.accuracy import ACCURACY_OPS, AccuracySettings, OpShape, evaluate, output_metrics, run_accuracy
from mlaverify.verify.accuracy_formats import FORMATS, parse_formats
from mlaverify.verify.accuracy_inputs import draw_inputs, row_generator
from mlaverify.verify.distributions import PRODUCTION_DISTRIBUTIONS, KeyParams
from mlaverify.verify.implementations import load_implementation

SETTINGS = AccuracySettings()
MODELS = {"v32": ModelType.V32, "model1": ModelType.MODEL1}


def _inputs(dist: str = "outlier_channels", model: ModelType = ModelType.V32, seed=0, s_kv=512, topk=64, rows=4,
            h_q=4, key_params: KeyParams | None = None):
    d = PRODUCTION_DISTRIBUTIONS[dist]
    if key_params is not None:
        d = dataclasses.replace(d, key_params=key_params)
    return draw_inputs(row_generator(seed, dist), d, model, s_kv, topk, rows, h_q, SETTINGS.block)


def _by_name(results):
    return {fmt.name: (path, metrics, impl, err) for fmt, path, metrics, impl, err in results}


@pytest.mark.parametrize("op", ACCURACY_OPS)
@pytest.mark.parametrize("dist", sorted(PRODUCTION_DISTRIBUTIONS))
def test_bf16_has_zero_quantization_error(op, dist):
    metrics = _by_name(evaluate(op, _inputs(dist), parse_formats("bf16,model1"), SETTINGS))
    m = metrics["bf16"][1]
    assert m["rel_fro"] == 0 and m["max_abs"] == 0 and m["lse_max_err"] == 0
    assert m["logit_nope_rms"] == 0 and m["logit_rope_rms"] == 0
    assert m["topk_mass_mean"] == pytest.approx(1.0, abs=1e-12) and abs(m["cosine"] - 1.0) < 1e-12
    assert metrics["model1"][1]["rel_fro"] > 1e-3  # the same metrics do see an FP8 format's error


@pytest.mark.parametrize("op", ACCURACY_OPS)
def test_tile_128_with_float32_scales_reproduces_v32_error_exactly_on_nope(op):
    """The what-if path (round_trip_tiles + the prefill reference) rebuilds V32's exact-scale format:
    the same dequantized NoPE bits, hence the same errors (up to float64 summation order in decode)."""
    x = _inputs("outlier_channels")
    what_if, real = parse_formats("t128-float32")[0], FORMATS["v32-exact"]
    assert torch.equal(what_if.dequantized(x.keys, x.model, 64).view(torch.int16),
                       real.dequantized(x.keys, x.model, 64).view(torch.int16))
    res = _by_name(evaluate(op, x, [real, what_if], SETTINGS))
    assert res["v32-exact"][0].startswith("sparse_decode_reference" if op == "sparse_decode" else "sparse_prefill")
    assert res["t128-float32"][0].startswith("sparse_prefill_reference")
    for key, value in res["v32-exact"][1].items():
        assert res["t128-float32"][1][key] == pytest.approx(value, rel=1e-9, abs=1e-15), key


def test_tile_64_with_ue8m0_reproduces_model1_and_the_tile_hardly_matters_with_power_of_two_scales():
    x = _inputs("outlier_channels", ModelType.MODEL1)
    res = _by_name(evaluate("sparse_decode", x, parse_formats("model1,t64-ue8m0"), SETTINGS))
    assert res["model1"][1]["rel_fro"] == pytest.approx(res["t64-ue8m0"][1]["rel_fro"], rel=1e-9)
    # power-of-two scales only shift exponents: e4m3 rounds with the same relative steps at any tile size,
    # except for elements that fall below its normal range (2^-6 x the scale) next to a large outlier
    v = _inputs("outlier_channels", ModelType.V32)
    t64, t128 = (f.dequantized(v.keys, v.model, 64)[:, :512].float() for f in parse_formats("model1,v32-ue8m0"))
    differ = t64 != t128
    assert 0 < float(differ.float().mean()) < 0.01
    scale = v.keys[:, :512].float().abs().unflatten(-1, (-1, 128)).amax(-1) / 448  # per-128-tile scale (before 2^k)
    small = v.keys[:, :512].float().abs() < 2 * 2**-6 * scale.repeat_interleave(128, dim=-1)
    assert bool(small[differ].all())  # every difference is in fp8's subnormal range of the 128-tile
    res = _by_name(evaluate("sparse_prefill", v, parse_formats("v32,model1,v32-exact,model1-f32"), SETTINGS))
    assert res["v32"][1]["rel_fro"] == pytest.approx(res["model1"][1]["rel_fro"], rel=1e-4)
    assert res["v32-exact"][1]["rel_fro"] != pytest.approx(res["model1-f32"][1]["rel_fro"], rel=1e-3)


def test_ue8m0_error_grows_with_outlier_magnitude_and_float32_scales_do_not():
    """Mean over three seeds of 8 rows x 8 heads (one draw alone is noisy: the peaked targets vary); one
    seed for every magnitude (common random numbers), so only the outlier channels' size changes."""
    errors = {1.0: [], 10.0: [], 100.0: []}
    for seed in range(3):
        for ratio in errors:
            x = _inputs("outlier_channels", seed=seed, rows=8, h_q=8, topk=128,
                        key_params=KeyParams(outlier_ratio=ratio))
            res = _by_name(evaluate("sparse_decode", x, parse_formats("model1,model1-f32"), SETTINGS))
            errors[ratio].append((res["model1"][1]["rel_fro"], res["model1-f32"][1]["rel_fro"]))
    ue8m0 = [sum(e[0] for e in errors[r]) / 3 for r in errors]
    f32 = [sum(e[1] for e in errors[r]) / 3 for r in errors]
    assert ue8m0[0] < ue8m0[1] < ue8m0[2] and ue8m0[2] > 2.5 * ue8m0[0], errors
    # a float32 scale makes each tile's amax (here the outlier) exact: the error does not grow
    assert f32[2] < f32[0] and f32[2] < ue8m0[2] / 3, errors


def test_decode_on_the_byte_cache_agrees_with_the_prefill_path():
    x = _inputs("peaked", ModelType.MODEL1)
    fmt = FORMATS["model1"]
    dec = _by_name(evaluate("sparse_decode", x, [fmt], SETTINGS))["model1"]
    pre = _by_name(evaluate("sparse_prefill", x, [fmt], SETTINGS))["model1"]
    assert dec[0] != pre[0]
    for key, value in dec[1].items():
        assert pre[1][key] == pytest.approx(value, rel=1e-9, abs=1e-15), key


def test_output_metrics_measure_what_they_say():
    ref = torch.randn(3, 2, 512, dtype=torch.float64)
    lse = torch.randn(3, 2, dtype=torch.float64)
    m = output_metrics(2 * ref, lse + 0.5, ref, lse, d_nope=448)
    assert m["rel_fro"] == pytest.approx(1.0) and m["cosine"] == pytest.approx(1.0)
    assert m["lse_max_err"] == pytest.approx(0.5) and m["out_rope_rel"] == pytest.approx(1.0)
    assert output_metrics(ref, lse, ref, lse, d_nope=512)["out_rope_rel"] is None  # V32: V has no RoPE dims
    flipped = output_metrics(-ref, lse, ref, lse, 512)
    assert flipped["cosine"] == pytest.approx(-1.0) and flipped["rel_fro"] == pytest.approx(2.0)


def test_rope_part_contributes_no_logit_error_and_model1_output_rope_dims_still_move():
    res = _by_name(evaluate("sparse_prefill", _inputs("rope_scaled", ModelType.MODEL1), parse_formats("model1"),
                            SETTINGS))
    m = res["model1"][1]
    assert m["logit_rope_rms"] == 0 and m["logit_nope_rms"] > 0  # RoPE is stored in bf16 by every format
    assert m["out_rope_rel"] > 0  # through the softmax weights, which the NoPE error moves


def test_formats_that_cannot_hold_the_keys_are_left_out():
    res = _by_name(evaluate("sparse_prefill", _inputs("flashmla", ModelType.MODEL1), parse_formats(None), SETTINGS))
    assert set(res) == {"model1", "model1-f32", "bf16"}  # tile 128 does not divide MODEL1's 448 NoPE dims


@pytest.mark.parametrize("text, match", [
    ("v64", "expected names from v32"), ("t0-ue8m0", "expected names"), ("v32,v32", "named twice"),
    ("t32-e5m2", "expected names"), (",", "at least one"),
])
def test_parse_formats_bad_names(text, match):
    with pytest.raises(ValueError, match=match):
        parse_formats(text)


def test_parse_formats_generic_and_defaults():
    assert [f.name for f in parse_formats(None)] == ["v32", "v32-exact", "model1", "model1-f32", "v32-ue8m0", "bf16"]
    f = parse_formats("t32-ue8m0")[0]
    assert (f.tile, f.scale_format, f.real) == (32, "ue8m0", None)


def test_run_accuracy_rows_and_sweeps():
    small = OpShape(h_q=2, s_kv=256, topk=32, rows=2)
    settings = AccuracySettings(decode=small, prefill=small, outlier_sweep=(1.0, 10.0), topk_sweep=(16, 512),
                                seq_sweep=(128, 512))
    rows = run_accuracy(settings, parse_formats("model1,bf16"), ["flashmla", "peaked"], ["model1"], list(ACCURACY_OPS))
    main = [r for r in rows if r.sweep is None]
    assert len(main) == 2 * 2 * 2  # ops x distributions x formats
    sweeps = {(r.sweep, r.value) for r in rows if r.sweep}
    # a top-k above s_kv (512 > 256) cannot be drawn and is left out; every s_kv >= topk 32 is kept
    assert sweeps == {("outlier_ratio", 1.0), ("outlier_ratio", 10.0), ("topk", 16), ("s_kv", 128), ("s_kv", 512)}
    assert all(r.op == "sparse_decode" for r in rows if r.sweep)
    again = run_accuracy(settings, parse_formats("model1"), ["peaked"], ["model1"], ["sparse_prefill"])
    first = next(r for r in main if (r.op, r.distribution, r.format) == ("sparse_prefill", "peaked", "model1"))
    assert again[0].metrics == first.metrics  # every row re-draws alone from its names and the seed


def test_impl_end_to_end_error_is_kernel_plus_quantization():
    impl = load_implementation("mlaverify.reference")  # the reference API: bf16 output rounding only
    x = _inputs("peaked", ModelType.V32)
    res = _by_name(evaluate("sparse_decode", x, parse_formats("v32,model1-f32"), SETTINGS, impl=impl))
    quant, e2e = res["v32"][1]["rel_fro"], res["v32"][2]["rel_fro"]
    assert e2e != quant and e2e == pytest.approx(quant, rel=0.05)  # bf16 rounding of out: < 0.4% relative
    assert res["model1-f32"][2] is None and res["model1-f32"][3] is None  # no byte layout to call decode with
    pre = _by_name(evaluate("sparse_prefill", x, parse_formats("bf16"), SETTINGS, impl=impl))["bf16"]
    assert 0 < pre[2]["rel_fro"] < 2**-8  # on bf16 keys only the output rounding remains


def test_impl_failures_are_recorded_not_taken_for_results(tmp_path):
    path = tmp_path / "broken_impl.py"
    path.write_text(textwrap.dedent("""
        MLAVERIFY_CAPABILITIES = {"base": "full", "ops": ["sparse_prefill"]}
        def flash_mla_sparse_fwd(*args, **kwargs):
            raise RuntimeError("kernel exploded")
    """))
    impl = load_implementation(str(path))
    res = _by_name(evaluate("sparse_prefill", _inputs("flashmla"), parse_formats("bf16"), SETTINGS, impl=impl))
    assert res["bf16"][2] is None and res["bf16"][3] == "RuntimeError: kernel exploded"
