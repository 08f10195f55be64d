"""Replay files: one failing case as JSON, shrunk first, re-run later from the file alone.

A replay file holds the case parameters (its seed included: the tensors are regenerated from
them), the tolerances used, the implementation, the verdict and the tool version. It is plain
JSON: never pickle, nothing executable.

    path = write_replay(out_dir, case_result, impl_spec="my_kernels")
    replay = load_replay(path)
    result, text = run_replay(implementation, replay)      # full discrepancy table + worst elements

Shrinking (`shrink_case`) is greedy and hypothesis-style: it tries simpler values field by field
(flags back to their plain default, smaller batch, fewer queries, heads, top-k, tokens) and keeps
a change whenever the case still fails the same way (same failing outputs or checks), until no
change helps or the budget runs out.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mlaverify.verify.cases import Case
from mlaverify.verify.implementations import Implementation
from mlaverify.verify.materialize import materialize
from mlaverify.verify.ops import ADAPTERS
from mlaverify.verify.replay_locate import locate, worst_elements
from mlaverify.verify.report_common import ReportError, discrepancy_table, fmt_num, write_atomic
from mlaverify.verify.results import CaseResult, Tolerance, tool_version
from mlaverify.verify.runner import default_device, run_case
from mlaverify.verify.tolerances import ToleranceTable, apply_overrides, load_tolerances

__all__ = ["REPLAY_KIND", "Replay", "ReplayError", "replay_filename", "write_replay", "load_replay",
           "shrink_case", "run_replay", "failure_signature"]

REPLAY_KIND = "mla-verify-replay"
REPLAY_SCHEMA = 1


class ReplayError(ReportError):
    """A replay file cannot be read; the message is for the user."""


@dataclass(frozen=True)
class Replay:
    case: Case
    tolerances: dict[str, Tolerance]    # per output, as used when the case failed
    implementation: str | None
    status: str
    reason: str
    tool_version: str
    shrunk_from: str | None = None      # the id of the case as first found, when shrinking changed it
    device: str | None = None

    def tolerance_table(self, base: ToleranceTable | None = None) -> ToleranceTable:
        base = base if base is not None else load_tolerances()
        nested = {self.case.op: {name: tol.to_dict() for name, tol in self.tolerances.items()}}
        return apply_overrides(base, nested)


def replay_filename(case_id: str) -> str:
    """A file name for a case id: '/' becomes '__', anything outside [A-Za-z0-9._+-] becomes '_'."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", case_id.replace("/", "__")) + ".json"


def write_replay(directory: str | Path, result: CaseResult, impl_spec: str | None, *,
                 shrunk_from: str | None = None, device: str | None = None) -> Path:
    data = {
        "kind": REPLAY_KIND,
        "schema_version": REPLAY_SCHEMA,
        "tool": {"name": "mla-verify", "version": tool_version()},
        "case_id": result.id,
        "case": result.case.to_dict(),
        "seed": result.case.seed,
        "tolerances": {k: v.to_dict() for k, v in result.tolerances.items()},
        "implementation": impl_spec,
        "status": result.status,
        "reason": result.reason,
        "shrunk_from": shrunk_from,
        "device": device,
        "metrics": {k: v.to_dict() for k, v in result.outputs.items()},
        "checks": {k: v.to_dict() for k, v in result.checks.items()},
    }
    return write_atomic(Path(directory) / replay_filename(result.id), json.dumps(data, indent=1, allow_nan=False))


def load_replay(path: str | Path) -> Replay:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReplayError(f"replay {path}: cannot read it ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise ReplayError(f"replay {path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") != REPLAY_KIND:
        raise ReplayError(f"replay {path}: expected a JSON object with kind {REPLAY_KIND!r}, got "
                          f"{data.get('kind') if isinstance(data, dict) else type(data).__name__!r}")
    if data.get("schema_version") != REPLAY_SCHEMA:
        raise ReplayError(f"replay {path}: expected schema_version {REPLAY_SCHEMA}, got {data.get('schema_version')!r}")
    try:
        case = Case.from_dict(data["case"])
        tolerances = {k: Tolerance.from_dict(v) for k, v in data.get("tolerances", {}).items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise ReplayError(f"replay {path}: bad case or tolerances ({exc})") from None
    return Replay(case=case, tolerances=tolerances, implementation=data.get("implementation"),
                  status=str(data.get("status", "")), reason=str(data.get("reason", "")),
                  tool_version=str(data.get("tool", {}).get("version", "?")), shrunk_from=data.get("shrunk_from"),
                  device=data.get("device"))


# ---- shrinking --------------------------------------------------------------------------------
_SIMPLER = {  # field -> its values from simplest to most involved (shrinking tries the simpler ones first)
    "noncontiguous": (False, True), "causal": (False, True), "backward": (False, True),
    "softmax_scale": (None,), "scales": ("ue8m0", "float32"), "dtype": ("bf16", "fp16"),
    "values": ("normal", "outliers", "zero_tiles", "near_max", "mixed"),
    "nan_fill": ("none", "unused", "all"),
    "sink": ("none", "finite", "neg_inf", "pos_inf", "mixed"),
    "topk_length": ("none", "full", "zero", "partial", "mixed"),
    "extra_topk_length": ("none", "full", "zero", "partial", "mixed"),
    "invalid": ("none", "some", "rows", "batch", "all"),
    "seqlens": ("full", "varlen", "zero"),
}
_SMALLER = ("b", "s_q", "h_q", "h_kv", "topk", "s_kv", "extra_topk", "extra_s_kv")


def failure_signature(result: CaseResult) -> frozenset[str]:
    """What went wrong, coarsely: failing outputs and checks, or 'raised' / 'structure'."""
    sig = {f"output:{k}" for k, m in result.outputs.items() if not m.passed}
    sig |= {f"check:{k}" for k, c in result.checks.items() if not c.passed}
    if not sig:
        sig.add("raised" if "raised" in result.reason else "structure")
    return frozenset(sig)


def _candidates(case: Case) -> list[Case]:
    changes: list[dict[str, Any]] = []
    if case.has_extra:
        changes.append({"extra_topk": 0, "extra_s_kv": 0, "extra_page_block_size": 0, "extra_topk_length": "none"})
    for name, order in _SIMPLER.items():
        value = getattr(case, name)
        simpler = order[:order.index(value)] if value in order else order  # an explicit scale -> None
        changes += [{name: v} for v in simpler]
    for name in _SMALLER:
        value = getattr(case, name)
        floor = 1 if name in ("b", "s_q", "h_q", "h_kv") else 1 if value else 0
        for smaller in sorted({floor, value // 4, value // 2, value - 1}):
            if floor <= smaller < value:
                changes.append({name: smaller})
    out = []
    for change in changes:
        try:
            out.append(dataclasses.replace(case, **change))
        except (ValueError, TypeError):
            continue  # an invalid combination (e.g. h_q not a multiple of h_kv): not a candidate
    return out


def shrink_case(impl: Implementation, result: CaseResult, tolerances: ToleranceTable | None = None,
                device: str | torch.device | None = None, *, max_attempts: int = 40,
                time_limit_s: float = 60.0) -> CaseResult:
    """The smallest failing case found from ``result`` (``result`` itself if nothing smaller fails alike)."""
    if result.status != "fail":
        return result
    target = failure_signature(result)
    best, attempts, deadline = result, 0, time.monotonic() + time_limit_s
    improved = True
    while improved and attempts < max_attempts and time.monotonic() < deadline:
        improved = False
        for candidate in _candidates(best.case):
            if attempts >= max_attempts or time.monotonic() >= deadline:
                break
            attempts += 1
            trial = run_case(impl, candidate, tolerances, device)
            if trial.status == "fail" and failure_signature(trial) & target:
                best, improved = trial, True
                break
    return best


# ---- replaying --------------------------------------------------------------------------------
def _worst_lines(impl: Implementation, case: Case, failing: dict[str, Tolerance], device, n: int) -> list[str]:
    adapter = ADAPTERS[case.op]
    try:
        inputs = materialize(case, device)
        reference = adapter.reference(inputs)
    except Exception as exc:  # the discrepancy table already says what failed; this is extra detail
        return [f"  (worst elements unavailable: {type(exc).__name__}: {exc})"]
    run = impl.run(case, device, ())  # where the implementation lives: this process or its worker
    if run.outputs is None:
        return [f"  (worst elements unavailable: {run.reason or run.engine_error})"]
    got = run.outputs
    lines = []
    for name in failing:
        actual, ref = got.get(name), reference.get(name)
        if not isinstance(actual, torch.Tensor) or actual.shape != ref.shape:  # outputs come back on the CPU
            continue
        lines.append(f"  worst elements of {name}:")
        for e in worst_elements(actual, ref, failing[name], n):
            kind = ("non-finite mismatch" if e["nonfinite_mismatch"] else
                    f"{fmt_num(e['ratio'])}x allowed, " + ("ulp n/a: reference below the floor" if e["ulp"] is None
                                                          else f"{fmt_num(e['ulp'])} ulp"))
            lines.append(f"    [{', '.join(map(str, e['index']))}] got {fmt_num(e['got'], 6)} ref "
                         f"{fmt_num(e['ref'], 6)} ({kind}): {locate(inputs, name, e['index'])}")
    return lines


def run_replay(impl: Implementation, replay: Replay, device: str | torch.device | None = None,
               n_worst: int = 5) -> tuple[CaseResult, str]:
    """Re-run the case of ``replay``; returns the result and the full text to print."""
    result = run_case(impl, replay.case, replay.tolerance_table(), device)
    lines = [f"replay {replay.case.id} against {impl.spec}: {result.status}"]
    if replay.tool_version != tool_version():
        lines.append(f"  note: written by mla-verify {replay.tool_version}, replayed with {tool_version()}")
    if replay.shrunk_from:
        lines.append(f"  shrunk from {replay.shrunk_from}")
    if result.reason:
        lines.append(f"  reason: {result.reason}")
    lines.append(discrepancy_table(result))
    failing = {k: m.tolerance for k, m in result.outputs.items() if not m.passed}
    if failing:
        lines += _worst_lines(impl, replay.case, failing, torch.device(device or default_device()), n_worst)
    return result, "\n".join(lines)
