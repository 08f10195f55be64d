"""The regression gate: compare a report against a committed baseline.

The gate fails when
- a case fails (or errors) in the current report,
- a case the baseline ran is missing from the current report, or skipped there,
- an error metric of an output got worse than the baseline by more than ``factor``, even when it
  still passes its tolerance: ``current > factor * max(baseline, floor)``. The noise floor (one
  table, ``METRIC_FLOORS``) keeps a move from an exact 0 to a harmless rounding step, or the float32
  noise of another CPU's BLAS, from counting as a regression,
- a tolerance used for a case is looser than the one the baseline recorded.
A baseline case is compared only when both runs executed it (pass, fail or error in both); a case
skipped in both is "not verified" and compares nothing (``GateResult.compared`` counts only real
comparisons, and the CLI exits 3 when it is 0). Cases new in the current report, or skipped in the
baseline and run now, are listed and do not fail the gate by themselves.

The metrics compared are the ones that hold across CPUs: max abs error, the cosine difference,
the tolerance ratio (error / allowed) and the ulp errors over elements whose reference is above
the floor (`compare.REL_FLOOR_OF_RMS`); relative errors are not compared (they repeat the ulp
errors and are the least stable).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mlaverify.verify.report_common import METRIC_LABELS, fmt_num
from mlaverify.verify.results import CaseResult, Report

__all__ = ["METRIC_FLOORS", "MetricChange", "GateResult", "GateError", "compare_to_baseline", "check_comparable",
           "check_factor", "metric_floor"]

# metric -> noise floor below which a value counts as "as good as exact" for the ratio test. A floor
# must sit above what another CPU changes (float32 BLAS results differ in the last bits, a bf16 output
# then rounds the other way on a tie) and below what a real within-tolerance drift moves (+1 bf16 ulp).
METRIC_FLOORS: dict[str, float] = {
    "max_ulp": 0.5,     # half a bf16 ulp: the error of a correctly rounded output; +1 ulp drift reaches >= 1.5
    "p99_ulp": 0.5,
    "cos_diff": 1e-7,   # 1.4-2% of the cosine bounds in the tolerance table (5e-6 .. 7e-6)
    "max_abs": 0.0,     # relative to the output's scale instead: see ABS_FLOOR_OF_ABSMAX
    "tol_ratio": 0.01,  # 1% of the allowed error
}
# max abs error: floor of 2^-18 x the reference's largest |value| (32 float32 ulps there, 1/1024 of a bf16
# ulp), and at least 1e-9 for all-zero references. A float32 reference one ulp off on another CPU moves max
# abs by 2^-23 x |value|; the smallest regression worth a gate, one bf16 ulp, moves it by 2^-8 x |value|.
ABS_FLOOR_OF_ABSMAX = 2.0**-18
ABS_FLOOR_MIN = 1e-9


def metric_floor(metric: str, baseline_metrics) -> float:
    """The noise floor of ``metric`` for an output whose baseline metrics are ``baseline_metrics``."""
    if metric == "max_abs":
        return max(ABS_FLOOR_OF_ABSMAX * float(baseline_metrics.ref_absmax or 0.0), ABS_FLOOR_MIN)
    if metric == "tol_ratio":
        # The max-abs floor's 2^-18 of an element's value (32 float32 ulps), in units of the element's
        # relative tolerance: for a float32 output (lse, max_logits, rtol ~3e-5) that is ~0.12 of the
        # allowed error, above the few float32 ulps by which another CPU's reduction order moves the
        # reference (measured: 2 -> 7 ulps on a 49-valued lse, tol_ratio 0.010 -> 0.029); for bf16
        # outputs (rtol ~2^-6) it stays below the fixed 1%.
        rtol = float(getattr(baseline_metrics.tolerance, "rtol", 0.0) or 0.0)
        return max(METRIC_FLOORS[metric], ABS_FLOOR_OF_ABSMAX / rtol if rtol > 0 else 0.0)
    return METRIC_FLOORS[metric]


@dataclass(frozen=True)
class MetricChange:
    case_id: str
    output: str
    metric: str
    baseline: float
    current: float
    floor: float = 0.0

    @property
    def ratio(self) -> float:
        denom = max(self.baseline, self.floor)
        if math.isnan(self.current):
            return math.inf
        return math.inf if denom == 0 else self.current / denom

    def describe(self) -> str:
        label = METRIC_LABELS.get(self.metric, self.metric)
        ratio = "inf" if math.isinf(self.ratio) else f"{self.ratio:.2f}"
        return (f"{self.case_id}: {self.output} {label} {fmt_num(self.baseline)} -> {fmt_num(self.current)} "
                f"(x{ratio})")

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.case_id, "output": self.output, "metric": self.metric,
                "baseline": _json(self.baseline), "current": _json(self.current), "ratio": _json(self.ratio)}


def _json(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


@dataclass
class GateResult:
    factor: float
    baseline_name: str = "baseline"
    compared: int = 0                                         # cases executed in both runs
    failing: list[CaseResult] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)          # in baseline, absent or skipped now
    regressions: list[MetricChange] = field(default_factory=list)
    loosened: list[str] = field(default_factory=list)         # "case: output tolerance a -> b"
    improvements: list[MetricChange] = field(default_factory=list)
    new_cases: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)       # skipped in both: nothing compared
    newly_run: list[str] = field(default_factory=list)        # skipped in the baseline, executed now

    @property
    def passed(self) -> bool:
        """No failure, no missing case, no regression, and at least one case compared."""
        return self.compared > 0 and not (self.failing or self.missing or self.regressions or self.loosened)

    @property
    def verdict(self) -> str:
        """"PASS", "FAIL", or "NOT VERIFIED" (nothing was compared and nothing failed)."""
        if self.failing or self.missing or self.regressions or self.loosened:
            return "FAIL"
        return "PASS" if self.compared > 0 else "NOT VERIFIED"

    def format(self, baseline_name: str | None = None, limit: int = 50) -> str:
        baseline_name = baseline_name or self.baseline_name
        lines = [f"gate: {self.verdict} against {baseline_name} (max regression factor {self.factor:g}): "
                 f"{self.compared} cases compared, {len(self.failing)} failing, {len(self.missing)} missing, "
                 f"{len(self.regressions)} metric regressions, {len(self.loosened)} loosened tolerances, "
                 f"{len(self.new_cases)} new cases, {len(self.unverified)} skipped in both (not verified)"]
        sections = [("failing case", [f"{c.id}: {c.status}: {c.reason}" for c in self.failing]),
                    ("missing case", self.missing),
                    ("regressed", [m.describe() for m in self.regressions]),
                    ("loosened tolerance", self.loosened),
                    ("improved", [m.describe() for m in self.improvements]),
                    ("new case", self.new_cases),
                    ("run now, skipped in the baseline", self.newly_run),
                    ("not verified (skipped in both)", self.unverified)]
        for title, items in sections:
            for item in items[:limit]:
                lines.append(f"  {title}: {item}")
            if len(items) > limit:
                lines.append(f"  ... {len(items) - limit} more {title}s")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "verdict": self.verdict, "baseline": self.baseline_name,
                "factor": self.factor, "compared": self.compared,
                "failing": [{"case": c.id, "status": c.status, "reason": c.reason} for c in self.failing],
                "missing": self.missing,
                "regressions": [m.to_dict() for m in self.regressions], "loosened": self.loosened,
                "improvements": [m.to_dict() for m in self.improvements], "new_cases": self.new_cases,
                "unverified": self.unverified, "newly_run": self.newly_run}


def _value(x: float | None) -> float | None:
    return None if x is None else float(x)


def _compare_case(base: CaseResult, cur: CaseResult, factor: float, result: GateResult) -> None:
    for name, bm in base.outputs.items():
        cm = cur.outputs.get(name)
        if cm is None:
            result.missing.append(f"{base.id} (output {name} no longer compared)")
            continue
        for metric in METRIC_FLOORS:
            b, c = _value(getattr(bm, metric)), _value(getattr(cm, metric))
            if b is None or c is None or (math.isnan(b) and math.isnan(c)):
                continue  # None: not defined for this output (no element above the floor, no direction)
            floor = metric_floor(metric, bm)
            change = MetricChange(base.id, name, metric, b, c, floor)
            if math.isnan(b):
                continue  # a baseline without a finite value gives nothing to hold the current one to
            if math.isnan(c) or c > factor * max(b, floor):
                result.regressions.append(change)
            elif factor * c < max(b, floor) and b > floor:
                result.improvements.append(change)
        bt, ct = bm.tolerance, cm.tolerance
        looser = [f for f in ("atol", "rtol", "k", "floor_rel") if getattr(ct, f) > getattr(bt, f)]
        looser += [f for f in ("cos", "cos_floor")  # None: the bound is off
                   if getattr(bt, f) is not None and (getattr(ct, f) is None or getattr(ct, f) > getattr(bt, f))]
        if looser:
            result.loosened.append(f"{base.id}: {name} {', '.join(looser)}: {bt.describe()} -> {ct.describe()}")


class GateError(ValueError):
    """The baseline and the current report cannot be compared (the message says why)."""


def check_comparable(baseline: Report, current: Report, allow_impl_change: bool = False) -> None:
    """Raise GateError when ``current`` verifies another implementation than ``baseline`` (unless allowed)."""
    b, c = baseline.implementation.get("spec"), current.implementation.get("spec")
    if b != c and not allow_impl_change:
        raise GateError(f"gate: the baseline verifies implementation {b!r} but this run verifies {c!r}; "
                        "gate an implementation against its own baseline, or pass --allow-impl-change")


def check_factor(factor) -> float:
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (math.isfinite(factor) and factor >= 1.0):
        raise ValueError(f"max regression factor: expected a finite number >= 1.0, got {factor!r}")
    return float(factor)


def compare_to_baseline(baseline: Report, current: Report, factor: float = 2.0,
                        baseline_name: str = "baseline") -> GateResult:
    """Judge ``current`` against ``baseline``; see the module docstring for the rules."""
    result = GateResult(factor=check_factor(factor), baseline_name=baseline_name)
    current_by_id = {c.id: c for c in current.cases}
    baseline_ids = set()
    for base in baseline.cases:
        baseline_ids.add(base.id)
        cur = current_by_id.get(base.id)
        if cur is None:
            result.missing.append(base.id)
            continue
        if cur.status == "skip" and base.status != "skip":
            result.missing.append(f"{base.id} (skipped now: {cur.reason})")
            continue
        if base.status == "skip":
            (result.unverified if cur.status == "skip" else result.newly_run).append(base.id)
            continue
        result.compared += 1
        if base.status in ("pass", "fail"):  # an "error" baseline case has no metrics to hold this run to
            _compare_case(base, cur, result.factor, result)
    result.failing = [c for c in current.cases if c.status in ("fail", "error")]
    result.new_cases = sorted(cid for cid in current_by_id if cid not in baseline_ids)
    result.regressions.sort(key=lambda m: -m.ratio)
    return result
