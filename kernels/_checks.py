"""Whether the kernels' API reads tensor values to check them (index ranges, lengths, block tables).

Shape, dtype, device and stride checks always run: they read no device memory. Value checks
copy device data to the host (``bool(bad.any())``), a synchronisation that makes a decode step
impossible to capture in a CUDA graph, so serving code can turn them off: ``check_inputs=False``
per call, or ``MLAVERIFY_CHECK_INPUTS=0`` in the environment for the default. Out-of-range
indices then reach the kernels unchecked (they mask positions past the list, but an index past
the cache reads out of bounds), which is the caller's responsibility. Default: on.
"""

from __future__ import annotations

import os

ENV = "MLAVERIFY_CHECK_INPUTS"
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def resolve_check_inputs(check_inputs: bool | None) -> bool:
    """The per-call value if given, else the environment switch (default on); ValueError on a bad value."""
    if check_inputs is not None:
        if not isinstance(check_inputs, bool):
            raise TypeError(f"check_inputs: expected None, True or False, got {check_inputs!r}")
        return check_inputs
    raw = os.environ.get(ENV, "1").strip().lower()
    if raw in _ON:
        return True
    if raw in _OFF:
        return False
    raise ValueError(f"{ENV}: expected one of {_ON + _OFF}, got {os.environ.get(ENV)!r}")
