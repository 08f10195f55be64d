"""What a KV-cache format costs in attention accuracy: the computation behind `mlaverify accuracy`.

For each op, key shape (model), value distribution and cache format: quantize the bf16 keys in the
format, run the reference on what the format gives back, and compare with the float64 reference on the
unquantized bf16 keys. The sparse decode reference reads the real byte cache (v32 and model1 formats on
their own model's keys); every other format, and the sparse prefill op, go through the sparse prefill
reference on the dequantized keys, which is the same attention (V = K[:512]) without a byte layout.
`--impl` adds an implementation's end-to-end error on the quantized cache (kernel + quantization).

Metrics per row (`Row.metrics`), each against the float64 reference on the unquantized keys:
rel_fro (||out - ref|| / ||ref||), max_abs, cosine (of out as one vector), lse_max_err, topk_mass
(reference softmax mass on the reference's top-`mass_k` keys that the format's top-`mass_k` keeps, mean
and min over query heads), out_nope_rel / out_rope_rel (rel_fro on the output dims that come from NoPE
and from RoPE values; RoPE values exist only in MODEL1's V), logit_nope_rms / logit_rope_rms (RMS error
of the logits contributed by the NoPE and the RoPE dims of K).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch

from mlaverify.reference import sparse_decode_reference, sparse_prefill_reference
from mlaverify.verify.accuracy_formats import ACCURACY_MODELS, CacheFormat
from mlaverify.verify.accuracy_inputs import AttentionInputs, draw_inputs, row_generator
from mlaverify.verify.distributions import PRODUCTION_DISTRIBUTIONS, Distribution

__all__ = ["OpShape", "AccuracySettings", "Row", "evaluate", "run_accuracy", "ACCURACY_OPS", "SWEEPS"]

ACCURACY_OPS = ("sparse_decode", "sparse_prefill")
SWEEPS = ("outlier_ratio", "topk", "s_kv")
_CHUNK_BYTES = 64 * 2**20  # working set of the logit metrics per chunk of rows


@dataclass(frozen=True)
class OpShape:
    h_q: int = 16       # scaled from 64/128: heads are independent, the statistics need only enough of them
    s_kv: int = 4096    # tokens in the cache (production: 16384-131072)
    topk: int = 256     # keys each query attends to (production: 128-2048)
    rows: int = 8       # query rows (production decode: b * s_q; prefill: s_q = 4096, sampled)


@dataclass(frozen=True)
class AccuracySettings:
    decode: OpShape = OpShape()                     # sparse decode shape
    prefill: OpShape = OpShape(rows=16)             # sparse prefill shape
    block: int = 64                                 # page block of the byte caches (FlashMLA's decode block)
    mass_k: int = 8                                 # top keys whose softmax mass the topk_mass metric follows
    seed: int = 0                                   # seeds every draw, with the row's names
    sweep_distribution: str = "outlier_channels"    # the distribution the sweeps vary (the most production-like)
    outlier_sweep: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0)  # outlier channel std / bulk std
    topk_sweep: tuple[int, ...] = (32, 128, 512, 2048)                # keys per query
    seq_sweep: tuple[int, ...] = (1024, 4096, 16384)                  # cache tokens, top-k fixed
    preset: str | None = None                       # the production preset the shapes come from, if any

    def shape(self, op: str) -> OpShape:
        return self.decode if op == "sparse_decode" else self.prefill

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Row:
    op: str
    model: str
    distribution: str
    format: str
    sweep: str | None            # None: the main grid; else the swept parameter (SWEEPS)
    value: float | None          # the swept parameter's value
    path: str                    # which reference computed the format's result
    metrics: dict[str, float | None] = field(default_factory=dict)
    impl: dict[str, float | None] | None = None   # --impl: the implementation's end-to-end metrics
    impl_error: str | None = None                 # --impl: why the implementation gave no result

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _f(x: torch.Tensor) -> float:
    return float(x)


def output_metrics(out: torch.Tensor, lse: torch.Tensor, out_ref: torch.Tensor, lse_ref: torch.Tensor,
                   d_nope: int) -> dict[str, float | None]:
    """Errors of out [R, h, 512] and lse [R, h] against the float64 reference."""
    out, lse = out.double(), lse.double()
    diff = out - out_ref
    ref_norm = out_ref.norm().clamp_min(1e-300)
    rope = diff[..., d_nope:]
    return {
        "rel_fro": _f(diff.norm() / ref_norm),
        "max_abs": _f(diff.abs().max()),
        "cosine": _f((out * out_ref).sum() / (out.norm() * out_ref.norm()).clamp_min(1e-300)),
        "lse_max_err": _f((lse - lse_ref).abs().max()),
        "out_nope_rel": _f(diff[..., :d_nope].norm() / out_ref[..., :d_nope].norm().clamp_min(1e-300)),
        "out_rope_rel": _f(rope.norm() / out_ref[..., d_nope:].norm().clamp_min(1e-300)) if rope.numel() else None,
    }


def logit_metrics(x: AttentionInputs, keys_hat: torch.Tensor, lse_ref: torch.Tensor, mass_k: int) -> dict:
    """Logit error by NoPE and RoPE dims, and the top-k attention-mass overlap (module docstring).

    The softmax weights are exp(logit - lse_ref) with lse_ref from the reference, so no softmax is
    recomputed here."""
    d_nope, n = x.model.d_nope, x.keys.shape[0]
    q = x.q.double()  # [R, h, d]
    rows, heads, topk = q.shape[0], q.shape[1], x.lists.shape[1]
    step = max(1, _CHUNK_BYTES // max(1, topk * (2 * x.model.d_qk + 6 * heads) * 8))
    sq_nope = sq_rope = 0.0
    mass = torch.empty(rows, heads, dtype=torch.float64)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        lists = x.lists[r0:r1]
        valid = ((lists >= 0) & (lists < n)).unsqueeze(1)  # [r, 1, T]
        k = x.keys.double()[lists.clamp(0, n - 1)]  # [r, T, d]
        delta = keys_hat.double()[lists.clamp(0, n - 1)] - k
        logits = torch.einsum("rhd,rtd->rht", q[r0:r1], k) * x.softmax_scale
        e_nope = torch.einsum("rhd,rtd->rht", q[r0:r1, :, :d_nope], delta[..., :d_nope]) * x.softmax_scale
        e_rope = torch.einsum("rhd,rtd->rht", q[r0:r1, :, d_nope:], delta[..., d_nope:]) * x.softmax_scale
        sq_nope += _f(torch.where(valid, e_nope, 0.0).pow(2).sum())
        sq_rope += _f(torch.where(valid, e_rope, 0.0).pow(2).sum())
        m = max(1, min(mass_k, topk))
        ref_l = torch.where(valid, logits, float("-inf"))
        hat_l = torch.where(valid, logits + e_nope + e_rope, float("-inf"))
        top_ref = torch.zeros_like(ref_l, dtype=torch.bool).scatter_(-1, ref_l.topk(m, -1).indices, True) & valid
        top_hat = torch.zeros_like(ref_l, dtype=torch.bool).scatter_(-1, hat_l.topk(m, -1).indices, True) & valid
        weight = torch.exp(ref_l - lse_ref[r0:r1].unsqueeze(-1))  # reference softmax weights
        kept = torch.where(top_ref & top_hat, weight, 0.0).sum(-1)
        mass[r0:r1] = kept / torch.where(top_ref, weight, 0.0).sum(-1).clamp_min(1e-300)
    count = max(1, int(((x.lists >= 0) & (x.lists < n)).sum()) * heads)
    return {"logit_nope_rms": (sq_nope / count) ** 0.5, "logit_rope_rms": (sq_rope / count) ** 0.5,
            "topk_mass_mean": _f(mass.mean()), "topk_mass_min": _f(mass.min())}


def _prefill(q, kv, lists, scale, dtype=torch.float64):
    n, d = kv.shape
    out, _, lse = sparse_prefill_reference(q, kv.view(n, 1, d), lists.to(torch.int32).unsqueeze(1), scale,
                                           d_v=512, dtype=dtype)
    return out, lse  # [R, h, 512], [R, h]


def _decode_positions(lists: torch.Tensor) -> torch.Tensor:
    return lists.to(torch.int32).unsqueeze(1)  # [R, 1, topk]: one batch entry per query row; -1 kept


def _impl_result(impl, op: str, x: AttentionInputs, fmt: CacheFormat, kv_hat, block: int, device):
    """(out [R, h, 512], lse [R, h]) of the implementation on the quantized keys, or None (not applicable)."""
    dev = torch.device(device)
    q = x.q.to(dev)
    if op == "sparse_decode":
        if not fmt.is_real_for(x.model):
            return None  # no byte layout to hand to flash_mla_with_kvcache
        cache = fmt.quantize(x.keys, x.model, block).to(dev)
        meta, _ = impl.module.get_mla_metadata()
        out, lse = impl.module.flash_mla_with_kvcache(
            q.unsqueeze(1), cache, None, None, 512, meta, softmax_scale=x.softmax_scale, causal=False,
            is_fp8_kvcache=True, indices=_decode_positions(x.lists).to(dev))
        return out[:, 0].cpu(), lse[:, :, 0].cpu()
    n, d = kv_hat.shape
    out, _, lse = impl.module.flash_mla_sparse_fwd(q, kv_hat.view(n, 1, d).to(dev),
                                                   x.lists.to(torch.int32).unsqueeze(1).to(dev), x.softmax_scale,
                                                   d_v=512)
    return out.cpu(), lse.cpu()


def evaluate(op: str, x: AttentionInputs, formats: list[CacheFormat], settings: AccuracySettings,
             impl=None, device="cpu") -> list[tuple[CacheFormat, str, dict, dict | None, str | None]]:
    """(format, path, metrics, impl metrics, impl error) for each format that can hold the keys."""
    out_ref, lse_ref = _prefill(x.q, x.keys, x.lists, x.softmax_scale)
    results = []
    for fmt in formats:
        if not fmt.applies_to(x.model):
            continue
        kv_hat = fmt.dequantized(x.keys, x.model, settings.block)
        if op == "sparse_decode" and fmt.is_real_for(x.model):
            cache = fmt.quantize(x.keys, x.model, settings.block)
            out, lse = sparse_decode_reference(x.q.unsqueeze(1), cache, _decode_positions(x.lists),
                                               softmax_scale=x.softmax_scale, dtype=torch.float64)
            out, lse, path = out[:, 0], lse[:, :, 0], "sparse_decode_reference on the byte cache"
        else:
            out, lse = _prefill(x.q, kv_hat, x.lists, x.softmax_scale)
            path = "sparse_prefill_reference on the dequantized keys"
        metrics = output_metrics(out, lse, out_ref, lse_ref, x.model.d_nope)
        metrics.update(logit_metrics(x, kv_hat, lse_ref, settings.mass_k))
        impl_metrics, impl_error = None, None
        if impl is not None:
            try:
                got = _impl_result(impl, op, x, fmt, kv_hat, settings.block, device)
            except Exception as exc:  # the implementation's failure is reported, never taken for a result
                got, impl_error = None, f"{type(exc).__name__}: {exc}"
            if got is not None:
                impl_metrics = output_metrics(got[0], got[1], out_ref, lse_ref, x.model.d_nope)
                if not all(v is None or v == v for v in impl_metrics.values()):
                    impl_error = "the implementation returned NaN"
        results.append((fmt, path, metrics, impl_metrics, impl_error))
    return results


def _with_outliers(dist: Distribution, ratio: float) -> Distribution:
    return dataclasses.replace(dist, key_params=dataclasses.replace(dist.key_params, outlier_ratio=ratio))


def _points(settings: AccuracySettings, op: str, distributions: list[str]):
    """(distribution name, Distribution, sweep, value, OpShape) of every drawn row group."""
    shape = settings.shape(op)
    for name in distributions:
        yield name, PRODUCTION_DISTRIBUTIONS[name], None, None, shape
    if op != "sparse_decode":  # the sweeps follow the op that reads the FP8 cache in production
        return
    base = PRODUCTION_DISTRIBUTIONS[settings.sweep_distribution]
    for ratio in settings.outlier_sweep:
        yield settings.sweep_distribution, _with_outliers(base, ratio), "outlier_ratio", ratio, shape
    for topk in settings.topk_sweep:
        if topk <= shape.s_kv:
            yield settings.sweep_distribution, base, "topk", topk, dataclasses.replace(shape, topk=topk)
    for s_kv in settings.seq_sweep:
        if s_kv >= shape.topk:
            yield settings.sweep_distribution, base, "s_kv", s_kv, dataclasses.replace(shape, s_kv=s_kv)


def run_accuracy(settings: AccuracySettings, formats: list[CacheFormat], distributions: list[str],
                 models: list[str], ops: list[str], files: list[tuple[str, AttentionInputs]] = (),
                 impl=None, device="cpu", sweeps: bool = True,
                 progress: Callable[[str], None] | None = None) -> list[Row]:
    """Every row of the report: the main grid (op x model x distribution x format), the sweeps, the files."""
    rows: list[Row] = []

    def add(op, model_id, dist_name, sweep, value, x):
        for fmt, path, metrics, impl_metrics, impl_error in evaluate(op, x, formats, settings, impl, device):
            rows.append(Row(op, model_id, dist_name, fmt.name, sweep, value, path, metrics, impl_metrics, impl_error))
        if progress:
            where = f" {sweep}={value:g}" if sweep else ""
            progress(f"{op} {model_id} {dist_name}{where}: done")

    for op in ops:
        for model_id in models:
            model = ACCURACY_MODELS[model_id]
            for name, dist, sweep, value, shape in _points(settings, op, distributions):
                if sweep is not None and not sweeps:
                    continue
                # one seed per sweep, not per point: every point draws the same random numbers and differs
                # only in the swept parameter (common random numbers), so a trend is not seed noise
                g = row_generator(settings.seed, name, model_id, op, sweep)
                x = draw_inputs(g, dist, model, shape.s_kv, shape.topk, shape.rows, shape.h_q, settings.block)
                add(op, model_id, name, sweep, value, x)
        for label, x in files:
            add(op, x.model.value, label, None, None, x)
    return rows

