"""Dense MHA prefill reference: agreement with a naive per-sequence attention (forward and, through
torch.autograd, backward), bottom-right causal masking, GQA, empty rows, packed variants, chunking
and input validation."""

import pytest
import torch

from mlaverify.reference import mha_prefill
from mlaverify.reference.mha_prefill import (
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    mha_prefill_backward_reference,
    mha_prefill_reference,
)

# (seqlens_q, seqlens_k): length 1, s_k < s_q (early causal rows see nothing), empty sequences.
LENGTHS = {
    "varlen": ([3, 1, 7, 0, 4], [5, 2, 3, 2, 0]),
    "single": ([6], [9]),
    "short-keys": ([5, 1], [2, 1]),
}
HEADS = {"mha": (2, 2), "gqa": (4, 2), "mqa": (3, 1)}


def cu(lengths):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)


def make(lengths, heads, d_qk, seed=0, dtype=torch.bfloat16):
    lq, lk = LENGTHS[lengths]
    h_q, h_kv = HEADS[heads]
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(lq), h_q, d_qk, generator=g).to(dtype)
    k = torch.randn(sum(lk), h_kv, d_qk, generator=g).to(dtype)
    v = torch.randn(sum(lk), h_kv, 128, generator=g).to(dtype)
    dout = torch.randn(sum(lq), h_q, 128, generator=g).to(dtype)
    return q, k, v, cu(lq), cu(lk), dout


def naive(q, k, v, cu_q, cu_k, scale, causal, window=(-1, -1)):
    """float64 softmax attention, one sequence at a time; returns (out, lse) and is differentiable."""
    h_q, h_kv = q.shape[1], k.shape[1]
    outs, lses = [], []
    for i in range(cu_q.numel() - 1):
        qs = q[cu_q[i]:cu_q[i + 1]].transpose(0, 1)  # [h_q, s_q, d_qk]
        ks = k[cu_k[i]:cu_k[i + 1]].repeat_interleave(h_q // h_kv, dim=1).transpose(0, 1)  # [h_q, s_k, d_qk]
        vs = v[cu_k[i]:cu_k[i + 1]].repeat_interleave(h_q // h_kv, dim=1).transpose(0, 1)  # [h_q, s_k, d_v]
        s_q, s_k = qs.shape[1], ks.shape[1]
        logits = scale * qs @ ks.transpose(1, 2)  # [h_q, s_q, s_k]
        keep = torch.ones(s_q, s_k, dtype=torch.bool)
        if causal or window[1] >= 0:  # key t <= j + s_k - s_q (+ right)
            keep = keep.tril(diagonal=s_k - s_q + (0 if causal else window[1]))
        if window[0] >= 0:  # key t >= j + s_k - s_q - left
            keep = keep.triu(diagonal=s_k - s_q - window[0])
        logits = logits.masked_fill(~keep, float("-inf"))
        lse = torch.logsumexp(logits, dim=-1)  # [h_q, s_q]
        weights = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0)  # rows with no key: 0
        outs.append((weights @ vs).transpose(0, 1))
        lses.append(torch.where(torch.isneginf(lse), float("inf"), lse).transpose(0, 1))
    return torch.cat(outs), torch.cat(lses)


CASES = [(lengths, heads, d, causal) for lengths in LENGTHS for heads in HEADS for d in (192, 128)
         for causal in (False, True)]
IDS = [f"{lengths}-{heads}-d{d}-{'causal' if causal else 'full'}" for lengths, heads, d, causal in CASES]


@pytest.mark.parametrize("lengths,heads,d_qk,causal", CASES, ids=IDS)
def test_forward_and_backward_match_naive(lengths, heads, d_qk, causal):
    q, k, v, cu_q, cu_k, dout = make(lengths, heads, d_qk)
    scale = 0.3
    out, lse = mha_prefill_reference(q, k, v, cu_q, cu_k, softmax_scale=scale, causal=causal, dtype=torch.float64)
    leaves = [x.double().requires_grad_() for x in (q, k, v)]
    ref_out, ref_lse = naive(*leaves, cu_q, cu_k, scale, causal)
    torch.testing.assert_close(out, ref_out.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-10)
    ref_out.backward(dout.double())
    grads = mha_prefill_backward_reference(dout, q, k, v, cu_q, cu_k, softmax_scale=scale, causal=causal,
                                           dtype=torch.float64)
    for name, got, leaf in zip(("dq", "dk", "dv"), grads, leaves):
        torch.testing.assert_close(got, leaf.grad, rtol=1e-9, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


WINDOWS = {"left2-causal": ((2, -1), True), "left2-right0": ((2, 0), True), "left1-right3": ((1, 3), False),
           "left0-right0": ((0, 0), False), "right1": ((-1, 1), False)}


@pytest.mark.parametrize("lengths", ["varlen", "short-keys"])
@pytest.mark.parametrize("window", list(WINDOWS), ids=list(WINDOWS))
def test_sliding_window_matches_naive(window, lengths):
    window_size, causal = WINDOWS[window]
    q, k, v, cu_q, cu_k, dout = make(lengths, "gqa", 128, seed=4)
    kwargs = dict(softmax_scale=0.2, causal=causal, window_size=window_size, dtype=torch.float64)
    out, lse = mha_prefill_reference(q, k, v, cu_q, cu_k, **kwargs)
    leaves = [x.double().requires_grad_() for x in (q, k, v)]
    ref_out, ref_lse = naive(*leaves, cu_q, cu_k, 0.2, causal, window_size)
    torch.testing.assert_close(out, ref_out.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-10)
    ref_out.backward(dout.double())
    grads = mha_prefill_backward_reference(dout, q, k, v, cu_q, cu_k, **kwargs)
    for got, leaf in zip(grads, leaves):
        torch.testing.assert_close(got, leaf.grad, rtol=1e-9, atol=1e-10)


def test_window_of_zero_sees_only_the_diagonal_key():
    q, k, v, cu_q, cu_k, _ = make("single", "mha", 128)  # s_q 6, s_k 9: query j sees key j + 3 only
    out, _ = mha_prefill_reference(q, k, v, cu_q, cu_k, window_size=(0, 0))
    torch.testing.assert_close(out, v[3:9].float(), rtol=0, atol=0)


def test_causal_is_bottom_right_aligned_and_empty_rows_give_zero_and_inf():
    q, k, v, cu_q, cu_k, _ = make("short-keys", "gqa", 128)  # s_q 5, s_k 2: queries 0..2 see no key
    out, lse = mha_prefill_reference(q, k, v, cu_q, cu_k, causal=True)
    assert torch.all(lse[:3] == float("inf")) and torch.all(out[:3] == 0)
    assert torch.isfinite(lse[3:]).all()
    # query 3 sees key 0 only: out is exactly that key's value row (of its KV head)
    torch.testing.assert_close(out[3], v[0].float().repeat_interleave(2, dim=0), rtol=0, atol=0)


def test_public_function_rounds_out_and_returns_float32_lse():
    q, k, v, cu_q, cu_k, _ = make("varlen", "gqa", 192)
    out, lse = flash_attn_varlen_func(q, k, v, cu_q, cu_k, 7, 5, causal=True)
    exact, exact_lse = mha_prefill_reference(q, k, v, cu_q, cu_k, causal=True)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32 and lse.shape == (q.shape[0], q.shape[1])
    assert torch.equal(out, exact.bfloat16()) and torch.equal(lse, exact_lse)
    out16, _ = flash_attn_varlen_func(q.half(), k.half(), v.half(), cu_q, cu_k, 7, 5)
    assert out16.dtype == torch.float16


def test_autograd_through_public_function_matches_backward_reference():
    q, k, v, cu_q, cu_k, dout = make("varlen", "gqa", 192, seed=1)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out, lse = flash_attn_varlen_func(*leaves, cu_q, cu_k, 7, 5, causal=True)
    assert not lse.requires_grad
    out.backward(dout)
    expected = mha_prefill_backward_reference(dout, q, k, v, cu_q, cu_k, causal=True)
    for leaf, exp in zip(leaves, expected):
        assert leaf.grad.dtype == torch.bfloat16
        assert torch.equal(leaf.grad, exp.bfloat16())


def test_packed_variants_equal_the_unpacked_call():
    g = torch.Generator().manual_seed(5)
    lengths = cu([4, 1, 6])
    qkv = torch.randn(11, 2, 192 * 2 + 128, generator=g).bfloat16().requires_grad_()
    out, lse = flash_attn_varlen_qkvpacked_func(qkv, lengths, 6, 192, causal=True)
    q, k, v = qkv[:, :, :192], qkv[:, :, 192:384], qkv[:, :, 384:]
    ref_out, ref_lse = flash_attn_varlen_func(q, k, v, lengths, lengths, 6, 6, causal=True)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    out.float().sum().backward()
    assert qkv.grad.shape == qkv.shape and qkv.grad[:, :, 384:].abs().sum() > 0
    kv = torch.randn(11, 1, 128 + 128, generator=g).bfloat16()
    qq = torch.randn(11, 2, 128, generator=g).bfloat16()
    out, lse = flash_attn_varlen_kvpacked_func(qq, kv, lengths, lengths, 6, 6, 128)
    ref_out, ref_lse = flash_attn_varlen_func(qq, kv[:, :, :128], kv[:, :, 128:], lengths, lengths, 6, 6)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


def test_query_chunking_does_not_change_results(monkeypatch):
    q, k, v, cu_q, cu_k, dout = make("single", "gqa", 128, seed=2)
    whole = mha_prefill_reference(q, k, v, cu_q, cu_k, causal=True)
    grads = mha_prefill_backward_reference(dout, q, k, v, cu_q, cu_k, causal=True)
    monkeypatch.setattr(mha_prefill, "_CHUNK_ELEMENTS", 4 * 9)  # 1 query row of 4 heads x 9 keys per chunk
    assert len(mha_prefill._chunk_rows(6, 9, 4)) == 6
    chunked = mha_prefill_reference(q, k, v, cu_q, cu_k, causal=True)
    chunked_grads = mha_prefill_backward_reference(dout, q, k, v, cu_q, cu_k, causal=True)
    for a, b in zip(whole + grads, chunked + chunked_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_memory_is_bounded_for_the_production_shape():
    rows = mha_prefill._chunk_rows(8192, 8192, 128)
    assert sum(len(r) for r in rows) == 8192
    assert max(len(r) for r in rows) * 128 * 8192 <= mha_prefill._CHUNK_ELEMENTS


def _bad(**changes):
    q, k, v, cu_q, cu_k, _ = make("varlen", "gqa", 192)
    args = dict(q=q, k=k, v=v, cu_seqlens_qo=cu_q, cu_seqlens_kv=cu_k, max_seqlen_qo=7, max_seqlen_kv=5)
    args.update(changes)
    return args


BAD = {
    "q-float32": (dict(q=torch.zeros(15, 4, 192)), ValueError, "q: expected dtype"),
    "q-2d": (dict(q=torch.zeros(15, 192, dtype=torch.bfloat16)), ValueError, "q: expected 3 dimensions"),
    "q-list": (dict(q=[1.0]), TypeError, "q: expected a torch.Tensor"),
    "k-fp16": (dict(k=torch.zeros(12, 2, 192, dtype=torch.float16)), ValueError, "k: expected dtype torch.bfloat16"),
    "k-head-dim": (dict(k=torch.zeros(12, 2, 128, dtype=torch.bfloat16)), ValueError, "k: expected head_dim 192"),
    "v-tokens": (dict(v=torch.zeros(11, 2, 128, dtype=torch.bfloat16)), ValueError, "v: expected shape [12, 2"),
    "head-dims": (dict(q=torch.zeros(15, 4, 64, dtype=torch.bfloat16), k=torch.zeros(12, 2, 64, dtype=torch.bfloat16)),
                  ValueError, "expected (d_qk, d_v) in"),
    "gqa": (dict(k=torch.zeros(12, 3, 192, dtype=torch.bfloat16), v=torch.zeros(12, 3, 128, dtype=torch.bfloat16)),
            ValueError, "dividing h_q = 4"),
    "cu-int64": (dict(cu_seqlens_qo=cu([3, 1, 7, 0, 4]).long()), ValueError, "cu_seqlens_qo: expected int32"),
    "cu-start": (dict(cu_seqlens_kv=torch.tensor([1, 5, 7, 10, 12, 12], dtype=torch.int32)), ValueError,
                 "cu_seqlens_kv: expected cu_seqlens_kv[0] == 0"),
    "cu-decreasing": (dict(cu_seqlens_qo=torch.tensor([0, 3, 2, 11, 11, 15], dtype=torch.int32)), ValueError,
                      "non-decreasing"),
    "cu-total": (dict(cu_seqlens_qo=cu([3, 1, 7, 0, 3])), ValueError, "expected last value == total_q"),
    "cu-batch": (dict(cu_seqlens_kv=cu([5, 7])), ValueError, "cu_seqlens_kv: expected 6 entries"),
    "max-seqlen-short": (dict(max_seqlen_qo=6), ValueError, "max_seqlen_qo: expected >= the longest sequence (7)"),
    "max-seqlen-type": (dict(max_seqlen_kv=5.0), TypeError, "max_seqlen_kv: expected an int"),
    "dropout": (dict(dropout_p=0.1), ValueError, "dropout_p: expected 0.0"),
    "causal-type": (dict(causal=1), TypeError, "causal: expected a bool"),
    "scale-nan": (dict(softmax_scale=float("nan")), ValueError, "softmax_scale: expected a finite float"),
    "not-varlen": (dict(is_varlen=False), ValueError, "is_varlen=False expects every sequence"),
    "window-type": (dict(window_size=3), TypeError, "window_size: expected a pair"),
    "window-value": (dict(window_size=(-2, 0)), ValueError, "window_size[0]: expected an int >= -1, got -2"),
    "window-causal": (dict(window_size=(4, 2), causal=True), ValueError, "window_size: causal=True"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_inputs_raise_naming_the_argument(case):
    changes, exc, fragment = BAD[case]
    with pytest.raises(exc, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        flash_attn_varlen_func(**_bad(**changes))


def test_bad_packed_and_reference_arguments():
    with pytest.raises(ValueError, match="qkv: expected shape"):
        flash_attn_varlen_qkvpacked_func(torch.zeros(4, 2, 384, dtype=torch.bfloat16), cu([4]), 4, 192)
    with pytest.raises(TypeError, match="head_dim_qk: expected an int"):
        flash_attn_varlen_kvpacked_func(torch.zeros(4, 2, 128, dtype=torch.bfloat16),
                                        torch.zeros(4, 2, 256, dtype=torch.bfloat16), cu([4]), cu([4]), 4, 4, "128")
    q, k, v, cu_q, cu_k, dout = make("single", "mha", 128)
    with pytest.raises(ValueError, match="dtype: expected torch.float32 or torch.float64"):
        mha_prefill_reference(q, k, v, cu_q, cu_k, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"dout: expected a floating tensor of shape \[6, 2, 128\]"):
        mha_prefill_backward_reference(dout[:5], q, k, v, cu_q, cu_k)
