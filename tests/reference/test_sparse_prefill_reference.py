"""Sparse prefill reference: plain softmax attention over the listed keys, every invalid index
kind ignored, topk_length, sink, lonely rows, NaN isolation, chunking."""

import pytest
import torch

from mlaverify.reference import flash_mla_sparse_fwd, sparse_prefill_reference

from .builders import gen, naive_attention, random_q

D_QK = pytest.mark.parametrize("d_qk", [576, 512])
INVALID = [-1, -2, -123456, -(2**31), 2**31 - 1, 114514, 2147480000]


def make(s_q, h_q, d_qk, s_kv, topk, seed):
    q = random_q((s_q, h_q, d_qk), seed)
    kv = random_q((s_kv, 1, d_qk), seed + 1)
    idx = torch.randint(0, s_kv, (s_q, 1, topk), generator=gen(seed + 2), dtype=torch.int32)
    return q, kv, idx


@D_QK
def test_listing_all_keys_is_plain_softmax_attention(d_qk):
    s_q, h_q, s_kv = 4, 3, 9
    q, kv, _ = make(s_q, h_q, d_qk, s_kv, 1, seed=1)
    idx = torch.arange(s_kv, dtype=torch.int32).repeat(s_q, 1, 1)  # every key, in order
    scale = 0.07
    out, max_logits, lse = sparse_prefill_reference(q, kv, idx, scale, dtype=torch.float64)
    logits = torch.einsum("shd,td->sht", q.double(), kv[:, 0].double()) * scale
    torch.testing.assert_close(out, torch.softmax(logits, -1) @ kv[:, 0, :512].double())
    torch.testing.assert_close(lse, torch.logsumexp(logits, -1))
    torch.testing.assert_close(max_logits, logits.amax(-1))


@D_QK
def test_every_invalid_index_kind_is_ignored(d_qk):
    s_q, h_q, s_kv, topk = 3, 2, 11, 12
    q, kv, idx = make(s_q, h_q, d_qk, s_kv, topk, seed=2)
    bad = torch.tensor(INVALID + [s_kv, s_kv + 1, -5], dtype=torch.int32)
    idx[0, 0, : len(bad)] = bad  # only two real entries left in row 0
    idx[1, 0, ::2] = s_kv  # exactly s_kv is out of range too
    out, max_logits, lse = sparse_prefill_reference(q, kv, idx, 0.1, dtype=torch.float64)
    for j in range(s_q):
        ids = [int(t) for t in idx[j, 0] if 0 <= t < s_kv]
        o, l, m = naive_attention(q[j].double(), kv[ids, 0].double(), 512, 0.1)
        torch.testing.assert_close(out[j], o)
        torch.testing.assert_close(lse[j], l)
        torch.testing.assert_close(max_logits[j], m)


def test_topk_length_ignores_later_entries_even_nan_ones():
    s_q, h_q, s_kv, topk = 3, 2, 8, 6
    q, kv, idx = make(s_q, h_q, 512, s_kv, topk, seed=3)
    idx[:, 0, :] = torch.tensor([0, 1, 2, 3, 4, 5], dtype=torch.int32)
    kv[5] = float("nan")  # only slot 5 points at it, and topk_length stops before it
    lengths = torch.tensor([5, 0, 2], dtype=torch.int32)
    out, max_logits, lse = sparse_prefill_reference(q, kv, idx, 0.1, topk_length=lengths, dtype=torch.float64)
    assert not bool(out.isnan().any())
    want, want_max, want_lse = sparse_prefill_reference(q, kv, idx[..., :2].contiguous(), 0.1, dtype=torch.float64)
    torch.testing.assert_close(out[2], want[2])
    torch.testing.assert_close(lse[2], want_lse[2])
    assert bool((out[1] == 0).all()) and bool(torch.isposinf(lse[1]).all()) and bool(torch.isneginf(max_logits[1]).all())


def test_no_valid_entry_everywhere():
    q, kv, idx = make(2, 4, 576, 5, 3, seed=4)
    idx.fill_(-1)
    out, max_logits, lse = flash_mla_sparse_fwd(q, kv, idx, 0.1)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 4, 512)
    assert max_logits.dtype == torch.float32 and lse.shape == (2, 4)
    assert bool((out == 0).all()) and bool(torch.isposinf(lse).all()) and bool(torch.isneginf(max_logits).all())


def test_sink_rule():
    q, kv, idx = make(3, 4, 512, 10, 5, seed=5)
    plain, m, lse = sparse_prefill_reference(q, kv, idx, 0.1, dtype=torch.float64)
    sink = torch.tensor([float("-inf"), float("inf"), 0.0, 1.5])
    sunk, m2, lse2 = sparse_prefill_reference(q, kv, idx, 0.1, attn_sink=sink, dtype=torch.float64)
    assert torch.equal(lse2, lse) and torch.equal(m2, m)
    assert torch.equal(sunk[:, 0], plain[:, 0]) and bool((sunk[:, 1] == 0).all())
    for h in (2, 3):
        factor = 1 / (1 + torch.exp(sink[h].double() - lse[:, h]))
        torch.testing.assert_close(sunk[:, h], plain[:, h] * factor.unsqueeze(-1))


def test_topk_larger_than_s_kv_and_duplicates():
    q, kv, _ = make(2, 2, 576, 3, 1, seed=6)
    idx = torch.tensor([[[0, 1, 2, 0, 0, -1, 3, 7]], [[2, 2, 2, 2, 2, 2, 2, 2]]], dtype=torch.int32)
    out, _, lse = sparse_prefill_reference(q, kv, idx, 0.2, dtype=torch.float64)
    o, l, _ = naive_attention(q[0].double(), kv[[0, 1, 2, 0, 0], 0].double(), 512, 0.2)
    torch.testing.assert_close(out[0], o)
    torch.testing.assert_close(lse[0], l)
    torch.testing.assert_close(out[1], kv[2, 0, :512].double().expand(2, 512))


@D_QK
def test_chunked_equals_unchunked(d_qk):
    q, kv, idx = make(7, 3, d_qk, 13, 6, seed=7)
    whole = sparse_prefill_reference(q, kv, idx, 0.1, chunk_bytes=2**40)
    rows = sparse_prefill_reference(q, kv, idx, 0.1, chunk_bytes=1)
    for a, b in zip(whole, rows):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_non_contiguous_inputs():
    q_big, kv_big, idx_big = make(6, 4, 576, 10, 8, seed=8)
    q, idx = q_big[::2, 1:3], idx_big[::2, :, :5]
    kv = torch.cat([kv_big, kv_big], dim=1)[:, :1]  # stride(0) = 2 * d_qk
    assert not q.is_contiguous() and not kv.is_contiguous() and not idx.is_contiguous()
    got = sparse_prefill_reference(q, kv, idx, 0.1)
    want = sparse_prefill_reference(q.contiguous(), kv.contiguous(), idx.contiguous(), 0.1)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
