"""Compile-time options of the kernels chosen from the environment (read when a launch is planned).

``MLAVERIFY_P_SPLIT`` (default ``1``): how the float32 probabilities P (and, in the MHA backward,
dS) enter the 16-bit tensor-core products. ``1``: as two 16-bit terms hi + lo (~2^-17 relative,
today's default: one rounding costs up to 2^-9 per weight, more than the spec's output bound
allows next to an unrounded reference on short lists). ``0``: one 16-bit rounding, as FlashMLA
does: half the P @ V tensor-core work and fewer registers (``python -m mlaverify.kernels.inspect``
shows the effect). Which one is the default is for the calibrated tolerance policy to decide;
the option only exists so that it can be measured. It changes the kernels' constexpr
``P_SPLIT`` (``SPLIT_P`` in sparse decode), so both builds live side by side in Triton's cache.
"""

from __future__ import annotations

import os

P_SPLIT_ENV = "MLAVERIFY_P_SPLIT"


def p_split() -> bool:
    """True: P (and dS) as hi + lo 16-bit terms; False: one 16-bit rounding. ValueError on a bad value."""
    raw = os.environ.get(P_SPLIT_ENV, "1").strip()
    if raw not in ("0", "1"):
        raise ValueError(f"{P_SPLIT_ENV}: expected '0' (one bf16 rounding of P) or '1' (hi + lo), got {raw!r}")
    return raw == "1"
