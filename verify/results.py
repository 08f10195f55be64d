"""Result records of the verification engine: plain dataclasses with JSON round trips.

- `Tolerance`: the allowed error of one output (atol, rtol, optional cosine-difference bound).
- `TensorMetrics`: the comparison of one output tensor against the unrounded reference.
- `CheckResult`: one behavioural check (inputs unmodified, repeat bit-identical, batch permutation).
- `CaseResult`: one case: status "pass" | "fail" | "error" | "skip", reason, metrics, checks.
- `Report`: a whole run; `Report.to_json()` / `Report.from_json()`; `summary` is derived from
  the cases, so merged reports stay consistent.

Status meanings: "fail" = the implementation is wrong (mismatch, exception, wrong number of
outputs, wrong shape or dtype, a behavioural check failed); "error" = the engine could not
judge the case (materializing the inputs or computing the reference failed); "skip" = the
implementation's capability profile does not claim the case (reason says why). Only "pass"
passes; a run passes when no case failed or errored (skips are listed, never counted as passes).

JSON: non-finite floats are written as the strings "nan", "inf", "-inf" (strict JSON).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from mlaverify.verify.cases import Case

SCHEMA_VERSION = 2  # 2: ulp/rel above a floor, cos n/a, tolerance ratios, isolation fields
TOOL_NAME = "mla-verify"
STATUSES = ("pass", "fail", "error", "skip")


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mla-verify")
    except PackageNotFoundError:
        return "0+unknown"


def json_float(x: float | None) -> float | str | None:
    """A float as strict JSON: finite floats stay, non-finite ones become strings."""
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def float_from_json(x: Any) -> float | None:
    if x is None:
        return None
    if isinstance(x, str):
        if x not in ("nan", "inf", "-inf"):
            raise ValueError(f"float field: expected a number or 'nan'/'inf'/'-inf', got {x!r}")
        return float(x)
    return float(x)


@dataclass(frozen=True)
class Tolerance:
    atol: float                 # element passes when |a - r| < atol ...
    rtol: float                 # ... or |a - r| / |r| < rtol
    cos: float | None = None    # global bound on 1 - 2<a,r>/(|a|^2+|r|^2); None: not checked
    # calibrated policy (`budgets`): budget = max(floor, k x the numerics emulation's error) on max abs and
    # p99 abs error (floor = floor_rel x max |ref|); max(cos_floor, k^2 x emulation's) on the cosine difference
    k: float = 2.0                  # flash-attention's tests allow 2x a same-precision emulation's error
    floor_rel: float = 2.0**-8      # one bf16 ulp at the output's largest magnitude: the output rounding itself
    cos_floor: float | None = 1e-6  # ~ the cosine difference the bf16 output rounding alone gives (6e-7)

    def describe(self) -> str:
        text = f"allowed {self.atol:.3g} abs or {self.rtol:.4g} rel"
        return text + (f", cos diff {self.cos:.3g}" if self.cos is not None else "")

    def to_dict(self) -> dict[str, Any]:
        return {"atol": self.atol, "rtol": self.rtol, "cos": self.cos, "k": self.k, "floor_rel": self.floor_rel,
                "cos_floor": self.cos_floor}

    def describe_budget(self) -> str:
        cos = f", cos max({self.cos_floor:.3g}, k^2 x emulation)" if self.cos_floor is not None else ""
        return f"budget max({self.floor_rel:.3g} x max(max|ref|, atol), {self.k:g} x emulation error){cos}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Tolerance":
        """Reports written before the calibrated policy lack k/floor_rel/cos_floor: the defaults apply."""
        extra = {k: (None if d[k] is None else float(d[k])) for k in ("k", "floor_rel", "cos_floor") if k in d}
        return cls(float(d["atol"]), float(d["rtol"]), None if d.get("cos") is None else float(d["cos"]), **extra)


_FLOAT_METRICS = ("mismatch_fraction", "max_abs", "max_rel", "cos_diff", "max_ulp", "p99_ulp",
                  "worst_value", "worst_ref", "ref_absmax", "ref_rms", "rel_floor", "elem_ratio", "cos_ratio",
                  "tol_ratio", "p99_abs", "emu_max_abs", "emu_p99_abs", "emu_cos_diff", "budget_max_abs",
                  "budget_p99_abs", "budget_cos", "budget_ratio", "emu_ratio")


@dataclass(frozen=True)
class TensorMetrics:
    """Comparison of one output; `passed` is the verdict, `message` says why in one line."""

    name: str                                   # "out", "lse", "max_logits", "dq", ...
    passed: bool
    message: str                                # torch.testing-style one-liner
    tolerance: Tolerance
    shape: tuple[int, ...] | None = None        # actual (None when not a tensor)
    dtype: str | None = None                    # actual, e.g. "torch.bfloat16"
    expected_shape: tuple[int, ...] = ()
    expected_dtype: str = ""
    numel: int = 0
    mismatches: int = 0                         # elements failing abs-or-rel or non-finite placement
    nonfinite_mismatches: int = 0               # NaN / +inf / -inf positions that differ
    mismatch_fraction: float = 0.0
    max_abs: float = 0.0                        # over elements finite in both
    max_rel: float | None = None                # over elements with |ref| >= rel_floor (None: no such element)
    cos_diff: float | None = None               # None: the reference is ~all zero, no direction to compare
    max_ulp: float | None = None                # error in bf16 ulps of the reference value, |ref| >= rel_floor
    p99_ulp: float | None = None
    worst_index: tuple[int, ...] | None = None  # worst element (a mismatch if any, else the largest tol. ratio)
    worst_value: float | None = None
    worst_ref: float | None = None
    ref_absmax: float = 0.0                     # scale of the reference (finite elements)
    ref_rms: float = 0.0
    rel_floor: float = 0.0                      # |ref| below this is ~0: judged by atol, no ulp/rel error
    floor_excluded: int = 0                     # finite elements below rel_floor
    elem_ratio: float = 0.0                     # max |a - r| / max(atol, rtol |r|): < 1 passes
    cos_ratio: float | None = None              # cos_diff / tolerance.cos (None: no bound or no direction)
    tol_ratio: float = 0.0                      # max(elem_ratio, cos_ratio): how close to failing (inf: NaN/inf)
    # tolerance policies (`budgets`): which judged this output, and the calibrated policy's numbers
    policy: str = "flashmla"                    # "flashmla", "calibrated" or "flashmla+calibrated": which judged
    flashmla_passed: bool | None = None         # the fixed table's verdict (None: not computed)
    calibrated_passed: bool | None = None       # the calibrated budget's verdict (None: not computed)
    p99_abs: float | None = None                # the kernel's 99th-percentile abs error (finite elements)
    emu_max_abs: float | None = None            # the numerics emulation's errors against the same reference
    emu_p99_abs: float | None = None
    emu_cos_diff: float | None = None
    budget_max_abs: float | None = None         # max(floor, k x emulation error) per metric
    budget_p99_abs: float | None = None
    budget_cos: float | None = None
    budget_ratio: float | None = None           # max over the metrics of kernel error / budget: <= 1 passes
    emu_ratio: float | None = None              # kernel max abs / emulation max abs (None: emulation exact)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tolerance"] = self.tolerance.to_dict()
        for k in ("shape", "expected_shape", "worst_index"):
            d[k] = None if d[k] is None else list(d[k])
        for k in _FLOAT_METRICS:
            d[k] = json_float(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TensorMetrics":
        kw = dict(d)
        kw["tolerance"] = Tolerance.from_dict(d["tolerance"])
        for k in ("shape", "expected_shape", "worst_index"):
            kw[k] = None if kw.get(k) is None else tuple(int(v) for v in kw[k])
        for k in _FLOAT_METRICS:
            kw[k] = float_from_json(kw.get(k))
        return cls(**kw)


@dataclass(frozen=True)
class CheckResult:
    name: str        # "inputs_unmodified" | "repeat_bitwise" | "batch_permutation"
    passed: bool
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CheckResult":
        return cls(str(d["name"]), bool(d["passed"]), str(d.get("reason", "")))


@dataclass(frozen=True)
class CaseResult:
    case: Case
    status: str                                           # one of STATUSES
    reason: str = ""                                      # first failure, skip or error reason
    outputs: dict[str, TensorMetrics] = field(default_factory=dict)
    checks: dict[str, CheckResult] = field(default_factory=dict)
    duration_s: float = 0.0
    tolerances: dict[str, Tolerance] = field(default_factory=dict)   # used, per output

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status: expected one of {list(STATUSES)}, got {self.status!r}")

    @property
    def id(self) -> str:
        return self.case.id

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.case.id,
            "case": self.case.to_dict(),
            "status": self.status,
            "reason": self.reason,
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
            "checks": {k: v.to_dict() for k, v in self.checks.items()},
            "tolerances": {k: v.to_dict() for k, v in self.tolerances.items()},
            "duration_s": self.duration_s,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CaseResult":
        return cls(
            case=Case.from_dict(d["case"]),
            status=str(d["status"]),
            reason=str(d.get("reason", "")),
            outputs={k: TensorMetrics.from_dict(v) for k, v in d.get("outputs", {}).items()},
            checks={k: CheckResult.from_dict(v) for k, v in d.get("checks", {}).items()},
            duration_s=float(d.get("duration_s", 0.0)),
            tolerances={k: Tolerance.from_dict(v) for k, v in d.get("tolerances", {}).items()},
        )


def summarize(cases: list[CaseResult]) -> dict[str, Any]:
    """Counts per status overall and per "op/model"; `passed` is False on any fail or error."""
    total = Counter(c.status for c in cases)
    groups: dict[str, Counter] = {}
    for c in cases:
        groups.setdefault(f"{c.case.op}/{c.case.model}", Counter())[c.status] += 1
    counts = {s: total.get(s, 0) for s in STATUSES}
    return {
        "total": len(cases),
        **counts,
        "passed": counts["fail"] == 0 and counts["error"] == 0,
        "by_op_model": {k: {s: v.get(s, 0) for s in STATUSES} for k, v in sorted(groups.items())},
        "duration_s": sum(c.duration_s for c in cases),
    }


@dataclass
class Report:
    """A verification run. `environment`, `implementation`, `settings` are free-form JSON dicts:
    implementation = {"spec", "profile", "capabilities"}; settings = {"ops", "models", "profile",
    "max_examples", "seed", "shard", "device", "tolerances"}."""

    cases: list[CaseResult]
    environment: dict[str, Any] = field(default_factory=dict)
    implementation: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = ""                                     # ISO 8601 UTC
    tool: dict[str, str] = field(default_factory=lambda: {"name": TOOL_NAME, "version": tool_version()})
    schema_version: int = SCHEMA_VERSION
    # The gate's decision when this report was judged by `mlaverify gate` (gate.GateResult.to_dict()), else None.
    gate: dict[str, Any] | None = None
    # How the run ended: "complete", "interrupted" (Ctrl-C: the cases done so far), or "aborted" (set-up
    # failed before any case ran; `fatal` says why).
    run_status: str = "complete"
    fatal: str = ""

    @property
    def summary(self) -> dict[str, Any]:
        return summarize(self.cases)

    @property
    def passed(self) -> bool:
        """No case failed or errored and the run completed (it may still have verified nothing: see `verified`)."""
        return bool(self.summary["passed"]) and self.run_status == "complete"

    @property
    def verified(self) -> bool:
        """At least one case was executed (not skipped)."""
        return any(c.status != "skip" for c in self.cases)

    @property
    def coverage_missing(self) -> list[str]:
        """The boundary features ("op/model: feature") no case made observable, when the run required
        coverage (``settings["coverage"]``, issue 11); [] when it did not or none is missing."""
        cov = self.settings.get("coverage") or {}
        return list(cov.get("unobserved") or []) if cov.get("required") else []

    @property
    def verdict(self) -> str:
        """"PASS", "FAIL", "NOT VERIFIED" (nothing executed), "NOT COVERED" (every case passed but a required
        boundary feature was never observed), "INTERRUPTED" or "ABORTED"; the gate's if judged."""
        if self.gate is not None:
            gate = str(self.gate.get("verdict", "FAIL"))
            return "NOT COVERED" if gate == "PASS" and self.coverage_missing else gate
        if self.run_status == "aborted":
            return "ABORTED"
        if not self.summary["passed"]:
            return "FAIL"
        if self.run_status == "interrupted":
            return "INTERRUPTED"
        if not self.verified:
            return "NOT VERIFIED"
        return "NOT COVERED" if self.coverage_missing else "PASS"

    def failures(self) -> list[CaseResult]:
        return [c for c in self.cases if c.status in ("fail", "error")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "tool": dict(self.tool),
            "created": self.created,
            "environment": self.environment,
            "implementation": self.implementation,
            "settings": self.settings,
            "cases": [c.to_dict() for c in self.cases],
            "summary": self.summary,
            "run_status": self.run_status,
            "fatal": self.fatal,
            "verdict": self.verdict,
            "gate": self.gate,
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Report":
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"report: expected schema_version {SCHEMA_VERSION}, got {version!r}")
        known = {f.name for f in fields(cls)}
        return cls(
            cases=[CaseResult.from_dict(c) for c in d.get("cases", [])],
            **{k: d[k] for k in ("environment", "implementation", "settings", "created", "tool", "gate",
                                 "run_status", "fatal")
               if k in d and k in known},
            schema_version=version,
        )

    @classmethod
    def from_json(cls, text: str) -> "Report":
        return cls.from_dict(json.loads(text))
