"""``mlaverify calibrate``: how far an implementation's error is from the numerics emulation's, from data.

    mlaverify calibrate --impl mlaverify.kernels --profile dev [--ops ...] [--models ...] [--json FILE]

Runs the cases of the profile (every distribution) under the calibrated policy and prints, per op and
output, the distribution of kernel error / emulation error on max abs, p99 abs and the cosine
difference (min, median, p90, max over the cases where the emulation's error is not 0), the k the
tolerance table holds, and a suggested k: the smallest of 1, 1.5, 2, 3, 4, 6, 8, 12, 16, ... at least
1.25 x the largest ratio seen (a 25% margin over the data). A team sets its budget from that, with
``--tolerance OP.OUT.k=VALUE`` or ``[tool.mlaverify.tolerances.OP.OUT] k = VALUE``.

Exit codes: 0 the statistics were computed, 2 usage error, 3 no case was verified. Torch is imported
only when the command runs.
"""
from __future__ import annotations

import argparse
import json
import math
from typing import TextIO

_LADDER = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
MARGIN = 1.25  # a suggested k leaves 25% over the largest ratio measured
_METRICS = (("max abs", "max_abs", "emu_max_abs"), ("p99 abs", "p99_abs", "emu_p99_abs"),
            ("cos diff", "cos_diff", "emu_cos_diff"))


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("calibrate", help="kernel error / numerics-emulation error per op and output; "
                                                "suggests the calibrated policy's k")
    p.add_argument("--impl", required=True, metavar="MODULE|path.py", help="implementation module or file")
    p.add_argument("--profile", choices=("ci", "dev", "thorough"), default="dev", help="case set (default dev)")
    p.add_argument("--ops", nargs="+", metavar="OP", help="ops (default: all)")
    p.add_argument("--models", nargs="+", metavar="MODEL", help="models (default: all)")
    p.add_argument("--max-examples", type=int, default=None, metavar="N", help="drawn cases per op and model")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the case draws (default 0)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--capabilities", default=None, metavar="PROFILE", help="capability profile")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the statistics as JSON")
    return p


def suggest_k(ratios: list[float]) -> float:
    """Smallest ladder value >= MARGIN x the largest ratio (doubling past the ladder)."""
    need = MARGIN * max(ratios, default=0.0)
    k = _LADDER[0]
    for k in _LADDER:
        if k >= need:
            return k
    while k < need:
        k *= 2
    return k


def _quantile(sorted_values: list[float], q: float) -> float:
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


def ratio_table(report) -> list[dict]:
    """Rows {op, output, metric, n, min, median, p90, max, k, suggested_k} from a calibrated report."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    ks: dict[tuple[str, str], float] = {}
    for case in report.cases:
        if case.status == "skip":
            continue
        for name, m in case.outputs.items():
            ks[(case.case.op, name)] = m.tolerance.k
            for label, kern, emu in _METRICS:
                a, e = getattr(m, kern), getattr(m, emu)
                if a is None or e is None or not e > 0 or not math.isfinite(a):
                    continue  # an exact emulation (lse, empty rows) gives no ratio: the floor judges there
                groups.setdefault((case.case.op, name, label), []).append(a / e)
    rows = []
    for (op, name, label), values in sorted(groups.items()):
        values.sort()
        rows.append({"op": op, "output": name, "metric": label, "n": len(values), "min": values[0],
                     "median": _quantile(values, 0.5), "p90": _quantile(values, 0.9), "max": values[-1],
                     "k": ks[(op, name)], "suggested_k": suggest_k(values)})
    return rows


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from mlaverify.verify.report_common import text_table, write_atomic
    from mlaverify.verify.runner import run_check

    if args.max_examples is not None and args.max_examples < 1:
        print(f"mlaverify: error: --max-examples: expected an int >= 1, got {args.max_examples}", file=err)
        return 2
    report = run_check(args.impl, ops=args.ops, models=args.models, profile=args.profile,
                       max_examples=args.max_examples, seed=args.seed, device=args.device,
                       capabilities=args.capabilities, tolerance_policy="calibrated")
    if not report.verified:
        print("calibrate: no case was verified (all skipped?)", file=err)
        return 3
    rows = ratio_table(report)
    print(f"kernel error / numerics-emulation error, {report.implementation.get('spec')}, profile {args.profile}, "
          f"{len(report.cases)} cases ({report.summary['fail']} fail under the current budgets)", file=out)
    print(text_table(["op", "output", "metric", "n", "min", "median", "p90", "max", "k", "suggested k"],
                     [[r["op"], r["output"], r["metric"], str(r["n"]), f"{r['min']:.3g}", f"{r['median']:.3g}",
                       f"{r['p90']:.3g}", f"{r['max']:.3g}", f"{r['k']:g}", f"{r['suggested_k']:g}"] for r in rows],
                     indent=""), file=out)
    if args.json:
        path = write_atomic(args.json, json.dumps({"implementation": report.implementation.get("spec"),
                                                   "profile": args.profile, "rows": rows}, indent=2))
        print(f"wrote {path}", file=out)
    return 0
