"""Load an implementation under test and decide which cases it claims to support.

    impl = load_implementation("mlaverify.kernels")          # a module name ...
    impl = load_implementation("path/to/my_kernels.py")      # ... or a .py file
    impl.capabilities.unsupported_reason(case)               # None, or why the case is skipped

An implementation is any module exposing the FlashMLA API: `get_mla_metadata` and
`flash_mla_with_kvcache` (sparse and dense decode), `flash_mla_sparse_fwd` (sparse prefill),
`flash_attn_varlen_func` (mha prefill). Ops whose functions are missing are skipped.

Capability profiles (plain JSON-like dicts, see `Capabilities.from_dict`):

    MLAVERIFY_CAPABILITIES = {            # a module attribute declares its own profile
        "base": "full",                   # start from a built-in profile ("full" or "flash_mla")
        "ops": ["sparse_decode"],         # ops claimed (default: all of the base)
        "allow": {"sparse_decode": {"h_q": [64, 128]}, "*": {"dtype": ["bf16"]}},  # allowed field values
        "multiple_of": {"sparse_decode": {"topk": 64}},
        "max": {"*": {"s_kv": 4096}},
        "forbid": {"mha_prefill": [["backward", "gqa"]]},   # Case.features() combinations not claimed
        "devices": ["cuda"],              # device types it runs on (default: any)
        "checks": ["inputs_unmodified", "repeat_bitwise"],  # behavioural checks claimed (default: all)
    }

Built-in: "full" (everything; our kernels), "reference" (everything but the batch-permutation check:
`mlaverify.reference` and the planted bugs built on it are vectorized PyTorch, whose float32 results
depend on where a row sits in a SIMD loop on a given CPU, so bit-for-bit batch invariance is not a
property they have by construction; a kernel's split decisions are per sequence, so ours are asserted
it) and "flash_mla" (DeepSeek's package:
h_q 64/128 for sparse ops, top-k multiples of 64 (its B_TOPK), dense decode page block 64, sparse
prefill never tested with NaN behind entries past topk_length, bf16 MHA without GQA backward and
without the sliding window `window_size` (its flash_attn_varlen_func has no such argument), CUDA only). Unsupported cases are reported as "skip" with the reason, never as passes.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

from mlaverify.verify.cases import OPS, Case

OP_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "sparse_decode": ("get_mla_metadata", "flash_mla_with_kvcache"),
    "dense_decode": ("get_mla_metadata", "flash_mla_with_kvcache"),
    "sparse_prefill": ("flash_mla_sparse_fwd",),
    "mha_prefill": ("flash_attn_varlen_func",),
}


class ImplementationError(Exception):
    """The implementation could not be loaded (not importable, not a module, bad capabilities)."""


@dataclass(frozen=True)
class Capabilities:
    name: str
    ops: tuple[str, ...] = OPS
    allow: Mapping[str, Mapping[str, tuple]] = field(default_factory=dict)
    multiple_of: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    max: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    forbid: Mapping[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    devices: tuple[str, ...] | None = None
    checks: tuple[str, ...] | None = None   # behavioural checks claimed (None: all of runner.CHECKS)

    def claims_check(self, name: str) -> bool:
        return self.checks is None or name in self.checks

    def _rules(self, table: Mapping[str, Mapping[str, Any]], op: str) -> dict[str, Any]:
        return {**table.get("*", {}), **table.get(op, {})}

    def unsupported_reason(self, case: Case, device: str | None = None) -> str | None:
        """Why this profile does not claim `case` (on a device of type `device`), or None."""
        if case.op not in self.ops:
            return f"{self.name}: op {case.op} not claimed (claims {list(self.ops)})"
        if device is not None and self.devices is not None and device not in self.devices:
            return f"{self.name}: runs on {list(self.devices)} only, not {device}"
        for name, allowed in self._rules(self.allow, case.op).items():
            if getattr(case, name) not in allowed:
                return f"{self.name}: {case.op} supports {name} in {list(allowed)}, case has {getattr(case, name)!r}"
        for name, k in self._rules(self.multiple_of, case.op).items():
            value = getattr(case, name)
            if value and value % k:
                return f"{self.name}: {case.op} needs {name} a multiple of {k}, case has {value}"
        for name, k in self._rules(self.max, case.op).items():
            if getattr(case, name) > k:
                return f"{self.name}: {case.op} supports {name} <= {k}, case has {getattr(case, name)}"
        features = case.features()
        for combo in (*self.forbid.get("*", ()), *self.forbid.get(case.op, ())):
            if set(combo) <= features:
                return f"{self.name}: {case.op} does not claim the combination {list(combo)}"
        return None

    def to_dict(self) -> dict[str, Any]:
        def plain(table):
            return {op: {k: list(v) if isinstance(v, tuple) else v for k, v in rules.items()}
                    for op, rules in table.items()}
        return {"name": self.name, "ops": list(self.ops), "allow": plain(self.allow),
                "multiple_of": plain(self.multiple_of), "max": plain(self.max),
                "forbid": {op: [list(c) for c in combos] for op, combos in self.forbid.items()},
                "devices": None if self.devices is None else list(self.devices),
                "checks": None if self.checks is None else list(self.checks)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "custom") -> "Capabilities":
        if not isinstance(data, Mapping):
            raise ImplementationError(f"capabilities: expected a dict, got {type(data).__name__}")
        known = {"name", "base", "ops", "allow", "multiple_of", "max", "forbid", "devices", "checks"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ImplementationError(f"capabilities: unknown keys {unknown}; expected some of {sorted(known)}")
        base_name = data.get("base", "full")
        if base_name not in BUILTIN_PROFILES:
            raise ImplementationError(f"capabilities.base: expected one of {sorted(BUILTIN_PROFILES)}, got {base_name!r}")
        base = BUILTIN_PROFILES[base_name]
        ops = tuple(data.get("ops", base.ops))
        bad = [op for op in ops if op not in OPS]
        if bad:
            raise ImplementationError(f"capabilities.ops: unknown ops {bad}; expected some of {list(OPS)}")
        fields_ = set(Case.__dataclass_fields__)

        def merged(key: str, convert) -> dict[str, dict[str, Any]]:
            table = {op: dict(rules) for op, rules in getattr(base, key).items()}
            for op, rules in dict(data.get(key, {})).items():
                if op != "*" and op not in OPS:
                    raise ImplementationError(f"capabilities.{key}: unknown op {op!r}")
                for fname, value in dict(rules).items():
                    if fname not in fields_:
                        raise ImplementationError(f"capabilities.{key}.{op}: unknown case field {fname!r}")
                    table.setdefault(op, {})[fname] = convert(value)
            return table

        forbid = {op: tuple(tuple(c) for c in combos) for op, combos in base.forbid.items()}
        for op, combos in dict(data.get("forbid", {})).items():
            forbid[op] = forbid.get(op, ()) + tuple(tuple(str(f) for f in c) for c in combos)
        devices = data.get("devices", base.devices)
        checks = data.get("checks", base.checks)
        if checks is not None:
            bad = [c for c in checks if c not in BEHAVIOURAL_CHECKS]
            if bad:
                raise ImplementationError(f"capabilities.checks: unknown checks {bad}; "
                                          f"expected some of {list(BEHAVIOURAL_CHECKS)}")
        return cls(
            name=str(data.get("name", name)), ops=ops, allow=merged("allow", tuple),
            multiple_of=merged("multiple_of", int), max=merged("max", int), forbid=forbid,
            devices=None if devices is None else tuple(devices),
            checks=None if checks is None else tuple(checks),
        )


BEHAVIOURAL_CHECKS = ("inputs_unmodified", "repeat_bitwise", "batch_permutation")
FULL = Capabilities("full")
REFERENCE = Capabilities("reference", checks=("inputs_unmodified", "repeat_bitwise"))
FLASH_MLA = Capabilities(
    "flash_mla",
    allow={
        "sparse_decode": {"h_q": (64, 128)},
        "sparse_prefill": {"h_q": (64, 128), "nan_fill": ("none", "unused")},  # NaN past topk_length may leak
        "dense_decode": {"page_block_size": (64,)},
        "mha_prefill": {"dtype": ("bf16",), "window_left": (-1,), "window_right": (-1,)},  # no window argument
    },
    multiple_of={"sparse_decode": {"topk": 64, "extra_topk": 64}, "sparse_prefill": {"topk": 64}},
    forbid={"mha_prefill": (("backward", "gqa"),)},
    devices=("cuda",),
)
BUILTIN_PROFILES: dict[str, Capabilities] = {"full": FULL, "reference": REFERENCE, "flash_mla": FLASH_MLA}


API_FUNCTIONS = tuple(sorted({f for fs in OP_FUNCTIONS.values() for f in fs}))


def api_functions(module: ModuleType) -> frozenset[str]:
    """The FlashMLA API functions ``module`` has (callable attributes)."""
    return frozenset(f for f in API_FUNCTIONS if callable(getattr(module, f, None)))


@dataclass(frozen=True)
class Implementation:
    spec: str                       # what the user passed
    module: ModuleType | None       # None when the module lives in a worker process only
    capabilities: Capabilities
    module_name: str = ""           # the module's __name__
    functions: frozenset[str] = frozenset()   # the API functions it has
    runner: Any = field(default=None, compare=False, repr=False)  # runs its cases: impl_call.InProcess or a worker

    @property
    def name(self) -> str:
        return self.module_name or (self.module.__name__ if self.module is not None else self.spec)

    @property
    def mode(self) -> str:
        """"in-process" or "subprocess": where the implementation's code runs."""
        return self.runner.mode

    def run(self, case: Case, device, checks):
        """Run ``case`` on the implementation's side (call + behavioural checks): an impl_call.ImplRun."""
        return self.runner.run(case, device, checks)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()

    def missing_functions(self, op: str) -> list[str]:
        return [f for f in OP_FUNCTIONS[op] if f not in self.functions]

    def unsupported_reason(self, case: Case, device: str | None = None) -> str | None:
        missing = self.missing_functions(case.op)
        if missing:
            return f"{self.name} has no {', '.join(missing)} (needed for {case.op})"
        return self.capabilities.unsupported_reason(case, device)


def _exit_text(exc: SystemExit) -> str:
    return f"called sys.exit({exc.code!r})"


def import_implementation(spec: str) -> ModuleType:
    """Import a module name or a .py file as ``python`` would: a module name is looked up on the path with
    the current folder first (so ``my_kernels`` finds ./my_kernels.py), and a file's own folder is put on the
    path so that it can import the modules beside it. Raises ImplementationError, also when the import
    calls sys.exit()."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ImplementationError(f"implementation: file {spec!r} does not exist")
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        name = "mlaverify_impl_" + path.stem
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ImplementationError(f"implementation: cannot load {spec!r} as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except SystemExit as exc:
            sys.modules.pop(name, None)
            raise ImplementationError(f"implementation: importing {spec!r} {_exit_text(exc)}") from None
        except Exception as exc:
            sys.modules.pop(name, None)
            raise ImplementationError(f"implementation: importing {spec!r} failed: {type(exc).__name__}: {exc}") from exc
        return module
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # `mlaverify` is a console script: its sys.path[0] is its bin folder, not here
    try:
        return importlib.import_module(spec)
    except SystemExit as exc:
        raise ImplementationError(f"implementation: importing {spec!r} {_exit_text(exc)}") from None
    except Exception as exc:
        raise ImplementationError(f"implementation: cannot import {spec!r}: {type(exc).__name__}: {exc}") from exc


def resolve_capabilities(module: ModuleType | None, capabilities: str | Mapping[str, Any] | Capabilities | None,
                         *, module_name: str | None = None, declared: Any = None) -> Capabilities:
    """Explicit profile (name, dict or Capabilities), else the module's MLAVERIFY_CAPABILITIES,
    else "flash_mla" for the flash_mla package, "reference" for mlaverify.reference, else "full".
    Without the module (it lives in a worker), pass its ``module_name`` and ``declared`` profile."""
    if isinstance(capabilities, Capabilities):
        return capabilities
    if isinstance(capabilities, str):
        if capabilities not in BUILTIN_PROFILES:
            raise ImplementationError(
                f"capabilities: expected one of {sorted(BUILTIN_PROFILES)}, got {capabilities!r}")
        return BUILTIN_PROFILES[capabilities]
    if capabilities is not None:
        return Capabilities.from_dict(capabilities)
    name = module.__name__ if module is not None else str(module_name)
    if module is not None:
        declared = getattr(module, "MLAVERIFY_CAPABILITIES", None)
    if declared is not None:
        return Capabilities.from_dict(declared, name=f"{name}.MLAVERIFY_CAPABILITIES")
    if name.split(".")[0] == "flash_mla":
        return FLASH_MLA
    if name == "mlaverify.reference":
        return REFERENCE
    return FULL


def _no_api_error(text: str) -> ImplementationError:
    return ImplementationError(f"implementation {text!r} exposes none of the FlashMLA API functions {list(API_FUNCTIONS)}")


def load_implementation(spec: str | ModuleType,
                        capabilities: str | Mapping[str, Any] | Capabilities | None = None, *,
                        isolate: bool = False, timeout_s: float | None = None, threads: int | None = None,
                        ) -> Implementation:
    """Import `spec` (module name, .py path, or an already imported module); raises ImplementationError.

    With ``isolate``, the module is imported and run only in a worker process (`mlaverify.verify.worker`),
    each case limited to ``timeout_s`` seconds; call ``close()`` when done. A module object always runs
    in this process."""
    if isinstance(spec, ModuleType) or not isolate:
        from mlaverify.verify.impl_call import InProcess

        if isinstance(spec, ModuleType):
            module, text = spec, spec.__name__
        elif isinstance(spec, str) and spec:
            module, text = import_implementation(spec), spec
        else:
            raise ImplementationError(f"implementation: expected a module name or a .py path, got {spec!r}")
        functions = api_functions(module)
        if not functions:
            raise _no_api_error(text)
        return Implementation(text, module, resolve_capabilities(module, capabilities), module.__name__, functions,
                              InProcess(module))
    if not (isinstance(spec, str) and spec):
        raise ImplementationError(f"implementation: expected a module name or a .py path, got {spec!r}")
    from mlaverify.verify.worker import Worker

    worker = Worker(spec, timeout_s=timeout_s, threads=threads)
    try:
        info = worker.start()
        if not info["functions"]:
            raise _no_api_error(spec)
        caps = resolve_capabilities(None, capabilities, module_name=info["name"], declared=info["declared"])
    except BaseException:
        worker.close()
        raise
    return Implementation(spec, None, caps, info["name"], frozenset(info["functions"]), worker)
