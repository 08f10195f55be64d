"""Run cases against an implementation and collect a `Report`.

    result = run_case(impl, case, tolerances, device="cpu")          # one CaseResult
    report = run_check("mlaverify.kernels", ops=["sparse_decode"], models=None, profile="ci",
                       max_examples=None, seed=0, shard=(0, 4), progress=callback)
    report.passed, report.to_json()

`run_case`: skip when the implementation does not claim the case; otherwise materialize the
inputs, compute the unrounded reference, call the implementation, compare every output
(`compare.compare_tensor`) and run the behavioural checks:
- "inputs_unmodified": every byte of every input tensor's storage is unchanged by the call;
- "repeat_bitwise": a second call gives bit-identical outputs;
- "batch_permutation" (decode ops, b > 1): permuting the batch permutes the outputs bit for bit.
An exception, a result that is not a tuple of the right length, or an output of the wrong shape
or dtype fails the case with the reason recorded; nothing the implementation does crashes the run
(except crashing the process). If materializing or the reference fails, the case is "error".

`run_check`: load the implementation (raises `ImplementationError` when it cannot be imported),
draw cases with `strategies.draw_cases` per (op, model) (or take `cases=`), keep shard
`index` of `count` (`shard=(index, count)`, 0 <= index < count, by a stable hash of the case id),
run them, and build the report. `progress(done, total, case_result)` is called after each case.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import sys
import time
import traceback
import zlib
from typing import Callable, Iterable, Mapping, Sequence

import torch

from mlaverify.verify.cases import MODELS, OPS, Case
from mlaverify.verify.compare import bits_equal, compare_tensor
from mlaverify.verify.implementations import Capabilities, Implementation, load_implementation
from mlaverify.verify.materialize import Inputs, materialize
from mlaverify.verify.ops import ADAPTERS
from mlaverify.verify.results import CaseResult, CheckResult, Report
from mlaverify.verify.strategies import case_strategy, corner_cases, draw_cases, profile_settings
from mlaverify.verify.tolerances import ToleranceTable, load_tolerances, table_to_dict

CHECKS = ("inputs_unmodified", "repeat_bitwise", "batch_permutation")
Progress = Callable[[int, int, CaseResult], None]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}{where}"[:500]


def _storage_bytes(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage()).clone()


def _snapshot(inputs: Inputs) -> dict[str, torch.Tensor]:
    return {k: _storage_bytes(t) for k, t in inputs.tensors.items() if t is not None}


def _call(impl: Implementation, inputs: Inputs) -> tuple[dict | None, str]:
    adapter = ADAPTERS[inputs.case.op]
    try:
        raw = adapter.call(impl.module, inputs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # surface asynchronous kernel errors inside this try
    except Exception as exc:  # the implementation under test may raise anything
        return None, f"implementation raised {_describe(exc)}"
    try:
        unpacked = adapter.unpack(raw, inputs)
    except Exception as exc:
        return None, f"unexpected result structure: {_describe(exc)}"
    if isinstance(unpacked, str):
        return None, unpacked
    return unpacked, ""


def _permuted_equal(original, permuted, perm: torch.Tensor, b: int) -> bool:
    if not isinstance(original, torch.Tensor) or original.dim() == 0 or original.shape[0] != b:
        return False
    return bits_equal(original[perm.to(original.device)], permuted)


def _checks(impl: Implementation, inputs: Inputs, outputs: dict, snapshot: dict, wanted: Sequence[str]) -> dict:
    case, adapter = inputs.case, ADAPTERS[inputs.case.op]
    results: dict[str, CheckResult] = {}
    if "inputs_unmodified" in wanted:
        changed = [k for k, before in snapshot.items() if not torch.equal(before, _storage_bytes(inputs.tensors[k]))]
        results["inputs_unmodified"] = CheckResult(
            "inputs_unmodified", not changed, f"the call modified input(s) {changed}" if changed else "")
        if changed:  # later checks get pristine inputs, so each failure names its own cause
            inputs = materialize(case, inputs.tensors["q"].device)
    if "repeat_bitwise" in wanted:
        again, reason = _call(impl, inputs)
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
        permuted, reason = _call(impl, adapter.permute(inputs, perm))
        if permuted is not None:
            differ = [k for k in outputs if not _permuted_equal(outputs[k], permuted[k], perm, case.b)]
            reason = (f"permuting the batch by {perm.tolist()} did not permute {differ} bit for bit"
                      if differ else "")
        else:
            reason = f"permuted call: {reason}"
        results["batch_permutation"] = CheckResult("batch_permutation", not reason, reason)
    return results


def run_case(impl: Implementation, case: Case, tolerances: ToleranceTable | None = None,
             device: str | torch.device | None = None, checks: Sequence[str] = CHECKS) -> CaseResult:
    """Verify one case; never raises for anything the implementation does."""
    start = time.perf_counter()
    device = torch.device(device or default_device())
    tolerances = tolerances if tolerances is not None else load_tolerances()
    tol = tolerances[case.op]

    def done(status: str, reason: str = "", **kw) -> CaseResult:
        used = {k: tol[k] for k in kw.get("outputs", {})} if kw.get("outputs") else {}
        return CaseResult(case, status, reason, duration_s=time.perf_counter() - start, tolerances=used, **kw)

    why = impl.unsupported_reason(case, device.type)
    if why:
        return done("skip", why)
    adapter = ADAPTERS[case.op]
    try:
        inputs = materialize(case, device)
        expected = adapter.expected(inputs)
        reference = adapter.reference(inputs)
    except Exception as exc:
        return done("error", f"engine could not prepare the case: {_describe(exc)}")
    snapshot = _snapshot(inputs)
    outputs, reason = _call(impl, inputs)
    if outputs is None:
        return done("fail", reason)
    metrics = {}
    for name in adapter.outputs(inputs):
        shape, dtype = expected[name]
        metrics[name] = compare_tensor(name, outputs[name], reference[name], tol[name],
                                       expected_shape=shape, expected_dtype=dtype)
    try:
        results = _checks(impl, inputs, outputs, snapshot, checks)
    except Exception as exc:  # the checks only call the implementation inside _call; this is the engine
        return done("error", f"engine could not run the behavioural checks: {_describe(exc)}", outputs=metrics)
    failures = [m.message for m in metrics.values() if not m.passed]
    failures += [f"{c.name}: {c.reason}" for c in results.values() if not c.passed]
    return done("fail" if failures else "pass", "; ".join(failures), outputs=metrics, checks=results)


def shard_of(case: Case, count: int) -> int:
    """Stable shard index of a case (crc32 of its id)."""
    return zlib.crc32(case.id.encode()) % count


def generate_cases(ops: Iterable[str] | None = None, models: Iterable[str] | None = None, profile: str = "ci",
                   max_examples: int | None = None, seed: int = 0, scale: str = "cpu",
                   corners: bool = True) -> list[Case]:
    """Cases for every requested (op, model) pair: the corner cases (when `corners`), then the
    cases drawn by the strategies; models that do not belong to an op are ignored for it (an
    unknown model or op raises ValueError). Duplicate ids are dropped."""
    ops = list(OPS if ops is None else ops)
    bad = [op for op in ops if op not in OPS]
    if bad:
        raise ValueError(f"ops: unknown {bad}; expected some of {list(OPS)}")
    all_models = sorted({m for ms in MODELS.values() for m in ms})
    models = None if models is None else list(models)
    if models is not None and any(m not in all_models for m in models):
        raise ValueError(f"models: unknown {[m for m in models if m not in all_models]}; expected some of {all_models}")
    profile_settings(profile)
    cases: list[Case] = []
    for op in ops:
        for model in MODELS[op]:
            if models is None or model in models:
                cases += corner_cases(op, model) if corners else []
                cases += draw_cases(case_strategy(op, model, scale), max_examples, seed, profile)
    return list({c.id: c for c in cases}.values())


def environment(device: torch.device) -> dict:
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "device": str(device), "cuda": torch.version.cuda, "triton_interpret": os.environ.get("TRITON_INTERPRET")}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    for name in ("triton", "hypothesis", "numpy"):  # metadata only: importing triton here would fix its
        try:                                          # interpreter mode before mlaverify.kernels chooses it
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = None
    return env


def run_check(impl_spec, ops: Iterable[str] | None = None, models: Iterable[str] | None = None,
              profile: str = "ci", max_examples: int | None = None, seed: int = 0,
              shard: tuple[int, int] | None = None, progress: Progress | None = None, *,
              device: str | torch.device | None = None, tolerances: ToleranceTable | None = None,
              tolerance_overrides: Mapping | None = None, capabilities: str | Mapping | Capabilities | None = None,
              cases: Sequence[Case] | None = None, checks: Sequence[str] = CHECKS, corners: bool = True) -> Report:
    """Verify an implementation (module name, .py path, module or Implementation); see module docstring."""
    impl = impl_spec if isinstance(impl_spec, Implementation) else load_implementation(impl_spec, capabilities)
    device = torch.device(device or default_device())
    if tolerances is None:
        tolerances = load_tolerances(overrides=tolerance_overrides)
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise ValueError(f"checks: unknown {unknown}; expected some of {list(CHECKS)}")
    scale = "cpu" if device.type == "cpu" else "gpu"
    if cases is None:
        todo = generate_cases(ops, models, profile, max_examples, seed, scale, corners)
    else:
        todo = [c for c in cases if (ops is None or c.op in ops) and (models is None or c.model in models)]
    if shard is not None:
        index, count = shard
        if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
            raise ValueError(f"shard: expected (index, count) with 0 <= index < count, got {shard!r}")
        todo = [c for c in todo if shard_of(c, count) == index]
    results = []
    for i, case in enumerate(todo):
        results.append(run_case(impl, case, tolerances, device, checks))
        if progress is not None:
            progress(i + 1, len(todo), results[-1])
    settings = {
        "ops": list(OPS if ops is None else ops), "models": None if models is None else list(models),
        "profile": profile, "max_examples": max_examples if max_examples is not None
        else profile_settings(profile).max_examples, "seed": seed, "shard": None if shard is None else list(shard),
        "device": str(device), "scale": scale, "checks": list(checks), "explicit_cases": cases is not None, "corners": corners,
        "tolerances": table_to_dict(tolerances),
    }
    return Report(
        cases=results, environment=environment(device),
        implementation={"spec": impl.spec, "module": impl.name, "profile": impl.capabilities.name,
                        "capabilities": impl.capabilities.to_dict()},
        settings=settings, created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
