"""What every report format shares: loading, merging, grouping, the discrepancy table, replay commands.

Reports are the engine's `Report` objects (mlaverify.verify.results); this module only reads them.
"""
from __future__ import annotations

import math
import os
import re
import shlex
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from mlaverify.verify.report_locate import named_index
from mlaverify.verify.results import CaseResult, Report, TensorMetrics

__all__ = ["ReportError", "load_report", "write_atomic", "merge_reports", "group_by_op_model", "feature_matrix",
           "discrepancy_rows", "discrepancy_table", "text_table", "replay_command", "replay_files_of", "impl_spec",
           "worst_cases", "case_score", "fmt_num", "fmt_metric", "fmt_ratio", "case_ratio", "failing_outputs",
           "NA_FLOOR", "NA_COS", "METRIC_LABELS", "feature_groups", "gate_summary", "gate_tables", "largest_errors",
           "CoverageView", "coverage_view"]

# Metrics shown in tables and compared by the gate, in display order, with their column labels.
METRIC_LABELS = {
    "max_ulp": "max ulp",
    "p99_ulp": "p99 ulp",
    "cos_diff": "cos diff",
    "max_abs": "max abs",
    "max_rel": "max rel",
    "mismatch_fraction": "mismatch frac",
    "tol_ratio": "error/allowed",
}


class ReportError(Exception):
    """A report file cannot be read or combined; the message is for the user."""


def load_report(path: str | os.PathLike) -> Report:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"report {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        return Report.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"report {path}: not a mla-verify JSON report ({exc})") from None


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# Settings that make shards parts of one run; reports that differ in any of them are not merged.
_SAME_IN_EVERY_SHARD = ("profile", "seed", "max_examples", "tolerances", "ops", "models", "presets", "preset_size",
                        "corners")


def merge_reports(reports: Sequence[Report]) -> Report:
    """One report holding every case of ``reports`` (shards of one run, or runs of one implementation).

    Cases are ordered by id; a case id present twice is an error (the same shard merged twice), as is
    mixing implementations or runs with different settings (profile, seed, tolerances, selection).
    """
    if not reports:
        raise ReportError("merge: expected at least one report, got none")
    specs = sorted({str(r.implementation.get("spec")) for r in reports})
    if len(specs) > 1:
        raise ReportError(f"merge: the reports verify different implementations ({', '.join(specs)}); "
                          "merge the reports of one implementation at a time")
    for key in _SAME_IN_EVERY_SHARD:
        values = [r.settings.get(key) for r in reports]
        if any(v != values[0] for v in values[1:]):
            shown = ", ".join(f"report {i + 1}: {v!r}" for i, v in enumerate(values))
            raise ReportError(f"merge: the reports were run with different {key} ({shown}); shards of one run "
                              "share the profile, seed, tolerances and case selection")
    seen: dict[str, int] = {}
    cases: list[CaseResult] = []
    for i, report in enumerate(reports):
        for c in report.cases:
            if c.id in seen:
                raise ReportError(f"merge: case {c.id} appears in report {seen[c.id] + 1} and report {i + 1}; "
                                  "each shard must be merged once")
            seen[c.id] = i
            cases.append(c)
    cases.sort(key=lambda c: c.id)
    first = reports[0]
    settings = dict(first.settings)
    shards = sorted({str(r.settings.get("shard")) for r in reports if r.settings.get("shard")})
    settings["shard"] = None
    if shards:
        settings["merged_shards"] = shards
    replay_files: dict[str, str] = {}
    for r in reports:
        replay_files.update(r.settings.get("replay_files") or {})
    settings["replay_files"] = replay_files
    settings["selected"] = sum(int(r.settings.get("selected", len(r.cases))) for r in reports)
    run_status = next((r.run_status for r in reports if r.run_status != "complete"), "complete")
    return Report(cases=cases, environment=dict(first.environment), implementation=dict(first.implementation),
                  settings=settings, created=max(r.created for r in reports), run_status=run_status)


def group_by_op_model(cases: Iterable[CaseResult]) -> dict[str, list[CaseResult]]:
    groups: dict[str, list[CaseResult]] = defaultdict(list)
    for c in cases:
        groups[f"{c.case.op}/{c.case.model}"].append(c)
    return dict(sorted(groups.items()))


def feature_matrix(cases: Iterable[CaseResult]) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    """(features, columns "op/model", {(feature, column): {"pass": n, "fail": n, "skip": n}}).

    "fail" counts fail and error: both mean the case did not pass.
    """
    cells: dict[tuple[str, str], dict] = defaultdict(lambda: {"pass": 0, "fail": 0, "skip": 0})
    features, columns = set(), set()
    for c in cases:
        column = f"{c.case.op}/{c.case.model}"
        columns.add(column)
        kind = {"pass": "pass", "skip": "skip"}.get(c.status, "fail")
        for feature in c.case.features():
            features.add(feature)
            cells[(feature, column)][kind] += 1
    return sorted(features, key=_feature_key), sorted(columns), dict(cells)


def feature_groups(features: Iterable[str]) -> dict[str, list[str]]:
    """Features grouped by kind ("sink" -> [sink:finite, sink:none], "h" -> [h8, h64], flags on their own),
    kinds in alphabetical order, each kind's features in `feature_matrix`'s order."""
    from mlaverify.verify.root_cause import feature_kind

    groups: dict[str, list[str]] = defaultdict(list)
    for f in sorted(features, key=_feature_key):
        kind, value = feature_kind(f)
        groups["flags" if value is None else kind].append(f)
    return dict(sorted(groups.items()))


def _feature_key(feature: str) -> tuple[str, int]:
    """Sort "h8" before "h64" (name, then number); other features alphabetically."""
    m = re.fullmatch(r"([a-z_]+)(\d+)", feature)
    return (m.group(1), int(m.group(2))) if m else (feature, -1)


def case_ratio(c: CaseResult) -> float | None:
    """The case's largest error / allowed over its outputs (None: no output compared)."""
    ratios = [m.tol_ratio for m in c.outputs.values() if m.tol_ratio is not None and not math.isnan(m.tol_ratio)]
    return max(ratios) if ratios else None


def failing_outputs(c: CaseResult) -> list[str]:
    """Names of the outputs and checks that failed ("out", "check repeat_bitwise")."""
    return ([m.name for m in c.outputs.values() if not m.passed]
            + [f"check {ch.name}" for ch in c.checks.values() if not ch.passed])


def case_score(c: CaseResult) -> float:
    """Badness for ranking: failures first, then the output closest to its tolerance (error / allowed)."""
    return (1e30 if c.status in ("fail", "error") else 0.0) + (case_ratio(c) or 0.0)


def worst_cases(cases: Iterable[CaseResult], n: int) -> list[CaseResult]:
    return sorted((c for c in cases if c.status != "skip"), key=case_score, reverse=True)[:n]


def fmt_num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


NA_FLOOR = "n/a"                          # ulp / rel error: no element of the reference above the floor
NA_COS = "n/a (reference all zero)"       # cosine difference: the reference has no direction


def fmt_metric(x: float | None, na: str = NA_FLOOR) -> str:
    """A metric that may be undefined (None): ``na`` instead of a number."""
    return na if x is None else fmt_num(x)


def fmt_ratio(x: float | None) -> str:
    """error / allowed with 3 significant digits: "0.27", "12.3", "3.1e+04", "inf"; "-" when not judged."""
    if x is None:
        return "-"
    return fmt_num(x)


def _metrics_row(c: CaseResult, m: TensorMetrics) -> list[str]:
    return [
        m.name,
        "ok" if m.passed else "FAIL",
        fmt_ratio(m.tol_ratio),
        fmt_ratio(m.elem_ratio),
        fmt_ratio(m.cos_ratio),
        f"{m.mismatches}/{m.numel}",
        str(m.nonfinite_mismatches),
        fmt_num(m.max_abs),
        fmt_metric(m.max_rel),
        fmt_metric(m.max_ulp),
        fmt_metric(m.p99_ulp),
        str(m.floor_excluded),
        fmt_metric(m.cos_diff, NA_COS),
        named_index(c.case.op, m.name, m.worst_index),
        f"{fmt_num(m.worst_value, 5)} vs {fmt_num(m.worst_ref, 5)}",
        m.tolerance.describe().replace("allowed ", ""),
    ]


# error/allowed = max(elem, cos); elem = max |a-r| / max(atol, rtol |r|); cos = cos diff / its bound (< 1 passes).
# "below floor" counts elements whose |ref| is below 2^-10 x RMS: judged by atol alone, not in ulp / rel.
_TABLE_HEAD = ["output", "verdict", "error/allowed", "elem ratio", "cos ratio", "mismatches", "nonfinite", "max abs",
               "max rel", "max ulp", "p99 ulp", "below floor", "cos diff", "worst at", "got vs ref", "tolerance"]


def discrepancy_rows(c: CaseResult) -> tuple[list[str], list[list[str]]]:
    return list(_TABLE_HEAD), [_metrics_row(c, m) for m in c.outputs.values()]


def text_table(head: list[str], rows: list[list[str]], indent: str = "  ") -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)] if rows else [len(h) for h in head]
    lines = [indent + "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    lines.insert(1, indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def discrepancy_table(c: CaseResult, indent: str = "  ") -> str:
    """Plain-text table of every output's metrics plus the behavioural checks that failed."""
    parts = []
    head, rows = discrepancy_rows(c)
    if rows:
        parts.append(text_table(head, rows, indent))
    for check in c.checks.values():
        if not check.passed:
            parts.append(f"{indent}check {check.name} failed: {check.reason}")
    if not parts:
        parts.append(f"{indent}(no outputs compared) {c.reason}")
    return "\n".join(parts)


def replay_files_of(report: Report, given: dict[str, str] | None = None) -> dict[str, str]:
    """Case id -> replay file: the files the run recorded in its settings, then ``given``."""
    return {**(report.settings.get("replay_files") or {}), **(given or {})}


def replay_command(c: CaseResult, impl: str | None, replay_file: str | os.PathLike | None = None) -> str:
    """The one-line command that re-runs a case: from its replay file if there is one, else its id."""
    target = str(replay_file) if replay_file is not None else c.id
    cmd = ["mlaverify", "replay", target]
    if impl:
        cmd += ["--impl", impl]
    return shlex.join(cmd)


def impl_spec(report: Report) -> str | None:
    spec = report.implementation.get("spec")
    return str(spec) if spec else None


def gate_summary(gate: dict) -> str:
    """One line: the gate's verdict and what it counted."""
    return (f"gate {gate.get('verdict', '?')} against {gate.get('baseline', 'the baseline')} "
            f"(max regression factor {fmt_num(gate.get('factor'))}): {gate.get('compared', 0)} cases compared, "
            f"{len(gate.get('failing') or [])} failing, {len(gate.get('missing') or [])} missing, "
            f"{len(gate.get('regressions') or [])} regressions, {len(gate.get('loosened') or [])} loosened tolerances, "
            f"{len(gate.get('new_cases') or [])} new, {len(gate.get('unverified') or [])} skipped in both")


def gate_tables(gate: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, head, rows) of each non-empty part of a gate decision, the ones that fail it first."""
    def num(x) -> str:
        return fmt_num(x) if isinstance(x, (int, float)) else str(x)
    regressions = [[r.get("case", ""), r.get("output", ""), METRIC_LABELS.get(r.get("metric"), str(r.get("metric"))),
                    num(r.get("baseline")), num(r.get("current")), "x" + num(r.get("ratio"))]
                   for r in gate.get("regressions") or []]
    parts = [
        ("Regressions", ["case", "output", "metric", "baseline", "now", "ratio"], regressions),
        ("Failing cases", ["case", "status", "reason"],
         [[f.get("case", ""), f.get("status", ""), f.get("reason", "")] for f in gate.get("failing") or []]),
        ("Missing cases (run by the baseline, absent or skipped now)", ["case"],
         [[m] for m in gate.get("missing") or []]),
        ("Loosened tolerances", ["change"], [[x] for x in gate.get("loosened") or []]),
        ("Not verified (skipped in both)", ["case"], [[x] for x in gate.get("unverified") or []]),
        ("New cases", ["case"], [[x] for x in gate.get("new_cases") or []]),
    ]
    return [p for p in parts if p[2]]


def largest_errors(cases: Iterable[CaseResult], n: int) -> list[tuple[CaseResult, TensorMetrics]]:
    """The ``n`` outputs closest to (or furthest past) their tolerance, by error / allowed, largest first."""
    rows = [(c, m) for c in cases if c.status != "skip" for m in c.outputs.values()]
    return sorted(rows, key=lambda cm: (math.inf if math.isnan(cm[1].tol_ratio) else cm[1].tol_ratio),
                  reverse=True)[:n]


@dataclass(frozen=True)
class CoverageView:
    """A report's boundary coverage (``settings["coverage"]``, issue 11) arranged for a renderer."""

    required: bool                           # --require-coverage: an unobserved feature fails the run
    ops: dict[str, list[str]]                # op -> its models' columns ("sparse_decode/v32", ...)
    features: dict[str, list[str]]           # op -> its required features, in the order listed
    cells: dict[tuple[str, str], dict]       # (feature, column) -> {"run", "observed", "observed_passed", ...}
    unobserved: list[str]                    # "op/model: feature" no executed case made observable
    not_claimed: list[str]                   # observable only in skipped cases (the implementation lacks them)

    @property
    def total(self) -> int:
        return len(self.cells)

    @property
    def observed(self) -> int:
        return sum(1 for c in self.cells.values() if c["observed"])

    def cell_text(self, feature: str, column: str) -> tuple[str, str]:
        """(text, kind): "observed/run" and "pass" / "fail" (observed where a case failed) / "none" (never
        observed) / "skip" (observable only in skipped cases) / "n/a" (not a feature of that column)."""
        c = self.cells.get((feature, column))
        if c is None:
            return "", "n/a"
        if not c["observed"]:
            return (f"skip {c['skipped_observable']}", "skip") if c["skipped_observable"] else (f"0/{c['run']}", "none")
        text = f"{c['observed']}/{c['run']}"
        failed = c["observed"] - c.get("observed_passed", c["observed"])
        return (f"{text} ({failed} failed)", "fail") if failed else (text, "pass")

    def headline(self) -> str:
        """One line: how many (feature, op/model) pairs were observed, and which were not."""
        line = f"boundary coverage: {self.observed} of {self.total} features observed"
        if self.unobserved:
            line += f"; never observed ({len(self.unobserved)}): " + ", ".join(self.unobserved)
        if self.not_claimed:
            line += f"; only in skipped cases ({len(self.not_claimed)})"
        return line + (" (required)" if self.required else "")


def coverage_view(report: Report) -> CoverageView | None:
    """The report's coverage as a `CoverageView`; None when the run recorded none (an older report,
    a preset run)."""
    cov = report.settings.get("coverage") or {}
    columns = cov.get("columns") or {}
    if not columns:
        return None
    ops: dict[str, list[str]] = defaultdict(list)
    features: dict[str, list[str]] = {}
    cells: dict[tuple[str, str], dict] = {}
    not_claimed: list[str] = []
    for column in sorted(columns):
        op = column.split("/")[0]
        ops[op].append(column)
        feats = columns[column].get("features") or {}
        known = features.setdefault(op, [])
        known += [f for f in feats if f not in known]
        cells.update({(f, column): c for f, c in feats.items()})
        not_claimed += [f"{column}: {f}" for f in columns[column].get("not_claimed") or []]
    return CoverageView(bool(cov.get("required")), dict(ops), features, cells, list(cov.get("unobserved") or []),
                        not_claimed)
