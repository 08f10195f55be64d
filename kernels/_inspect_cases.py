"""The production cases that ``mlaverify.kernels.inspect`` compiles, as meta tensors.

Every case is one production configuration of ``mlaverify.reference.configs`` (or the MHA
benchmark's production shape) at one batch size, built with ``device="meta"`` tensors of the
real shapes, dtypes and strides (no memory) and handed to the kernels' own ``*_plan``
functions, so the launches inspected are those the wrappers make for these shapes on the
target. Also here: the FLOPs the spec's formulas count per main-loop iteration of each
kernel, from the tile sizes of the launch itself.
"""

from __future__ import annotations

import dataclasses

import torch

from mlaverify.reference import ModelType, configs
from mlaverify.reference.mha_prefill import AttentionMask, MhaPrefillShapes
from mlaverify.reference.validation import SparseDecodeShapes

from . import _bench_formulas as formulas, mha_benchmark
from ._bench_cases import TARGETS as BENCH_TARGETS
from ._launch import KernelLaunch
from ._targets import GpuTarget
from .dense_decode import dense_decode_plan
from .mha_prefill import mha_backward_plan, mha_forward_plan
from .sparse_decode import sparse_decode_plan
from .sparse_prefill import sparse_prefill_plan

META = torch.device("meta")
D_V = 512  # MLA value width (sparse and dense decode, sparse prefill)


@dataclasses.dataclass(frozen=True)
class Case:
    preset: str  # group name for --preset: the engine's preset name where there is one
    name: str  # e.g. "v32 b=128"
    op: str  # sparse_decode | sparse_prefill | dense_decode | mha_fwd | mha_bwd
    shape: str  # human-readable shape
    build: object  # target -> list[KernelLaunch]
    work: dict = dataclasses.field(default_factory=dict)  # what the estimate needs (see `_estimate`):
    # flops (the spec's count for the whole op), bytes (the spec's formula), scores ((query, key, head)
    # triples: one exp2 each per kernel that computes P), fp8_tokens (sparse decode: FP8 tokens one head
    # tile dequantizes), h_q, target ((metric, value) of issue 3, when it sets one)


def _empty(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype, device=META)


def _fp8_cache(model: ModelType, tokens: int, block: int):
    num_blocks = -(-tokens // block)
    return _empty(num_blocks, block, 1, model.bytes_per_token, dtype=torch.float8_e4m3fn)


def _sparse_decode_case(rec: configs.SparseDecodeConfig, b: int) -> Case:
    model = rec.model

    def build(target: GpuTarget):
        q = _empty(b, rec.s_q, rec.h_q, model.d_qk)
        cache = _fp8_cache(model, b * rec.s_k, rec.page_block_size)
        idx = _empty(b, rec.s_q, rec.topk, dtype=torch.int32)
        x_cache = x_idx = x_len = None
        if rec.extra_s_k:
            x_cache = _fp8_cache(model, b * rec.extra_s_k, rec.extra_page_block_size)
            x_idx = _empty(b, rec.s_q, rec.extra_topk, dtype=torch.int32)
            x_len = _empty(b, dtype=torch.int32) if rec.extra_topk_length else None
        shapes = SparseDecodeShapes(b, rec.s_q, rec.h_q, model.d_qk, rec.topk, rec.extra_topk, model,
                                    rec.page_block_size, rec.extra_page_block_size if rec.extra_s_k else 0)
        launches, _ = sparse_decode_plan(q, cache, idx, shapes, softmax_scale=None, attn_sink=None, topk_length=None,
                                         extra_k_cache=x_cache, extra_indices=x_idx, extra_topk_length=x_len,
                                         target=target)
        return launches

    shape = f"b={b} s_q={rec.s_q} h_q={rec.h_q} d_qk={model.d_qk} topk={rec.topk}"
    if rec.extra_s_k:
        shape += f" extra_topk={rec.extra_topk}" + (" +len" if rec.extra_topk_length else "")
    tokens = b * rec.s_q * (rec.topk + rec.extra_topk)  # every list entry is attended (no topk_length cut)
    work = dict(flops=formulas.sparse_decode_flops(rec.h_q, tokens, model.d_qk), fp8_tokens=tokens, h_q=rec.h_q,
                scores=tokens * rec.h_q,
                bytes=formulas.sparse_decode_bytes(b, rec.s_q, rec.h_q, model.d_qk, tokens),  # no shared positions
                target=BENCH_TARGETS.get(("sparse_decode", rec.name)) if b == 128 else None)
    return Case(rec.name, f"{rec.name} b={b}", "sparse_decode", shape, build, work)


def _sparse_prefill_case(rec: configs.SparsePrefillConfig) -> Case:
    s_kv = rec.s_kv_range[1]
    d_qk = rec.model.d_qk

    def build(target: GpuTarget):
        q = _empty(rec.s_q, rec.h_q, d_qk)
        kv = _empty(s_kv, 1, d_qk)
        idx = _empty(rec.s_q, 1, rec.topk, dtype=torch.int32)
        sink = _empty(rec.h_q, dtype=torch.float32) if rec.attn_sink else None
        launches, _ = sparse_prefill_plan(q, kv, idx, d_qk**-0.5, sink, None, target)
        return launches

    shape = f"s_q={rec.s_q} h_q={rec.h_q} d_qk={d_qk} s_kv={s_kv} topk={rec.topk}"
    attended = rec.s_q * rec.topk
    work = dict(flops=formulas.sparse_prefill_flops(attended, rec.h_q, d_qk), h_q=rec.h_q, scores=attended * rec.h_q,
                bytes=formulas.sparse_prefill_bytes(attended, rec.s_q, rec.h_q, d_qk),
                target=BENCH_TARGETS.get(("sparse_prefill", rec.name)))
    return Case(f"prefill-{rec.name}", f"prefill-{rec.name}", "sparse_prefill", shape, build, work)


def _dense_decode_case(rec: configs.DenseDecodeConfig) -> Case:
    def build(target: GpuTarget):
        blocks = -(-rec.s_k // rec.page_block_size)
        q = _empty(rec.b, rec.s_q, rec.h_q, rec.d)
        k = _empty(rec.b * blocks, rec.page_block_size, rec.h_kv, rec.d)
        table = _empty(rec.b, blocks, dtype=torch.int32)
        lens = _empty(rec.b, dtype=torch.int32)
        launches, _ = dense_decode_plan(q, k, table, lens, None, rec.causal, target)
        return launches

    shape = f"b={rec.b} s_q={rec.s_q} h_q={rec.h_q} h_kv={rec.h_kv} d={rec.d} s_k={rec.s_k}"
    shape += " causal" if rec.causal else ""
    work = dict(flops=formulas.dense_decode_flops(rec.b, rec.s_q, rec.h_q, rec.d, rec.s_k), h_q=rec.h_q,
                scores=rec.b * rec.s_q * rec.h_q * rec.s_k,
                bytes=formulas.dense_decode_bytes(rec.b, rec.s_q, rec.h_q, rec.h_kv, rec.d, rec.s_k),
                target=BENCH_TARGETS.get(("dense_decode", rec.name)))
    return Case("dense-v32", f"dense-{rec.name}", "dense_decode", shape, build, work)


def _mha_cases() -> list[Case]:
    cfg = mha_benchmark.PRODUCTION
    total = cfg.batch * cfg.seqlen
    shapes = MhaPrefillShapes(total, total, cfg.h_q, cfg.h_kv, cfg.d_qk, cfg.d_v,
                              (cfg.seqlen,) * cfg.batch, (cfg.seqlen,) * cfg.batch)
    mask = AttentionMask(None, 0) if cfg.causal else AttentionMask()
    scale = cfg.d_qk**-0.5

    def tensors():
        q = _empty(total, cfg.h_q, cfg.d_qk)
        k = _empty(total, cfg.h_kv, cfg.d_qk)
        v = _empty(total, cfg.h_kv, cfg.d_v)
        cu = _empty(cfg.batch + 1, dtype=torch.int32)
        return q, k, v, cu

    def fwd(target: GpuTarget):
        q, k, v, cu = tensors()
        return mha_forward_plan(q, k, v, cu, cu, shapes, scale, mask, True, target)[0]

    def bwd(target: GpuTarget):
        q, k, v, cu = tensors()
        out = _empty(total, cfg.h_q, cfg.d_v)
        lse = _empty(cfg.h_q, total, dtype=torch.float32).T
        return mha_backward_plan(out, q, k, v, out, out, lse, cu, cu, shapes, scale, mask, target)[0]

    shape = (f"{cfg.batch}x{cfg.seqlen} h_q={cfg.h_q} h_kv={cfg.h_kv} d_qk={cfg.d_qk} d_v={cfg.d_v}"
             + (" causal" if cfg.causal else ""))
    pairs = mha_benchmark.attended_pairs((cfg.seqlen,) * cfg.batch, (cfg.seqlen,) * cfg.batch, cfg.causal)
    fwd_flops = mha_benchmark.forward_flops(pairs, cfg.h_q, cfg.d_qk, cfg.d_v)
    io = 2 * total * (cfg.h_q * (cfg.d_qk + cfg.d_v) + cfg.h_kv * (cfg.d_qk + cfg.d_v))  # q, o, k, v in bf16
    fwd_work = dict(flops=fwd_flops, bytes=io, h_q=cfg.h_q, scores=pairs * cfg.h_q,
                    target=("tflops", mha_benchmark.TARGET_TFLOPS["fwd"]))
    bwd_work = dict(flops=mha_benchmark.BACKWARD_FLOP_FACTOR * fwd_flops, bytes=2 * io, h_q=cfg.h_q,  # + the grads
                    scores=pairs * cfg.h_q,  # P recomputed by the dk/dv and the dq kernel: once each
                    target=("tflops", mha_benchmark.TARGET_TFLOPS["bwd"]))
    return [Case("mha", "mha-fwd", "mha_fwd", shape, fwd, fwd_work),
            Case("mha", "mha-bwd", "mha_bwd", shape, bwd, bwd_work)]


def all_cases(full: bool = True) -> list[Case]:
    """Every production case; with ``full=False`` two batch sizes per sparse decode record: the smallest
    (split, with the combine kernel) and the largest (one split)."""
    cases = []
    for rec in configs.SPARSE_DECODE:
        batches = rec.batch_sizes if full else sorted({min(rec.batch_sizes), max(rec.batch_sizes)})
        cases += [_sparse_decode_case(rec, b) for b in batches]
    cases += [_sparse_prefill_case(rec) for rec in configs.SPARSE_PREFILL]
    cases += [_dense_decode_case(rec) for rec in configs.DENSE_DECODE]
    cases += _mha_cases()
    return cases


def preset_names() -> list[str]:
    return sorted({c.preset for c in all_cases()})


def select(presets=None, full: bool = True) -> list[Case]:
    """The cases of the named presets (all when None); ValueError naming the choices otherwise."""
    cases = all_cases(full)
    if not presets:
        return cases
    known = preset_names()
    unknown = [p for p in presets if p not in known]
    if unknown:
        raise ValueError(f"preset: expected names among {known}, got {unknown}")
    return [c for c in cases if c.preset in presets]


def counted_flops_per_iteration(launch: KernelLaunch, case: Case) -> float | None:
    """FLOPs the spec's formula counts for one main-loop iteration of `launch` (None: no main loop).

    Padding rows (heads or query rows past the call's own) count nothing. The MHA backward
    counts 2.5x the forward's FLOPs per (query, key) pair (mha_benchmark.BACKWARD_FLOP_FACTOR);
    each of its two kernels is set against that whole count, so the op's ratio is their sum.
    """
    c = launch.constexprs
    if launch.name == "sparse_decode.split":
        d_qk = 512 if c["IS_MODEL1"] else 576
        return 2.0 * min(c["BLOCK_H"], launch.arg("h_q")) * c["BLOCK_N"] * (d_qk + D_V)
    if launch.name == "sparse_prefill":
        d_qk = D_V + (c["DR"] if c["HAS_ROPE"] else 0)
        return 2.0 * min(c["BLOCK_H"], launch.arg("h_q")) * c["BLOCK_K"] * (d_qk + D_V)
    if launch.name == "dense_decode.split":
        d = D_V + (c["DR"] if c["HAS_ROPE"] else 0)
        return 2.0 * min(c["BLOCK_M"], launch.arg("rows")) * c["BLOCK_N"] * (d + D_V)
    d_qk = c.get("D0", 0) + c.get("D1", 0)
    if launch.name == "mha_prefill.fwd":
        return 2.0 * c["BLOCK_M"] * c["BLOCK_N"] * (d_qk + c["DV"])
    if launch.name in ("mha_prefill.bwd_dkdv", "mha_prefill.bwd_dq"):
        return mha_benchmark.BACKWARD_FLOP_FACTOR * 2.0 * c["BLOCK_M"] * c["BLOCK_N"] * (d_qk + c["DV"])
    return None
