"""Wall time and peak extra memory of the references on the production configurations.

    python -m mlaverify.reference.benchmark [--quick] [--only NAME ...] [--json FILE]

Each configuration runs in its own subprocess so that its peak resident memory can be measured:
the inputs are built first, the peak-RSS counter is reset (/proc/self/clear_refs), then the
reference runs once; "extra peak" is the peak RSS minus the RSS with the inputs in place. This is
a benchmark script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from . import configs
from .cache_format import quantize_kv_cache
from .dense_decode import dense_decode_reference
from .sparse_decode import sparse_decode_reference
from .sparse_prefill import sparse_prefill_reference

QUICK_DIVISOR = 8  # --quick divides batch (decode) or s_q (prefill) by this


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


def _quantized_cache(model, num_blocks: int, block_size: int, gen: torch.Generator) -> torch.Tensor:
    """A random FP8 cache built a few blocks at a time, so building it stays cheap in memory."""
    stride0 = model.block_stride_bytes(block_size)
    buffer = torch.empty(num_blocks, stride0, dtype=torch.uint8)
    step = max(1, (64 << 20) // (block_size * model.d_qk * 8))
    for b0 in range(0, num_blocks, step):
        b1 = min(num_blocks, b0 + step)
        k = torch.randn(b1 - b0, block_size, 1, model.d_qk, generator=gen).bfloat16()
        part = quantize_kv_cache(k, model).view(torch.uint8)
        buffer[b0:b1] = torch.as_strided(part, (b1 - b0, stride0), (stride0, 1), part.storage_offset())
    shape = (num_blocks, block_size, 1, model.bytes_per_token)
    return buffer.as_strided(shape, (stride0, model.bytes_per_token, model.bytes_per_token, 1)).view(torch.float8_e4m3fn)


def _sparse_decode_inputs(cfg, batch: int, gen):
    """One shared main cache of s_k tokens (and one extra cache): the reference's cost depends on
    topk, not on how many tokens the cache holds, so per-sequence caches would only cost RAM."""
    model = cfg.model
    main = _quantized_cache(model, cfg.s_k // cfg.page_block_size, cfg.page_block_size, gen)
    q = torch.randn(batch, cfg.s_q, cfg.h_q, model.d_qk, generator=gen).bfloat16()
    indices = torch.randint(0, cfg.s_k, (batch, cfg.s_q, cfg.topk), generator=gen, dtype=torch.int32)
    kwargs = dict(attn_sink=torch.randn(cfg.h_q, generator=gen))
    if cfg.extra_s_k:
        kwargs["extra_k_cache"] = _quantized_cache(
            model, cfg.extra_s_k // cfg.extra_page_block_size, cfg.extra_page_block_size, gen
        )
        kwargs["extra_indices"] = torch.randint(
            0, cfg.extra_s_k, (batch, cfg.s_q, cfg.extra_topk), generator=gen, dtype=torch.int32
        )
        if cfg.extra_topk_length:
            kwargs["extra_topk_length"] = torch.randint(
                1, cfg.extra_topk + 1, (batch,), generator=gen, dtype=torch.int32
            )
    return (q, main, indices), kwargs


def _build(op: str, name: str, quick: bool, gen):
    """(function, args, kwargs, description) for one configuration."""
    div = QUICK_DIVISOR if quick else 1
    if op == "sparse_decode":
        cfg = configs.find(configs.SPARSE_DECODE, name)
        batch = max(1, max(cfg.batch_sizes[:4]) // div)
        args, kwargs = _sparse_decode_inputs(cfg, batch, gen)
        extra = f" + extra topk {cfg.extra_topk}" if cfg.extra_s_k else ""
        desc = f"b={batch} s_q={cfg.s_q} h_q={cfg.h_q} topk={cfg.topk}{extra}"
        return sparse_decode_reference, args, kwargs, desc
    if op == "sparse_prefill":
        cfg = configs.find(configs.SPARSE_PREFILL, name)
        s_q, s_kv, d = max(1, cfg.s_q // div), cfg.s_kv_range[1], cfg.model.d_qk
        q = torch.randn(s_q, cfg.h_q, d, generator=gen).bfloat16()
        kv = torch.randn(s_kv, 1, d, generator=gen).bfloat16()
        indices = torch.randint(0, s_kv, (s_q, 1, cfg.topk), generator=gen, dtype=torch.int32)
        kwargs = dict(attn_sink=torch.randn(cfg.h_q, generator=gen))
        desc = f"s_q={s_q} s_kv={s_kv} h_q={cfg.h_q} topk={cfg.topk} sink"
        return sparse_prefill_reference, (q, kv, indices, d**-0.5), kwargs, desc
    cfg = configs.find(configs.DENSE_DECODE, name)
    b = max(1, cfg.b // div)
    blocks_per_seq = cfg.s_k // cfg.page_block_size
    # one cache of s_k tokens shared by every sequence (block tables all point at it): the
    # reference reads each sequence's tokens separately, so the cost is that of b distinct caches
    k_cache = torch.randn(blocks_per_seq, cfg.page_block_size, cfg.h_kv, cfg.d, generator=gen).bfloat16()
    block_table = torch.arange(blocks_per_seq, dtype=torch.int32).repeat(b, 1)
    seqlens = torch.full((b,), cfg.s_k, dtype=torch.int32)
    q = torch.randn(b, cfg.s_q, cfg.h_q, cfg.d, generator=gen).bfloat16()
    desc = f"b={b} s_q={cfg.s_q} h_q={cfg.h_q} h_kv={cfg.h_kv} s_k={cfg.s_k} causal={cfg.causal}"
    return dense_decode_reference, (q, k_cache, block_table, seqlens, 512), dict(causal=cfg.causal), desc


def _measure(op: str, name: str, quick: bool) -> dict:
    fn, args, kwargs, desc = _build(op, name, quick, torch.Generator().manual_seed(0))
    base = _rss_bytes("VmRSS")
    exact_peak = _reset_peak()
    start = time.perf_counter()
    fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    extra = _rss_bytes("VmHWM") - base
    return dict(op=op, config=name, shape=desc, seconds=seconds, extra_peak_bytes=extra, peak_exact=exact_peak)


def _all_configs():
    for cfg in configs.SPARSE_DECODE:
        yield "sparse_decode", cfg.name
    for cfg in configs.SPARSE_PREFILL:
        yield "sparse_prefill", cfg.name
    for cfg in configs.DENSE_DECODE:
        yield "dense_decode", cfg.name


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlaverify.reference.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"divide batch / s_q by {QUICK_DIVISOR}")
    parser.add_argument("--only", nargs="*", default=None, help="op/config names, e.g. sparse_decode/v32")
    parser.add_argument("--json", default=None, help="write the rows to this JSON file")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child-process mode
    args = parser.parse_args(argv)
    if args.one:
        op, name = args.one.split("/", 1)
        print(json.dumps(_measure(op, name, args.quick)))
        return 0

    print(f"reference benchmark on CPU: torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("the reference's cost depends on topk / s_k, not on cache capacity: caches are shared across the batch")
    if args.quick:
        print(f"--quick: batch (decode) and s_q (prefill) divided by {QUICK_DIVISOR}")
    print(f"{'op/config':34} {'shape':62} {'time s':>8} {'extra peak':>11}")
    rows = []
    for op, name in _all_configs():
        key = f"{op}/{name}"
        if args.only and key not in args.only:
            continue
        cmd = [sys.executable, "-m", "mlaverify.reference.benchmark", "--one", key] + (["--quick"] if args.quick else [])
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if done.returncode != 0:
            print(f"{key:34} FAILED: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
            rows.append(dict(op=op, config=name, error=done.stderr[-2000:]))
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        peak = f"{row['extra_peak_bytes'] / 2**30:.2f} GiB" + ("" if row["peak_exact"] else "*")
        print(f"{key:34} {row['shape']:62} {row['seconds']:8.2f} {peak:>11}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
