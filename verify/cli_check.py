"""The work behind ``mlaverify check`` (also used by ``gate --impl`` and ``baseline``).

Runs the engine with a progress display, shrinks and writes replay files for failures, prints
the per-op/per-model summary and each failure's discrepancy table with a replay command, and
writes the reports (JSON always, atomically; Markdown, HTML and JUnit with an output folder).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch

from mlaverify.verify.implementations import Implementation, load_implementation
from mlaverify.verify.presets import PRESETS, preset_cases
from mlaverify.verify.progress import Progress
from mlaverify.verify.replay import shrink_case, write_replay
from mlaverify.verify.report_common import (
    discrepancy_table, group_by_op_model, replay_command, text_table, write_atomic,
)
from mlaverify.verify.report_html import render_html
from mlaverify.verify.report_junit import render_junit
from mlaverify.verify.report_markdown import render_markdown
from mlaverify.verify.results import STATUSES, Report
from mlaverify.verify.runner import default_device, run_check
from mlaverify.verify.budgets import DEFAULT_POLICY, POLICIES
from mlaverify.verify.tolerances import apply_overrides, load_tolerances, parse_override

__all__ = ["CheckOutput", "add_check_options", "execute_check", "write_reports", "print_summary"]

DEFAULT_JSON = "mlaverify-report.json"      # where check writes its JSON report without --out
DEFAULT_REPLAYS = "mlaverify-replays"       # where failing cases go without --out
MAX_SHRINK = 5                              # failures shrunk per run (the rest are written as found)
SHRINK_BUDGET_S = 120.0                     # total seconds spent shrinking per run


@dataclass
class CheckOutput:
    report: Report
    replay_files: dict[str, str] = field(default_factory=dict)   # failing case id -> replay file
    written: list[Path] = field(default_factory=list)


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v for item in values for v in item.split(",") if v]


def add_check_options(p: argparse.ArgumentParser, impl_required: bool = True) -> None:
    p.add_argument("--impl", required=impl_required, metavar="MODULE|path.py",
                   help="module name or .py file exposing the FlashMLA API (e.g. mlaverify.kernels, flash_mla)")
    p.add_argument("--ops", nargs="+", metavar="OP", help="ops to verify (default: all the implementation has)")
    p.add_argument("--models", nargs="+", metavar="MODEL", help="models (v32, model1, d192, d128; default: all)")
    p.add_argument("--profile", choices=("ci", "dev", "thorough"), default=None,
                   help="case-drawing profile (default ci: deterministic)")
    p.add_argument("--max-examples", type=int, default=None, metavar="N",
                   help="drawn cases per op and model (the fixed corner cases of each op and model come on top)")
    p.add_argument("--seed", type=int, default=None, metavar="N", help="seed of the case draws (default 0)")
    p.add_argument("--preset", action="append", default=[], metavar="NAME",
                   help="run a named production configuration instead of drawn cases (repeatable): "
                        + ", ".join(PRESETS))
    p.add_argument("--preset-size", choices=("full", "cpu"), default=None,
                   help="full: production sizes (for GPUs); cpu: same structure, scaled down "
                        "(default: cpu on a CPU device, full otherwise)")
    p.add_argument("--shard", default=None, metavar="K/N", help="run only shard K of N (1-based), then `merge`")
    p.add_argument("--tolerance", action="append", default=[], metavar="OP.OUTPUT.FIELD=VALUE",
                   help="override one tolerance, e.g. sparse_decode.out.atol=2e-3 (repeatable)")
    p.add_argument("--tolerance-policy", choices=POLICIES, default=None,
                   help=f"flashmla (fixed table), calibrated (k x the numerics emulation's error, with a floor) or "
                        f"both (each policy that applies to a case must pass; default {DEFAULT_POLICY})")
    p.add_argument("--capabilities", default=None, metavar="PROFILE",
                   help="capability profile: full or flash_mla (default: the module's own or by name)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write report.json, report.md, report.html, junit.xml and replays/ into DIR")
    p.add_argument("--no-shrink", action="store_true", help="write failing cases as found, without shrinking")
    p.add_argument("--shrink-budget", type=float, default=SHRINK_BUDGET_S, metavar="SECONDS",
                   help=f"total time spent shrinking failures (default {SHRINK_BUDGET_S:g})")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'K/N' (1-based, as users count) -> the engine's (K - 1, N)."""
    if text is None:
        return None
    parts = text.split("/")
    try:
        k, n = (int(x) for x in parts)
    except ValueError:
        raise ValueError(f"--shard: expected K/N such as 2/4, got {text!r}") from None
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"--shard: expected 1 <= K <= N, got {text!r}")
    return k - 1, n


def _progress_callback(quiet: bool, stream: TextIO):
    state: dict[str, Progress] = {}

    def callback(done: int, total: int, result) -> None:
        if quiet:
            return
        if "bar" not in state:
            state["bar"] = Progress(total=total, stream=stream)
        state["bar"].update(result.status)
        if done == total:
            state["bar"].close()
    return callback


def execute_check(args: argparse.Namespace, impl: Implementation, settings: dict | None = None,
                  err: TextIO | None = None) -> CheckOutput:
    """Run the check described by ``args`` (missing ones taken from ``settings``, e.g. a baseline's)."""
    settings = settings or {}
    overrides = dict(parse_override(t) for t in args.tolerance)
    ops = _split(args.ops) or settings.get("ops")
    models = _split(args.models) or settings.get("models")
    profile = args.profile or settings.get("profile") or "ci"
    max_examples = args.max_examples if args.max_examples is not None else settings.get("max_examples")
    seed = args.seed if args.seed is not None else settings.get("seed", 0)
    presets = args.preset or settings.get("presets") or []
    cases, preset_size = None, None
    if presets:
        device = torch.device(args.device or default_device())
        preset_size = args.preset_size or settings.get("preset_size") or ("cpu" if device.type == "cpu" else "full")
        cases = [case for name in presets for case in preset_cases(name, preset_size, seed)]
    report = run_check(impl, ops=ops, models=models, profile=profile, max_examples=max_examples, seed=seed,
                       shard=parse_shard(args.shard), progress=_progress_callback(args.quiet, err),
                       device=args.device, tolerance_overrides=overrides or None,
                       corners=bool(settings.get("corners", True)), cases=cases,
                       tolerance_policy=args.tolerance_policy or settings.get("tolerance_policy") or DEFAULT_POLICY)
    report.settings["shard"] = args.shard  # as the user wrote it (1-based K/N)
    if presets:  # recorded so that a gate against this report re-runs the same presets
        report.settings["presets"], report.settings["preset_size"] = list(presets), preset_size
    return CheckOutput(report)


def write_replays(out: CheckOutput, impl: Implementation, directory: Path, shrink: bool, device,
                  budget_s: float = SHRINK_BUDGET_S) -> None:
    """One replay file per failing case; the first MAX_SHRINK failures shrunk within ``budget_s``."""
    deadline = time.monotonic() + budget_s
    # shrink under the tolerances the run used (command-line overrides included)
    tolerances = apply_overrides(load_tolerances(use_pyproject=False), out.report.settings.get("tolerances"))
    for i, failed in enumerate(out.report.failures()):
        result, shrunk_from = failed, None
        if shrink and failed.status == "fail" and i < MAX_SHRINK and time.monotonic() < deadline:
            result = shrink_case(impl, failed, tolerances, device,
                                 time_limit_s=min(60.0, deadline - time.monotonic()))
            shrunk_from = failed.id if result.id != failed.id else None
        path = write_replay(directory, result, impl.spec, shrunk_from=shrunk_from, device=device)
        out.replay_files[failed.id] = str(path)
        out.written.append(path)
    out.report.settings["replay_files"] = dict(out.replay_files)  # reports rendered later still point at them


def write_reports(out: CheckOutput, out_dir: str | None, json_path: str | None = None) -> None:
    report = out.report
    if out_dir is None:
        out.written.append(write_atomic(json_path or DEFAULT_JSON, report.to_json()))
        return
    d = Path(out_dir)
    out.written.append(write_atomic(d / "report.json", report.to_json()))
    out.written.append(write_atomic(d / "report.md", render_markdown(report, replay_files=out.replay_files)))
    out.written.append(write_atomic(d / "report.html", render_html(report, replay_files=out.replay_files)))
    out.written.append(write_atomic(d / "junit.xml", render_junit(report, replay_files=out.replay_files)))


def print_summary(out: CheckOutput, stream: TextIO, max_failures: int = 20) -> None:
    report = out.report
    impl = report.implementation.get("spec")
    rows = [[key, *(str(sum(c.status == st for c in cases)) for st in STATUSES),
             "FAIL" if any(c.status in ("fail", "error") for c in cases) else "ok"]
            for key, cases in group_by_op_model(report.cases).items()]
    print(text_table(["op/model", *STATUSES, "verdict"], rows, indent=""), file=stream)
    failures = report.failures()
    for c in failures[:max_failures]:
        print(f"\n{c.status.upper()} {c.id}\n  {c.reason}", file=stream)
        print(discrepancy_table(c), file=stream)
        print("  replay: " + replay_command(c, impl, out.replay_files.get(c.id)), file=stream)
    if len(failures) > max_failures:
        print(f"\n... {len(failures) - max_failures} more failures in the report", file=stream)
    s = report.summary
    print(f"\n{'PASS' if s['passed'] else 'FAIL'}: {s['pass']} passed, {s['fail']} failed, {s['error']} errors, "
          f"{s['skip']} skipped of {s['total']} cases ({impl})", file=stream)
    for path in out.written:
        print(f"wrote {path}", file=stream)


def load_impl(args: argparse.Namespace, spec: str | None = None) -> Implementation:
    return load_implementation(spec or args.impl, args.capabilities)
