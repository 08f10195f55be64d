"""Value distributions of the engine's inputs, and why they are what they are.

The tolerance table (operations.md, `tolerances.DEFAULT_TOLERANCES`) is FlashMLA's, and FlashMLA
set it against its own test data. A tolerance means something only on the distribution it was
calibrated on: with unit-scale values everywhere, a legitimate kernel that rounds the softmax
weights P to bf16 before P @ V (exactly what FlashMLA does) exceeds it (worst abs error 0.48 was
seen), so the engine would report bugs that are not there. Every op therefore draws its base values
as FlashMLA's test generator for that op does (its tests/lib.py decode and prefill generators,
test_flash_mla_dense_decoding.py, test_fmha_sm100.py), `BASE_VALUES` holding the standard
deviation, the clamp bound and the half-width of a per-tensor uniform offset:
- sparse decode: q = randn clamped to [-1, 1]; keys (before quantization) randn * 0.1 clamped to [-1, 1];
- sparse prefill: q, kv = randn * 0.1 plus a per-tensor offset uniform in [-0.05, 0.05), clamped to [-10, 10];
- dense decode: q, k = randn * 0.1 clamped to [-1, 1];
- dense MHA prefill: q, k, v and the output gradient randn * 0.1.
FlashMLA's own softmax scales (`flashmla_softmax_scale`) are among the explicit scales the
strategies draw, next to the API default and a few others. The stress distributions of sparse
decode (per-tile outliers, all-zero tiles, values near the fp8 limit, exact float32 scales) are
layered on top of the base keys and stay inside FlashMLA's clamp range [-1, 1], so they stress the
quantizer's scale choice (the ratio of a tile's outliers to its bulk, fp8 codes near 448) without
leaving the magnitudes the tolerances were set for.
"""
from __future__ import annotations

import torch

# (op, tensor) -> (std, clamp bound or None, half-width of a per-tensor uniform offset): FlashMLA's generators.
BASE_VALUES: dict[tuple[str, str], tuple[float, float | None, float]] = {
    ("sparse_decode", "q"): (1.0, 1.0, 0.0), ("sparse_decode", "k"): (0.1, 1.0, 0.0),
    ("sparse_prefill", "q"): (0.1, 10.0, 0.05), ("sparse_prefill", "kv"): (0.1, 10.0, 0.05),
    ("dense_decode", "q"): (0.1, 1.0, 0.0), ("dense_decode", "k"): (0.1, 1.0, 0.0),
    ("mha_prefill", "q"): (0.1, None, 0.0), ("mha_prefill", "k"): (0.1, None, 0.0),
    ("mha_prefill", "v"): (0.1, None, 0.0), ("mha_prefill", "dout"): (0.1, None, 0.0),
}
STRESS_BOUND = 1.0  # stress values of sparse decode keys stay in [-1, 1], FlashMLA's clamp range


def flashmla_softmax_scale(op: str, d_qk: int) -> float:
    """The explicit softmax scale FlashMLA's own tests use for an op (one of the drawn explicit scales)."""
    if op in ("sparse_decode", "dense_decode"):
        return d_qk ** -0.55
    if op == "sparse_prefill":
        return 0.5
    if op == "mha_prefill":
        return (d_qk + 100) ** -0.5
    raise ValueError(f"op: expected one of sparse_decode, sparse_prefill, dense_decode, mha_prefill, got {op!r}")


def base_values(g, op: str, name: str, *shape: int) -> torch.Tensor:
    """float32 values of tensor `name` of `op` drawn like FlashMLA's test generator (see BASE_VALUES)."""
    std, bound, offset = BASE_VALUES[(op, name)]
    values = torch.randn(*shape, generator=g) * std
    if offset:
        values += (float(torch.rand((), generator=g)) * 2.0 - 1.0) * offset
    return values.clamp_(-bound, bound) if bound is not None else values


def _rand(g, *shape) -> torch.Tensor:
    return torch.rand(*shape, generator=g)


def stress_values(g, nope: torch.Tensor, tile: int, mode: str) -> torch.Tensor:
    """Apply a stress distribution (cases.VALUE_MODES) to the base keys nope [T, d_nope] (tiles of `tile`)."""
    t_count = nope.shape[0]
    tiles = nope.view(t_count, -1, tile)  # [T, n_tiles, tile]
    kinds = {"outliers": 1, "zero_tiles": 2, "near_max": 3}
    mixed = torch.randint(0, 4, (t_count,), generator=g) if mode == "mixed" else None
    kind = mixed if mixed is not None else torch.full((t_count,), kinds.get(mode, 0))
    # outliers: the bulk of the token a tenth of the base, one or two elements per tile at 0.5..1 x STRESS_BOUND
    # (~30-100x the bulk), so each tile's scale is set by its outliers and the bulk quantizes coarsely
    outlier = (kind == 1).view(-1, 1, 1)
    spikes = (_rand(g, *tiles.shape) < 1.5 / tile) & outlier
    sign = torch.where(tiles < 0, -1.0, 1.0)
    tiles = torch.where(outlier, tiles * 0.1, tiles)
    tiles = torch.where(spikes, sign * STRESS_BOUND * (0.5 + 0.5 * _rand(g, *tiles.shape)), tiles)
    # zero tiles: about half the tiles of a token are all zero
    zero = (_rand(g, t_count, tiles.shape[1], 1) < 0.5) & (kind == 2).view(-1, 1, 1)
    tiles = torch.where(zero, torch.zeros_like(tiles), tiles)
    # near max: every element within 10% of the tile's amax (2^-6 .. 1 x STRESS_BOUND), so fp8 codes sit near 448
    amax = STRESS_BOUND * torch.exp2(_rand(g, t_count, tiles.shape[1], 1) * 6.0 - 6.0)
    sign = torch.where(_rand(g, *tiles.shape) < 0.5, -1.0, 1.0)
    near = sign * amax * (0.9 + 0.1 * _rand(g, *tiles.shape))
    tiles = torch.where((kind == 3).view(-1, 1, 1), near, tiles)
    return tiles.reshape(t_count, -1)
