"""Dense decode reference: naive loop agreement, GQA head mapping, bottom-right causal masking,
zero-length sequences, garbage past each sequence, any page block size."""

import pytest
import torch

from mlaverify.reference import dense_decode_reference, flash_mla_with_kvcache, get_mla_metadata

from .builders import gen, naive_attention, random_q


def naive_dense(q, k_cache, block_table, seqlens, causal, scale):
    b, s_q, h_q, d = q.shape
    h_kv, block_size = k_cache.shape[2], k_cache.shape[1]
    out = torch.zeros(b, s_q, h_q, 512, dtype=torch.float64)
    lse = torch.zeros(b, h_q, s_q, dtype=torch.float64)
    for i in range(b):
        n = int(seqlens[i])
        tokens = [k_cache[int(block_table[i, t // block_size]), t % block_size] for t in range(n)]
        keys = torch.stack(tokens).double() if tokens else torch.zeros(0, h_kv, d, dtype=torch.float64)
        for j in range(s_q):
            visible = n - s_q + j + 1 if causal else n
            for h in range(h_q):
                kv_head = h // (h_q // h_kv)
                o, l, _ = naive_attention(q[i, j, h : h + 1].double(), keys[: max(visible, 0), kv_head], 512, scale)
                out[i, j, h], lse[i, h, j] = o[0], l[0]
    return out, lse


def make(b, s_q, h_q, h_kv, d, block_size, lengths, seed, dtype=torch.bfloat16):
    max_blocks = max(1, -(-max(lengths) // block_size))
    num_blocks = b * max_blocks + 2
    k_cache = random_q((num_blocks, block_size, h_kv, d), seed).to(dtype)
    perm = torch.randperm(num_blocks, generator=gen(seed + 1))[: b * max_blocks]
    block_table = perm.view(b, max_blocks).int()
    q = random_q((b, s_q, h_q, d), seed + 2).to(dtype)
    return q, k_cache, block_table, torch.tensor(lengths, dtype=torch.int32)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize(
    "b, s_q, h_q, h_kv, d, block_size, lengths",
    [
        (3, 1, 4, 1, 576, 64, [70, 1, 0]),
        (2, 3, 6, 3, 512, 5, [11, 2]),
        (2, 4, 9, 1, 576, 1, [6, 3]),
        (1, 2, 8, 2, 512, 3, [1]),
    ],
    ids=["mqa-pb64-len0", "gqa3-pb5", "pb1-short", "gqa2-s_k<s_q"],
)
def test_matches_naive_loop(b, s_q, h_q, h_kv, d, block_size, lengths, causal):
    q, k_cache, block_table, seqlens = make(b, s_q, h_q, h_kv, d, block_size, lengths, seed=1)
    out, lse = dense_decode_reference(q, k_cache, block_table, seqlens, 512, causal=causal, dtype=torch.float64)
    want_out, want_lse = naive_dense(q, k_cache, block_table, seqlens, causal, d**-0.5)
    torch.testing.assert_close(out, want_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, want_lse, rtol=1e-10, atol=1e-10)


def test_gqa_head_mapping_is_grouped_not_interleaved():
    q, k_cache, block_table, seqlens = make(1, 1, 4, 2, 512, 4, [5], seed=2)
    k_cache[..., 1, :] = 0  # kv head 1 is all zero: its query heads (2, 3) average zeros
    out, _ = dense_decode_reference(q, k_cache, block_table, seqlens, 512)
    assert bool((out[0, 0, 2:] == 0).all()) and bool((out[0, 0, :2] != 0).any())


def test_zero_length_and_fully_masked_queries():
    q, k_cache, block_table, seqlens = make(2, 3, 2, 1, 576, 4, [0, 2], seed=3)
    out, lse = dense_decode_reference(q, k_cache, block_table, seqlens, 512, causal=True)
    assert bool((out[0] == 0).all()) and bool(torch.isposinf(lse[0]).all())
    # s_k = 2 < s_q = 3: query 0 sees t <= -1, nothing; queries 1 and 2 see 1 and 2 tokens
    assert bool((out[1, 0] == 0).all()) and bool(torch.isposinf(lse[1, :, 0]).all())
    assert bool(torch.isfinite(lse[1, :, 1:]).all())


def test_garbage_past_each_sequence_is_never_read():
    q, k_cache, block_table, seqlens = make(2, 1, 2, 1, 512, 4, [5, 3], seed=4)
    clean = dense_decode_reference(q, k_cache, block_table, seqlens, 512)
    used = set()
    for i, n in enumerate(seqlens.tolist()):
        used |= {(int(block_table[i, t // 4]), t % 4) for t in range(n)}
    for blk in range(k_cache.shape[0]):
        for off in range(4):
            if (blk, off) not in used:
                k_cache[blk, off] = float("nan")
    block_table[1, 1] = 2**31 - 1  # a block-table entry past sequence 1's length
    got = dense_decode_reference(q, k_cache, block_table, seqlens, 512)
    assert torch.equal(got[0], clean[0]) and torch.equal(got[1], clean[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_api_output_dtype_follows_q(dtype):
    q, k_cache, block_table, seqlens = make(2, 2, 4, 1, 576, 64, [65, 9], seed=5, dtype=dtype)
    meta, _ = get_mla_metadata()
    out, lse = flash_mla_with_kvcache(q, k_cache, block_table, seqlens, 512, meta, causal=True)
    assert out.dtype == dtype and out.shape == (2, 2, 4, 512)
    assert lse.dtype == torch.float32 and lse.shape == (2, 4, 2)
    ref_out, ref_lse = dense_decode_reference(q, k_cache, block_table, seqlens, 512, causal=True)
    assert torch.equal(out, ref_out.to(dtype)) and torch.equal(lse, ref_lse)


def test_chunked_equals_unchunked():
    q, k_cache, block_table, seqlens = make(4, 2, 4, 2, 512, 3, [7, 0, 4, 9], seed=6)
    whole = dense_decode_reference(q, k_cache, block_table, seqlens, 512, causal=True, chunk_bytes=2**40)
    rows = dense_decode_reference(q, k_cache, block_table, seqlens, 512, causal=True, chunk_bytes=1)
    for a, b in zip(whole, rows):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
