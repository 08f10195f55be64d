"""Benchmark rows for the Triton dense MHA prefill, forward and backward (issue 6).

    python -m mlaverify.kernels.mha_benchmark [--quick] [--device cuda|cpu]

FLOPs follow configs-and-performance.md and FlashMLA's benchmark: forward
``2 * attended (query, key) pairs * h_q * (d_qk + d_v)``; backward counted as 2.5x forward.
The production configuration is 8 sequences of 8192 tokens, causal, h_q = h_kv = 128,
(d_qk, d_v) = (192, 128), with targets of 400 TFLOPS forward and 250 backward on an H200.
On the CPU the kernels run in Triton's interpreter on a scaled-down shape: those rows check
that the benchmark runs, their numbers mean nothing.
"""

from __future__ import annotations

from . import _runtime  # first: decides compiled vs interpreter mode

import argparse
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .mha_prefill import flash_attn_varlen_func

TARGET_TFLOPS = {"fwd": 400.0, "bwd": 250.0}  # issue 6, H200, production configuration
BACKWARD_FLOP_FACTOR = 2.5  # backward FLOPs = 2.5 x forward FLOPs


@dataclass(frozen=True)
class MhaBenchConfig:
    """One benchmarked shape."""

    name: str  # row label
    batch: int  # sequences
    seqlen: int  # tokens per sequence (queries = keys)
    h_q: int
    h_kv: int
    d_qk: int
    d_v: int
    causal: bool


PRODUCTION = MhaBenchConfig("8x8192-causal-h128-d192", 8, 8192, 128, 128, 192, 128, True)
QUICK = MhaBenchConfig("2x8192-causal-h128-d192", 2, 8192, 128, 128, 192, 128, True)
INTERPRETER = MhaBenchConfig("1x48-causal-h2-d192 (interpreter)", 1, 48, 2, 2, 192, 128, True)


def attended_pairs(seqlens_q: Sequence[int], seqlens_k: Sequence[int], causal: bool) -> int:
    """Number of (query, key) pairs that attend; causal is bottom-right aligned."""
    total = 0
    for s_q, s_k in zip(seqlens_q, seqlens_k):
        if not causal:
            total += s_q * s_k
            continue
        for j in range(s_q):  # query j sees keys 0 .. s_k - s_q + j
            total += min(s_k, max(0, s_k - s_q + j + 1))
    return total


def forward_flops(pairs: int, h_q: int, d_qk: int, d_v: int) -> int:
    return 2 * pairs * h_q * (d_qk + d_v)


def _time_ms(fn: Callable[[], object], device: torch.device, quick: bool) -> float:
    if device.type == "cuda" and not _runtime.INTERPRETED:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=5 if quick else 25, rep=20 if quick else 100))
    fn()  # warm-up (interpreter: nothing to compile, but keeps the measurement honest)
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def mha_benchmark_rows(device: str | torch.device, quick: bool) -> list[dict]:
    """Forward and backward rows: dicts with op, direction, config, time_ms, tflops, target_tflops, ..."""
    device = torch.device(device)
    _runtime.require_device(torch.empty(0, device=device), "device")
    compiled = device.type == "cuda" and not _runtime.INTERPRETED
    cfg = (QUICK if quick else PRODUCTION) if compiled else INTERPRETER
    g = torch.Generator(device=device).manual_seed(0)
    total = cfg.batch * cfg.seqlen
    q = torch.randn(total, cfg.h_q, cfg.d_qk, generator=g, device=device, dtype=torch.bfloat16).requires_grad_()
    k = torch.randn(total, cfg.h_kv, cfg.d_qk, generator=g, device=device, dtype=torch.bfloat16).requires_grad_()
    v = torch.randn(total, cfg.h_kv, cfg.d_v, generator=g, device=device, dtype=torch.bfloat16).requires_grad_()
    cu = torch.arange(0, total + 1, cfg.seqlen, dtype=torch.int32, device=device)
    dout = torch.randn(total, cfg.h_q, cfg.d_v, generator=g, device=device, dtype=torch.bfloat16)

    def forward():
        return flash_attn_varlen_func(q, k, v, cu, cu, cfg.seqlen, cfg.seqlen, causal=cfg.causal)

    out, _ = forward()

    def backward():
        return torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)

    pairs = attended_pairs([cfg.seqlen] * cfg.batch, [cfg.seqlen] * cfg.batch, cfg.causal)
    fwd_flops = forward_flops(pairs, cfg.h_q, cfg.d_qk, cfg.d_v)
    rows = []
    for direction, fn, flops in (("fwd", forward, fwd_flops), ("bwd", backward, BACKWARD_FLOP_FACTOR * fwd_flops)):
        ms = _time_ms(fn, device, quick)
        rows.append({
            "op": "mha_prefill",
            "direction": direction,
            "config": cfg.name,
            "device": torch.cuda.get_device_name(device) if compiled else f"{device} (Triton interpreter)",
            "mode": _runtime.mode(),
            "batch": cfg.batch, "seqlen": cfg.seqlen, "h_q": cfg.h_q, "h_kv": cfg.h_kv,
            "d_qk": cfg.d_qk, "d_v": cfg.d_v, "causal": cfg.causal,
            "time_ms": ms,
            "flops": float(flops),
            "tflops": flops / (ms * 1e-3) / 1e12,
            "target_tflops": TARGET_TFLOPS[direction] if compiled else None,
            "note": "" if compiled else "interpreter on CPU: numbers mean nothing",
        })
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlaverify.kernels.mha_benchmark",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions; 2 x 8192 instead of 8 x 8192 on CUDA")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    for row in mha_benchmark_rows(args.device, args.quick):
        target = f" (target {row['target_tflops']:.0f})" if row["target_tflops"] else ""
        note = f"  [{row['note']}]" if row["note"] else ""
        print(f"mha_prefill {row['direction']} {row['config']}: {row['time_ms']:.3f} ms, "
              f"{row['tflops']:.3g} TFLOPS{target}{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
