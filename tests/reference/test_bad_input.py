"""Every bad input named in the foundation issue raises an error naming the argument."""

import pytest
import torch

from mlaverify.reference import (
    dequantize_kv_cache,
    flash_mla_sparse_fwd,
    flash_mla_with_kvcache,
    get_mla_metadata,
    quantize_kv_cache,
)

I32 = torch.int32


def sparse_args(**over):
    cache = quantize_kv_cache(torch.zeros(2, 4, 1, 576, dtype=torch.bfloat16))
    args = dict(
        q=torch.zeros(2, 1, 4, 576, dtype=torch.bfloat16), k_cache=cache, block_table=None, cache_seqlens=None,
        head_dim_v=512, tile_scheduler_metadata=get_mla_metadata()[0], is_fp8_kvcache=True,
        indices=torch.zeros(2, 1, 3, dtype=I32),
    )
    args.update(over)
    return args


def dense_args(**over):
    args = dict(
        q=torch.zeros(2, 1, 4, 576, dtype=torch.bfloat16), k_cache=torch.zeros(3, 4, 1, 576, dtype=torch.bfloat16),
        block_table=torch.zeros(2, 2, dtype=I32), cache_seqlens=torch.tensor([3, 8], dtype=I32), head_dim_v=512,
        tile_scheduler_metadata=get_mla_metadata()[0],
    )
    args.update(over)
    return args


def prefill_args(**over):
    args = dict(
        q=torch.zeros(3, 2, 512, dtype=torch.bfloat16), kv=torch.zeros(5, 1, 512, dtype=torch.bfloat16),
        indices=torch.zeros(3, 1, 4, dtype=I32), sm_scale=0.1,
    )
    args.update(over)
    return args


m1_cache = quantize_kv_cache(torch.zeros(2, 4, 1, 512, dtype=torch.bfloat16))

SPARSE_DECODE = {
    "q-ndim": (dict(q=torch.zeros(2, 4, 576, dtype=torch.bfloat16)), "q: expected 4 dims"),
    "q-dtype": (dict(q=torch.zeros(2, 1, 4, 576)), "q: expected dtype torch.bfloat16"),
    "q-d_qk": (dict(q=torch.zeros(2, 1, 4, 256, dtype=torch.bfloat16)), "q: head dim must be 576 or 512 for sparse decode, got 256"),
    "q-last-stride": (dict(q=torch.zeros(2, 1, 4, 1152, dtype=torch.bfloat16)[..., ::2]), "q: the last dimension"),
    "head_dim_v": (dict(head_dim_v=576), "head_dim_v: expected 512, got 576"),
    "bytes-per-token": (dict(k_cache=m1_cache), "k_cache: bytes per token .* 656 for V32"),
    "cache-dtype": (dict(k_cache=torch.zeros(2, 4, 1, 656, dtype=torch.bfloat16)), "k_cache: expected dtype"),
    "cache-h_kv": (dict(k_cache=torch.zeros(2, 4, 2, 656, dtype=torch.uint8)), "h_kv=2"),
    "cache-stride1": (
        dict(k_cache=torch.zeros(2, 4, 1, 1312, dtype=torch.uint8)[..., :656]), "stride\\(1\\) == 656"
    ),
    # a meta tensor is the only other device a CPU machine has; it has no data, and that is said first
    "cache-device": (dict(k_cache=torch.zeros(2, 4, 1, 656, dtype=torch.uint8, device="meta")),
                     "k_cache: expected a tensor with data .*got a meta tensor"),
    "indices-dtype": (dict(indices=torch.zeros(2, 1, 3, dtype=torch.int64)), "indices: expected dtype torch.int32"),
    "indices-shape": (dict(indices=torch.zeros(3, 1, 3, dtype=I32)), "indices: expected shape \\[b, s_q, topk\\]"),
    "index-out-of-range": (dict(indices=torch.tensor([[[0, 8, 1]], [[0, 0, 0]]], dtype=I32)), "got 8 at \\[0, 0, 1\\]"),
    "index-negative": (dict(indices=torch.tensor([[[0, -2, 1]], [[0, 0, 0]]], dtype=I32)), "indices: entries must be -1"),
    "topk_length-range": (dict(topk_length=torch.tensor([4, 0], dtype=I32)), "topk_length: values must lie in \\[0, topk=3\\]"),
    "topk_length-negative": (dict(topk_length=torch.tensor([1, -1], dtype=I32)), "got -1 at \\[1\\]"),
    "topk_length-shape": (dict(topk_length=torch.tensor([1], dtype=I32)), "topk_length: expected shape"),
    "sink-dtype": (dict(attn_sink=torch.zeros(4, dtype=torch.bfloat16)), "attn_sink: expected dtype torch.float32"),
    "sink-shape": (dict(attn_sink=torch.zeros(3)), "attn_sink: expected shape \\[h_q\\]"),
    "extra-indices-alone": (dict(extra_indices_in_kvcache=torch.zeros(2, 1, 3, dtype=I32)), "without extra_k_cache"),
    "extra-length-alone": (dict(extra_topk_length=torch.zeros(2, dtype=I32)), "extra_topk_length: given without"),
    "extra-cache-alone": (
        dict(extra_k_cache=quantize_kv_cache(torch.zeros(1, 2, 1, 576, dtype=torch.bfloat16))), "extra_indices_in_kvcache: required"
    ),
    "causal-with-indices": (dict(causal=True), "causal: must be False in sparse mode"),
    "not-fp8": (dict(is_fp8_kvcache=False), "is_fp8_kvcache: must be True"),
    "num_splits": (dict(num_splits=4), "num_splits: must be None"),
    "sched-meta-type": (dict(tile_scheduler_metadata=object()), "tile_scheduler_metadata: expected the FlashMLASchedMeta"),
}


@pytest.mark.parametrize("over, match", SPARSE_DECODE.values(), ids=SPARSE_DECODE.keys())
def test_sparse_decode_bad_input(over, match):
    with pytest.raises((TypeError, ValueError), match=match):
        flash_mla_with_kvcache(**sparse_args(**over))


def test_index_past_topk_length_is_not_checked():
    # entries past topk_length are ignored by contract, so their values are not an error
    args = sparse_args(indices=torch.tensor([[[0, 99, 1]], [[0, 0, 0]]], dtype=I32), topk_length=torch.tensor([1, 3], dtype=I32))
    out, _ = flash_mla_with_kvcache(**args)
    assert out.shape == (2, 1, 4, 512)


def test_extra_indices_out_of_range():
    extra = quantize_kv_cache(torch.zeros(1, 2, 1, 576, dtype=torch.bfloat16))
    args = sparse_args(extra_k_cache=extra, extra_indices_in_kvcache=torch.tensor([[[2]], [[0]]], dtype=I32))
    with pytest.raises(ValueError, match="extra_indices_in_kvcache: .*\\[0, 2\\).*got 2"):
        flash_mla_with_kvcache(**args)


DENSE = {
    "k-dtype": (dict(k_cache=torch.zeros(3, 4, 1, 576, dtype=torch.float16)), "k_cache: expected dtype torch.bfloat16"),
    "q-dtype": (dict(q=torch.zeros(2, 1, 4, 576)), "q: expected dtype"),
    "h_q%h_kv": (dict(k_cache=torch.zeros(3, 4, 3, 576, dtype=torch.bfloat16)), "h_q=4 must be a multiple of h_kv=3"),
    "head-dim": (dict(k_cache=torch.zeros(3, 4, 1, 512, dtype=torch.bfloat16)), "k_cache: expected head dim 576"),
    "seqlens-negative": (dict(cache_seqlens=torch.tensor([-1, 2], dtype=I32)), "cache_seqlens: values must lie in \\[0,"),
    "seqlens-beyond-table": (dict(cache_seqlens=torch.tensor([9, 2], dtype=I32)), "max_blocks \\* page_block_size=8"),
    "block-id": (dict(block_table=torch.tensor([[0, 5], [0, 5]], dtype=I32)), "block_table: entries used .* got 5 at \\[1, 1\\]"),
    "block-table-dtype": (dict(block_table=torch.zeros(2, 2, dtype=torch.int64)), "block_table: expected dtype torch.int32"),
    "missing-block-table": (dict(block_table=None), "block_table and cache_seqlens: required"),
    "sink-in-dense": (dict(attn_sink=torch.zeros(4)), "attn_sink: only valid in sparse mode"),
    "fp8-flag": (dict(is_fp8_kvcache=True), "is_fp8_kvcache: dense decode"),
}


@pytest.mark.parametrize("over, match", DENSE.values(), ids=DENSE.keys())
def test_dense_decode_bad_input(over, match):
    with pytest.raises((TypeError, ValueError), match=match):
        flash_mla_with_kvcache(**dense_args(**over))


PREFILL = {
    "q-d_qk": (dict(q=torch.zeros(3, 2, 192, dtype=torch.bfloat16)), "q: head dim must be 576 or 512 for sparse prefill, got 192"),
    "kv-h_kv": (dict(kv=torch.zeros(5, 2, 512, dtype=torch.bfloat16)), "kv: sparse prefill takes one KV head"),
    "kv-d": (dict(kv=torch.zeros(5, 1, 576, dtype=torch.bfloat16)), "kv: expected shape"),
    "indices-shape": (dict(indices=torch.zeros(3, 4, dtype=I32)), "indices: expected 3 dims"),
    "indices-dtype": (dict(indices=torch.zeros(3, 1, 4, dtype=torch.int64)), "indices: expected dtype torch.int32"),
    "d_v": (dict(d_v=128), "d_v: expected 512, got 128"),
    "topk_length-range": (dict(topk_length=torch.tensor([0, 5, 1], dtype=I32)), "topk_length: values must lie in \\[0, topk=4\\]"),
    "sink-shape": (dict(attn_sink=torch.zeros(3)), "attn_sink: expected shape"),
}


@pytest.mark.parametrize("over, match", PREFILL.values(), ids=PREFILL.keys())
def test_sparse_prefill_bad_input(over, match):
    with pytest.raises((TypeError, ValueError), match=match):
        flash_mla_sparse_fwd(**prefill_args(**over))


def test_dequantize_bad_bytes_per_token():
    with pytest.raises(ValueError, match="cache: bytes per token .* 656 \\(V32\\) or 584 \\(MODEL1\\), got 600"):
        dequantize_kv_cache(torch.zeros(1, 2, 1, 600, dtype=torch.uint8))
