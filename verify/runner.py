"""Run cases against an implementation and collect a `Report`.

    result = run_case(impl, case, tolerances, device="cpu")          # one CaseResult
    report = run_check("mlaverify.kernels", ops=["sparse_decode"], models=None, profile="ci",
                       max_examples=None, seed=0, shard=(0, 4), progress=callback)
    report.passed, report.to_json()

`run_case`: skip when the implementation does not claim the case; otherwise materialize the
inputs and compute the unrounded reference here, have the implementation run the case where it
lives (`Implementation.run`: this process, or its worker process; `mlaverify.verify.impl_call`
does the call and the behavioural checks the implementation's capabilities claim), and compare
every output (`compare.compare_tensor`). An exception, an exit, a crash or hang of the worker, a
result that is not a tuple of the right length, or an output of the wrong shape, dtype or device
fails the case with the reason recorded; nothing the implementation does crashes the run. If
materializing or the reference fails, the case is "error".

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
import zlib
from typing import Callable, Iterable, Mapping, Sequence

import torch

from mlaverify.verify import budgets
from mlaverify.verify.cases import MODELS, OPS, Case
from mlaverify.verify.compare import compare_tensor
from mlaverify.verify.impl_call import describe_exception
from mlaverify.verify.implementations import BEHAVIOURAL_CHECKS as CHECKS
from mlaverify.verify.implementations import Capabilities, Implementation, load_implementation
from mlaverify.verify.materialize import materialize
from mlaverify.verify.ops import ADAPTERS
from mlaverify.verify.results import CaseResult, Report
from mlaverify.verify.strategies import (case_strategy, corner_cases, draw_cases, production_cases,
                                        profile_settings)
from mlaverify.verify.boundary_cases import extra_cases
from mlaverify.verify.tolerances import ToleranceTable, load_tolerances, table_to_dict
Progress = Callable[[int, int, CaseResult], None]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_case(impl: Implementation, case: Case, tolerances: ToleranceTable | None = None,
             device: str | torch.device | None = None, checks: Sequence[str] = CHECKS,
             policy: str = budgets.DEFAULT_POLICY) -> CaseResult:
    """Verify one case; never raises for anything the implementation does. `policy`: `budgets.POLICIES`."""
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
    try:  # the engine's own copy of the inputs: the implementation never sees these tensors
        inputs = materialize(case, device)
        expected = adapter.expected(inputs)
        reference = adapter.reference(inputs)
        emulated = emulate(adapter, inputs) if budgets.needs_emulation(policy) else None
    except Exception as exc:
        return done("error", f"engine could not prepare the case: {describe_exception(exc)}")
    run = impl.run(case, device, [c for c in checks if impl.capabilities.claims_check(c)])
    if run.outputs is None:
        return done("error", run.engine_error) if run.engine_error else done("fail", run.reason)
    metrics = {}
    for name in adapter.outputs(inputs):
        shape, dtype = expected[name]
        metrics[name] = budgets.judge(compare_tensor(name, run.outputs[name], reference[name], tol[name],
                                                     expected_shape=shape, expected_dtype=dtype),
                                      run.outputs[name], None if emulated is None else emulated[name],
                                      reference[name], tol[name], case.dist, policy)
    if run.engine_error:
        return done("error", run.engine_error, outputs=metrics)
    failures = [m.message for m in metrics.values() if not m.passed]
    failures += [f"{c.name}: {c.reason}" for c in run.checks.values() if not c.passed]
    return done("fail" if failures else "pass", "; ".join(failures), outputs=metrics, checks=run.checks)


def emulate(adapter, inputs) -> dict[str, torch.Tensor]:
    """The numerics emulation's outputs for the engine's inputs (`mlaverify.reference.numerics_emulation`)."""
    from mlaverify.reference import numerics_emulation

    result = adapter.unpack(adapter.call(numerics_emulation, inputs), inputs)
    if isinstance(result, str):
        raise RuntimeError(f"numerics emulation: {result}")
    return result


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
                cases += extra_cases(op, model) if corners else []  # issue 11: boundary cases, covering array
                cases += draw_cases(case_strategy(op, model, scale), max_examples, seed, profile)
                cases += production_cases(op, model, scale, max_examples, seed, profile, corners)
    return list({c.id: c for c in cases}.values())


def environment(device: torch.device) -> dict:
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "device": str(device), "cuda": torch.version.cuda, "triton_interpret": os.environ.get("TRITON_INTERPRET"),
           "triton_default_fp_fusion": os.environ.get("TRITON_DEFAULT_FP_FUSION")}
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
              cases: Sequence[Case] | None = None, checks: Sequence[str] = CHECKS, corners: bool = True,
              isolate: bool = False, timeout_s: float | None = None,
              tolerance_policy: str = budgets.DEFAULT_POLICY) -> Report:
    """Verify an implementation (module name, .py path, module or Implementation); see module docstring.

    ``isolate`` runs a module given by name or path in a worker process (``timeout_s`` per case). Ctrl-C
    stops the run: the report holds the cases done so far and ``run_status == "interrupted"``."""
    device = torch.device(device or default_device())
    budgets.check_policy(tolerance_policy)
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
    owned = not isinstance(impl_spec, Implementation)
    impl = load_implementation(impl_spec, capabilities, isolate=isolate, timeout_s=timeout_s,
                               threads=torch.get_num_threads()) if owned else impl_spec
    results, run_status = [], "complete"
    try:
        for i, case in enumerate(todo):
            results.append(run_case(impl, case, tolerances, device, checks, tolerance_policy))
            if progress is not None:
                progress(i + 1, len(todo), results[-1])
    except KeyboardInterrupt:
        run_status = "interrupted"
    finally:
        if owned:
            impl.close()
    settings = {
        "ops": list(OPS if ops is None else ops), "models": None if models is None else list(models),
        "profile": profile, "max_examples": max_examples if max_examples is not None
        else profile_settings(profile).max_examples, "seed": seed, "shard": None if shard is None else list(shard),
        "device": str(device), "scale": scale, "checks": list(checks), "explicit_cases": cases is not None, "corners": corners,
        "tolerances": table_to_dict(tolerances), "tolerance_policy": tolerance_policy, "isolation": impl.mode,
        "timeout_s": getattr(impl.runner, "timeout_s", None), "selected": len(todo),
    }
    env = {**environment(device), **(getattr(impl.runner, "environment", None) or {})}
    return Report(
        cases=results, environment=env,
        implementation={"spec": impl.spec, "module": impl.name, "profile": impl.capabilities.name,
                        "capabilities": impl.capabilities.to_dict()},
        settings=settings, created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        run_status=run_status,
    )
