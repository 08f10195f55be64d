"""Which case features go with the failures: the root-cause hint of a report.

For every feature kind of the executed cases (`Case.features()`: "sink:finite", "topk128", "extra",
plus the op and the op/model of each case) this finds the set of values most associated with
failure and counts the failure rate with it against without it:

    sink finite/mixed/+inf: 10/10 failed with, 0/66 without (p = 1.1e-12)

Candidates per kind:
- a mode kind ("sink:<mode>", "len:<mode>", the op): its values ordered by failure rate, and every
  leading run of that order ("finite", "finite/mixed", "finite/mixed/+inf"). For a two-class
  outcome the best split of a categorical variable is among these (Breiman et al., CART, 1984), so
  nothing better is missed and the 2^n subsets are not searched;
- a numeric kind ("h64", "topk128", "pb2"): thresholds "h >= 64" and "h <= 8" at each value seen;
- a flag ("extra", "noncontiguous", "topk>seq"): present or not.
The one candidate of each kind kept is the one with the smallest one-sided Fisher exact p-value
(scipy.stats.fisher_exact, alternative "greater": failure is more likely with the feature). Kinds
that pick out exactly the same cases are merged into one line (the first keeps the line, the
others are listed as `same_as`). Lines are ranked by p-value, then by failures covered.

The p-value is a ranking measure, not a test: the candidates were chosen after looking at the
outcomes, so it overstates significance. Skipped cases are not counted (they ran nothing); a case
"failed" when its status is fail or error.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

from mlaverify.verify.results import CaseResult

__all__ = ["Association", "rank_features", "feature_kind", "explains_all", "summary_line", "leading"]

_NUMERIC = re.compile(r"([a-z_]+?)(\d+)")
_VALUE_NAMES = {"pos_inf": "+inf", "neg_inf": "-inf"}  # shown as the user writes them


@dataclass(frozen=True)
class Association:
    """One feature (or set of values of one kind) and the failure counts with and without it."""

    kind: str                      # "sink", "topk", "extra", "op"
    label: str                     # "sink finite/+inf", "topk >= 100", "extra"
    fail_with: int
    n_with: int
    fail_without: int
    n_without: int
    p_value: float                 # one-sided Fisher exact (see the module docstring for how to read it)
    cases: frozenset[str] = field(default=frozenset(), repr=False)   # ids of the cases "with"
    same_as: tuple[str, ...] = ()  # labels of other kinds selecting exactly these cases
    covered_by: str | None = None  # the first line ranked above; the lines above hold all of these failures

    @property
    def rate_with(self) -> float:
        return self.fail_with / self.n_with if self.n_with else 0.0

    @property
    def rate_without(self) -> float:
        return self.fail_without / self.n_without if self.n_without else 0.0

    def describe(self) -> str:
        text = (f"{self.label}: {self.fail_with}/{self.n_with} failed with, "
                f"{self.fail_without}/{self.n_without} without (p = {self.p_value:.2g})")
        return text + (f"; same cases as {', '.join(self.same_as)}" if self.same_as else "")


def feature_kind(feature: str) -> tuple[str, str | int | None]:
    """("sink", "finite") for "sink:finite", ("topk", 128) for "topk128", ("extra", None) for a flag."""
    if ":" in feature:
        kind, value = feature.split(":", 1)
        return kind, value
    m = _NUMERIC.fullmatch(feature)
    if m:
        return m.group(1), int(m.group(2))
    return feature, None


def _features(c: CaseResult) -> set[str]:
    return set(c.case.features()) | {f"op:{c.case.op}", f"model:{c.case.model}"}


def _kinds(executed: list[CaseResult]) -> dict[str, dict]:
    """kind -> value -> case ids; every kind also scoped to each op ("sparse_decode: sink"), since a bug
    usually lives in one op's kernel and a feature shared by several ops passes in the others."""
    kinds: dict[str, dict] = defaultdict(lambda: defaultdict(set))
    for c in executed:
        for feature in _features(c):
            kind, value = feature_kind(feature)
            kinds[kind][value].add(c.id)
            if kind != "op":
                kinds[f"{c.case.op}: {kind}"][value].add(c.id)
    return kinds


def _association(kind: str, label: str, members: set[str], failed: set[str], all_ids: set[str]) -> Association:
    from scipy.stats import fisher_exact   # scipy loads in ~0.5 s: only when a report ranks features

    fw = len(members & failed)
    nw = len(members)
    fo = len(failed - members)
    no = len(all_ids) - nw
    _, p = fisher_exact([[fw, nw - fw], [fo, no - fo]], alternative="greater")
    return Association(kind, label, fw, nw, fo, no, float(p), frozenset(members))


def _mode_candidates(kind: str, by_value: dict, failed: set[str], all_ids: set[str]) -> list[Association]:
    order = sorted(by_value, key=lambda v: (-len(by_value[v] & failed) / len(by_value[v]),
                                            -len(by_value[v] & failed), str(v)))
    out, members = [], set()
    for i, value in enumerate(order):
        if not by_value[value] & failed:
            break  # this value and the rest add only passing cases
        members = members | by_value[value]
        names = "/".join(_VALUE_NAMES.get(str(v), str(v)) for v in sorted(order[:i + 1], key=str))
        out.append(_association(kind, f"{kind} {names}", members, failed, all_ids))
    return out


def _numeric_candidates(kind: str, by_value: dict, failed: set[str], all_ids: set[str]) -> list[Association]:
    values = sorted(by_value)
    out = []
    for v in values:
        for op, keep in ((">=", [w for w in values if w >= v]), ("<=", [w for w in values if w <= v])):
            if len(keep) == len(values) and len(values) > 1:
                continue  # every value of the kind: the same as "has this kind", said by the op line
            members = set().union(*(by_value[w] for w in keep))
            label = f"{kind}{v}" if len(keep) == 1 and len(values) == 1 else f"{kind} {op} {v}"
            out.append(_association(kind, label, members, failed, all_ids))
    return out


def rank_features(results: Iterable[CaseResult], limit: int | None = None) -> list[Association]:
    """Feature kinds most associated with failure first; only kinds with a higher failure rate with
    than without. Empty when nothing failed or nothing passed (then no feature can tell them apart)."""
    executed = [c for c in results if c.status != "skip"]
    failed = {c.id for c in executed if c.status in ("fail", "error")}
    all_ids = {c.id for c in executed}
    if not failed or failed == all_ids:
        return []
    kinds = _kinds(executed)
    best: list[Association] = []
    for kind, by_value in kinds.items():
        if None in by_value:
            candidates = [_association(kind, kind, by_value[None], failed, all_ids)]
        elif all(isinstance(v, int) for v in by_value):
            candidates = _numeric_candidates(kind, by_value, failed, all_ids)
        else:
            candidates = _mode_candidates(kind, by_value, failed, all_ids)
        # a feature every case has (or none) cannot tell failures from passes
        candidates = [a for a in candidates if a.n_with and a.n_without and a.rate_with > a.rate_without]
        if candidates:
            best.append(min(candidates, key=lambda a: (a.p_value, -a.fail_with, len(a.label))))
    best.sort(key=lambda a: (a.p_value, -a.fail_with, a.fail_without, len(a.label)))
    merged: list[Association] = []
    for a in best:
        twin = next((i for i, m in enumerate(merged) if m.cases == a.cases), None)
        if twin is None:
            merged.append(a)
        else:
            m = merged[twin]
            merged[twin] = replace(m, same_as=m.same_as + (a.label,))
    ranked: list[Association] = []
    explained: set[str] = set()   # failures of the leading lines so far
    for a in merged:
        # a line adds nothing when the lines above already hold all of its failures
        above = next((m for m in ranked if m.covered_by is None), None)
        if (a.cases & failed) <= explained and above is not None:
            ranked.append(replace(a, covered_by=above.label))
        else:
            ranked.append(a)
            explained |= a.cases & failed
    return ranked if limit is None else ranked[:limit]


def leading(ranked: Sequence[Association]) -> list[Association]:
    """The lines that add failures to the lines above them: the distinct explanations, best first."""
    return [a for a in ranked if a.covered_by is None]


def explains_all(a: Association) -> bool:
    """Every failure has the feature and no case without it failed."""
    return a.fail_without == 0 and a.fail_with > 0


def summary_line(ranked: Sequence[Association]) -> str:
    """The one line a report leads with."""
    if not ranked:
        return "no feature is associated with the failures (nothing failed, or everything did)"
    top = ranked[0]
    lead = "every failure has it, no case without it failed" if explains_all(top) else "most associated with failure"
    return f"{top.describe()} — {lead}"
