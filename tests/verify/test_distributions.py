"""The production-like value distributions have the properties their reasons claim, measured.

Softmax quantities (top-1 weight) are measured with the sparse prefill reference on the bf16 values an
op would see: top-1 weight = exp(max_logits - lse).
"""
from __future__ import annotations

import pytest
import torch

from mlaverify.reference import sparse_prefill_reference
from mlaverify.verify.distributions import (
    KEY_KINDS, PRODUCTION_DISTRIBUTIONS, QUERY_KINDS, KeyParams, QueryParams, make_keys, make_queries,
)

N, D_NOPE, D_ROPE, T, ROWS, HEADS = 2048, 512, 64, 128, 32, 8
SCALE = (D_NOPE + D_ROPE) ** -0.5


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _lists(g, rows: int = ROWS, topk: int = T, n: int = N) -> torch.Tensor:
    return torch.stack([torch.randperm(n, generator=g)[:topk] for _ in range(rows)])  # [rows, topk]


def _top1(q: torch.Tensor, keys: torch.Tensor, lists: torch.Tensor) -> torch.Tensor:
    """Largest softmax weight per (row, head), by the reference, on bf16 q and keys."""
    kv = keys.to(torch.bfloat16).view(keys.shape[0], 1, -1)
    idx = lists.to(torch.int32).view(lists.shape[0], 1, -1)
    _, max_logits, lse = sparse_prefill_reference(q.to(torch.bfloat16), kv, idx, SCALE, dtype=torch.float64)
    return torch.exp(max_logits - lse)


def _spread(q: torch.Tensor, keys: torch.Tensor, lists: torch.Tensor) -> torch.Tensor:
    """max - min logit per (row, head) over the valid entries, on bf16-rounded values."""
    k = keys.to(torch.bfloat16).double()[lists.clamp(0, keys.shape[0] - 1)]  # [r, T, d]
    logits = torch.einsum("rhd,rtd->rht", q.to(torch.bfloat16).double(), k) * SCALE
    valid = ((lists >= 0) & (lists < keys.shape[0])).unsqueeze(1)
    return torch.where(valid, logits, -torch.inf).amax(-1) - torch.where(valid, logits, torch.inf).amin(-1)


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_keys_are_reproducible_from_the_generator(kind):
    a = make_keys(_gen(3), kind, 300, 448, 64)
    b = make_keys(_gen(3), kind, 300, 448, 64)
    assert a.dtype == torch.float32 and a.shape == (300, 512)
    assert torch.equal(a, b)
    assert not torch.equal(a, make_keys(_gen(4), kind, 300, 448, 64))


def test_flashmla_keys_are_flashmla_base():
    k = make_keys(_gen(), "flashmla", N, D_NOPE, D_ROPE)
    assert 0.095 < float(k.std()) < 0.105
    assert float(k.abs().max()) <= 1.0


@pytest.mark.parametrize("ratio", [10.0, 30.0, 100.0])
def test_outlier_channels_are_a_few_fixed_nope_channels_at_the_ratio(ratio):
    params = KeyParams(outlier_ratio=ratio)
    k = make_keys(_gen(), "outlier_channels", N, D_NOPE, D_ROPE, params)
    rms = k.pow(2).mean(0).sqrt()  # [d] per channel
    top = rms.topk(params.outlier_channels).indices
    assert bool((top < D_NOPE).all()), "outliers belong to the NoPE (quantized) dims"
    rest = torch.ones(k.shape[1], dtype=torch.bool)
    rest[top] = False
    measured = rms[top] / rms[rest].median()
    assert bool(((measured > 0.9 * ratio) & (measured < 1.1 * ratio)).all()), measured
    # the (params.outlier_channels + 1)-th channel is ordinary
    assert float(rms.topk(params.outlier_channels + 1).values[-1] / rms[rest].median()) < 1.2


def test_outlier_ratio_is_drawn_in_its_range():
    ratios = []
    for seed in range(12):
        k = make_keys(_gen(seed), "outlier_channels", 1024, D_NOPE, D_ROPE)
        rms = k.pow(2).mean(0).sqrt()
        ratios.append(float(rms.topk(4).values.min() / rms.median()))
    assert min(ratios) > 9.0 and max(ratios) < 110.0
    assert max(ratios) / min(ratios) > 2.0, ratios  # log-uniform in 10..100: they differ across draws


def test_rope_dims_have_their_own_scale():
    k = make_keys(_gen(), "rope_scaled", N, D_NOPE, D_ROPE, KeyParams(rope_ratio=5.0))
    measured = float(k[:, D_NOPE:].std() / k[:, :D_NOPE].std())
    assert 4.7 < measured < 5.3


def test_near_duplicate_keys_have_close_copies():
    k = make_keys(_gen(), "near_duplicate", 512, D_NOPE, D_ROPE)
    unit = k / k.norm(dim=-1, keepdim=True)
    cos = unit @ unit.T
    cos.fill_diagonal_(0.0)
    has_copy = (cos.amax(-1) > 0.999).float().mean()
    independent = make_keys(_gen(), "flashmla", 512, D_NOPE, D_ROPE)
    unit = independent / independent.norm(dim=-1, keepdim=True)
    assert float((unit @ unit.T).fill_diagonal_(0.0).amax()) < 0.5
    assert float(has_copy) > 0.5  # each copy and its source: well over half of the tokens


def test_peaked_queries_span_top1_weight_0_1_to_0_99():
    g = _gen()
    keys = make_keys(g, "flashmla", N, D_NOPE, D_ROPE)
    lists = _lists(g)
    top1 = _top1(make_queries(g, "peaked", keys, lists, SCALE, HEADS), keys, lists)
    assert top1.shape == (ROWS, HEADS)
    assert float(top1.min()) > 0.08 and float(top1.min()) < 0.15
    assert float(top1.max()) > 0.95
    # drawn uniformly in [0.1, 0.99]: a fifth below 0.3 and a fifth above 0.8 (expected ~22% each)
    assert float((top1 < 0.3).float().mean()) > 0.12 and float((top1 > 0.8).float().mean()) > 0.12
    flat = _top1(make_queries(g, "flashmla", keys, lists, SCALE, HEADS), keys, lists)
    assert float(flat.max()) < 1.5 / T  # FlashMLA's data: about uniform, the contrast peaked data exists for


def test_peaked_queries_ignore_unattended_slots():
    g = _gen(1)
    keys = make_keys(g, "flashmla", N, D_NOPE, D_ROPE)
    lists = _lists(g)
    lists[:, ::3] = -1
    lists[:, 1::7] = N          # out of range: not attended, like the engine's invalid prefill indices
    lists[:, 2::11] = -(2**31)
    top1 = _top1(make_queries(g, "peaked", keys, lists, SCALE, HEADS), keys, lists)
    assert float(top1.min()) > 0.08 and float(top1.max()) > 0.95


def test_wide_logit_queries_spread_5_to_50():
    g = _gen(2)
    keys = make_keys(g, "flashmla", N, D_NOPE, D_ROPE)
    lists = _lists(g)
    spread = _spread(make_queries(g, "wide_logits", keys, lists, SCALE, HEADS), keys, lists)
    assert float(spread.min()) > 4.8 and float(spread.max()) < 52.0  # bf16 rounding of q and k: ~1%
    assert float(spread.min()) < 8.0 and float(spread.max()) > 30.0
    flat = _spread(make_queries(g, "flashmla", keys, lists, SCALE, HEADS), keys, lists)
    assert float(flat.max()) < 1.0


def test_queries_keep_the_leading_shape_and_rows_without_keys_get_flat_queries():
    g = _gen(5)
    keys = make_keys(g, "flashmla", 300, 448, 64)
    lists = torch.randint(0, 300, (2, 3, 64), generator=g)  # [b, s_q, topk] like sparse decode
    lists[1, 2] = -1
    q = make_queries(g, "peaked", keys, lists, 512 ** -0.5, n_heads=4)
    assert q.shape == (2, 3, 4, 512) and q.dtype == torch.float32
    assert float(q[1, 2].abs().max()) <= 1.0 and float(q[0, 0].norm(dim=-1).min()) > 0.0


def test_queries_do_not_depend_on_the_chunk_size():
    keys = make_keys(_gen(), "flashmla", N, D_NOPE, D_ROPE)
    lists = _lists(_gen(1))
    small = make_queries(_gen(2), "peaked", keys, lists, SCALE, HEADS, QueryParams(chunk_bytes=1))
    large = make_queries(_gen(2), "peaked", keys, lists, SCALE, HEADS)
    torch.testing.assert_close(small, large, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("name", sorted(PRODUCTION_DISTRIBUTIONS))
@pytest.mark.parametrize("d_nope,d_rope", [(512, 64), (448, 64), (128, 64), (128, 0)], ids=str)
def test_every_distribution_draws_for_every_head_dim(name, d_nope, d_rope):
    dist = PRODUCTION_DISTRIBUTIONS[name]
    assert dist.reason and dist.keys in KEY_KINDS and dist.queries in QUERY_KINDS
    g = _gen()
    keys = dist.make_keys(g, 256, d_nope, d_rope)
    q = dist.make_queries(g, keys, torch.randint(0, 256, (5, 32), generator=g), (d_nope + d_rope) ** -0.5, 2)
    assert keys.shape == (256, d_nope + d_rope) and q.shape == (5, 2, d_nope + d_rope)
    assert bool(torch.isfinite(keys).all() and torch.isfinite(q).all())


def test_bad_kinds_and_shapes_are_named():
    keys = make_keys(_gen(), "flashmla", 10, 8, 8)
    with pytest.raises(ValueError, match="kind: expected one of flashmla"):
        make_keys(_gen(), "spiky", 10, 8, 8)
    with pytest.raises(ValueError, match="kind: expected one of flashmla, peaked"):
        make_queries(_gen(), "sharp", keys, torch.zeros(2, 3, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="attended_rows: expected an integer tensor"):
        make_queries(_gen(), "peaked", keys, torch.zeros(2, 3), 1.0)
    with pytest.raises(ValueError, match="outlier_channels: expected 1..d_nope=8"):
        make_keys(_gen(), "outlier_channels", 10, 8, 8, KeyParams(outlier_channels=9))
