"""The QK scores of the MLA kernels, built so that Triton computes them once per program on sm_90.

Triton 3.9's AccelerateMatmul gives a ``tl.dot`` whose result flows, within one loop iteration,
into another dot (a "chained" dot: s -> softmax -> p -> P @ V, or m -> alpha -> the P @ V
accumulator) all warps on M (warpsPerCTA [8, 1]). A 64-row wgmma tile fills one warpgroup, so
with 8 warps the second warpgroup computes the same QK product again (issued/counted 1.53 for
576 dims instead of 1.00). The kernels therefore compute the scores of step t in iteration t
and carry them to iteration t + 1, where the softmax and P @ V of step t run (with that step's
values loaded again): the QK dot's result then only reaches the loop's yield, and the dot gets
[4, 2] (the two warpgroups split the scores by column). Users: sparse decode
(``_sparse_decode_steps.attend_lists``), sparse prefill and dense decode (their ``QK_AHEAD`` tiles:
the 64-row wgmma ones; on mma.sync tiles the carried scores and the second load cost registers and
shared memory and save no MMA, so those keep the plain loop).
"""

from __future__ import annotations

from . import _runtime  # noqa: F401  (decides compiled/interpreted before any kernel is built)

import triton
import triton.language as tl


@triton.jit
def dot_f32(a, b, UPCAST: tl.constexpr):
    """tl.dot with float32 accumulation; UPCAST feeds it float32 copies of the (bf16/fp16) operands.

    Triton's interpreter computes bf16 x bf16 dots wrongly (triton 3.9), so interpreted launches
    upcast first; the products of bf16 values are exact in float32 either way.
    """
    if UPCAST:
        res = tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        res = tl.dot(a, b)
    return res


@triton.jit
def opaque(x, INTERPRET: tl.constexpr):
    """x (float32), through an identity Triton cannot see into: keeps its combiner from folding
    ``dot(a, b) + c`` into ``dot(a, b, c)``, which would chain the two dots again."""
    if INTERPRET:
        return x
    else:
        return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def qk_scores(q_a, q_b, k_a, k_b, HAS_B: tl.constexpr, UNCHAIN: tl.constexpr, UPCAST: tl.constexpr):
    """q k^T [M, N] in float32 over the key pieces: a (512 dims) and, when HAS_B, b (the 64 RoPE dims).

    UNCHAIN: 576 = 512 + 64 as two dots and a sum through `opaque`, not one dot accumulating into
    the other (a chained dot). The interpreter's dot is matmul + add, so it is the same float32
    addition either way.
    """
    s = dot_f32(q_a, tl.trans(k_a), UPCAST)
    if HAS_B:
        if UNCHAIN:
            s = opaque(s, UPCAST) + opaque(dot_f32(q_b, tl.trans(k_b), UPCAST), UPCAST)
        else:
            s += dot_f32(q_b, tl.trans(k_b), UPCAST)
    return s
