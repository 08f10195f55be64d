"""Compile-time options of the kernels chosen from the environment (read when a launch is planned).

``MLAVERIFY_P_SPLIT`` (default ``0``): how the float32 probabilities P (and, in the MHA backward,
dS) enter the 16-bit tensor-core products. ``0`` (the default): one 16-bit rounding, as FlashMLA
does: half the P @ V tensor-core work, fewer registers and bigger tiles (``python -m
mlaverify.kernels.inspect`` shows the effect). ``1``: as two 16-bit terms hi + lo (~2^-17
relative): nearly float32-exact products, twice the P @ V work. The calibrated tolerance policy
(the engine's default, issue 10) decided: one rounding passes every case of the ``dev`` profile
(573 cases, worst error 0.74 of its budget, 0.56 of FlashMLA's fixed table on its own data);
under FlashMLA's fixed table alone, next to an unrounded reference, one rounding costs up to
2^-9 per weight, which is why the project began with hi + lo. It changes the kernels' constexpr
``P_SPLIT`` (``SPLIT_P`` in sparse decode), so both builds live side by side in Triton's cache.


``MLAVERIFY_SPARSE_DECODE_BLOCK_N`` (default unset: 32 entries per step, in the interpreter and
on every target): index entries per sparse decode step, ``32`` or ``64``. On sm_90 the 32-entry step
is the one whose main loop touches no local memory; the 64-entry one (64 heads, two stages, one
rounding of P: 231,424 B of the 232,448 B per block) reloads 0-18 spilled values per step but issues
~20% fewer instructions and moves ~20% less shared memory per entry (``python -m
mlaverify.kernels.inspect``). Which is faster is a measurement: the device check (``python -m
mlaverify.kernels.device_check``) times sparse decode both ways. ``64`` where it does not fit is
refused by the launch config, never narrowed.
"""

from __future__ import annotations

import os

P_SPLIT_ENV = "MLAVERIFY_P_SPLIT"
SPARSE_DECODE_BLOCK_N_ENV = "MLAVERIFY_SPARSE_DECODE_BLOCK_N"
SPARSE_DECODE_BLOCK_NS = (32, 64)


def p_split() -> bool:
    """True: P (and dS) as hi + lo 16-bit terms; False: one 16-bit rounding. ValueError on a bad value."""
    raw = os.environ.get(P_SPLIT_ENV, "0").strip()
    if raw not in ("0", "1"):
        raise ValueError(f"{P_SPLIT_ENV}: expected '0' (one bf16 rounding of P) or '1' (hi + lo), got {raw!r}")
    return raw == "1"


def sparse_decode_block_n() -> int | None:
    """Entries per sparse decode step asked for in the environment (None: unset, the launch config chooses)."""
    raw = os.environ.get(SPARSE_DECODE_BLOCK_N_ENV, "").strip()
    if not raw:
        return None
    if raw not in {str(n) for n in SPARSE_DECODE_BLOCK_NS}:
        raise ValueError(f"{SPARSE_DECODE_BLOCK_N_ENV}: expected one of {list(SPARSE_DECODE_BLOCK_NS)} "
                         f"(entries per step) or unset, got {raw!r}")
    return int(raw)
