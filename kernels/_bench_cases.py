"""Benchmark configurations (configs-and-performance.md) and their inputs.

Each ``BenchConfig`` is one production shape, built from a record of mlaverify.reference.configs
(the one table of production numbers) plus the batch, s_kv and targets issue 3 benchmarks at;
``scaled_down`` gives the tiny shape of the same kind that the CPU (Triton interpreter) can
afford. ``build_inputs`` materializes one input set and counts, from the actual tensors, the
FLOPs and bytes of the spec's formulas.
"""

from __future__ import annotations

import dataclasses

import torch

from mlaverify.kernels import _bench_formulas as F
from mlaverify.reference import ModelType, configs, quantize_kv_cache

CONFIG_OPS = ("sparse_decode", "sparse_prefill", "dense_decode")  # ops with a BenchConfig (mha: mha_benchmark)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    name: str  # row label, e.g. "v32" or "dense-memory-bound"
    op: str  # one of CONFIG_OPS
    b: int  # batch (decode); 1 for prefill
    s_q: int  # query tokens per sequence (prefill: all queries)
    h_q: int  # query heads
    d_qk: int  # 576 (V32-like) or 512 (MODEL1-like)
    s_k: int  # cache length per sequence (decode) or s_kv (prefill)
    topk: int = 0  # index-list length (sparse ops)
    page_block_size: int = 64  # tokens per cache block (decode)
    extra_s_k: int = 0  # MODEL1 extra cache: tokens per sequence (0: no extra cache)
    extra_topk: int = 0  # extra index-list length
    extra_page_block_size: int = 0  # extra cache block size
    extra_topk_length: bool = False  # draw extra_topk_length per sequence
    h_kv: int = 1  # dense decode KV heads
    causal: bool = False  # dense decode
    sink: bool = False  # attention sink (sparse prefill production runs with one)
    target: tuple[str, float] | None = None  # (metric, value) the issue sets for an H200

    def shape(self) -> str:
        if self.op == "sparse_prefill":
            return f"s_q={self.s_q} h_q={self.h_q} d_qk={self.d_qk} s_kv={self.s_k} topk={self.topk}"
        text = f"b={self.b} s_q={self.s_q} h_q={self.h_q} d={self.d_qk} s_k={self.s_k} pb={self.page_block_size}"
        if self.op == "sparse_decode":
            text += f" topk={self.topk}"
            if self.extra_s_k:
                text += f" extra(s_k={self.extra_s_k} topk={self.extra_topk} pb={self.extra_page_block_size}"
                text += " +len)" if self.extra_topk_length else ")"
        else:
            text += f" h_kv={self.h_kv}" + (" causal" if self.causal else "")
        return text


# Benchmark choices that configs.py does not hold: issue 3 sets its H200 targets at one decode batch and one
# prefill s_kv, and the targets themselves are the issue's, not the spec's.
BENCH_BATCH = 128  # decode batch of issue 3's targets; must be one of the record's batch_sizes
PREFILL_S_KV = 32768  # prefill s_kv of issue 3's target; must lie in the record's s_kv_range
DENSE_BENCHMARKED = ("compute-bound", "memory-bound")  # DENSE_DECODE records with an issue-3 target
TARGETS = {  # (op, record name) -> (metric, value) that issue 3 sets on an H200
    ("sparse_decode", "v32"): ("tflops", 200.0),
    ("sparse_decode", "model1-config1"): ("tflops", 150.0),
    ("sparse_decode", "model1-config2"): ("tflops", 150.0),
    ("sparse_decode", "model1-config3"): ("tflops", 150.0),
    ("sparse_decode", "model1-config4"): ("tflops", 150.0),
    ("sparse_prefill", "v32"): ("tflops", 300.0),
    ("dense_decode", "compute-bound"): ("tflops", 300.0),
    ("dense_decode", "memory-bound"): ("gb_per_s", 3000.0),
}


def from_sparse_decode(rec: configs.SparseDecodeConfig, b: int = BENCH_BATCH) -> BenchConfig:
    """The benchmark row of one SPARSE_DECODE record at batch ``b`` (one of the record's batch sizes)."""
    if b not in rec.batch_sizes:
        raise ValueError(f"b: expected one of {rec.name}'s batch_sizes {rec.batch_sizes}, got {b}")
    return BenchConfig(
        rec.name, "sparse_decode", b=b, s_q=rec.s_q, h_q=rec.h_q, d_qk=rec.model.d_qk, s_k=rec.s_k, topk=rec.topk,
        page_block_size=rec.page_block_size, extra_s_k=rec.extra_s_k, extra_topk=rec.extra_topk,
        extra_page_block_size=rec.extra_page_block_size, extra_topk_length=rec.extra_topk_length,
        target=TARGETS.get(("sparse_decode", rec.name)),
    )


def from_sparse_prefill(rec: configs.SparsePrefillConfig, s_kv: int = PREFILL_S_KV) -> BenchConfig:
    """The benchmark row of one SPARSE_PREFILL record at ``s_kv`` (inside the record's s_kv_range)."""
    low, high = rec.s_kv_range
    if not low <= s_kv <= high:
        raise ValueError(f"s_kv: expected a value in {rec.name}'s s_kv_range [{low}, {high}], got {s_kv}")
    return BenchConfig(
        "prefill-" + rec.name, "sparse_prefill", b=1, s_q=rec.s_q, h_q=rec.h_q, d_qk=rec.model.d_qk, s_k=s_kv,
        topk=rec.topk, sink=rec.attn_sink, target=TARGETS.get(("sparse_prefill", rec.name)),
    )


def from_dense_decode(rec: configs.DenseDecodeConfig) -> BenchConfig:
    """The benchmark row of one DENSE_DECODE record."""
    return BenchConfig(
        "dense-" + rec.name, "dense_decode", b=rec.b, s_q=rec.s_q, h_q=rec.h_q, d_qk=rec.d, s_k=rec.s_k,
        page_block_size=rec.page_block_size, h_kv=rec.h_kv, causal=rec.causal,
        target=TARGETS.get(("dense_decode", rec.name)),
    )


def production() -> tuple[BenchConfig, ...]:
    """The benchmarked production configurations, derived from mlaverify.reference.configs."""
    return (
        *(from_sparse_decode(rec) for rec in configs.SPARSE_DECODE),
        *(from_sparse_prefill(rec) for rec in configs.SPARSE_PREFILL),
        *(from_dense_decode(configs.find(configs.DENSE_DECODE, name)) for name in DENSE_BENCHMARKED),
    )


PRODUCTION: tuple[BenchConfig, ...] = production()


def scaled_down(cfg: BenchConfig) -> BenchConfig:
    """The same kind of problem at a size Triton's interpreter runs in about a second."""
    small = dict(b=min(cfg.b, 2), h_q=min(cfg.h_q, 16), target=None, name=cfg.name + "-cpu-tiny")
    if cfg.op == "sparse_decode":
        small.update(s_k=128, topk=32, page_block_size=min(cfg.page_block_size, 64))
        if cfg.extra_s_k:
            small.update(extra_s_k=128, extra_topk=64, extra_page_block_size=min(cfg.extra_page_block_size, 16))
    elif cfg.op == "sparse_prefill":
        small.update(s_q=4, s_k=256, topk=64)
    else:
        small.update(s_k=128)
    return dataclasses.replace(cfg, **small)


@dataclasses.dataclass
class Inputs:
    """One input set: call arguments, and the FLOP / byte counts of the spec's formulas."""

    args: dict  # keyword arguments of the FlashMLA API call (without the scheduler metadata)
    flops: float
    n_bytes: float  # bytes the formula counts as moved per call
    alloc_bytes: int  # device memory the set occupies


def _pooled_fp8_cache(model: ModelType, num_blocks: int, block: int, g: torch.Generator, device) -> torch.Tensor:
    """An FP8 cache of num_blocks blocks whose bytes repeat a small quantized pool (fast to build)."""
    pool = min(num_blocks, 64)
    keys = torch.randn(pool, block, 1, model.d_qk, generator=g, device=device).bfloat16()
    small = quantize_kv_cache(keys, model)
    stride0 = small.stride(0)
    rows = torch.as_strided(small.view(torch.uint8), (pool, stride0), (stride0, 1))  # whole blocks, padding too
    big = rows.repeat(-(-num_blocks // pool), 1)[:num_blocks].contiguous()  # [num_blocks, stride0]
    return torch.as_strided(big, (num_blocks, block, 1, model.bytes_per_token), (stride0, model.bytes_per_token,
                            model.bytes_per_token, 1)).view(torch.float8_e4m3fn)


def _cache_positions(b, s_q, s_k, topk, block, g, device):
    """[b, s_q, topk] distinct positions among each sequence's s_k tokens, in shuffled blocks."""
    blocks_per_seq = -(-s_k // block)
    table = torch.randperm(b * blocks_per_seq, generator=g, device=device).view(b, blocks_per_seq)
    tokens = torch.rand(b * s_q, s_k, generator=g, device=device).topk(topk, dim=-1).indices.view(b, s_q, topk)
    rows = torch.arange(b, device=device).view(b, 1, 1)
    positions = table[rows, tokens // block] * block + tokens % block
    return positions.int(), b * blocks_per_seq


def _sparse_decode_inputs(cfg: BenchConfig, g, device) -> Inputs:
    model = ModelType.from_d_qk(cfg.d_qk)
    q = torch.randn(cfg.b, cfg.s_q, cfg.h_q, cfg.d_qk, generator=g, device=device).bfloat16()
    idx, num_blocks = _cache_positions(cfg.b, cfg.s_q, cfg.s_k, cfg.topk, cfg.page_block_size, g, device)
    cache = _pooled_fp8_cache(model, num_blocks, cfg.page_block_size, g, device)
    args = dict(q=q, k_cache=cache, block_table=None, cache_seqlens=None, head_dim_v=512, is_fp8_kvcache=True,
                indices=idx)
    attended = cfg.b * cfg.s_q * cfg.topk
    unique = int(idx.unique().numel())
    alloc = q.nbytes + idx.nbytes + num_blocks * cache.stride(0)
    if cfg.extra_s_k:
        x_idx, x_blocks = _cache_positions(cfg.b, cfg.s_q, cfg.extra_s_k, cfg.extra_topk,
                                           cfg.extra_page_block_size, g, device)
        x_cache = _pooled_fp8_cache(model, x_blocks, cfg.extra_page_block_size, g, device)
        args.update(extra_k_cache=x_cache, extra_indices_in_kvcache=x_idx)
        considered = x_idx
        if cfg.extra_topk_length:
            lengths = torch.randint(1, cfg.extra_topk + 1, (cfg.b,), generator=g, device=device, dtype=torch.int32)
            args["extra_topk_length"] = lengths
            slots = torch.arange(cfg.extra_topk, device=device).view(1, 1, -1)
            considered = torch.where(slots < lengths.view(-1, 1, 1), x_idx, -1)
            attended += cfg.s_q * int(lengths.sum())
        else:
            attended += cfg.b * cfg.s_q * cfg.extra_topk
        unique += int(considered[considered >= 0].unique().numel())
        alloc += x_idx.nbytes + x_blocks * x_cache.stride(0)
    return Inputs(args, F.sparse_decode_flops(cfg.h_q, attended, cfg.d_qk),
                  F.sparse_decode_bytes(cfg.b, cfg.s_q, cfg.h_q, cfg.d_qk, unique), alloc)


def _sparse_prefill_inputs(cfg: BenchConfig, g, device) -> Inputs:
    q = torch.randn(cfg.s_q, cfg.h_q, cfg.d_qk, generator=g, device=device).bfloat16()
    kv = torch.randn(cfg.s_k, 1, cfg.d_qk, generator=g, device=device).bfloat16()
    idx = torch.randint(0, cfg.s_k, (cfg.s_q, 1, cfg.topk), generator=g, device=device, dtype=torch.int32)
    sink = torch.randn(cfg.h_q, generator=g, device=device) if cfg.sink else None
    args = dict(q=q, kv=kv, indices=idx, sm_scale=cfg.d_qk**-0.5, d_v=512, attn_sink=sink)
    attended = cfg.s_q * cfg.topk  # every drawn index is valid
    return Inputs(args, F.sparse_prefill_flops(attended, cfg.h_q, cfg.d_qk),
                  F.sparse_prefill_bytes(attended, cfg.s_q, cfg.h_q, cfg.d_qk), q.nbytes + kv.nbytes + idx.nbytes)


def _dense_decode_inputs(cfg: BenchConfig, g, device) -> Inputs:
    blocks_per_seq = -(-cfg.s_k // cfg.page_block_size)
    num_blocks = cfg.b * blocks_per_seq
    q = torch.randn(cfg.b, cfg.s_q, cfg.h_q, cfg.d_qk, generator=g, device=device).bfloat16()
    k = torch.randn(num_blocks, cfg.page_block_size, cfg.h_kv, cfg.d_qk, generator=g, device=device).bfloat16()
    table = torch.randperm(num_blocks, generator=g, device=device).int().view(cfg.b, blocks_per_seq)
    lens = torch.full((cfg.b,), cfg.s_k, dtype=torch.int32, device=device)
    args = dict(q=q, k_cache=k, block_table=table, cache_seqlens=lens, head_dim_v=512, causal=cfg.causal)
    mean = float(lens.float().mean())
    return Inputs(args, F.dense_decode_flops(cfg.b, cfg.s_q, cfg.h_q, cfg.d_qk, mean),
                  F.dense_decode_bytes(cfg.b, cfg.s_q, cfg.h_q, cfg.h_kv, cfg.d_qk, mean), q.nbytes + k.nbytes)


def build_inputs(cfg: BenchConfig, device: torch.device, seed: int) -> Inputs:
    """One input set for ``cfg`` on ``device``, deterministic from ``seed``."""
    g = torch.Generator(device=device).manual_seed(seed)
    builder = {"sparse_decode": _sparse_decode_inputs, "sparse_prefill": _sparse_prefill_inputs,
               "dense_decode": _dense_decode_inputs}[cfg.op]
    return builder(cfg, g, device)


def make_call(api, cfg: BenchConfig, inputs: Inputs):
    """A no-argument callable running ``cfg``'s op through ``api`` (a module with FlashMLA's API).

    Decode calls get their own scheduler metadata per input set, as FlashMLA requires.
    """
    if cfg.op == "sparse_prefill":
        return lambda: api.flash_mla_sparse_fwd(**inputs.args)
    meta, _ = api.get_mla_metadata()
    return lambda: api.flash_mla_with_kvcache(tile_scheduler_metadata=meta, **inputs.args)
