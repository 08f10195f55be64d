"""How many splits a split-KV launch makes on a compiled target: whole waves of the GPU, not a rule of thumb.

A split kernel runs ``programs x splits`` programs on ``slots`` = SMs x resident blocks per SM at
once. The launch takes about ``ceil(programs x splits / slots)`` waves, each as long as one
program: its share of the loop steps plus a fixed cost (loading q, writing its float32 partial
for the combine). The count chosen is the fewest splits whose makespan is within SLACK of the
shortest: the combine kernel and the partials' traffic grow with every split and are not in the
model, so a split that saves a percent of wave quantization is not worth it (dense-long at 32-row
tiles: 9 splits would save 1%). Everything comes from shapes only, never from tensor
contents, so a sequence's result never depends on its batch mates.

    splits = whole_wave_splits(programs=8, list_lengths=(2048,), block=64, slots=132, max_splits=64)

The interpreter keeps each kernel's own small-shape rule (it has no waves, and CPU cases need
several splits to exercise the combine).
"""

from __future__ import annotations

import math
from typing import Sequence

from ._targets import GpuTarget

# A program's fixed cost in loop steps: q (64 heads x 576 bf16 = 72 KB) is loaded once and the
# float32 partial (64 x 512 x 4 = 128 KB) written once and read back by the combine, against one
# step's 64 keys (42 KB of FP8, dequantized, two MMAs): about two steps. A guess of that order is
# all the choice needs: it only decides when one more split stops paying for itself.
OVERHEAD_STEPS = 2.0
# Registers assumed per thread when counting resident blocks: the split kernels compile to ~255
# on sm_90 (mlaverify.kernels.inspect), so the register file, not shared memory, usually binds.
ASSUMED_REGISTERS = 255
SLACK = 0.05  # makespans within 5% of the shortest count as equal (see the module docstring)


def slots(target: GpuTarget, num_warps: int, smem_bytes: int) -> int:
    """Programs the target runs at once: SMs x resident blocks (at ASSUMED_REGISTERS), at least the SM count."""
    return target.sm_count * max(1, target.blocks_per_sm(num_warps, ASSUMED_REGISTERS, smem_bytes))


def steps(list_lengths: Sequence[int], splits: int, block: int) -> int:
    """Loop steps of one program when each list is cut in ``splits`` chunks rounded up to ``block``."""
    return sum(math.ceil(math.ceil(n / splits) / block) for n in list_lengths if n > 0)


def whole_wave_splits(programs: int, list_lengths: Sequence[int], block: int, slots: int, max_splits: int,
                      overhead_steps: float = OVERHEAD_STEPS) -> int:
    """The split count in [1, max_splits] with the shortest makespan (see the module docstring)."""
    if programs < 1 or slots < 1 or block < 1 or max_splits < 1:
        raise ValueError(f"whole_wave_splits: programs, slots, block, max_splits must be >= 1, got "
                         f"{programs}, {slots}, {block}, {max_splits}")
    most = max(1, min(max_splits, steps(list_lengths, 1, block)))  # no split without a step of its own

    def makespan(s: int) -> float:
        return math.ceil(programs * s / slots) * (steps(list_lengths, s, block) + overhead_steps)

    best = min(makespan(s) for s in range(1, most + 1))
    return next(s for s in range(1, most + 1) if makespan(s) <= best * (1 + SLACK))
