"""Implementations of the FlashMLA API with one planted bug each: the self-test's targets.

Each bug is importable as a module, ``mlaverify.verify.planted.<name>`` (for example
``mlaverify check --impl mlaverify.verify.planted.sink_ignored``), built on the reference so that
everything except the planted mistake is right. ``CLEAN`` names the unmodified reference API
(``mlaverify.verify.planted.clean``); ``DRIFT`` (``mlaverify.verify.planted.within_tolerance_drift``)
is a regression inside every tolerance that only the gate catches.
"""
from __future__ import annotations

import sys
import types

from ._base import PlantedBug, build_module
from .boundary_bugs import BUGS as _BOUNDARY_BUGS
from .boundary_mha_bugs import BUGS as _BOUNDARY_MHA_BUGS
from .decode_bugs import BUGS as _DECODE_BUGS
from .dense_bugs import BUGS as _DENSE_BUGS
from .drift import DRIFT
from .mha_bugs import BUGS as _MHA_BUGS
from .prefill_bugs import BUGS as _PREFILL_BUGS
from .softmax_bugs import BUGS as _SOFTMAX_BUGS

__all__ = ["PlantedBug", "BUGS", "CLEAN", "DRIFT", "get", "module_for", "names"]

BUGS: tuple[PlantedBug, ...] = tuple(_DECODE_BUGS + _PREFILL_BUGS + _DENSE_BUGS + _MHA_BUGS + _SOFTMAX_BUGS
                                     + _BOUNDARY_BUGS + _BOUNDARY_MHA_BUGS)
CLEAN = "mlaverify.verify.planted.clean"  # the reference API unchanged (MHA included), importable by name

_BY_NAME = {bug.name: bug for bug in BUGS}
if len(_BY_NAME) != len(BUGS):
    raise RuntimeError("planted bugs: two bugs share a name")

_MODULES: dict[str, types.ModuleType] = {
    "clean": build_module(PlantedBug("clean", "no bug: the reference itself", (), ())),
    DRIFT.name: build_module(DRIFT),  # not a bug the selftest expects to kill: it passes every tolerance
}
for _name in ("clean", DRIFT.name):
    sys.modules.setdefault(f"{__name__}.{_name}", _MODULES[_name])
for _bug in BUGS:
    _MODULES[_bug.name] = build_module(_bug)
    # registered so that importlib.import_module("mlaverify.verify.planted.<name>") finds it
    sys.modules.setdefault(f"{__name__}.{_bug.name}", _MODULES[_bug.name])


def names() -> list[str]:
    return [bug.name for bug in BUGS]


def get(name: str) -> PlantedBug:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"planted bug: expected one of {sorted(_BY_NAME)}, got {name!r}") from None


def module_for(name: str) -> types.ModuleType:
    """The module object implementing the FlashMLA API with bug ``name`` ("clean": no bug)."""
    if name not in ("clean", DRIFT.name):
        get(name)
    return _MODULES[name]
