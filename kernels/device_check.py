"""One script for the first session lent a GPU: engine presets, benchmark rows, one summary.

    python -m mlaverify.kernels.device_check [--out DIR] [--budget-s 450] [--presets a,b] [--ops a,b]
                                             [--skip-benchmark] [--dry-run]

On a CUDA machine it runs, in this order and within ``--budget-s`` seconds in all (default 450,
under the 8 minutes a 15-minute lease leaves after start-up and copying):

1. the verification engine's production presets against ``mlaverify.kernels`` at full size
   (what ``mlaverify check --impl mlaverify.kernels --preset NAME --preset-size full`` runs), one
   case of every preset first, then the remaining cases while time is left;
2. the kernel benchmark rows (``mlaverify.kernels.benchmark``, Triton only, quick repetitions),
   one op at a time while time is left, each op also under its ``BENCH_VARIANTS`` (sparse decode
   with 64-entry steps, ``MLAVERIFY_SPARSE_DECODE_BLOCK_N=64``: ~20% fewer instructions per entry
   than the default 32 on sm_90 but 0-18 spilled values reloaded per step; the measurement decides
   the default, see ``mlaverify.kernels._options``);

and writes ``device_check.json`` (everything, with the engine's per-case results) and
``device_check.md`` (the summary) into ``--out``. Nothing is started past the budget; what was
left out is listed as such. Without CUDA (or with the kernels interpreted) it refuses with exit
code 2 before doing anything; ``--dry-run`` prints the plan and works anywhere.

Exit codes: 0 every run case passed and every benchmark row is ok; 1 something failed or
errored; 2 refused (no CUDA, bad arguments).
"""

from __future__ import annotations

from . import _runtime  # first: decides compiled vs interpreted before any kernel is built

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence
from unittest import mock

import torch

from ._options import SPARSE_DECODE_BLOCK_N_ENV

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2
DEFAULT_BUDGET_S = 450.0  # 7.5 minutes: the "under 8 minutes" with room for the last step to end
BENCH_OPS = ("sparse_decode", "sparse_prefill", "dense_decode", "mha_prefill")
# Extra benchmark runs of an op under an environment setting (a kernel option), after its default run.
BENCH_VARIANTS = {"sparse_decode": ((SPARSE_DECODE_BLOCK_N_ENV, "64"),)}
IMPL = "mlaverify.kernels"


@dataclasses.dataclass(frozen=True)
class Plan:
    presets: tuple  # (preset name, (case ids ...)) in run order
    bench_ops: tuple  # benchmark ops, in run order
    budget_s: float

    def bench_runs(self) -> list[tuple]:
        """(op, (environment variable, value) or None) of every benchmark run, in run order."""
        return [(op, env) for op in self.bench_ops for env in (None, *BENCH_VARIANTS.get(op, ()))]

    def steps(self) -> list[str]:
        """The steps in the order they would run (one case of every preset first, then the rest)."""
        firsts = [f"check {name} {ids[0]}" for name, ids in self.presets if ids]
        rest = [f"check {name} {case_id}" for name, ids in self.presets for case_id in ids[1:]]
        bench = [f"benchmark {op}" + (f" {env[0]}={env[1]}" if env else "") for op, env in self.bench_runs()]
        return firsts + bench + rest


def make_plan(presets: Sequence[str] | None, ops: Sequence[str] | None, skip_benchmark: bool,
              budget_s: float) -> Plan:
    from mlaverify.verify.presets import PRESETS, preset_cases

    names = list(PRESETS) if presets is None else list(presets)
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise ValueError(f"--presets: expected names among {sorted(PRESETS)}, got {unknown}")
    bench = () if skip_benchmark else tuple(BENCH_OPS if ops is None else ops)
    bad = [op for op in bench if op not in BENCH_OPS]
    if bad:
        raise ValueError(f"--ops: expected names among {list(BENCH_OPS)}, got {bad}")
    if not budget_s > 0:
        raise ValueError(f"--budget-s: expected a positive number of seconds, got {budget_s}")
    return Plan(tuple((n, tuple(c.id for c in preset_cases(n, "full"))) for n in names), bench, float(budget_s))


def refusal() -> str | None:
    """Why this machine cannot run the device check, or None."""
    if not torch.cuda.is_available():
        return "needs a CUDA device: torch.cuda.is_available() is False on this machine"
    if _runtime.INTERPRETED:
        return (f"the kernels run in Triton's interpreter in this process (TRITON_INTERPRET="
                f"{os.environ.get('TRITON_INTERPRET')!r}); unset TRITON_INTERPRET to compile them for the GPU")
    return None


def _run_checks(plan: Plan, deadline: float, log) -> tuple[list, list]:
    """Engine results (CaseResult dicts with their preset) and the case ids left out for time."""
    from mlaverify.verify.cases import Case
    from mlaverify.verify.runner import run_check

    by_id = {}
    from mlaverify.verify.presets import preset_cases

    for name, _ in plan.presets:
        for case in preset_cases(name, "full"):
            by_id[(name, case.id)] = case
    order = [s.split(" ", 2)[1:] for s in plan.steps() if s.startswith("check ")]
    results, skipped = [], []
    for name, case_id in order:
        if time.monotonic() >= deadline:
            skipped.append(f"{name} {case_id}")
            continue
        case: Case = by_id[(name, case_id)]
        report = run_check(IMPL, cases=[case], device="cuda")
        for res in report.cases:
            row = res.to_dict()
            row["preset"] = name
            results.append(row)
            log(f"check {name} {case_id}: {res.status} ({res.duration_s:.1f} s) {res.reason[:120]}")
    return results, skipped


def _run_benchmark(plan: Plan, deadline: float, log) -> tuple[list, list]:
    from .benchmark import run_benchmark

    rows, skipped = [], []
    for op, env in plan.bench_runs():
        variant = "default" if env is None else f"{env[0]}={env[1]}"
        if time.monotonic() >= deadline:
            skipped.append(op if env is None else f"{op} {variant}")
            continue
        # the setting is read when a launch is planned; patch.dict restores the environment afterwards
        with mock.patch.dict(os.environ, dict([env]) if env else {}):
            try:
                new = run_benchmark([op], ["triton"], quick=True)["rows"]
            except Exception as exc:  # one op failing must not hide the others' numbers
                new = [{"op": op, "impl": "triton", "status": f"error: {type(exc).__name__}: {exc}"[:300]}]
        for row in new:
            row["variant"] = variant
            log(f"benchmark {op} [{variant}] {row.get('config', '')}: {row.get('status')} {row.get('tflops')} TFLOPS")
        rows += new
    return rows, skipped


def _markdown(summary: dict) -> str:
    lines = [f"# Device check: {summary['device']}", "",
             f"{summary['created']}, {summary['elapsed_s']:.0f} s of a {summary['budget_s']:.0f} s budget; "
             f"torch {summary['torch']}, triton {summary['triton']}.", "",
             "## Engine presets (full size)", "", "| preset | case | status | s | reason |", "|---|---|---|---|---|"]
    for r in summary["checks"]:
        lines.append(f"| {r['preset']} | {r['id']} | {r['status']} | {r['duration_s']:.1f} | {r['reason'][:160]} |")
    if summary["checks_skipped"]:
        lines += ["", f"Not run (time budget): {', '.join(summary['checks_skipped'])}"]
    lines += ["", "## Benchmark (Triton)", "", "| op | variant | config | status | kernel ms | TFLOPS | GB/s | target |",
              "|---|---|---|---|---|---|---|---|"]
    for r in summary["benchmark"]:
        lines.append(f"| {r.get('op')} | {r.get('variant', 'default')} | {r.get('config', '')} | {r.get('status')} | "
                     f"{r.get('kernel_ms')} | "
                     f"{r.get('tflops')} | {r.get('gb_per_s')} | {r.get('target')} |")
    if summary["benchmark_skipped"]:
        lines += ["", f"Not run (time budget): {', '.join(summary['benchmark_skipped'])}"]
    lines += ["", f"Verdict: {'PASS' if summary['passed'] else 'FAIL'}"]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run(plan: Plan, out: Path, log=print) -> dict:
    import triton

    start = time.monotonic()
    deadline = start + plan.budget_s
    checks, checks_skipped = _run_checks(plan, deadline, log)
    bench, bench_skipped = _run_benchmark(plan, deadline, log)
    passed = all(r["status"] == "pass" for r in checks) and all(r.get("status") == "ok" for r in bench)
    summary = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "budget_s": plan.budget_s, "elapsed_s": time.monotonic() - start,
        "checks": checks, "checks_skipped": checks_skipped, "benchmark": bench, "benchmark_skipped": bench_skipped,
        "passed": passed,
    }
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "device_check.json", json.dumps(summary, indent=1, default=str) + "\n")
    _write_atomic(out / "device_check.md", _markdown(summary))
    return summary


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlaverify.kernels.device_check",
                                     description="Engine presets and benchmark rows on a CUDA machine, one summary.")
    parser.add_argument("--out", type=Path, default=Path("device-check"), help="folder for the JSON and Markdown")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="seconds for everything")
    parser.add_argument("--presets", help="comma-separated engine presets (default: all)")
    parser.add_argument("--ops", help=f"comma-separated benchmark ops (default: {','.join(BENCH_OPS)})")
    parser.add_argument("--skip-benchmark", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit (no CUDA needed)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_REFUSED
    try:
        plan = make_plan(_names(args.presets), _names(args.ops), args.skip_benchmark, args.budget_s)
    except ValueError as exc:
        print(f"device_check: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.dry_run:
        print(f"device_check plan ({plan.budget_s:.0f} s budget; steps past it are skipped and listed):")
        for step in plan.steps():
            print(f"  {step}")
        return EXIT_OK
    why = refusal()
    if why is not None:
        print(f"device_check: refused: {why}", file=sys.stderr)
        return EXIT_REFUSED
    summary = run(plan, args.out)
    print(f"wrote {args.out / 'device_check.json'} and {args.out / 'device_check.md'}: "
          f"{'PASS' if summary['passed'] else 'FAIL'}")
    return EXIT_OK if summary["passed"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
