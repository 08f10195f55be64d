"""The regression gate: compare a report against a committed baseline.

The gate fails when
- a case fails (or errors) in the current report,
- a case the baseline ran is missing from the current report, or skipped there,
- an error metric of an output got worse than the baseline by more than ``factor``, even when it
  still passes its tolerance: ``current > factor * max(baseline, floor)``. The floor (one table,
  ``METRIC_FLOORS``) keeps a move from an exact 0 to a harmless rounding step from counting as an
  infinite regression,
- a tolerance used for a case is looser than the one the baseline recorded.
Cases new in the current report are listed and do not fail the gate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mlaverify.verify.report_common import METRIC_LABELS, fmt_num
from mlaverify.verify.results import CaseResult, Report

__all__ = ["METRIC_FLOORS", "MetricChange", "GateResult", "compare_to_baseline"]

# metric -> floor below which a value counts as "as good as exact" for the ratio test.
METRIC_FLOORS: dict[str, float] = {
    "max_ulp": 1.0,     # one bf16 ulp: a single rounding step
    "p99_ulp": 1.0,
    "cos_diff": 1e-7,   # well below every cosine bound in the tolerance table (5e-6 .. 7e-6)
    "max_abs": 1e-6,    # the lse atol: smaller moves are float32 noise of the reference
    "max_rel": 1e-4,    # below one bf16 ulp relative (2^-8) and the lse rtol (8.01/65536)
}


@dataclass(frozen=True)
class MetricChange:
    case_id: str
    output: str
    metric: str
    baseline: float
    current: float

    @property
    def ratio(self) -> float:
        floor = METRIC_FLOORS.get(self.metric, 0.0)
        denom = max(self.baseline, floor)
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
    compared: int = 0
    failing: list[CaseResult] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)          # in baseline, absent or skipped now
    regressions: list[MetricChange] = field(default_factory=list)
    loosened: list[str] = field(default_factory=list)         # "case: output tolerance a -> b"
    improvements: list[MetricChange] = field(default_factory=list)
    new_cases: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not (self.failing or self.missing or self.regressions or self.loosened)

    def format(self, baseline_name: str = "baseline", limit: int = 50) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        lines = [f"gate: {verdict} against {baseline_name} (max regression factor {self.factor:g}): "
                 f"{self.compared} cases compared, {len(self.failing)} failing, {len(self.missing)} missing, "
                 f"{len(self.regressions)} metric regressions, {len(self.loosened)} loosened tolerances, "
                 f"{len(self.new_cases)} new cases"]
        sections = [("failing case", [f"{c.id}: {c.status}: {c.reason}" for c in self.failing]),
                    ("missing case", self.missing),
                    ("regressed", [m.describe() for m in self.regressions]),
                    ("loosened tolerance", self.loosened),
                    ("improved", [m.describe() for m in self.improvements]),
                    ("new case", self.new_cases)]
        for title, items in sections:
            for item in items[:limit]:
                lines.append(f"  {title}: {item}")
            if len(items) > limit:
                lines.append(f"  ... {len(items) - limit} more {title}s")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "factor": self.factor, "compared": self.compared,
                "failing": [c.id for c in self.failing], "missing": self.missing,
                "regressions": [m.to_dict() for m in self.regressions], "loosened": self.loosened,
                "improvements": [m.to_dict() for m in self.improvements], "new_cases": self.new_cases}


def _value(x: float | None) -> float | None:
    return None if x is None else float(x)


def _compare_case(base: CaseResult, cur: CaseResult, factor: float, result: GateResult) -> None:
    for name, bm in base.outputs.items():
        cm = cur.outputs.get(name)
        if cm is None:
            result.missing.append(f"{base.id} (output {name} no longer compared)")
            continue
        for metric, floor in METRIC_FLOORS.items():
            b, c = _value(getattr(bm, metric)), _value(getattr(cm, metric))
            if b is None or c is None or (math.isnan(b) and math.isnan(c)):
                continue
            change = MetricChange(base.id, name, metric, b, c)
            if math.isnan(b):
                continue  # a baseline without a finite value gives nothing to hold the current one to
            if math.isnan(c) or c > factor * max(b, floor):
                result.regressions.append(change)
            elif factor * c < max(b, floor) and b > floor:
                result.improvements.append(change)
        bt, ct = bm.tolerance, cm.tolerance
        looser = [f for f in ("atol", "rtol") if getattr(ct, f) > getattr(bt, f)]
        if bt.cos is not None and (ct.cos is None or ct.cos > bt.cos):
            looser.append("cos")
        if looser:
            result.loosened.append(f"{base.id}: {name} {', '.join(looser)}: {bt.describe()} -> {ct.describe()}")


def compare_to_baseline(baseline: Report, current: Report, factor: float = 2.0) -> GateResult:
    """Judge ``current`` against ``baseline``; see the module docstring for the rules."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1.0:
        raise ValueError(f"max regression factor: expected a number >= 1.0, got {factor!r}")
    result = GateResult(factor=float(factor))
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
        result.compared += 1
        if cur.status in ("pass", "fail", "error") and base.status in ("pass", "fail"):
            _compare_case(base, cur, factor, result)
    result.failing = [c for c in current.cases if c.status in ("fail", "error")]
    result.new_cases = sorted(cid for cid in current_by_id if cid not in baseline_ids)
    result.regressions.sort(key=lambda m: -m.ratio)
    return result
