"""Implementations of the FlashMLA API with one planted bug each: the self-test's targets.

Each bug is importable as a module, ``mlaverify.verify.planted.<name>`` (for example
``mlaverify check --impl mlaverify.verify.planted.sink_ignored``), built on the reference so that
everything except the planted mistake is right. ``CLEAN`` is the unmodified reference.
"""
from __future__ import annotations

import sys
import types

from ._base import PlantedBug, build_module
from .decode_bugs import BUGS as _DECODE_BUGS
from .dense_bugs import BUGS as _DENSE_BUGS
from .prefill_bugs import BUGS as _PREFILL_BUGS

try:  # the MHA prefill bugs need the MHA reference
    from .mha_bugs import BUGS as _MHA_BUGS
except ImportError:  # reference without flash_attn_varlen_func: no MHA bugs to plant
    _MHA_BUGS = []

__all__ = ["PlantedBug", "BUGS", "CLEAN", "get", "module_for", "names"]

BUGS: tuple[PlantedBug, ...] = tuple(_DECODE_BUGS + _PREFILL_BUGS + _DENSE_BUGS + _MHA_BUGS)
CLEAN = "mlaverify.reference"

_BY_NAME = {bug.name: bug for bug in BUGS}
if len(_BY_NAME) != len(BUGS):
    raise RuntimeError("planted bugs: two bugs share a name")

_MODULES: dict[str, types.ModuleType] = {}
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
    """The module object implementing the FlashMLA API with bug ``name``."""
    get(name)
    return _MODULES[name]
