"""The implementation's side of a case: call it, check its behaviour, hand back its outputs.

    run = implementation_side(module, case, device, checks=("inputs_unmodified", "repeat_bitwise"))
    run.outputs     # {name: CPU tensor or NonTensor}, or None when the call failed (run.reason says why)
    run.checks      # {name: CheckResult}

This is everything of a case that touches the implementation under test, and nothing else: the
engine runs it in a worker process (`mlaverify.verify.worker`) so that an implementation that exits,
aborts, segfaults or hangs fails its case instead of the run, or in the engine's own process
(`InProcess`, for the pytest plugin and `--in-process`). The reference is never computed here: the
engine computes it in its own process from its own copy of the inputs, which the implementation
cannot reach.

Behavioural checks:
- "inputs_unmodified": every byte of every input tensor's storage is unchanged by the call;
- "repeat_bitwise": a second call gives bit-identical outputs;
- "batch_permutation" (decode ops, b > 1): permuting the batch permutes the outputs bit for bit.
An exception (SystemExit included), a result that is not a tuple of the right length, or an output
that is not a tensor on the inputs' device fails the case with the reason recorded.
"""
from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from typing import Sequence

import torch

from mlaverify.verify.cases import Case
from mlaverify.verify.compare import NonTensor, bits_equal
from mlaverify.verify.materialize import Inputs, materialize
from mlaverify.verify.ops import ADAPTERS
from mlaverify.verify.results import CheckResult

__all__ = ["ImplRun", "InProcess", "implementation_side", "describe_exception"]


@dataclass
class ImplRun:
    """What the implementation did with one case."""

    outputs: dict[str, object] | None            # CPU tensors (or NonTensor); None when the call failed
    reason: str = ""                              # why outputs is None
    checks: dict[str, CheckResult] = field(default_factory=dict)
    engine_error: str = ""                        # the engine could not prepare the inputs (status "error")


def describe_exception(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    if isinstance(exc, SystemExit):
        return f"SystemExit: the implementation called sys.exit({exc.code!r}){where}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}{where}"[:500]


def _storage_bytes(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage()).clone()


def _snapshot(inputs: Inputs) -> dict[str, torch.Tensor]:
    return {k: _storage_bytes(t) for k, t in inputs.tensors.items() if t is not None}


def _call(module, inputs: Inputs) -> tuple[dict | None, str]:
    adapter = ADAPTERS[inputs.case.op]
    try:
        raw = adapter.call(module, inputs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # surface asynchronous kernel errors inside this try
    except (Exception, SystemExit) as exc:  # the implementation under test may raise anything, exit included
        return None, f"implementation raised {describe_exception(exc)}"
    try:
        unpacked = adapter.unpack(raw, inputs)
    except Exception as exc:
        return None, f"unexpected result structure: {describe_exception(exc)}"
    if isinstance(unpacked, str):
        return None, unpacked
    device = inputs.tensors["q"].device
    for name, value in unpacked.items():
        if isinstance(value, torch.Tensor) and value.device != device:
            return None, f"{name}: expected a tensor on {device} (the inputs' device), got one on {value.device}"
    return unpacked, ""


def _permuted_equal(original, permuted, perm: torch.Tensor, b: int) -> bool:
    if not isinstance(original, torch.Tensor) or original.dim() == 0 or original.shape[0] != b:
        return False
    return bits_equal(original[perm.to(original.device)], permuted)


def _checks(module, inputs: Inputs, outputs: dict, snapshot: dict, wanted: Sequence[str]) -> dict:
    case, adapter = inputs.case, ADAPTERS[inputs.case.op]
    results: dict[str, CheckResult] = {}
    if "inputs_unmodified" in wanted:
        changed = [k for k, before in snapshot.items() if not torch.equal(before, _storage_bytes(inputs.tensors[k]))]
        results["inputs_unmodified"] = CheckResult(
            "inputs_unmodified", not changed, f"the call modified input(s) {changed}" if changed else "")
        if changed:  # later checks get pristine inputs, so each failure names its own cause
            inputs = materialize(case, inputs.tensors["q"].device)
    if "repeat_bitwise" in wanted:
        again, reason = _call(module, inputs)
        if again is not None:
            differ = [k for k in outputs if not bits_equal(outputs[k], again[k])]
            reason = f"a second call gave different bits in {differ}" if differ else ""
        else:
            reason = f"second call: {reason}"
        results["repeat_bitwise"] = CheckResult("repeat_bitwise", not reason, reason)
    if "batch_permutation" in wanted and adapter.permute is not None and case.b > 1:
        g = torch.Generator().manual_seed(case.seed + 1)
        perm = torch.randperm(case.b, generator=g)
        if torch.equal(perm, torch.arange(case.b)):
            perm = perm.roll(1)
        permuted, reason = _call(module, adapter.permute(inputs, perm))
        if permuted is not None:
            differ = [k for k in outputs if not _permuted_equal(outputs[k], permuted[k], perm, case.b)]
            reason = (f"permuting the batch by {perm.tolist()} did not permute {differ} bit for bit"
                      if differ else "")
        else:
            reason = f"permuted call: {reason}"
        results["batch_permutation"] = CheckResult("batch_permutation", not reason, reason)
    return results


def _to_cpu(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return NonTensor(type(value).__name__)


def implementation_side(module, case: Case, device: torch.device, checks: Sequence[str]) -> ImplRun:
    """Materialize the case, call the implementation, run the behavioural checks; never raises for
    anything the implementation does (SystemExit included; KeyboardInterrupt is the user's)."""
    try:
        inputs = materialize(case, device)
        snapshot = _snapshot(inputs)
    except Exception as exc:
        return ImplRun(None, engine_error=f"engine could not prepare the case: {describe_exception(exc)}")
    outputs, reason = _call(module, inputs)
    if outputs is None:
        return ImplRun(None, reason)
    try:
        results = _checks(module, inputs, outputs, snapshot, checks)
    except Exception as exc:  # the checks call the implementation only inside _call; this is the engine
        return ImplRun({k: _to_cpu(v) for k, v in outputs.items()},
                       engine_error=f"engine could not run the behavioural checks: {describe_exception(exc)}")
    return ImplRun({k: _to_cpu(v) for k, v in outputs.items()}, "", results)


class InProcess:
    """Runs the implementation in this process (the pytest plugin, `--in-process`, Python callers)."""

    mode = "in-process"
    environment: dict = {}  # this process's own environment is what the report already records

    def __init__(self, module) -> None:
        self.module = module

    def run(self, case: Case, device: torch.device, checks: Sequence[str]) -> ImplRun:
        return implementation_side(self.module, case, device, checks)

    def close(self) -> None:
        pass
