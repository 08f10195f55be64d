"""API edges the reference and the kernels treat alike: meta tensors, non-finite or numpy/0-d softmax
scales, a non-contiguous last dim in MHA prefill. Same inputs, same error, from both."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mlaverify.kernels as kern
import mlaverify.reference as ref
from mlaverify.reference import mha_prefill as ref_mha

BF16, I32 = torch.bfloat16, torch.int32
IMPLS = {"reference": (ref, ref_mha), "kernels": (kern, kern)}


def _sparse_decode(api, q=None, softmax_scale=None):
    g = torch.Generator().manual_seed(0)
    cache = ref.quantize_kv_cache((torch.randn(2, 8, 1, 576, generator=g) * 0.1).bfloat16())
    q = (torch.randn(1, 1, 4, 576, generator=g)).clamp(-1, 1).bfloat16() if q is None else q
    indices = torch.tensor([[[0, 3, 9, -1]]], dtype=I32)
    return api.flash_mla_with_kvcache(q, cache, None, None, 512, api.get_mla_metadata()[0],
                                      softmax_scale=softmax_scale, is_fp8_kvcache=True, indices=indices)


def _dense_decode(api, q=None, softmax_scale=None):
    g = torch.Generator().manual_seed(1)
    cache = (torch.randn(2, 8, 1, 576, generator=g) * 0.1).bfloat16()
    q = (torch.randn(1, 1, 4, 576, generator=g) * 0.1).bfloat16() if q is None else q
    return api.flash_mla_with_kvcache(q, cache, torch.tensor([[1, 0]], dtype=I32), torch.tensor([12], dtype=I32), 512,
                                      api.get_mla_metadata()[0], softmax_scale=softmax_scale)


def _sparse_prefill(api, q=None, softmax_scale=0.1):
    g = torch.Generator().manual_seed(2)
    kv = (torch.randn(16, 1, 512, generator=g) * 0.1).bfloat16()
    q = (torch.randn(2, 4, 512, generator=g) * 0.1).bfloat16() if q is None else q
    indices = torch.tensor([[[0, 5, 15, -1]], [[2, 2, 7, 16]]], dtype=I32)
    return api.flash_mla_sparse_fwd(q, kv, indices, softmax_scale)


def _mha(api, q=None, k=None, v=None, softmax_scale=None):
    g = torch.Generator().manual_seed(3)
    q = (torch.randn(6, 2, 128, generator=g) * 0.1).bfloat16() if q is None else q
    k = (torch.randn(5, 2, 128, generator=g) * 0.1).bfloat16() if k is None else k
    v = (torch.randn(5, 2, 128, generator=g) * 0.1).bfloat16() if v is None else v
    cu_q, cu_k = torch.tensor([0, 2, 6], dtype=I32), torch.tensor([0, 3, 5], dtype=I32)
    return api.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 4, 3, softmax_scale=softmax_scale, causal=True)


OPS = {"sparse_decode": (_sparse_decode, (1, 1, 4, 576)), "dense_decode": (_dense_decode, (1, 1, 4, 576)),
       "sparse_prefill": (_sparse_prefill, (2, 4, 512)), "mha_prefill": (_mha, (6, 2, 128))}


def _api(impl: str, op: str):
    package, mha = IMPLS[impl]
    return mha if op == "mha_prefill" else package


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", OPS)
def test_meta_tensors_are_refused_by_name(impl, op):
    call, q_shape = OPS[op]
    with pytest.raises(ValueError, match="q: expected a tensor with data .*got a meta tensor"):
        call(_api(impl, op), q=torch.empty(q_shape, dtype=BF16, device="meta"))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_softmax_scale_is_refused(impl, op, bad):
    call, _ = OPS[op]
    name = "sm_scale" if op == "sparse_prefill" else "softmax_scale"
    with pytest.raises(ValueError, match=f"{name}: expected a finite float"):
        call(_api(impl, op), softmax_scale=bad)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", OPS)
def test_numpy_and_0d_tensor_scales_are_accepted_as_floats(impl, op):
    call, _ = OPS[op]
    api = _api(impl, op)
    plain = call(api, softmax_scale=0.0625)
    for scale in (np.float32(0.0625), np.float64(0.0625), torch.tensor(0.0625), torch.tensor(0.0625, dtype=torch.float64)):
        got = call(api, softmax_scale=scale)
        assert all(torch.equal(a, b) for a, b in zip(plain, got)), type(scale)
    with pytest.raises(TypeError, match="softmax_scale|sm_scale"):
        call(api, softmax_scale="0.0625")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_mha_refuses_a_non_contiguous_last_dim(impl, which):
    g = torch.Generator().manual_seed(4)
    tokens = 6 if which == "q" else 5
    wide = (torch.randn(tokens, 2, 256, generator=g) * 0.1).bfloat16()
    with pytest.raises(ValueError, match=f"{which}: the last dimension must be contiguous"):
        _mha(_api(impl, "mha_prefill"), **{which: wide[..., ::2]})
