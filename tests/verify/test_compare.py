"""compare_tensor catches every discrepancy kind; tolerance tables and their overrides."""
from __future__ import annotations

import json
import math

import pytest
import torch

from mlaverify.verify.compare import bf16_ulp, bits_equal, compare_tensor
from mlaverify.verify.results import TensorMetrics, Tolerance
from mlaverify.verify.tolerances import DEFAULT_TOLERANCES, load_tolerances, parse_override

TOL = DEFAULT_TOLERANCES["sparse_decode"]["out"]  # 1e-3 abs, 2.01/128 rel, cos 5e-6


def _ref(seed: int = 0, shape=(2, 3, 4, 16)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _check(actual, ref, tol=TOL, **kw) -> TensorMetrics:
    return compare_tensor("out", actual, ref, tol, **kw)


def test_rounded_reference_passes():
    ref = _ref()
    m = _check(ref.to(torch.bfloat16), ref, expected_dtype=torch.bfloat16)
    assert m.passed and m.mismatches == 0 and m.max_ulp <= 0.5 and m.cos_diff < 1e-5
    assert m.message.startswith("out ok")


def test_single_element_error_is_located():
    ref = _ref()
    actual = ref.clone()
    actual[1, 2, 3, 7] += 0.5
    m = _check(actual, ref)
    assert not m.passed and m.mismatches == 1 and m.mismatch_fraction == 1 / ref.numel()
    assert m.worst_index == (1, 2, 3, 7)
    assert m.worst_ref == pytest.approx(float(ref[1, 2, 3, 7]))
    assert m.worst_value == pytest.approx(float(actual[1, 2, 3, 7]))
    assert m.max_abs == pytest.approx(0.5, rel=1e-6)
    assert "1 / 384" in m.message and "[1, 2, 3, 7]" in m.message and "0.001 abs" in m.message


def test_abs_or_rel_tolerance():
    ref = torch.tensor([100.0, 1e-4, 0.0, 2.0])
    ok = ref + torch.tensor([1.0, 9e-4, 9e-4, 0.0])  # rel 1% < 1.57%; abs < 1e-3; abs < 1e-3
    assert _check(ok, ref, Tolerance(1e-3, 2.01 / 128)).passed
    bad = ref + torch.tensor([2.0, 0.0, 0.0, 0.0])  # rel 2% and abs 2
    assert _check(bad, ref, Tolerance(1e-3, 2.01 / 128)).mismatches == 1


@pytest.mark.parametrize("actual_value, ref_value", [
    (float("nan"), 0.5), (0.5, float("nan")), (float("inf"), float("-inf")), (float("inf"), 3.0),
    (0.0, float("inf")),
])
def test_nonfinite_positions_must_match(actual_value, ref_value):
    ref = torch.zeros(8)
    actual = torch.zeros(8)
    ref[3], actual[3] = ref_value, actual_value
    m = _check(actual, ref, Tolerance(1.0, 1.0))
    assert not m.passed and m.nonfinite_mismatches == 1 and m.worst_index == (3,)
    assert "NaN/inf" in m.message


def test_matching_nonfinite_values_pass():
    ref = torch.tensor([float("nan"), float("inf"), float("-inf"), 1.0])
    assert _check(ref.clone(), ref, Tolerance(1e-6, 1e-6)).passed


def test_cosine_difference_catches_small_systematic_error():
    ref = _ref(shape=(4096,))
    actual = ref + 0.009 * ref.sign() * (ref.abs() > 0.5)  # inside a loose element tolerance everywhere
    m = _check(actual, ref, Tolerance(0.01, 0.0, cos=1e-6))
    assert m.mismatches == 0 and not m.passed and m.cos_diff > 1e-6 and "cosine" in m.message
    assert _check(actual, ref, Tolerance(0.01, 0.0, cos=None)).passed


@pytest.mark.parametrize("actual, match", [
    (torch.zeros(2, 3, 4), "expected shape"),
    (torch.zeros(2, 3, 4, 16, dtype=torch.float16), "expected dtype"),
    (None, "expected a torch.Tensor"),
    ((torch.zeros(2, 3, 4, 16),), "expected a torch.Tensor"),
])
def test_contract_violations_fail_first(actual, match):
    m = _check(actual, _ref(), expected_dtype=torch.float32)
    assert not m.passed and match in m.message


def test_ulps_of_bfloat16():
    ref = torch.tensor([1.0, 1.0, 3.0, 0.0], dtype=torch.float64)
    assert bf16_ulp(ref).tolist() == [2.0**-7, 2.0**-7, 2.0**-6, 2.0**-133]
    actual = torch.tensor([1.0, 1.0 + 2 * 2.0**-7, 3.0, 0.0])
    m = _check(actual, ref.float(), Tolerance(1.0, 1.0))
    assert m.max_ulp == pytest.approx(2.0) and m.worst_index == (1,)


def test_metrics_json_round_trip():
    ref = torch.tensor([0.0, 1.0])
    m = _check(torch.tensor([1.0, 1.0]), ref)  # the zero reference element has no relative error
    assert m.max_rel == 0.0 and m.floor_excluded == 1 and m.elem_ratio == pytest.approx(1000.0)
    text = json.dumps(m.to_dict(), allow_nan=False)
    assert TensorMetrics.from_dict(json.loads(text)) == m
    nan_case = _check(torch.tensor([float("nan"), 1.0]), ref)
    assert math.isinf(nan_case.tol_ratio)
    back = TensorMetrics.from_dict(json.loads(json.dumps(nan_case.to_dict(), allow_nan=False)))
    assert math.isnan(back.worst_value) and math.isinf(back.tol_ratio) and back.mismatches == nan_case.mismatches


def test_ulp_and_rel_skip_near_zero_references():
    """A rounding residue in the reference (1e-38 among values ~1) gets no ulp/rel error: it is judged by atol."""
    ref = _ref().reshape(-1)
    ref[5] = 1e-38
    actual = ref.to(torch.bfloat16).float()
    actual[5] = 3e-4  # within atol 1e-3, but 3e34 relative
    m = _check(actual, ref)
    assert m.passed and m.floor_excluded >= 1  # element 5, and any randn value under the floor
    assert m.max_ulp <= 0.5 and m.max_rel < 2.0**-8
    assert m.rel_floor == pytest.approx(2.0**-10 * float(ref.double().pow(2).mean().sqrt()))
    actual[5] = 2e-3  # past atol: the relative bound does not rescue a near-zero reference
    assert not _check(actual, ref).passed


def test_tolerance_ratio_measures_the_distance_to_failing():
    ref = torch.full((1000,), 0.5)
    actual = ref.clone()
    actual[3] += 0.5 * 2.01 / 128 * 0.5  # half of the relative allowance at 0.5
    m = _check(actual, ref, Tolerance(1e-3, 2.01 / 128))
    assert m.passed and m.elem_ratio == pytest.approx(0.5, rel=1e-4) and m.tol_ratio == m.elem_ratio  # float32 input
    assert m.worst_index == (3,) and m.cos_ratio is None
    m = _check(actual, ref, Tolerance(1e-3, 2.01 / 128, cos=1e-12))
    assert not m.passed and m.cos_ratio > 1.0 and m.tol_ratio == m.cos_ratio
    actual[7] = 0.6
    m = _check(actual, ref, Tolerance(1e-3, 2.01 / 128))
    assert not m.passed and m.elem_ratio > 1.0 and m.worst_index == (7,)


def test_bits_equal():
    a = torch.tensor([1.0, float("nan")], dtype=torch.bfloat16)
    assert bits_equal(a, a.clone())
    assert not bits_equal(a, a.float())
    b = a.clone()
    b.view(torch.int16)[1] ^= 1  # another NaN payload
    assert not bits_equal(a, b)
    assert not bits_equal(torch.tensor([0.0]), torch.tensor([-0.0]))


def test_default_tolerances_are_the_spec_table():
    assert DEFAULT_TOLERANCES["sparse_decode"]["out"] == Tolerance(1e-3, 2.01 / 128, 5e-6)
    lse_budget = dict(floor_rel=2.0**-16, cos_floor=None)  # the calibrated policy's fields of float32 outputs
    assert DEFAULT_TOLERANCES["sparse_decode"]["lse"] == Tolerance(1e-6, 8.01 / 65536, None, **lse_budget)
    assert DEFAULT_TOLERANCES["sparse_prefill"]["out"] == Tolerance(8e-4, 3.01 / 128, 7e-6)
    assert DEFAULT_TOLERANCES["sparse_prefill"]["max_logits"] == Tolerance(1e-6, 2.01 / 65536, **lse_budget)
    assert DEFAULT_TOLERANCES["dense_decode"]["out"] == Tolerance(8e-4, 2.01 / 128, 5e-6)
    assert DEFAULT_TOLERANCES["mha_prefill"]["dv"] == Tolerance(1e-3, 8.01 / 128, 7e-6)
    assert DEFAULT_TOLERANCES["mha_prefill"]["lse"] == Tolerance(1e-6, 2.01 / 65536, **lse_budget)


def test_tolerance_overrides(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[tool.mlaverify.tolerances.sparse_decode.out]\natol = 0.002\ncos = 1e-5\n")
    table = load_tolerances(pyproject)
    assert table["sparse_decode"]["out"] == Tolerance(0.002, 2.01 / 128, 1e-5)
    assert table["dense_decode"] == DEFAULT_TOLERANCES["dense_decode"]
    key, value = parse_override("sparse_decode.out.rtol=0.03")
    table = load_tolerances(pyproject, overrides={key: value, "dense_decode": {"lse": {"atol": 1e-5}}})
    assert table["sparse_decode"]["out"] == Tolerance(0.002, 0.03, 1e-5)
    assert table["dense_decode"]["lse"].atol == 1e-5
    assert load_tolerances(pyproject, use_pyproject=False) == DEFAULT_TOLERANCES


@pytest.mark.parametrize("overrides, match", [
    ({"sparse_decodes.out.atol": 1.0}, "unknown op"),
    ({"sparse_decode.dq.atol": 1.0}, "unknown output"),
    ({"sparse_decode.out.tol": 1.0}, "unknown field"),
    ({"sparse_decode.out.atol": -1.0}, "expected a finite number >= 0"),
    ({"sparse_decode.out.atol": float("inf")}, "expected a finite number >= 0"),
    ({"sparse_decode.out.rtol": float("nan")}, "expected a finite number >= 0"),
    ({"sparse_decode.out": 1.0}, "op.output.field"),
])
def test_bad_overrides_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_tolerances(overrides=overrides, use_pyproject=False)
    with pytest.raises(ValueError, match="expected a number"):
        parse_override("sparse_decode.out.atol=lots")
    for text in ("inf", "nan", "-inf"):
        with pytest.raises(ValueError, match="expected a finite number"):
            parse_override(f"sparse_decode.out.atol={text}")


def test_cosine_is_not_judged_against_a_zero_reference():
    ref = torch.zeros(64)
    m = _check(ref + 1e-7, ref, Tolerance(1e-3, 0.0, cos=7e-6))
    assert m.passed and m.cos_diff is None and m.cos_ratio is None and "cos diff n/a" in m.message
    assert not _check(ref + 2e-3, ref, Tolerance(1e-3, 0.0, cos=7e-6)).passed  # the element bound still holds
