"""Tolerance policy: one data table per op and output, overridable from pyproject or a dict.

Defaults are FlashMLA's (operations.md, "Numerical conventions"). Overrides, in increasing
priority: `[tool.mlaverify.tolerances]` in a pyproject.toml, then a mapping passed by the caller
(the CLI). Both use the same shapes:

    [tool.mlaverify.tolerances.sparse_decode.out]
    atol = 2e-3
    rtol = 0.0157
    cos = 5e-6

    load_tolerances(overrides={"sparse_decode": {"out": {"atol": 2e-3}}})
    load_tolerances(overrides={"sparse_decode.out.atol": 2e-3})      # flat keys, as the CLI parses
    parse_override("sparse_decode.out.atol=2e-3")  -> ("sparse_decode.out.atol", 0.002)

The calibrated policy's fields (`budgets`) live in the same table: "k" (multiple of the numerics
emulation's error), "floor_rel" (floor of the abs-error budget, times max |ref|) and "cos_floor".
Only listed ops, outputs and fields ("atol", "rtol", "cos", "k", "floor_rel", "cos_floor") are
accepted; anything else raises ValueError naming the key.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any, Mapping

from mlaverify.verify.results import Tolerance

# float32 lse / max_logits: the emulation computes them exactly as the reference (its error is 0), so their
# budget is the floor: 2^-16 of max |lse| (16x float32's epsilon: a kernel's exp2/log2 and other summation
# order; half FlashMLA's lse rtol 2^-15); no cosine (the fixed table has none either)
_LSE_BUDGET = dict(floor_rel=2.0**-16, cos_floor=None)
_OUT_DECODE = Tolerance(atol=1e-3, rtol=2.01 / 128, cos=5e-6)
DEFAULT_TOLERANCES: dict[str, dict[str, Tolerance]] = {
    "sparse_decode": {"out": _OUT_DECODE, "lse": Tolerance(1e-6, 8.01 / 65536, **_LSE_BUDGET)},
    "sparse_prefill": {
        "out": Tolerance(8e-4, 3.01 / 128, 7e-6),
        "max_logits": Tolerance(1e-6, 2.01 / 65536, **_LSE_BUDGET),
        "lse": Tolerance(1e-6, 2.01 / 65536, **_LSE_BUDGET),
    },
    "dense_decode": {"out": Tolerance(8e-4, 2.01 / 128, 5e-6), "lse": Tolerance(1e-6, 8.01 / 65536, **_LSE_BUDGET)},
    "mha_prefill": {
        "out": Tolerance(1e-3, 8.01 / 128, 7e-6),
        "lse": Tolerance(1e-6, 2.01 / 65536, **_LSE_BUDGET),
        "dq": Tolerance(1e-3, 8.01 / 128, 7e-6),
        "dk": Tolerance(1e-3, 8.01 / 128, 7e-6),
        "dv": Tolerance(1e-3, 8.01 / 128, 7e-6),
    },
}
_FIELDS = ("atol", "rtol", "cos", "k", "floor_rel", "cos_floor")
_OPTIONAL = ("cos", "cos_floor")  # 'none' clears these bounds
ToleranceTable = dict[str, dict[str, Tolerance]]


def parse_override(text: str) -> tuple[str, float | None]:
    """'op.output.field=value' -> (key, value); value 'none' clears a cosine bound."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"tolerance override: expected 'op.output.field=value', got {text!r}")
    value = value.strip()
    if value.lower() == "none":
        return key.strip(), None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"tolerance override {key!r}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"tolerance override {key!r}: expected a finite number, got {value!r}")
    return key.strip(), number


def _nest(overrides: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    nested: dict[str, dict[str, dict[str, Any]]] = {}
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            for out, fields in value.items():
                if not isinstance(fields, Mapping):
                    raise ValueError(f"tolerances.{key}.{out}: expected a table of {list(_FIELDS)}, got {fields!r}")
                nested.setdefault(key, {}).setdefault(out, {}).update(fields)
        else:
            parts = str(key).split(".")
            if len(parts) != 3:
                raise ValueError(f"tolerance override {key!r}: expected 'op.output.field'")
            nested.setdefault(parts[0], {}).setdefault(parts[1], {})[parts[2]] = value
    return nested


def apply_overrides(table: ToleranceTable, overrides: Mapping[str, Any] | None) -> ToleranceTable:
    """A new table with the overrides applied (nested or flat keys, see module docstring)."""
    result = {op: dict(outs) for op, outs in table.items()}
    for op, outs in _nest(overrides or {}).items():
        if op not in result:
            raise ValueError(f"tolerances: unknown op {op!r}; expected one of {sorted(result)}")
        for out, fields in outs.items():
            if out not in result[op]:
                raise ValueError(f"tolerances.{op}: unknown output {out!r}; expected one of {sorted(result[op])}")
            changes = {}
            for name, value in fields.items():
                if name not in _FIELDS:
                    raise ValueError(f"tolerances.{op}.{out}: unknown field {name!r}; expected one of {list(_FIELDS)}")
                if value is None and name not in _OPTIONAL:
                    raise ValueError(f"tolerances.{op}.{out}.{name}: expected a number, got None")
                if value is not None:
                    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                            math.isfinite(value) and value >= 0):
                        raise ValueError(f"tolerances.{op}.{out}.{name}: expected a finite number >= 0, got {value!r}")
                    value = float(value)
                changes[name] = value
            result[op][out] = dataclasses.replace(result[op][out], **changes)
    return result


def pyproject_overrides(path: str | Path | None = None) -> dict[str, Any]:
    """The [tool.mlaverify.tolerances] table of a pyproject.toml (default ./pyproject.toml); {} if absent."""
    p = Path("pyproject.toml") if path is None else Path(path)
    if not p.is_file():
        if path is not None:
            raise ValueError(f"pyproject: expected a readable file, got {str(p)!r}")
        return {}
    with p.open("rb") as f:
        data = tomllib.load(f)
    table = data.get("tool", {}).get("mlaverify", {}).get("tolerances", {})
    if not isinstance(table, Mapping):
        raise ValueError(f"{p}: [tool.mlaverify.tolerances] must be a table, got {type(table).__name__}")
    return dict(table)


def load_tolerances(pyproject: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                    *, use_pyproject: bool = True) -> ToleranceTable:
    """Defaults, then pyproject's [tool.mlaverify.tolerances], then `overrides`."""
    table = {op: dict(outs) for op, outs in DEFAULT_TOLERANCES.items()}
    if use_pyproject:
        table = apply_overrides(table, pyproject_overrides(pyproject))
    return apply_overrides(table, overrides)


def table_to_dict(table: ToleranceTable) -> dict[str, dict[str, dict[str, Any]]]:
    return {op: {out: tol.to_dict() for out, tol in outs.items()} for op, outs in table.items()}
