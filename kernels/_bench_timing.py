"""Timing for the benchmark: CUDA (do_bench + kernel spans from the profiler) or CPU wall clock.

On CUDA, calls rotate over several input sets whose combined footprint exceeds the L2 cache,
and ``triton.testing.do_bench`` additionally clears L2 before every timed call, so no call
starts with its inputs cached. The profiler span of a call runs from the start of its first
matching kernel to the end of its last (FlashMLA's "start of the split kernel to the end of the
combine kernel"): host-side validation is excluded there, included in ``call_ms``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
import time
from typing import Callable, Sequence

import torch

ROTATE_L2_MULTIPLE = 4  # rotating sets together hold at least this many L2 capacities
MAX_SETS = 8
MEMORY_FRACTION = 0.4  # of free device memory all input sets may take together


@dataclasses.dataclass(frozen=True)
class Timing:
    call_ms: float  # median wall time of one API call (CUDA: do_bench with L2 cleared)
    kernel_ms: float | None  # median first-kernel-start to last-kernel-end span; None if not measured


def rotation_sets(bytes_per_call: float, alloc_bytes: int, device: torch.device) -> int:
    """How many input sets to rotate over: enough to exceed L2 ROTATE_L2_MULTIPLE times, memory allowing."""
    if device.type != "cuda":
        return 1
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20)
    want = max(2, math.ceil(ROTATE_L2_MULTIPLE * l2 / max(bytes_per_call, 1)))
    free, _ = torch.cuda.mem_get_info(device)
    fit = max(1, int(MEMORY_FRACTION * free // max(alloc_bytes, 1)))
    return max(1, min(want, MAX_SETS, fit))


def time_cpu(calls: Sequence[Callable[[], object]], reps: int) -> Timing:
    """Median wall time over ``reps`` calls after one warm-up call."""
    calls[0]()
    samples = []
    for call in itertools.islice(itertools.cycle(calls), reps):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return Timing(statistics.median(samples), None)


def time_cuda(calls: Sequence[Callable[[], object]], quick: bool,
              kernel_filter: Callable[[str], bool] | None) -> Timing:
    """do_bench median over rotating input sets, plus the profiler's kernel span when a filter is given."""
    import triton.testing

    cycle = itertools.cycle(calls)
    call_ms = triton.testing.do_bench(lambda: next(cycle)(), warmup=10 if quick else 50, rep=30 if quick else 200,
                                      return_mode="median")
    kernel_ms = None
    if kernel_filter is not None:
        try:
            kernel_ms = _kernel_span_ms(calls, 5 if quick else 20, kernel_filter)
        except Exception:  # the span is optional: a profiler that cannot run leaves it unmeasured
            kernel_ms = None
    return Timing(float(call_ms), kernel_ms)


def _kernel_span_ms(calls: Sequence[Callable[[], object]], n: int, kernel_filter: Callable[[str], bool]):
    """Median per-call span of the matching kernels under torch.profiler; None when it cannot tell."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for call in itertools.islice(itertools.cycle(calls), n):
            call()
        torch.cuda.synchronize()
    spans = kernel_spans(
        [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
         if e.device_type == torch.autograd.DeviceType.CUDA], n, kernel_filter,
    )
    return statistics.median(spans) / 1e3 if spans else None


def kernel_spans(events: Sequence[tuple[str, float, float]], n_calls: int,
                 kernel_filter: Callable[[str], bool]) -> list[float]:
    """Per-call spans (same unit as the events) of the kernels ``kernel_filter`` accepts.

    ``events`` are (name, start, end) of device kernels from ``n_calls`` identical calls; each call
    must launch the same number of matching kernels, else the grouping is ambiguous and [] is returned.
    """
    picked = sorted((start, end) for name, start, end in events if kernel_filter(name))
    if n_calls < 1 or not picked or len(picked) % n_calls:
        return []
    per_call = len(picked) // n_calls
    groups = (picked[i : i + per_call] for i in range(0, len(picked), per_call))
    return [max(end for _, end in group) - group[0][0] for group in groups]
