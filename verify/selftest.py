"""Self-test: the gate has teeth. Every planted bug must fail a case; the clean reference must pass all.

The case set is small and fixed (``SELFTEST_CASES``, derandomized: explicit parameters and seeds),
a few cases per op and model that together switch on every feature a planted bug lives in
(sinks, topk_length, extra cache, float32 V32 scales, value outliers, NaN-poisoned slots, invalid
rows and every invalid prefill index kind, GQA, causal with s_q > 1, fp16, zero-length
sequences, MHA backward), and three cases of production-like data (peaked, wide logits) for
the softmax-core bugs only such data exposes. Cases are judged under the default tolerance
policy. ``source="ci"`` uses the engine's deterministic ``ci`` draws instead.
A bug counts as killed at its first failing case, so the run stays short. Last, the gate's own
teeth: ``within_tolerance_drift`` passes every sparse prefill case, and the gate against a clean
baseline of the same cases must still fail it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from mlaverify.verify import planted
from mlaverify.verify.cases import Case
from mlaverify.verify.implementations import load_implementation
from mlaverify.verify.report_common import text_table
from mlaverify.verify.gate import compare_to_baseline
from mlaverify.verify.runner import generate_cases, run_case, run_check
from mlaverify.verify.tolerances import load_tolerances

__all__ = ["SELFTEST_CASES", "BugOutcome", "SelftestResult", "run_selftest", "selftest_cases"]

_SD = dict(op="sparse_decode", b=2, s_q=2)
_SP = dict(op="sparse_prefill", s_q=4, s_kv=48, topk=32)
_DD = dict(op="dense_decode", b=2)
_MH = dict(op="mha_prefill", b=2, h_q=4, causal=True, backward=True)

SELFTEST_CASES: tuple[Case, ...] = (
    # sparse decode V32: arbitrary float32 scales, mixed sinks, partial topk_length, NaN behind unconsidered
    # entries, rows with no valid entry, strided inputs, default softmax scale
    Case(model="v32", h_q=16, s_kv=96, topk=32, page_block_size=16, topk_length="partial", sink="mixed",
         invalid="rows", nan_fill="all", scales="float32", noncontiguous=True, seed=11, **_SD),
    # sparse decode MODEL1: extra cache with its own page block size and extra_topk_length, outlier tiles
    Case(model="model1", h_q=8, s_kv=80, topk=24, page_block_size=64, extra_s_kv=40, extra_topk=16,
         extra_page_block_size=2, topk_length="partial", extra_topk_length="partial", sink="finite",
         invalid="some", nan_fill="all", values="outliers", seed=12, **_SD),
    # sparse prefill: every invalid index kind, partial topk_length with NaN rows behind it, mixed sinks
    Case(model="v32", h_q=16, topk_length="partial", sink="mixed", invalid="some", nan_fill="all", seed=21, **_SP),
    Case(model="model1", h_q=8, topk_length="mixed", sink="finite", invalid="some", nan_fill="all", seed=22, **_SP),
    # dense decode: GQA, causal with s_q > 1, varlen, NaN after each sequence end, page block 16
    Case(model="v32", s_q=2, h_q=8, h_kv=2, s_kv=70, page_block_size=16, causal=True, seqlens="varlen",
         nan_fill="all", seed=31, **_DD),
    # dense decode fp16 with a zero-length sequence and an odd page block size
    Case(model="model1", s_q=1, h_q=8, s_kv=40, page_block_size=61, dtype="fp16", seqlens="zero", seed=32, **_DD),
    # mha prefill: causal with s_k != s_q, GQA, backward
    Case(model="d192", s_q=6, s_kv=9, h_kv=2, seqlens="varlen", seed=41, **_MH),
    Case(model="d128", s_q=5, s_kv=3, h_kv=2, seed=42, **_MH),
    # mha prefill: causal sliding window with a small left bound
    Case(model="d128", s_q=8, s_kv=10, h_kv=2, window_left=2, window_right=0, seed=43, **_MH),
    # production-like data (peaked softmax over 4 tiles of 64 keys, a finite sink): the online-softmax
    # bookkeeping bugs of planted.softmax_bugs, invisible on the flat cases above, move the output a lot here
    Case(op="sparse_prefill", model="v32", s_q=4, h_q=16, s_kv=300, topk=256, sink="finite", dist="peaked", seed=51),
    Case(op="sparse_decode", model="model1", b=2, s_q=1, h_q=16, s_kv=300, topk=256, page_block_size=64,
         sink="finite", dist="wide_logits", seed=53),
    Case(op="dense_decode", model="v32", b=1, s_q=1, h_q=8, s_kv=140, page_block_size=64, dist="peaked", seed=54),
)


def selftest_cases(source: str = "explicit", ops: Sequence[str] | None = None) -> list[Case]:
    if source == "explicit":  # the fixed cases, then the boundary cases (issue 11: their bugs live at corners)
        from mlaverify.verify.boundary_cases import boundary_cases
        from mlaverify.verify.cases import MODELS

        extra = [c for op in MODELS for m in MODELS[op] for c in boundary_cases(op, m)]
        return [c for c in (*SELFTEST_CASES, *extra) if ops is None or c.op in ops]
    if source == "ci":
        return generate_cases(ops, profile="ci")
    raise ValueError(f"source: expected 'explicit' or 'ci', got {source!r}")


@dataclass
class BugOutcome:
    name: str
    description: str
    ops: tuple[str, ...]
    killed_by: str | None = None      # case id of the first failing case
    reason: str = ""
    cases_run: int = 0
    seconds: float = 0.0

    @property
    def killed(self) -> bool:
        return self.killed_by is not None


@dataclass
class SelftestResult:
    bugs: list[BugOutcome] = field(default_factory=list)
    clean_failures: list[str] = field(default_factory=list)   # "case id: reason"
    clean_cases: int = 0
    drift_verdict: str = ""   # what the gate said about the within-tolerance drift ("" if not run)
    drift_caught: bool = False
    seconds: float = 0.0

    @property
    def survivors(self) -> list[BugOutcome]:
        return [b for b in self.bugs if not b.killed]

    @property
    def passed(self) -> bool:
        return not self.survivors and not self.clean_failures and self.clean_cases > 0 and self.drift_caught

    def kill_matrix(self) -> str:
        rows = []
        for b in self.bugs:
            verdict = "killed" if b.killed else "SURVIVED"
            how = f"{b.killed_by}: {b.reason[:90]}" if b.killed else f"passed all {b.cases_run} cases"
            rows.append([b.name, ",".join(b.ops), verdict, f"{b.seconds:.1f}s", how])
        clean = "PASS" if not self.clean_failures and self.clean_cases else "FAIL"
        rows.append(["(clean reference)", "all", clean, "", f"{self.clean_cases - len(self.clean_failures)}/"
                     f"{self.clean_cases} cases pass"])
        return text_table(["planted bug", "ops", "verdict", "time", "first failing case"], rows, indent="")

    def format(self) -> str:
        lines = [self.kill_matrix(), ""]
        for failure in self.clean_failures:
            lines.append(f"clean reference failed: {failure}")
        lines.append(f"within-tolerance drift vs clean baseline: {'caught' if self.drift_caught else 'NOT CAUGHT'} "
                     f"({self.drift_verdict})")
        killed = len(self.bugs) - len(self.survivors)
        lines.append(f"selftest: {'PASS' if self.passed else 'FAIL'}: {killed}/{len(self.bugs)} planted bugs killed, "
                     f"clean reference {self.clean_cases - len(self.clean_failures)}/{self.clean_cases} cases pass "
                     f"({self.seconds:.1f} s)")
        return "\n".join(lines)


def run_selftest(bugs: Sequence[str] | None = None, source: str = "explicit", device: str | None = "cpu",
                 on_progress: Callable[[str], None] | None = None) -> SelftestResult:
    """Run every planted bug (or those named) and the clean reference over the self-test cases."""
    start = time.perf_counter()
    names = planted.names() if bugs is None else list(bugs)
    for name in names:
        planted.get(name)  # ValueError naming the known bugs
    tolerances = load_tolerances(use_pyproject=False)  # the spec's table: a project override must not blunt it
    cases = selftest_cases(source)
    result = SelftestResult()
    clean = load_implementation(planted.module_for("clean"))  # its own profile: "reference"
    for case in cases:
        outcome = run_case(clean, case, tolerances, device)
        result.clean_cases += 1
        if outcome.status != "pass":
            result.clean_failures.append(f"{case.id}: {outcome.status}: {outcome.reason}")
    if on_progress:
        on_progress(f"clean reference: {result.clean_cases - len(result.clean_failures)}/{result.clean_cases} pass")
    for name in names:
        bug = planted.get(name)
        impl = load_implementation(planted.module_for(name))
        outcome = BugOutcome(bug.name, bug.description, bug.ops)
        t0 = time.perf_counter()
        for case in cases:
            if case.op not in bug.ops:
                continue
            outcome.cases_run += 1
            r = run_case(impl, case, tolerances, device)
            if r.status == "fail":
                outcome.killed_by, outcome.reason = case.id, r.reason
                break
        outcome.seconds = time.perf_counter() - t0
        result.bugs.append(outcome)
        if on_progress:
            on_progress(f"{name}: {'killed' if outcome.killed else 'SURVIVED'}")
    _gate_teeth(result, [c for c in cases if c.op in planted.DRIFT.ops], tolerances, device)
    result.seconds = time.perf_counter() - start
    return result


def _gate_teeth(result: SelftestResult, cases: list[Case], tolerances, device) -> None:
    """The drift passes every case, yet the gate against a clean baseline must fail it."""
    if not cases:
        result.drift_verdict = "no sparse prefill case to run"
        return
    # under FlashMLA's fixed table, which the drift stays inside (the calibrated budget, 2x the numerics
    # emulation's error, already fails the drift in the check itself: 2 bf16 ulps exceed it)
    baseline = run_check(planted.module_for("clean"), cases=cases, device=device, tolerances=tolerances,
                         tolerance_policy="flashmla")
    drifted = run_check(planted.module_for(planted.DRIFT.name), cases=cases, device=device, tolerances=tolerances,
                        tolerance_policy="flashmla")
    verdict = compare_to_baseline(baseline, drifted, factor=2.0)
    result.drift_caught = drifted.passed and not verdict.passed and bool(verdict.regressions)
    result.drift_verdict = (f"check {'passes' if drifted.passed else 'FAILS'}, gate "
                            f"{'fails' if not verdict.passed else 'PASSES'} with {len(verdict.regressions)} "
                            f"metric regressions")
