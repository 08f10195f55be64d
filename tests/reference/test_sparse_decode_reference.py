"""Sparse decode reference: agrees with a naive loop, with dense decode, and with itself under
every rearrangement the spec says must not matter."""

import pytest
import torch

from mlaverify.reference import (
    ModelType,
    dense_decode_reference,
    dequantize_kv_cache,
    flash_mla_with_kvcache,
    get_mla_metadata,
    quantize_kv_cache,
    sparse_decode_reference,
)

from .builders import naive_attention, poison_unreferenced, random_cache, random_indices, random_q

MODELS = pytest.mark.parametrize("model", list(ModelType), ids=lambda m: m.value)


def naive_sparse_decode(q, cache, indices, lengths, model, scale, extra=None):
    """Python loop over (batch, query): the spec's formula entry by entry, in float64."""
    keys_all = dequantize_kv_cache(cache).double().flatten(0, 2)  # [positions, d_qk]
    b, s_q, h_q, _ = q.shape
    out = torch.zeros(b, s_q, h_q, 512, dtype=torch.float64)
    lse = torch.zeros(b, h_q, s_q, dtype=torch.float64)
    for i in range(b):
        for j in range(s_q):
            n = indices.shape[-1] if lengths is None else int(lengths[i])
            ids = [int(p) for p in indices[i, j, :n] if p != -1]
            keys = keys_all[ids]
            if extra is not None:
                x_cache, x_idx, x_len = extra
                x_keys = dequantize_kv_cache(x_cache).double().flatten(0, 2)
                m = x_idx.shape[-1] if x_len is None else int(x_len[i])
                keys = torch.cat([keys, x_keys[[int(p) for p in x_idx[i, j, :m] if p != -1]]])
            o, l, _ = naive_attention(q[i, j].double(), keys, 512, scale)
            out[i, j], lse[i, :, j] = o, l
    return out, lse


@pytest.mark.parametrize(
    "model, rounding",
    [(ModelType.V32, "ue8m0"), (ModelType.V32, "none"), (ModelType.MODEL1, "ue8m0")],
    ids=["v32-ue8m0", "v32-exact-scales", "model1"],
)
def test_matches_naive_loop(model, rounding):
    cache, _ = random_cache(model, 4, 5, seed=1, rounding=rounding)
    q = random_q((3, 2, 5, model.d_qk), seed=2)
    idx = random_indices(3, 2, 9, 20, seed=3)
    lengths = torch.tensor([9, 4, 0], dtype=torch.int32)
    out, lse = sparse_decode_reference(q, cache, idx, topk_length=lengths, dtype=torch.float64)
    ref_out, ref_lse = naive_sparse_decode(q, cache, idx, lengths, model, model.d_qk**-0.5)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-10)
    assert bool((out[2] == 0).all()) and bool(torch.isposinf(lse[2]).all())  # topk_length 0


@MODELS
def test_listing_every_token_equals_dense_decode(model):
    block_size, lengths = 3, [7, 1, 5]
    cache, _ = random_cache(model, 9, block_size, seed=4)
    keys = dequantize_kv_cache(cache)  # [9, 3, 1, d] bf16: the same keys as a dense cache
    block_table = torch.tensor([[4, 0, 8], [2, 5, 1], [7, 3, 6]], dtype=torch.int32)
    topk = max(lengths)
    idx = torch.full((3, 1, topk), -1, dtype=torch.int32)
    for i, n in enumerate(lengths):
        t = torch.arange(n)
        idx[i, 0, :n] = (block_table[i, t // block_size] * block_size + t % block_size).int()
    q = random_q((3, 1, 4, model.d_qk), seed=5)
    sparse_out, sparse_lse = sparse_decode_reference(q, cache, idx, dtype=torch.float64)
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    dense_out, dense_lse = dense_decode_reference(q, keys, block_table, seqlens, 512, dtype=torch.float64)
    torch.testing.assert_close(sparse_out, dense_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sparse_lse, dense_lse, rtol=1e-12, atol=1e-12)


@MODELS
def test_splitting_between_main_and_extra_cache_changes_nothing(model):
    _, k = random_cache(model, 6, 4, seed=6)
    main = quantize_kv_cache(k)
    extra = quantize_kv_cache(k.reshape(12, 2, 1, model.d_qk))  # same tokens, page block 2
    q = random_q((2, 2, 3, model.d_qk), seed=7)
    idx = random_indices(2, 2, 10, 24, seed=8)
    whole, whole_lse = sparse_decode_reference(q, main, idx)
    split, split_lse = sparse_decode_reference(
        q, main, idx[..., :6].contiguous(), extra_k_cache=extra, extra_indices=idx[..., 6:].contiguous()
    )
    torch.testing.assert_close(split, whole, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(split_lse, whole_lse, rtol=1e-6, atol=1e-6)


def test_extra_topk_length_limits_the_extra_list():
    model = ModelType.MODEL1
    main, _ = random_cache(model, 2, 8, seed=9)
    extra, _ = random_cache(model, 5, 2, seed=10)
    q = random_q((2, 1, 4, 512), seed=11)
    idx = random_indices(2, 1, 5, 16, seed=12, invalid_frac=0)
    x_idx = random_indices(2, 1, 6, 10, seed=13, invalid_frac=0)
    x_len = torch.tensor([2, 6], dtype=torch.int32)
    got, got_lse = sparse_decode_reference(
        q, main, idx, extra_k_cache=extra, extra_indices=x_idx, extra_topk_length=x_len, dtype=torch.float64
    )
    want, want_lse = naive_sparse_decode(q, main, idx, None, model, 512**-0.5, extra=(extra, x_idx, x_len))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_lse, want_lse, rtol=1e-10, atol=1e-10)
    short, _ = sparse_decode_reference(q, main, idx, extra_k_cache=extra, extra_indices=x_idx[..., :2].contiguous())
    assert torch.allclose(got[0].float(), short[0], atol=1e-6)


@MODELS
def test_permuting_entries_and_batch_changes_nothing(model):
    cache, _ = random_cache(model, 4, 6, seed=14)
    q = random_q((3, 2, 4, model.d_qk), seed=15)
    idx = random_indices(3, 2, 11, 24, seed=16)
    out, lse = sparse_decode_reference(q, cache, idx)
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    out_p, lse_p = sparse_decode_reference(q, cache, idx[..., perm].contiguous())
    torch.testing.assert_close(out_p, out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lse_p, lse, rtol=1e-6, atol=1e-6)
    order = torch.tensor([2, 0, 1])
    out_b, lse_b = sparse_decode_reference(q[order], cache, idx[order])
    torch.testing.assert_close(out_b, out[order], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lse_b, lse[order], rtol=1e-6, atol=1e-6)


def test_duplicate_entries_each_count():
    cache, _ = random_cache(ModelType.V32, 1, 4, seed=17)
    q = random_q((1, 1, 2, 576), seed=18)
    once, lse1 = sparse_decode_reference(q, cache, torch.tensor([[[0, 1]]], dtype=torch.int32), dtype=torch.float64)
    twice, lse2 = sparse_decode_reference(q, cache, torch.tensor([[[0, 0, 1]]], dtype=torch.int32), dtype=torch.float64)
    assert not torch.allclose(once, twice)
    keys = dequantize_kv_cache(cache).double().flatten(0, 2)[[0, 0, 1]]
    want, want_lse, _ = naive_attention(q[0, 0].double(), keys, 512, 576**-0.5)
    torch.testing.assert_close(twice[0, 0], want)
    torch.testing.assert_close(lse2[0, :, 0], want_lse)


@MODELS
def test_attention_sink(model):
    cache, _ = random_cache(model, 2, 8, seed=19)
    q = random_q((2, 2, 4, model.d_qk), seed=20)
    idx = random_indices(2, 2, 6, 16, seed=21)
    idx[1, 1] = -1  # a lonely row
    plain, lse = sparse_decode_reference(q, cache, idx, dtype=torch.float64)
    sink = torch.tensor([float("-inf"), float("inf"), 0.3, -2.0])
    sunk, sunk_lse = sparse_decode_reference(q, cache, idx, attn_sink=sink, dtype=torch.float64)
    assert torch.equal(sunk_lse, lse)  # the sink never changes lse
    assert torch.equal(sunk[:, :, 0], plain[:, :, 0])  # -inf: no-op
    assert bool((sunk[:, :, 1] == 0).all())  # +inf: zeros
    for h in (2, 3):
        factor = 1 / (1 + torch.exp(sink[h].double() - lse[:, h, :]))  # [b, s_q]
        factor = torch.where(torch.isposinf(lse[:, h, :]), 0.0, factor)
        torch.testing.assert_close(sunk[:, :, h], plain[:, :, h] * factor.unsqueeze(-1))
    assert bool((sunk[1, 1] == 0).all()) and not bool(sunk.isnan().any())


@MODELS
def test_rows_with_no_valid_entry(model):
    cache, _ = random_cache(model, 2, 4, seed=22)
    q = random_q((2, 3, 2, model.d_qk), seed=23)
    idx = torch.full((2, 3, 5), -1, dtype=torch.int32)
    idx[0, 1, 2] = 3
    out, lse = sparse_decode_reference(q, cache, idx)
    lonely = torch.ones(2, 3, dtype=torch.bool)
    lonely[0, 1] = False
    assert bool((out[lonely] == 0).all())
    assert bool(torch.isposinf(lse.transpose(1, 2)[lonely]).all())
    assert bool(torch.isfinite(lse[0, :, 1]).all())


@MODELS
def test_nan_bytes_in_unreferenced_slots_never_reach_the_output(model):
    cache, _ = random_cache(model, 4, 5, seed=24)
    q = random_q((2, 2, 3, model.d_qk), seed=25)
    idx = random_indices(2, 2, 8, 20, seed=26)
    lengths = torch.tensor([5, 8], dtype=torch.int32)
    clean, clean_lse = sparse_decode_reference(q, cache, idx, topk_length=lengths)
    considered = torch.cat([idx[0, :, :5].flatten(), idx[1].flatten()])
    poison_unreferenced(cache, considered, model)
    assert bool(dequantize_kv_cache(cache).isnan().any())  # the poison is real
    got, got_lse = sparse_decode_reference(q, cache, idx, topk_length=lengths)
    assert torch.equal(got, clean) and torch.equal(got_lse, clean_lse)


@MODELS
def test_chunked_equals_unchunked(model):
    cache, _ = random_cache(model, 3, 7, seed=27)
    q = random_q((3, 2, 4, model.d_qk), seed=28)
    idx = random_indices(3, 2, 9, 21, seed=29)
    whole = sparse_decode_reference(q, cache, idx, chunk_bytes=2**40)
    rows = sparse_decode_reference(q, cache, idx, chunk_bytes=1)  # one (batch, query) row per chunk
    for a, b in zip(whole, rows):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_non_contiguous_inputs():
    model = ModelType.V32
    cache, _ = random_cache(model, 3, 4, seed=30)
    q_big = random_q((2, 4, 6, 576), seed=31)
    q = q_big[:, ::2, 1::2]  # [2, 2, 3, 576], strided outside the last dim
    idx_big = random_indices(2, 2, 20, 12, seed=32)
    idx = idx_big[..., :7]
    assert not q.is_contiguous() and not idx.is_contiguous()
    got = sparse_decode_reference(q, cache, idx)
    want = sparse_decode_reference(q.contiguous(), cache, idx.contiguous())
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@MODELS
def test_api_rounds_once_and_matches_reference(model):
    cache, _ = random_cache(model, 2, 64, seed=33)
    q = random_q((2, 2, 64, model.d_qk), seed=34)
    idx = random_indices(2, 2, 64, 128, seed=35)
    sink = torch.linspace(-1, 1, 64)
    meta, none = get_mla_metadata()
    assert none is None
    out, lse = flash_mla_with_kvcache(q, cache, None, None, 512, meta, is_fp8_kvcache=True, indices=idx, attn_sink=sink)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 2, 64, 512)
    assert lse.dtype == torch.float32 and lse.shape == (2, 64, 2)
    ref_out, ref_lse = sparse_decode_reference(q, cache, idx, attn_sink=sink)
    assert torch.equal(out, ref_out.bfloat16()) and torch.equal(lse, ref_lse)
    # the same meta may be reused with the same configuration, not with another
    flash_mla_with_kvcache(q, cache, None, None, 512, meta, is_fp8_kvcache=True, indices=idx, attn_sink=sink)
    with pytest.raises(ValueError, match="tile_scheduler_metadata.*topk was 64, now 32"):
        flash_mla_with_kvcache(q, cache, None, None, 512, meta, is_fp8_kvcache=True, indices=idx[..., :32])


def test_float64_agrees_with_float32():
    cache, _ = random_cache(ModelType.MODEL1, 2, 8, seed=36)
    q = random_q((2, 1, 8, 512), seed=37)
    idx = random_indices(2, 1, 12, 16, seed=38)
    f32 = sparse_decode_reference(q, cache, idx)
    f64 = sparse_decode_reference(q, cache, idx, dtype=torch.float64)
    assert f64[0].dtype == torch.float64
    torch.testing.assert_close(f32[0].double(), f64[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f32[1].double(), f64[1], rtol=1e-6, atol=1e-6)
