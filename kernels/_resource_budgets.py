"""Resource budgets of the sm_90 builds at the production shapes, checked by tests/kernels/test_inspect.py.

One row per kernel launch (``KernelLaunch.name``). The numbers are today's truth from
``python -m mlaverify.kernels.inspect --target sm_90`` (the README has the table), each with
the reason it is what it is; a change that makes a kernel worse fails CI with the numbers,
a change that makes it better should lower the budget here. Shared memory has no budget: it
must fit the target's per-block limit, always.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Budget:
    max_spill_bytes: int  # per thread (stack frame)
    mma: tuple  # main-loop MMA kinds accepted; () = the kernel has no MMA loop
    max_ratio: float | None  # tensor-core FLOPs issued / FLOPs counted per main-loop iteration
    reason: str


# Ratios: exact multiples of the tile work, so the budget is the value itself (+0.005 for the
# printed rounding, never to admit more work).
#
# The default build: one bf16 rounding of P and dS (MLAVERIFY_P_SPLIT unset or 0).
SM90_BUDGETS = {
    "sparse_decode.split": Budget(
        8, ("wgmma",), 1.005,
        "64 heads x BLOCK_N 32, two stages (V32 152,576 B, MODEL1 131,072 B of shared memory); 240-255 "
        "registers, 0 B of spill but MODEL1 config2 at 64-256 rows (8 B, outside the loop), none inside the "
        "loop over every batch size (-m slow sweep). BLOCK_N 64 (MLAVERIFY_SPARSE_DECODE_BLOCK_N=64, timed "
        "beside the default by the device check) fits in 231,424 B of the 232,448 B per block and reloads 0-18 "
        "spilled values per step (P's shared-memory layout-conversion addresses and QK operand descriptors, "
        "hoisted out of the loop beside the 128-register accumulator; 24-120 B), for ~20% fewer instructions "
        "and shared-memory bytes per entry (m64n32 QK wgmma per warpgroup instead of m64n16). Ratio 1.00: "
        "P @ V once and QK once. The scores are computed one step ahead (_sparse_decode_steps), so that the QK "
        "dot feeds no dot in its own iteration: for a chained dot Triton 3.9 puts all 8 warps on M, which 64 "
        "rows fill only once, and both warpgroups computed QK (ratio 1.53 / 1.50, 496-704 B of spill before).",
    ),
    "sparse_decode.combine": Budget(0, (), None, "no tensor-core work: a weighted sum of the splits"),
    "sparse_prefill": Budget(
        0, ("wgmma",), 1.005,
        "64-head wgmma tiles, two stages (V32 217,088 B, MODEL1 200,704 B of shared memory); 249-255 registers, "
        "0 B of spill. Ratio 1.00: QK once, scores one step ahead (kernels/_unchained_qk.py; before: 1.53 = "
        "(2 x 576 + 512) / 1088, QK by both warpgroups as in sparse decode, and 128 / 40 B of spill).",
    ),
    "dense_decode.split": Budget(
        24, ("wgmma",), 1.005,
        "64-row wgmma tiles where a KV head has >= 64 query rows: 16-24 B of spill, none inside the loop (its "
        "softmax and P @ V before the next scores; 1 LDL per step with the scores first); at <= 16 rows the "
        "keys first (S^T = K Q^T, O^T = V^T P^T: 64 keys as wgmma's M, m64n16k16; 0 B of spill, 229 registers; "
        "mma.sync 16-row tiles before). Ratio 1.00: QK once, scores one step ahead as sparse prefill (before: 1.53).",
    ),
    "dense_decode.combine": Budget(0, (), None, "no tensor-core work"),
    "mha_prefill.fwd": Budget(0, ("wgmma",), 1.005, "128 x 64 tiles, 224 registers; ratio (192 + 128) / 320"),
    "mha_prefill.bwd_preprocess": Budget(0, (), None, "no tensor-core work: rowsum(dout * out)"),
    "mha_prefill.bwd_dkdv": Budget(
        80, ("wgmma",), 0.805,
        "64 query rows x 32 keys, dims first (dK^T, dV^T accumulators: every product has the dims or the 64 "
        "query rows as its M, not the 32 keys; mma.sync before), 4 warps: 255 registers, 80 B of spill, all "
        "of it loop-invariant values saved and reloaded between the query loops (0 LDL/STL inside them); "
        "8 warps spill nothing but both warpgroups compute S and dP (ratio 1.20). Ratio against the "
        "backward's 2.5x forward count: S, dP, dV, dK = 640 / 800.",
    ),
    "mha_prefill.bwd_dq": Budget(
        48, ("wgmma",), 0.645,
        "128 query rows, 255 registers with dq0/dq1 f32 accumulators and the recomputed P/dS: 48 B of "
        "spill; ratio: S, dP, dQ = 512 / 800 of the backward count. The backward's op ratio is dkdv + dq = 1.44.",
    ),
}


# Sparse decode at 64 entries per step (MLAVERIFY_SPARSE_DECODE_BLOCK_N=64, the option the device check
# times beside the default; checked by tests/kernels/test_inspect.py with the variant's build).
SPARSE_DECODE_BN64_BUDGET = Budget(
    120, ("wgmma",), 1.005,
    "64 heads x BLOCK_N 64, two stages, one rounding of P (V32 231,424 B, MODEL1 196,608 B); 255 registers, "
    "V32 48-120 B, MODEL1 24-48 B of spill, the upper end where one split per row writes the bf16 output "
    "itself (FINAL); 0-18 LDL per step of ~2,100 SASS instructions (the default's 32-entry step: none).",
)


# With P and dS as hi + lo bf16 terms (MLAVERIFY_P_SPLIT=1) the launch-config functions keep the
# smaller tiles that fit twice the P @ V operands; checked by the same test in that mode.
SM90_BUDGETS_HI_LO = {
    **SM90_BUDGETS,
    "sparse_decode.split": Budget(
        16, ("wgmma",), 1.505,
        "BLOCK_N 32 (V32 148,480 B, MODEL1 126,976 B of shared memory; at 64 it fits, 223,232 / 188,416 B, but "
        "spills 104-192 B with 24-46 LDL per step: the doubled P operands); 247-255 registers: the [64, 512] "
        "f32 accumulator (four 128-column chunks) plus the "
        "carried scores; 0-16 B of spill over every batch size, none inside the loop (24-160 B with the scores "
        "computed before P @ V, 224 B before the 128-dim chunks). "
        "Ratio 1.47 (V32) / 1.50 (MODEL1): QK once (scores one step ahead), P @ V twice (p_hi + p_lo).",
    ),
    "sparse_prefill": Budget(
        0, ("mma.sync",), 2.005,
        "mma.sync, not wgmma: 32-head tiles are below wgmma's 64-row M (64 heads spill ~4 KB with "
        "hi + lo P). Ratio 2: P @ V twice (hi + lo), and QK by both warp rows of the 8 warps.",
    ),
    "dense_decode.split": Budget(
        0, ("mma.sync",), 2.005,
        "mma.sync at 32 (or 16) query rows per program, as sparse prefill; ratio 1.47 at 16 rows x 4 "
        "warps (P @ V twice), 2.0 at 32 rows x 8 warps (QK duplicated across warps as well).",
    ),
    "mha_prefill.fwd": Budget(0, ("wgmma",), 1.405, "ratio (192 + 2 x 128) / 320: P @ V twice (hi + lo)"),
    "mha_prefill.bwd_dkdv": Budget(
        72, ("wgmma",), 1.205,
        "64 x 32 tiles, dims first as in the default build (72 B of spill, between the loops); "
        "S, dP, dV (hi + lo), dK (hi + lo) = 960 / 800.",
    ),
    "mha_prefill.bwd_dq": Budget(
        56, ("wgmma",), 0.885,
        "128 query rows, 255 registers; S, dP, dQ (hi + lo) = 704 / 800 of the backward count.",
    ),
}
