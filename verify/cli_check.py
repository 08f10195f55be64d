"""The work behind ``mlaverify check``, ``gate`` and ``baseline``.

Each command checks its options before a case runs, loads the implementation (in a worker process
unless ``--in-process``), runs the engine with a progress display, writes the run's report (JSON
always, atomically; Markdown, HTML and JUnit with ``--out``) before shrinking failures, shrinks and
writes replay files with progress, rewrites the reports with the replay paths, and prints the
per-op/per-model summary and each failure's discrepancy table with a replay command.

Exit codes (see `mlaverify.verify.cli`): 0 verified, 1 failed, 2 usage or set-up error, 3 nothing
verified, 130 interrupted. A fault of the implementation at import (an exception, sys.exit, a
crash) ends with 2 and a report whose ``fatal`` says what happened; a fault during a case fails
that case.
"""
from __future__ import annotations

import argparse
import datetime
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch

from mlaverify.verify.cli_options import DEFAULT_JSON, DEFAULT_REPLAYS, parse_shard, split_list, validate_run_options
from mlaverify.verify.gate import GateError, check_comparable, check_factor, compare_to_baseline
from mlaverify.verify.implementations import Implementation, ImplementationError, load_implementation
from mlaverify.verify.presets import preset_cases
from mlaverify.verify.progress import Progress
from mlaverify.verify.replay import shrink_case, write_replay
from mlaverify.verify.report_common import (
    discrepancy_table, group_by_op_model, load_report, replay_command, text_table, write_atomic,
)
from mlaverify.verify.report_html import render_html
from mlaverify.verify.report_junit import render_junit
from mlaverify.verify.report_markdown import render_markdown
from mlaverify.verify.results import STATUSES, Report
from mlaverify.verify.coverage import attach_coverage, print_coverage
from mlaverify.verify.runner import default_device, environment, run_check
from mlaverify.verify.budgets import DEFAULT_POLICY
from mlaverify.verify.tolerances import apply_overrides, load_tolerances, parse_override

__all__ = ["CheckOutput", "check_command", "gate_command", "baseline_command", "exit_code", "print_summary"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_VERIFIED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
MAX_SHRINK = 5                              # failures shrunk per run (the rest are written as found)


@dataclass
class CheckOutput:
    report: Report
    replay_files: dict[str, str] = field(default_factory=dict)   # failing case id -> replay file
    written: list[Path] = field(default_factory=list)


# ---- loading and running ----------------------------------------------------------------------
def load_impl(args: argparse.Namespace, spec: str | None = None) -> Implementation:
    return load_implementation(spec or args.impl, args.capabilities, isolate=not args.in_process,
                               timeout_s=args.timeout, threads=torch.get_num_threads())


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
    ops = split_list(args.ops) or settings.get("ops")
    models = split_list(args.models) or settings.get("models")
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
    attach_coverage(report, args, profile, bool(presets))  # issue 11: observed boundary features
    if presets:  # recorded so that a gate against this report re-runs the same presets
        report.settings["presets"], report.settings["preset_size"] = list(presets), preset_size
    return CheckOutput(report)


def aborted_report(args: argparse.Namespace, why: str) -> Report:
    """The report of a run that ended before any case: who, where and why."""
    device = torch.device(args.device or default_device())
    return Report(cases=[], environment=environment(device),
                  implementation={"spec": args.impl}, run_status="aborted", fatal=why,
                  settings={"device": str(device), "isolation": "in-process" if args.in_process else "subprocess"},
                  created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


# ---- writing ----------------------------------------------------------------------------------
def write_replays(out: CheckOutput, impl: Implementation, directory: Path, shrink: bool, device,
                  budget_s: float, err: TextIO | None = None) -> None:
    """One replay file per failing case; the first MAX_SHRINK failures shrunk within ``budget_s``."""
    deadline = time.monotonic() + budget_s
    # shrink under the tolerances the run used (command-line overrides included)
    tolerances = apply_overrides(load_tolerances(use_pyproject=False), out.report.settings.get("tolerances"))
    failures = out.report.failures()
    to_shrink = min(MAX_SHRINK, sum(f.status == "fail" for f in failures)) if shrink else 0
    shrunk = 0
    for failed in failures:
        result, shrunk_from = failed, None
        if shrink and failed.status == "fail" and shrunk < MAX_SHRINK and time.monotonic() < deadline:
            shrunk += 1
            if err is not None:
                print(f"shrinking failure {shrunk}/{to_shrink}: {failed.id} "
                      f"(at most {min(60.0, deadline - time.monotonic()):.0f} s)", file=err, flush=True)
            result = shrink_case(impl, failed, tolerances, device,
                                 time_limit_s=min(60.0, deadline - time.monotonic()))
            shrunk_from = failed.id if result.id != failed.id else None
        path = write_replay(directory, result, impl.spec, shrunk_from=shrunk_from, device=device)
        out.replay_files[failed.id] = str(path)
        out.written.append(path)
    out.report.settings["replay_files"] = dict(out.replay_files)  # reports rendered later still point at them


def _clear_replays(directory: Path) -> None:
    """An --out folder's replays/ from an older run must not mix with this run's."""
    if directory.is_dir():
        shutil.rmtree(directory)


def write_reports(out: CheckOutput, out_dir: str | None, json_path: str | None = None) -> None:
    report = out.report
    out.written = [p for p in out.written if p.suffix == ".json" and p.parent.name == "replays"]
    if out_dir is None:
        out.written.append(write_atomic(json_path or DEFAULT_JSON, report.to_json()))
        return
    d = Path(out_dir)
    out.written.append(write_atomic(d / "report.json", report.to_json()))
    out.written.append(write_atomic(d / "report.md", render_markdown(report, replay_files=out.replay_files)))
    out.written.append(write_atomic(d / "report.html", render_html(report, replay_files=out.replay_files)))
    out.written.append(write_atomic(d / "junit.xml", render_junit(report, replay_files=out.replay_files)))


def _finish(args, impl: Implementation, result: CheckOutput, err: TextIO) -> None:
    """Reports first (so an interrupted shrink still leaves them), then replays, then the reports again."""
    replays = Path(args.out) / "replays" if args.out else Path(DEFAULT_REPLAYS)
    if args.out:
        _clear_replays(replays)
    write_reports(result, args.out, args.json)
    if result.report.failures() and result.report.run_status == "complete":
        try:
            write_replays(result, impl, replays, shrink=not args.no_shrink, device=args.device,
                          budget_s=args.shrink_budget, err=None if args.quiet else err)
        except KeyboardInterrupt:
            result.report.run_status = "interrupted"
        write_reports(result, args.out, args.json)


# ---- verdicts ---------------------------------------------------------------------------------
def exit_code(report: Report, allow_skips: bool = False, allow_empty: bool = False) -> int:
    if report.run_status == "interrupted":
        return EXIT_INTERRUPTED
    if not report.summary["passed"]:
        return EXIT_FAILED
    if report.settings.get("selected", len(report.cases)) == 0:
        return EXIT_OK if allow_empty else EXIT_NOT_VERIFIED
    if not report.verified:
        return EXIT_OK if allow_skips else EXIT_NOT_VERIFIED
    if report.coverage_missing:  # --require-coverage: a boundary feature no case could have failed on
        return EXIT_FAILED
    return EXIT_OK


def _not_verified_line(report: Report) -> str:
    if report.settings.get("selected", len(report.cases)) == 0:
        return ("NOT VERIFIED: no case was selected (the ops, models, presets and shard chosen select nothing); "
                "pass --allow-empty if that is expected")
    reasons: dict[str, int] = {}
    for c in report.cases:
        reasons[c.reason] = reasons.get(c.reason, 0) + 1
    top = "; ".join(f"{n} x {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
    return (f"NOT VERIFIED: all {len(report.cases)} selected cases were skipped ({top}); "
            "pass --allow-skips if that is expected")


def print_summary(out: CheckOutput, stream: TextIO, max_failures: int = 20) -> None:
    report = out.report
    impl = report.implementation.get("spec")
    rows = [[key, *(str(sum(c.status == st for c in cases)) for st in STATUSES),
             "FAIL" if any(c.status in ("fail", "error") for c in cases) else
             ("skipped" if all(c.status == "skip" for c in cases) else "ok")]
            for key, cases in group_by_op_model(report.cases).items()]
    if rows:
        print(text_table(["op/model", *STATUSES, "verdict"], rows, indent=""), file=stream)
    failures = report.failures()
    for c in failures[:max_failures]:
        print(f"\n{c.status.upper()} {c.id}\n  {c.reason}", file=stream)
        print(discrepancy_table(c), file=stream)
        print("  replay: " + replay_command(c, impl, out.replay_files.get(c.id)), file=stream)
    if len(failures) > max_failures:
        print(f"\n... {len(failures) - max_failures} more failures in the report", file=stream)
    s = report.summary
    counts = (f"{s['pass']} passed, {s['fail']} failed, {s['error']} errors, {s['skip']} skipped of "
              f"{s['total']} cases ({impl}, {report.settings.get('isolation', 'in-process')})")
    verdict = report.verdict if report.gate is None else ("FAIL" if not s["passed"] else "PASS")
    if report.run_status == "interrupted":
        print(f"\nINTERRUPTED after {s['total']} of {report.settings.get('selected', '?')} cases: {counts}", file=stream)
    elif verdict == "NOT VERIFIED":
        print(f"\n{_not_verified_line(report)}", file=stream)
    else:
        print(f"\n{verdict}: {counts}", file=stream)
    for path in out.written:
        print(f"wrote {path}", file=stream)


# ---- the commands -----------------------------------------------------------------------------
def _load_or_abort(args, out: TextIO) -> Implementation:
    """The implementation, or (ImplementationError) the aborted run's report written and re-raised."""
    try:
        return load_impl(args)
    except ImplementationError as exc:
        aborted = CheckOutput(aborted_report(args, str(exc)))
        write_reports(aborted, args.out, args.json)
        for path in aborted.written:
            print(f"wrote {path} (run aborted: {exc})", file=out)
        raise


def _run_and_summarize(args, out: TextIO, err: TextIO) -> CheckOutput:
    """check's and baseline's run: load the implementation, run the cases, write the reports, summarize."""
    validate_run_options(args)
    impl = _load_or_abort(args, out)
    try:
        result = execute_check(args, impl, err=err)
        _finish(args, impl, result, err)
    finally:
        impl.close()
    print_summary(result, out)
    return result


def check_command(args, out: TextIO, err: TextIO) -> int:
    result = _run_and_summarize(args, out, err)
    print_coverage(result.report, out)
    return exit_code(result.report, args.allow_skips, args.allow_empty)


def gate_command(args, out: TextIO, err: TextIO) -> int:
    if (args.report is None) == (args.impl is None):
        raise GateError("gate: give exactly one of --report REPORT.json or --impl MODULE")
    try:  # checked before a long run, not after it
        check_factor(args.max_regression_factor)
    except ValueError as exc:
        raise GateError(f"--max-regression-factor: {exc}") from None
    baseline = load_report(args.baseline)
    if not baseline.cases:
        raise GateError(f"gate: the baseline {args.baseline} holds no case: it cannot verify anything")
    if args.report is not None:
        result = CheckOutput(load_report(args.report))
        check_comparable(baseline, result.report, args.allow_impl_change)
        verdict = compare_to_baseline(baseline, result.report, args.max_regression_factor, args.baseline)
        if args.out:
            result.report.gate = verdict.to_dict()
            write_reports(result, args.out)
            for path in result.written:
                print(f"wrote {path}", file=out)
    else:
        validate_run_options(args)
        if baseline.implementation.get("spec") != args.impl and not args.allow_impl_change:
            raise GateError(f"gate: the baseline verifies implementation {baseline.implementation.get('spec')!r} "
                            f"but --impl is {args.impl!r}; gate an implementation against its own baseline, or "
                            "pass --allow-impl-change")
        impl = _load_or_abort(args, out)
        try:
            result = execute_check(args, impl, settings=baseline.settings, err=err)
            verdict = compare_to_baseline(baseline, result.report, args.max_regression_factor, args.baseline)
            result.report.gate = verdict.to_dict()  # the reports say what the gate decided, not only the run
            _finish(args, impl, result, err)
        finally:
            impl.close()
        print_summary(result, out)
    print(verdict.format(), file=out)
    print_coverage(result.report, out)
    if result.report.run_status == "interrupted":
        return EXIT_INTERRUPTED
    if verdict.verdict == "FAIL":
        return EXIT_FAILED
    if verdict.verdict == "NOT VERIFIED":
        return EXIT_OK if args.allow_skips else EXIT_NOT_VERIFIED
    if result.report.coverage_missing:  # the baseline's cases no longer reach a boundary feature
        return EXIT_FAILED
    return EXIT_OK


def baseline_command(args, out: TextIO, err: TextIO) -> int:
    report = _run_and_summarize(args, out, err).report
    code = exit_code(report, allow_skips=False, allow_empty=False)
    if code == EXIT_INTERRUPTED:
        print("baseline: not written: the run was interrupted", file=out)
        return code
    if not report.verified:
        print("baseline: not written: no case was executed, so it could gate nothing", file=out)
        return EXIT_NOT_VERIFIED
    if not report.passed and not args.allow_failures:
        print("baseline: not written: cases fail (fix them, or pass --allow-failures to record them)", file=out)
        return EXIT_FAILED
    if report.coverage_missing:
        print_coverage(report, out)
        print("baseline: not written: its cases leave boundary features unobserved, so it could not gate them "
              "(--no-require-coverage to write it anyway)", file=out)
        return EXIT_FAILED
    print(f"wrote baseline {write_atomic(args.output, report.to_json())}", file=out)
    return EXIT_OK
