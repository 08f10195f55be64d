"""Synthetic case results for report tests: no kernel runs, every number chosen by the test."""
from __future__ import annotations

import math

from mlaverify.verify.cases import Case
from mlaverify.verify.results import CaseResult, Report, TensorMetrics, Tolerance

TOL = Tolerance(atol=1e-3, rtol=2.01 / 128, cos=5e-6)


def metrics(name: str = "out", ratio: float = 0.1, *, passed: bool | None = None, max_ulp: float | None = 1.0,
            cos_diff: float | None = 1e-7, floor_excluded: int = 0, index: tuple[int, ...] = (0, 1, 49, 388),
            shape: tuple[int, ...] = (2, 2, 64, 512)) -> TensorMetrics:
    """An output whose error/allowed is ``ratio`` (it passes below 1 unless ``passed`` says otherwise)."""
    passed = ratio < 1 if passed is None else passed
    numel = math.prod(shape)
    return TensorMetrics(
        name=name, passed=passed, message=f"{name} {'ok' if passed else 'mismatch'}", tolerance=TOL, shape=shape,
        dtype="torch.bfloat16", expected_shape=shape, expected_dtype="torch.bfloat16", numel=numel,
        mismatches=0 if passed else 7, mismatch_fraction=0.0 if passed else 7 / numel, max_abs=ratio * 1e-3,
        max_rel=None if max_ulp is None else ratio * 0.01, cos_diff=cos_diff, max_ulp=max_ulp,
        p99_ulp=None if max_ulp is None else max_ulp / 2, worst_index=index, worst_value=0.5, worst_ref=0.25,
        ref_absmax=1.0, ref_rms=0.5, rel_floor=0.5 / 1024, floor_excluded=floor_excluded, elem_ratio=ratio,
        cos_ratio=None if cos_diff is None else cos_diff / TOL.cos, tol_ratio=ratio)


def result(case: Case, status: str, ratio: float, **kw) -> CaseResult:
    """A case result with one output "out" of error/allowed ``ratio`` (skips have no output)."""
    outputs = {} if status == "skip" else {"out": metrics("out", ratio, passed=status == "pass", **kw)}
    reason = {"pass": "", "skip": "not claimed"}.get(status, f"out mismatch: worst {ratio:g}x its allowed error")
    return CaseResult(case=case, status=status, reason=reason, outputs=outputs, duration_s=0.01)


def decode(seed: int, sink: str = "none", topk: int = 16, h_q: int = 8, model: str = "v32") -> Case:
    return Case(op="sparse_decode", model=model, b=1, s_q=1, h_q=h_q, s_kv=64, topk=topk, sink=sink, seed=seed)


def sink_report() -> Report:
    """12 sparse-decode cases: the 4 with a finite or +inf sink fail, so does nothing else; top-k 32 appears
    in 2 failing and 2 passing cases (a coincidence); plus 3 passing dense-decode cases."""
    cases = []
    for i, sink in enumerate(["finite", "pos_inf", "finite", "pos_inf"]):
        cases.append(result(decode(i, sink=sink, topk=32 if i < 2 else 16), "fail", 50.0 + i))
    for i, sink in enumerate(["none", "none", "neg_inf", "neg_inf", "none", "none", "none", "none"]):
        cases.append(result(decode(10 + i, sink=sink, topk=32 if i < 2 else 64), "pass", 0.1 * (i + 1)))
    for i in range(3):
        dense = Case(op="dense_decode", model="v32", b=1, s_q=1, h_q=8, s_kv=32 * (i + 1), page_block_size=16,
                     seed=20 + i)
        cases.append(result(dense, "pass", 0.01 * (i + 1), index=(0, 0, 3, 7)))
    return Report(cases=cases, implementation={"spec": "planted_sink"}, settings={"profile": "ci", "seed": 0})
