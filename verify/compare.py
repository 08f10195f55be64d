"""Compare one output tensor against the unrounded reference; returns data, never raises.

    m = compare_tensor("out", actual, ref, Tolerance(1e-3, 2.01 / 128, 5e-6),
                       expected_shape=(2, 1, 64, 512), expected_dtype=torch.bfloat16)
    m.passed, m.message, m.max_ulp, m.worst_index, ...

Order of judgement (the first failure names the reason):
1. `actual` is a tensor of the expected shape and dtype (part of the contract, checked first).
2. NaN, +inf and -inf sit at exactly the reference's positions.
3. Every element finite in both passes `|a - r| < atol or |a - r| / |r| < rtol`.
4. The global cosine difference `1 - 2<a,r> / (|a|^2 + |r|^2)` over elements finite in both is
   at most `tolerance.cos` (when the output has a cosine bound). When the reference's sum of
   squares is below 1e-12 it has no direction: the cosine difference is not available (None,
   "n/a" in reports) and the output is judged by its element errors alone.
Metrics are computed in float64 on the CPU. Errors in "bf16 ulps" divide |a - r| by the spacing
of bfloat16 numbers at the reference value (2^(e - 7) for |r| in [2^e, 2^(e+1))).

Relative and ulp errors mean something only where the reference is not ~0: an element whose
reference is a rounding residue (1e-38 where its neighbours are 1e-2) has an astronomical relative
error for any kernel, and the value changes from one CPU to the next. So ulp and relative errors
are computed only over elements with |r| >= `rel_floor` = REL_FLOOR_OF_RMS x RMS of the finite
reference (the count left out is `floor_excluded`), and those elements are judged by the absolute
tolerance alone. None means no element reached the floor.

Distance to the tolerance: `elem_ratio` is the largest `|a - r| / allowed` over finite elements,
with allowed = max(atol, rtol * |r|) (rtol only above the floor); an element passes when its ratio
is below 1. `cos_ratio` = cos_diff / tolerance.cos. `tol_ratio` is the larger of the two
(inf when NaN/inf sit in the wrong places): how close a passing output came to failing.

`bits_equal(x, y)` compares two tensors bit for bit (NaN payloads included).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mlaverify.verify.results import Tolerance, TensorMetrics

COS_MIN_REF_ENERGY = 1e-12  # below this sum of squared reference values the cosine is not judged
# |r| below 2^-10 of the reference's RMS counts as ~0 for ulp/rel errors: that is 4 bf16 binades under
# the typical element, where a correct kernel's error is set by the row's accumulation, not by |r|.
REL_FLOOR_OF_RMS = 2.0**-10
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class NonTensor:
    """Stands for an output that was not a tensor (it may not survive the trip from a worker process)."""

    type_name: str


def _type_name(x: object) -> str:
    return x.type_name if isinstance(x, NonTensor) else type(x).__name__


def bits_equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    """True when x and y have the same shape and dtype and identical bytes."""
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        return False
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    if x.dtype == torch.bool:
        return torch.equal(x, y)
    view = _INT_VIEW[x.element_size()]
    xi = x.detach().cpu().contiguous().view(view)
    yi = y.detach().cpu().contiguous().view(view)
    return torch.equal(xi, yi)


def bf16_ulp(ref: torch.Tensor) -> torch.Tensor:
    """Spacing of bfloat16 numbers at |ref| (float64), 2^-133 at zero and below the normals."""
    mag = ref.abs()
    exponent = torch.floor(torch.log2(torch.where(mag > 0, mag, 1.0))).clamp_min(-126.0)
    ulp = torch.exp2(exponent - 7.0)
    return torch.where(mag > 0, ulp, 2.0**-133)


def element_ratios(a: torch.Tensor, r: torch.Tensor, tolerance: Tolerance):
    """Per element of float64 tensors a, r: (|a - r| where both are finite else 0, |a - r| / allowed,
    "above the floor" mask, rel_floor), with allowed = max(atol, rtol |r|) above the floor, atol below it."""
    finite = a.isfinite() & r.isfinite()
    err = torch.where(finite, (a - r).abs(), 0.0)
    rf = torch.where(r.isfinite(), r, 0.0)
    n_ref_finite = int(r.isfinite().sum())
    rel_floor = REL_FLOOR_OF_RMS * (math.sqrt(float((rf * rf).sum()) / n_ref_finite) if n_ref_finite else 0.0)
    above = finite & (r.abs() >= rel_floor) & (r.abs() > 0)  # elements where rel and ulp errors mean something
    allowed = torch.where(above, torch.clamp(tolerance.rtol * r.abs(), min=tolerance.atol),
                          torch.full_like(r, tolerance.atol))
    ratio = torch.where(finite, err / allowed, 0.0)
    ratio = torch.nan_to_num(ratio, nan=math.inf)  # a zero allowance (atol 0) fails every element, as err < 0 would
    return err, ratio, above, rel_floor


def _fmt(x: float | None) -> str:
    return "None" if x is None else f"{x:.4g}"


def _fail(name: str, tol: Tolerance, message: str, actual, expected_shape, expected_dtype) -> TensorMetrics:
    is_t = isinstance(actual, torch.Tensor)
    return TensorMetrics(
        name=name, passed=False, message=f"{name}: {message}", tolerance=tol,
        shape=tuple(actual.shape) if is_t else None, dtype=str(actual.dtype) if is_t else None,
        expected_shape=tuple(expected_shape), expected_dtype=str(expected_dtype),
        numel=int(actual.numel()) if is_t else 0,
    )


def compare_tensor(name: str, actual: object, reference: torch.Tensor, tolerance: Tolerance, *,
                   expected_shape: tuple[int, ...] | None = None,
                   expected_dtype: torch.dtype | None = None) -> TensorMetrics:
    """Judge `actual` against `reference` (see module docstring); never raises on bad `actual`."""
    if not isinstance(reference, torch.Tensor):
        raise TypeError(f"reference: expected a torch.Tensor, got {type(reference).__name__}")
    shape = tuple(reference.shape) if expected_shape is None else tuple(expected_shape)
    dtype = reference.dtype if expected_dtype is None else expected_dtype
    if not isinstance(actual, torch.Tensor):
        return _fail(name, tolerance, f"expected a torch.Tensor, got {_type_name(actual)}", actual, shape, dtype)
    if tuple(actual.shape) != shape:
        return _fail(name, tolerance, f"expected shape {list(shape)}, got {list(actual.shape)}", actual, shape, dtype)
    if actual.dtype != dtype:
        return _fail(name, tolerance, f"expected dtype {dtype}, got {actual.dtype}", actual, shape, dtype)
    if tuple(reference.shape) != shape:
        raise ValueError(f"reference: expected shape {list(shape)}, got {list(reference.shape)}")

    a = actual.detach().to("cpu", torch.float64).reshape(-1)
    r = reference.detach().to("cpu", torch.float64).reshape(-1)
    n = a.numel()
    nonfinite_bad = ((a.isnan() != r.isnan()) | (a.isposinf() != r.isposinf()) | (a.isneginf() != r.isneginf()))
    finite = a.isfinite() & r.isfinite()
    err, ratio, above, rel_floor = element_ratios(a, r, tolerance)
    rf_all = torch.where(r.isfinite(), r, 0.0)
    n_ref_finite = int(r.isfinite().sum())
    ref_rms = math.sqrt(float((rf_all * rf_all).sum()) / n_ref_finite) if n_ref_finite else 0.0
    ref_absmax = float(rf_all.abs().max()) if n else 0.0
    elem_bad = finite & ~(ratio < 1.0)
    bad = elem_bad | nonfinite_bad
    mismatches = int(bad.sum())
    nonfinite = int(nonfinite_bad.sum())
    af, rf = a[finite], r[finite]
    ref_energy = float((rf * rf).sum())
    denom = ref_energy + float((af * af).sum())
    # A (near-)zero reference has no direction: no cosine difference (judged by the element errors).
    cos_diff = max(1.0 - 2.0 * float((af * rf).sum()) / denom, 0.0) if ref_energy >= COS_MIN_REF_ENERGY else None
    ulps = err[above] / bf16_ulp(r[above])
    max_ulp = float(ulps.max()) if ulps.numel() else None
    p99_ulp = float(torch.kthvalue(ulps, max(1, math.ceil(0.99 * ulps.numel())))[0]) if ulps.numel() else None
    max_abs = float(err.max()) if n else 0.0
    max_rel = float((err[above] / r[above].abs()).max()) if ulps.numel() else None
    floor_excluded = int(finite.sum()) - int(above.sum())
    elem_ratio = math.inf if nonfinite else (float(ratio.max()) if n else 0.0)
    cos_ratio = None
    if tolerance.cos is not None and cos_diff is not None:
        cos_ratio = cos_diff / tolerance.cos if tolerance.cos > 0 else (math.inf if cos_diff > 0 else 0.0)
    tol_ratio = max(elem_ratio, cos_ratio or 0.0)

    worst = None
    if mismatches:  # a misplaced non-finite value first, else the element farthest past its tolerance
        score = torch.where(nonfinite_bad, math.inf, torch.where(elem_bad, ratio, -1.0))
        worst = int(torch.argmax(score))
    elif n:
        worst = int(torch.argmax(ratio))
    worst_index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), shape)) if worst is not None else None
    worst_value = float(a[worst]) if worst is not None else None
    worst_ref = float(r[worst]) if worst is not None else None

    cos_bad = cos_ratio is not None and cos_ratio > 1.0
    passed = mismatches == 0 and not cos_bad
    where = f"at {list(worst_index)} (ref {_fmt(worst_ref)}, got {_fmt(worst_value)})" if worst is not None else ""
    if mismatches and nonfinite:
        message = (f"{name} mismatch: {mismatches} / {n} ({100.0 * mismatches / n:.2f}%) elements, {nonfinite} "
                   f"with NaN/inf where the reference differs; first {where}; max abs error elsewhere "
                   f"{max_abs:.3g}, {tolerance.describe()}")
    elif mismatches:
        message = (f"{name} mismatch: {mismatches} / {n} ({100.0 * mismatches / n:.2f}%) elements; "
                   f"worst {elem_ratio:.3g}x its allowed error {where}, max abs {max_abs:.3g}, {tolerance.describe()}")
    elif cos_bad:
        message = (f"{name} cosine difference {cos_diff:.3g} exceeds {tolerance.cos:.3g} ({cos_ratio:.3g}x); "
                   f"worst abs {max_abs:.3g} {where}")
    else:
        message = (f"{name} ok: {tol_ratio:.3g}x of the tolerance, max abs {max_abs:.3g}, max {_fmt(max_ulp)} ulp, "
                   f"cos diff {'n/a' if cos_diff is None else f'{cos_diff:.3g}'}")
    return TensorMetrics(
        name=name, passed=passed, message=message, tolerance=tolerance,
        shape=tuple(actual.shape), dtype=str(actual.dtype), expected_shape=shape, expected_dtype=str(dtype),
        numel=n, mismatches=mismatches, nonfinite_mismatches=nonfinite,
        mismatch_fraction=mismatches / n if n else 0.0, max_abs=max_abs, max_rel=max_rel, cos_diff=cos_diff,
        max_ulp=max_ulp, p99_ulp=p99_ulp, worst_index=worst_index, worst_value=worst_value, worst_ref=worst_ref,
        ref_absmax=ref_absmax, ref_rms=ref_rms, rel_floor=rel_floor, floor_excluded=floor_excluded,
        elem_ratio=elem_ratio, cos_ratio=cos_ratio, tol_ratio=tol_ratio,
    )
