"""The GPU targets the kernels are built for, and the limits their launch configurations respect.

Per-compute-capability limits: NVIDIA CUDA C++ Programming Guide, "Technical Specifications per
Compute Capability" (shared memory per SM and per block with opt-in, 1 KB of shared memory
reserved per block, warps and blocks per SM, 64K 32-bit registers per SM for all of these).
SM counts are those of one product per capability, named beside it.
"""

from __future__ import annotations

import dataclasses

KB = 1024


@dataclasses.dataclass(frozen=True)
class GpuTarget:
    name: str  # "sm_90"
    capability: int  # 90: what triton's GPUTarget takes
    product: str  # the product whose SM count is used
    sm_count: int  # streaming multiprocessors of that product
    smem_per_block: int  # bytes one block may use with opt-in (cudaFuncAttributeMaxDynamicSharedMemorySize)
    smem_per_sm: int  # bytes per SM
    max_warps_per_sm: int
    max_blocks_per_sm: int
    tensor_tflops: float = 0.0  # dense bf16 tensor-core peak of that product (datasheet, no sparsity)
    hbm_tb_s: float = 0.0  # DRAM bandwidth of that product (datasheet), 10^12 bytes/s
    clock_ghz: float = 0.0  # boost clock of that product (datasheet)
    regs_per_sm: int = 65536  # 32-bit registers per SM (all capabilities here)
    smem_reserved_per_block: int = 1 * KB  # the runtime keeps 1 KB per resident block (8.0 and later)

    def blocks_per_sm(self, num_warps: int, regs_per_thread: int, smem_bytes: int) -> int:
        """Resident blocks per SM allowed by warps, registers (allocated per warp in units of
        256, i.e. per-thread counts rounded up to 8) and shared memory; 0 when one block does not fit."""
        by_warps = self.max_warps_per_sm // num_warps
        regs_per_warp = ((max(regs_per_thread, 1) * 32 + 255) // 256) * 256
        by_regs = self.regs_per_sm // (regs_per_warp * num_warps)
        per_block = smem_bytes + self.smem_reserved_per_block
        by_smem = self.smem_per_sm // per_block if smem_bytes <= self.smem_per_block else 0
        return max(0, min(self.max_blocks_per_sm, by_warps, by_regs, by_smem))


TARGETS = {
    t.name: t
    for t in (
        # peaks: NVIDIA's datasheets of each product (dense bf16 tensor TFLOPS, TB/s, boost GHz); only
        # mlaverify.kernels.inspect's estimates use them
        GpuTarget("sm_80", 80, "A100 SXM", 108, 163 * KB, 164 * KB, 64, 32, 312.0, 2.04, 1.41),
        GpuTarget("sm_86", 86, "RTX A6000", 84, 99 * KB, 100 * KB, 48, 16, 154.8, 0.768, 1.80),
        GpuTarget("sm_89", 89, "L40S", 142, 99 * KB, 100 * KB, 48, 24, 362.0, 0.864, 2.52),
        GpuTarget("sm_90", 90, "H200 SXM", 132, 227 * KB, 228 * KB, 64, 32, 989.0, 4.8, 1.98),
        GpuTarget("sm_100", 100, "B200", 148, 227 * KB, 228 * KB, 64, 32, 2250.0, 8.0, 1.965),
    )
}

# The interpreter runs programs one after another; it has no shared-memory limit. Its
# "parallelism" of 4 keeps the split logic exercised on the small shapes it can afford.
INTERPRETER = GpuTarget("interpreter", 0, "Triton interpreter (CPU)", 4, 2**62, 2**62, 2**30, 2**30)


def get_target(name: str) -> GpuTarget:
    if name not in TARGETS:
        raise ValueError(f"target: expected one of {sorted(TARGETS)}, got {name!r}")
    return TARGETS[name]


def target_of_device(device) -> GpuTarget:
    """The target a launch on `device` runs on: the interpreter's, or the CUDA device's own limits."""
    from . import _runtime

    if _runtime.INTERPRETED or getattr(device, "type", None) != "cuda":
        return INTERPRETER
    import torch

    props = torch.cuda.get_device_properties(device)
    capability = props.major * 10 + props.minor
    base = next((t for t in TARGETS.values() if t.capability == capability), TARGETS["sm_90"])
    return dataclasses.replace(
        base, name=f"sm_{capability}", capability=capability, product=props.name,
        sm_count=props.multi_processor_count,
        smem_per_block=int(getattr(props, "shared_memory_per_block_optin", base.smem_per_block)),
        smem_per_sm=int(getattr(props, "shared_memory_per_multiprocessor", base.smem_per_sm)),
    )
