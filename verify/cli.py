"""The ``mlaverify`` command.

    mlaverify check --impl MODULE|path.py [--ops ...] [--models ...] [--profile ci|dev|thorough]
                    [--max-examples N] [--seed N] [--out DIR] [--shard K/N] [--tolerance op.out.atol=X]
                    [--timeout S] [--in-process] [--allow-skips] [--allow-empty]
    mlaverify report REPORT.json [more.json ...] --format md|html|junit [-o FILE]
    mlaverify gate --baseline reports/NAME.json [--report R.json | --impl MODULE ...] [--max-regression-factor 2]
    mlaverify baseline --impl MODULE -o reports/NAME.json [check options]
    mlaverify replay FILE|CASE_ID [--impl MODULE]
    mlaverify selftest [--bugs NAME ...] [--source explicit|ci]
    mlaverify merge A.json B.json ... -o OUT.json
    mlaverify accuracy [--formats v32,model1,bf16,...] [--distributions ...] [--preset NAME] [--impl MODULE] --out DIR
    mlaverify calibrate --impl MODULE [--profile dev]   (verify/cli_calibrate.py)

Exit codes, one meaning each:
    0    verified: at least one case ran and every case that ran passed (for gate: and no regression)
    1    verification failed: a case failed or errored, a gate regression, a planted bug survived
    2    usage or set-up error: a bad option, an unreadable file, an implementation that cannot be
         imported (or exits, crashes or hangs while being imported), --device cuda without CUDA
    3    nothing was verified: no case selected, or every case skipped (--allow-empty / --allow-skips
         make these 0), or a gate that compared no case
    130  interrupted (Ctrl-C): the report holds the cases done so far
``main(argv)`` returns the code and never calls ``sys.exit``; ``main_entry`` does. A ``SystemExit``
raised by the implementation under test never becomes an exit code of its own: in a worker it fails
its case, in this process it is caught the same way. Building the parser imports no torch, so
``mlaverify --help`` answers at once; each command imports what it needs. Torch runs one intra-op
thread during a command unless OMP_NUM_THREADS is set.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from mlaverify.verify import cli_accuracy, cli_calibrate, cli_options
from mlaverify.verify.gate import GateError
from mlaverify.verify.implementations import ImplementationError
from mlaverify.verify.report_common import ReportError
from mlaverify.verify.results import tool_version

__all__ = ["main", "main_entry", "CliError", "UsageError", "EXIT_CODES"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_VERIFIED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = {EXIT_OK: "verified", EXIT_FAILED: "verification failed", EXIT_USAGE: "usage or set-up error",
              EXIT_NOT_VERIFIED: "nothing was verified", EXIT_INTERRUPTED: "interrupted"}
_FORMATS = ("html", "junit", "md")
_EPILOG = ("exit codes: 0 verified (at least one case ran, all passed); 1 verification failed; 2 usage or "
           "set-up error; 3 nothing verified (no case selected, all skipped; see --allow-empty/--allow-skips); "
           "130 interrupted")


class CliError(Exception):
    """An error for the user; ``exit_code`` says how the command ends."""

    exit_code = EXIT_USAGE


class UsageError(CliError):
    """Bad arguments or input files."""


class _ParserExit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # `--imp` is not `--impl`
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # argparse would sys.exit(2); keep one exit path
        where = self.prog.removeprefix("mlaverify").strip()
        raise UsageError(f"{where}: {message}" if where else message)

    def exit(self, status: int = 0, message: str | None = None) -> None:  # --help / --version
        if message:
            sys.stderr.write(message)
        raise _ParserExit(status)


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mlaverify", description="Verify MLA attention kernels (FlashMLA API) against the references.",
                epilog=_EPILOG)
    p.add_argument("--version", action="version", version=f"mla-verify {tool_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = sub.add_parser("check", help="verify an implementation; write the JSON report (and more with --out)",
                           epilog=_EPILOG)
    cli_options.add_check_options(check)

    report = sub.add_parser("report", help="render JSON report(s) (merged if several) as md, html or junit")
    report.add_argument("reports", nargs="+", metavar="REPORT.json")
    report.add_argument("--format", choices=_FORMATS, required=True)
    report.add_argument("-o", "--output", default=None, metavar="FILE", help="default: standard output")

    gate = sub.add_parser("gate", help="fail on failures, missing cases or metric regressions vs a baseline",
                          epilog=_EPILOG)
    gate.add_argument("--baseline", required=True, metavar="BASELINE.json")
    gate.add_argument("--report", default=None, metavar="REPORT.json", help="judge this report instead of running")
    gate.add_argument("--max-regression-factor", type=float, default=2.0, metavar="F",
                      help="a metric may grow at most this factor over the baseline (default 2.0; finite, >= 1)")
    gate.add_argument("--allow-impl-change", action="store_true",
                      help="gate an implementation against a baseline recorded for another one")
    cli_options.add_check_options(gate, impl_required=False)

    base = sub.add_parser("baseline", help="run a check and write it as the baseline the gate compares against",
                          epilog=_EPILOG)
    cli_options.add_check_options(base)
    base.add_argument("-o", "--output", required=True, metavar="BASELINE.json")
    base.add_argument("--allow-failures", action="store_true", help="write the baseline even if cases fail")

    replay = sub.add_parser("replay", help="re-run one case from a replay file (or a case id)")
    replay.add_argument("target", metavar="FILE|CASE_ID")
    replay.add_argument("--impl", default=None, help="default: the implementation recorded in the file")
    replay.add_argument("--capabilities", default=None)
    replay.add_argument("--device", default=None)
    replay.add_argument("--worst", type=int, default=5, metavar="N", help="worst elements shown per output")
    replay.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="limit of the case")
    replay.add_argument("--in-process", action="store_true", help="run the implementation in this process")

    selftest = sub.add_parser("selftest", help="run the engine against planted bugs and the clean reference")
    selftest.add_argument("--bugs", nargs="+", default=None, metavar="NAME")
    selftest.add_argument("--source", choices=("explicit", "ci"), default="explicit",
                          help="explicit: the fixed self-test cases (fast); ci: the engine's ci draws")
    selftest.add_argument("--device", default="cpu")

    merge = sub.add_parser("merge", help="combine shard reports into one")
    merge.add_argument("reports", nargs="+", metavar="REPORT.json")
    merge.add_argument("-o", "--output", required=True, metavar="OUT.json")
    cli_accuracy.add_parser(sub)
    cli_calibrate.add_parser(sub)
    return p


# ---- commands (each imports what it needs) ----------------------------------------------------
def _check(args, out, err) -> int:
    from mlaverify.verify.cli_check import check_command

    return check_command(args, out, err)


def _gate(args, out, err) -> int:
    from mlaverify.verify.cli_check import gate_command

    return gate_command(args, out, err)


def _baseline(args, out, err) -> int:
    from mlaverify.verify.cli_check import baseline_command

    return baseline_command(args, out, err)


def _report(args, out, err) -> int:
    from mlaverify.verify.report_common import load_report, merge_reports, write_atomic

    renderer = _renderer(args.format)
    report = merge_reports([load_report(p) for p in args.reports]) if len(args.reports) > 1 \
        else load_report(args.reports[0])
    text = renderer(report)
    if args.output:
        print(f"wrote {write_atomic(args.output, text)}", file=out)
    else:
        out.write(text)
    return EXIT_OK


def _renderer(fmt: str):
    if fmt == "md":
        from mlaverify.verify.report_markdown import render_markdown
        return render_markdown
    if fmt == "html":
        from mlaverify.verify.report_html import render_html
        return render_html
    from mlaverify.verify.report_junit import render_junit
    return render_junit


def _replay(args, out, err) -> int:
    from mlaverify.verify.cases import Case
    from mlaverify.verify.cli_options import default_timeout
    from mlaverify.verify.implementations import load_implementation
    from mlaverify.verify.replay import Replay, load_replay, run_replay
    from mlaverify.verify.runner import default_device

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
    device = args.device or default_device()
    timeout = args.timeout if args.timeout is not None else default_timeout(device.split(":")[0])
    impl = load_implementation(spec, args.capabilities, isolate=not args.in_process, timeout_s=timeout)
    try:
        result, text = run_replay(impl, replay, device, args.worst)
    finally:
        impl.close()
    print(text, file=out)
    if result.status == "pass":
        return EXIT_OK
    return EXIT_NOT_VERIFIED if result.status == "skip" else EXIT_FAILED


def _selftest(args, out, err) -> int:
    from mlaverify.verify.selftest import run_selftest

    try:
        result = run_selftest(args.bugs, args.source, args.device, on_progress=lambda line: print(line, file=err))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(result.format(), file=out)
    return EXIT_OK if result.passed else EXIT_FAILED


def _merge(args, out, err) -> int:
    from mlaverify.verify.report_common import load_report, merge_reports, write_atomic

    merged = merge_reports([load_report(p) for p in args.reports])
    path = write_atomic(args.output, merged.to_json())
    s = merged.summary
    print(f"merged {len(args.reports)} reports: {s['total']} cases ({s['pass']} passed, {s['fail']} failed, "
          f"{s['error']} errors, {s['skip']} skipped); wrote {path}", file=out)
    return EXIT_OK


_COMMANDS = {"check": _check, "report": _report, "gate": _gate, "baseline": _baseline, "replay": _replay,
             "selftest": _selftest, "merge": _merge, "accuracy": cli_accuracy.run, "calibrate": cli_calibrate.run}
_TORCH_COMMANDS = {"check", "gate", "baseline", "replay", "selftest", "accuracy", "calibrate"}


def _torch_threads() -> int | None:
    """Intra-op threads for the run: 1 unless OMP_NUM_THREADS says otherwise. The cases are small, and on a
    shared CPU runner torch's spinning worker threads made a gate run 2.5x slower (measured: 54 s vs 137 s)."""
    return None if os.environ.get("OMP_NUM_THREADS") else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: sys.argv[1:]); returns the exit code."""
    out, err = sys.stdout, sys.stderr
    try:
        args = _build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except _ParserExit as exc:
        return exc.code
    except UsageError as exc:
        print(f"mlaverify: error: {exc}", file=err)
        return EXIT_USAGE
    previous = None
    try:
        if args.command in _TORCH_COMMANDS and _torch_threads() is not None:
            import torch

            previous = torch.get_num_threads()
            torch.set_num_threads(_torch_threads())
        return _COMMANDS[args.command](args, out, err)
    except (CliError, ImplementationError, ReportError, GateError, cli_options.OptionError) as exc:  # ReplayError too
        code = exc.exit_code if isinstance(exc, CliError) else EXIT_USAGE
        print(f"mlaverify: error: {exc}", file=err)
        return code
    except ValueError as exc:  # bad option values the engine rejects (ops, models, tolerances, shard)
        print(f"mlaverify: error: {exc}", file=err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mlaverify: interrupted", file=err)
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # the implementation under test, outside any call the engine guards
        print(f"mlaverify: error: the implementation called sys.exit({exc.code!r}) outside a case; "
              "nothing it did counts as verified", file=err)
        return EXIT_FAILED
    finally:
        if previous is not None:
            import torch

            torch.set_num_threads(previous)  # main() called from Python leaves the process as it found it


def main_entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
