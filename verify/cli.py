"""The ``mlaverify`` command.

    mlaverify check --impl MODULE|path.py [--ops ...] [--models ...] [--profile ci|dev|thorough]
                    [--max-examples N] [--seed N] [--out DIR] [--shard K/N] [--tolerance op.out.atol=X]
    mlaverify report REPORT.json [more.json ...] --format md|html|junit [-o FILE]
    mlaverify gate --baseline reports/NAME.json [--report R.json | --impl MODULE ...] [--max-regression-factor 2]
    mlaverify baseline --impl MODULE -o reports/NAME.json [check options]
    mlaverify replay FILE|CASE_ID [--impl MODULE]
    mlaverify selftest [--bugs NAME ...] [--source explicit|ci]
    mlaverify merge A.json B.json ... -o OUT.json
    mlaverify calibrate --impl MODULE [--profile dev]   (verify/cli_calibrate.py)

Exit codes: 0 success (everything passed), 1 a verification failed (a case, the gate, a planted
bug survived), 2 usage error (bad arguments, unreadable files, an implementation that cannot be
imported). ``main(argv)`` returns the code and never calls ``sys.exit``; ``main_entry`` does.
Torch runs one intra-op thread during a command unless OMP_NUM_THREADS is set.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import torch

from mlaverify.verify import cli_calibrate, cli_check
from mlaverify.verify.cases import Case
from mlaverify.verify.gate import compare_to_baseline
from mlaverify.verify.implementations import ImplementationError, load_implementation
from mlaverify.verify.replay import Replay, ReplayError, load_replay, run_replay
from mlaverify.verify.report_common import ReportError, load_report, merge_reports, write_atomic
from mlaverify.verify.report_html import render_html
from mlaverify.verify.report_junit import render_junit
from mlaverify.verify.report_markdown import render_markdown
from mlaverify.verify.results import tool_version

__all__ = ["main", "main_entry", "CliError", "UsageError"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_RENDERERS = {"md": render_markdown, "html": render_html, "junit": render_junit}


class CliError(Exception):
    """An error for the user; ``exit_code`` says how the command ends."""

    exit_code = EXIT_USAGE


class UsageError(CliError):
    """Bad arguments or input files."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would sys.exit(2); keep one exit path
        where = self.prog.removeprefix("mlaverify").strip()
        raise UsageError(f"{where}: {message}" if where else message)


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mlaverify", description="Verify MLA attention kernels (FlashMLA API) against the references.")
    p.add_argument("--version", action="version", version=f"mla-verify {tool_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = sub.add_parser("check", help="verify an implementation; write the JSON report (and more with --out)")
    cli_check.add_check_options(check)
    check.add_argument("--json", default=None, metavar="FILE",
                       help=f"JSON report path without --out (default {cli_check.DEFAULT_JSON})")

    report = sub.add_parser("report", help="render JSON report(s) (merged if several) as md, html or junit")
    report.add_argument("reports", nargs="+", metavar="REPORT.json")
    report.add_argument("--format", choices=sorted(_RENDERERS), required=True)
    report.add_argument("-o", "--output", default=None, metavar="FILE", help="default: standard output")

    gate = sub.add_parser("gate", help="fail on failures, missing cases or metric regressions vs a baseline")
    gate.add_argument("--baseline", required=True, metavar="BASELINE.json")
    gate.add_argument("--report", default=None, metavar="REPORT.json", help="judge this report instead of running")
    gate.add_argument("--max-regression-factor", type=float, default=2.0, metavar="F",
                      help="a metric may grow at most this factor over the baseline (default 2.0)")
    cli_check.add_check_options(gate, impl_required=False)

    base = sub.add_parser("baseline", help="run a check and write it as the baseline the gate compares against")
    cli_check.add_check_options(base)
    base.add_argument("-o", "--output", required=True, metavar="BASELINE.json")
    base.add_argument("--allow-failures", action="store_true", help="write the baseline even if cases fail")

    replay = sub.add_parser("replay", help="re-run one case from a replay file (or a case id)")
    replay.add_argument("target", metavar="FILE|CASE_ID")
    replay.add_argument("--impl", default=None, help="default: the implementation recorded in the file")
    replay.add_argument("--capabilities", default=None)
    replay.add_argument("--device", default=None)
    replay.add_argument("--worst", type=int, default=5, metavar="N", help="worst elements shown per output")

    selftest = sub.add_parser("selftest", help="run the engine against planted bugs and the clean reference")
    selftest.add_argument("--bugs", nargs="+", default=None, metavar="NAME")
    selftest.add_argument("--source", choices=("explicit", "ci"), default="explicit",
                          help="explicit: the fixed self-test cases (fast); ci: the engine's ci draws")
    selftest.add_argument("--device", default="cpu")

    merge = sub.add_parser("merge", help="combine shard reports into one")
    merge.add_argument("reports", nargs="+", metavar="REPORT.json")
    merge.add_argument("-o", "--output", required=True, metavar="OUT.json")
    cli_calibrate.add_parser(sub)
    return p


def _check(args, out, err) -> int:
    impl = cli_check.load_impl(args)
    result = cli_check.execute_check(args, impl, err=err)
    _finish_check(args, impl, result, json_path=args.json)
    cli_check.print_summary(result, out)
    return EXIT_OK if result.report.passed else EXIT_FAILED


def _finish_check(args, impl, result, json_path=None) -> None:
    if result.report.failures():
        replays = Path(args.out) / "replays" if args.out else Path(cli_check.DEFAULT_REPLAYS)
        cli_check.write_replays(result, impl, replays, shrink=not args.no_shrink, device=args.device,
                                budget_s=args.shrink_budget)
    cli_check.write_reports(result, args.out, json_path)


def _report(args, out, err) -> int:
    report = merge_reports([load_report(p) for p in args.reports]) if len(args.reports) > 1 \
        else load_report(args.reports[0])
    text = _RENDERERS[args.format](report)
    if args.output:
        print(f"wrote {write_atomic(args.output, text)}", file=out)
    else:
        out.write(text)
    return EXIT_OK


def _gate(args, out, err) -> int:
    if (args.report is None) == (args.impl is None):
        raise UsageError("gate: give exactly one of --report REPORT.json or --impl MODULE")
    if not args.max_regression_factor >= 1.0:  # checked before a long run, not after it
        raise UsageError(f"--max-regression-factor: expected a number >= 1.0, got {args.max_regression_factor}")
    baseline = load_report(args.baseline)
    if args.report is not None:
        current = load_report(args.report)
    else:
        impl = cli_check.load_impl(args)
        result = cli_check.execute_check(args, impl, settings=baseline.settings, err=err)
        if args.out:  # the gate writes the run's reports only when asked where
            _finish_check(args, impl, result)
        cli_check.print_summary(result, out)
        current = result.report
    verdict = compare_to_baseline(baseline, current, args.max_regression_factor)
    print(verdict.format(baseline_name=args.baseline), file=out)
    return EXIT_OK if verdict.passed else EXIT_FAILED


def _baseline(args, out, err) -> int:
    impl = cli_check.load_impl(args)
    result = cli_check.execute_check(args, impl, err=err)
    cli_check.print_summary(result, out)
    if not result.report.passed and not args.allow_failures:
        print("baseline: not written: cases fail (fix them, or pass --allow-failures to record them)", file=out)
        return EXIT_FAILED
    print(f"wrote baseline {write_atomic(args.output, result.report.to_json())}", file=out)
    return EXIT_OK


def _replay(args, out, err) -> int:
    target = Path(args.target)
    if target.is_file():
        replay = load_replay(target)
    else:
        try:
            case = Case.from_id(args.target)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"replay: {args.target!r} is neither a replay file nor a case id ({exc})") from None
        replay = Replay(case=case, tolerances={}, implementation=None, status="", reason="",
                        tool_version=tool_version())
    spec = args.impl or replay.implementation
    if not spec:
        raise UsageError("replay: the file names no implementation; pass --impl MODULE")
    impl = load_implementation(spec, args.capabilities)
    result, text = run_replay(impl, replay, args.device, args.worst)
    print(text, file=out)
    return EXIT_OK if result.status in ("pass", "skip") else EXIT_FAILED


def _selftest(args, out, err) -> int:
    from mlaverify.verify.selftest import run_selftest

    try:
        result = run_selftest(args.bugs, args.source, args.device, on_progress=lambda line: print(line, file=err))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(result.format(), file=out)
    return EXIT_OK if result.passed else EXIT_FAILED


def _merge(args, out, err) -> int:
    merged = merge_reports([load_report(p) for p in args.reports])
    path = write_atomic(args.output, merged.to_json())
    s = merged.summary
    print(f"merged {len(args.reports)} reports: {s['total']} cases ({s['pass']} passed, {s['fail']} failed, "
          f"{s['error']} errors, {s['skip']} skipped); wrote {path}", file=out)
    return EXIT_OK


_COMMANDS = {"check": _check, "report": _report, "gate": _gate, "baseline": _baseline, "replay": _replay,
             "selftest": _selftest, "merge": _merge, "calibrate": cli_calibrate.run}


def _torch_threads() -> int | None:
    """Intra-op threads for the run: 1 unless OMP_NUM_THREADS says otherwise. The cases are small, and on a
    shared CPU runner torch's spinning worker threads made a gate run 2.5x slower (measured: 54 s vs 137 s)."""
    return None if os.environ.get("OMP_NUM_THREADS") else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: sys.argv[1:]); returns the exit code."""
    out, err = sys.stdout, sys.stderr
    previous = torch.get_num_threads()
    try:
        args = _build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        if _torch_threads() is not None:
            torch.set_num_threads(_torch_threads())
        return _COMMANDS[args.command](args, out, err)
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except (CliError, ImplementationError, ReportError, ReplayError) as exc:
        code = exc.exit_code if isinstance(exc, CliError) else EXIT_USAGE
        print(f"mlaverify: error: {exc}", file=err)
        return code
    except ValueError as exc:  # bad option values the engine rejects (ops, models, tolerances, shard)
        print(f"mlaverify: error: {exc}", file=err)
        return EXIT_USAGE
    finally:
        torch.set_num_threads(previous)  # main() called from Python leaves the process as it found it


def main_entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
