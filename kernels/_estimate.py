"""Estimated time and TFLOPS of each production case on a target, from the compiled kernels' numbers.

A roofline fed with what ``mlaverify.kernels.inspect`` reads from the build, not a measurement:

    launch with a main MMA loop:  t = max(t_tensor + t_exp + t_dequant, t_issue, t_shared, t_memory) x ceil(waves) / waves
        t_tensor  = the op's counted FLOPs x (issued / counted) / (peak x the MMA kind's fraction)
        t_exp     = scores (query, key, head) x one exp2 each / (SMs x exp2 per SM per clock x clock)
        t_dequant = FP8 tokens dequantized (once per head tile) x cycles per token / (SMs x clock)
        t_issue   = main-loop iterations (counted FLOPs / counted per iteration) x SASS instructions per
                    iteration x warps / (SMs x 4 schedulers x clock): every instruction of the loop body
                    (dequantization, softmax, addresses, MMA issue, spill reloads) issued once per warp
        t_shared  = main-loop iterations x shared-memory bytes per iteration (the PTX loop's ld/st.shared,
                    ldmatrix/stmatrix, cp.async writes and the wgmma operands read from shared memory) /
                    (SMs x 128 bytes per clock x clock): a wgmma with a narrow N re-reads its A tile
                    for little work (m64n16k16: 2.5 KB per 32 K FLOPs, 2.5x what 128 B per clock feeds)
        t_memory  = (the op's bytes by the spec's formula + the launch's float32 partials) / bandwidth
    launch without MMA (split combine, backward preprocess): its float32 tensors / bandwidth

Tensor-core work, the softmax's exponentials and dequantization add up: our kernels do them in
the same warps, one after the other (no warp specialization, no ping-pong of warpgroups), while
loads overlap them (cp.async stages). What it leaves
out makes it optimistic: shared-memory bank conflicts, spills (a row that spills is flagged), latency that too
few resident warps cannot hide, barriers, the softmax's other ALU work (max, sums, rescaling), L2 effects. The bytes
formula counts every index as its own token (no position shared between the query tokens of a
row): pessimistic for memory, which only bounds the memory-bound dense decode row. Use it to rank
designs and to see which resource binds, with about +-25% on the kernels that do not spill.
"""

from __future__ import annotations

import math

from ._targets import GpuTarget

# Reached fractions of the datasheet peaks, measured on a lent H200 here (configs-and-performance.md):
# a bf16 matmul at 790 of 989 TFLOPS, a copy at 4.3 of 4.8 TB/s.
TENSOR_EFFICIENCY = 0.8
MEMORY_EFFICIENCY = 0.9
# mma.sync on sm_90 and later issues from one warp at a time and reaches about 2/3 of the
# warpgroup MMA's (wgmma) throughput (FlashAttention-3 paper, section 2); below sm_90 it is the
# only tensor-core instruction, so it runs at the peak.
MMA_SYNC_FRACTION_SM90 = 2 / 3
# FP8 -> bf16 dequantization of one 576/656-byte token for one 64-head tile: ~50 SM cycles in
# FlashMLA's tuned kernel (configs-and-performance.md). Ours is not faster, so t_dequant is a floor.
DEQUANT_CYCLES_PER_TOKEN = 50.0
# Warp schedulers per SM, each issuing at most one instruction per clock (sm_70 and later).
SCHEDULERS_PER_SM = 4
# Shared memory: 32 banks x 4 bytes per SM per clock (sm_70 through sm_100; 128 B x 132 SMs x 1.98 GHz =
# the H200's ~33 TB/s), shared by every access of the block: loads, stores, cp.async writes, wgmma operands.
SHARED_BYTES_PER_SM_PER_CLOCK = 128.0
# exp2 (MUFU.EX2) throughput: 16 results per SM per clock on compute capability 8.x-10.0 (CUDA C++
# Programming Guide, "Arithmetic Instructions" throughput table).
EXP2_PER_SM_PER_CLOCK = 16.0


def _kind_fraction(kind: str, target: GpuTarget) -> float:
    if "mma.sync" in kind and target.capability >= 90:
        return MMA_SYNC_FRACTION_SM90
    return 1.0


def launch_time(row: dict, work: dict, target: GpuTarget) -> tuple[float, str]:
    """(seconds, what binds it) for one inspect row (one launch) of a case whose op does ``work``."""
    bandwidth = target.hbm_tb_s * 1e12 * MEMORY_EFFICIENCY
    partials = row.get("partial_bytes", 0)
    main = row.get("main_loop")
    if main is None or not row.get("tensor_work_ratio"):
        return partials / bandwidth, "memory"
    peak = target.tensor_tflops * 1e12 * TENSOR_EFFICIENCY * _kind_fraction(main["kind"], target)
    sm_clocks = target.sm_count * target.clock_ghz * 1e9  # SM cycles per second, all SMs
    parts = {"tensor": work["flops"] * row["tensor_work_ratio"] / peak,
             "exp": work["scores"] / (EXP2_PER_SM_PER_CLOCK * sm_clocks)}
    if work.get("fp8_tokens"):
        tiles = math.ceil(work["h_q"] / row["constexprs"]["BLOCK_H"])
        parts["dequant"] = work["fp8_tokens"] * tiles * DEQUANT_CYCLES_PER_TOKEN / sm_clocks
    compute = sum(parts.values())
    issue = _issue_time(row, work, sm_clocks)
    shared = _shared_time(row, work, sm_clocks)
    memory = (work["bytes"] + partials) / bandwidth
    if memory > max(compute, issue, shared):
        bound = "memory"
    elif max(issue, shared) > compute:
        bound = "issue" if issue >= shared else "shared memory"
    else:
        bound = "+".join(k for k, v in parts.items() if v >= 0.2 * compute)
    compute = max(compute, issue, shared)
    waves = row.get("waves")
    quantized = math.ceil(waves) / waves if waves else 1.0
    return max(compute, memory) * quantized, bound


def _iterations(row: dict, work: dict) -> float:
    """Main-loop iterations of the whole launch: the op's counted FLOPs / those of one iteration (0: no count)."""
    counted = row.get("counted_flops")
    return work["flops"] / counted if counted else 0.0


def _issue_time(row: dict, work: dict, sm_clocks: float) -> float:
    """Seconds to issue the main loop's SASS once per warp per iteration (0 when the build gave no count)."""
    loop = row.get("loop_spill")
    if not loop:
        return 0.0
    return _iterations(row, work) * loop["instructions"] * row["num_warps"] / (SCHEDULERS_PER_SM * sm_clocks)


def _shared_time(row: dict, work: dict, sm_clocks: float) -> float:
    """Seconds for the main loop's shared-memory traffic at 128 B per SM per clock (0 without a count)."""
    main = row.get("main_loop")
    if not main or not main.get("shared_bytes"):
        return 0.0
    return _iterations(row, work) * main["shared_bytes"] / (SHARED_BYTES_PER_SM_PER_CLOCK * sm_clocks)


def estimate_cases(rows: list[dict], works: dict[str, dict], target: GpuTarget) -> list[dict]:
    """One estimate per case: time (sum of its launches), TFLOPS and GB/s of the spec's counts, the
    resource that binds its main launch, and whether a launch spills (then the estimate is optimistic)."""
    by_case: dict[str, list[dict]] = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r)
    out = []
    for name, launches in by_case.items():
        work = works[name]
        if any("unsupported" in r for r in launches) or not target.tensor_tflops:
            continue
        times = [launch_time(r, work, target) for r in launches]
        seconds = sum(t for t, _ in times)
        main = max(range(len(launches)), key=lambda i: times[i][0])
        # issue 3's targets are for an H200: set beside the sm_90 estimate only
        metric, value = (work.get("target") or (None, None)) if target.name == "sm_90" else (None, None)
        tflops, gb_s = work["flops"] / seconds / 1e12, work["bytes"] / seconds / 1e9
        out.append({
            "case": name, "op": launches[0]["op"], "time_us": seconds * 1e6, "tflops": tflops, "gb_per_s": gb_s,
            "bound": times[main][1], "spills": any(r.get("spill_bytes") for r in launches),
            "target": None if metric is None else {"metric": metric, "value": value},
            "meets_target": None if metric is None else (tflops if metric == "tflops" else gb_s) >= value,
        })
    return out


def format_estimates(estimates: list[dict], target: dict) -> str:
    lines = [f"estimate on {target['product']} ({target['name']}; roofline from the build, see "
             "mlaverify.kernels._estimate: optimistic where a kernel spills)",
             "| case | bound | est. us | est. TFLOPS | est. GB/s | H200 target (issue 3) | spills (est. optimistic) |", "|---|---|---|---|---|---|---|"]
    for e in estimates:
        t = e["target"]
        goal = "-" if t is None else (f"{t['value']:g} {'TFLOPS' if t['metric'] == 'tflops' else 'GB/s'}: estimate "
                                      f"{'above' if e['meets_target'] else 'below'}")
        lines.append(f"| {e['case']} | {e['bound']} | {e['time_us']:,.0f} | {e['tflops']:,.0f} | {e['gb_per_s']:,.0f} | "
                     f"{goal} | {'yes' if e['spills'] else 'no'} |")
    return "\n".join(lines)
