"""check_inputs / MLAVERIFY_CHECK_INPUTS: value checks are opt-out, shape checks stay, no host sync when off.

A host synchronisation shows up as ``aten._local_scalar_dense`` (what ``bool(t)``, ``.item()``
and ``.tolist()`` of a tensor dispatch to); the kernel launches are replaced by a no-op so that
only the call path before them is observed (on a GPU, launches are asynchronous).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mlaverify.kernels import _checks, dense_decode, flash_mla_sparse_fwd, flash_mla_with_kvcache
from mlaverify.kernels import get_mla_metadata, sparse_decode, sparse_prefill
from mlaverify.reference import ModelType, quantize_kv_cache


class _HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def no_launch(monkeypatch):
    for module in (sparse_decode, dense_decode, sparse_prefill):
        monkeypatch.setattr(module, "run_all", lambda launches: None)


def _sparse_decode_args(bad_index: bool = False):
    g = torch.Generator().manual_seed(0)
    cache = quantize_kv_cache(torch.randn(2, 64, 1, 576, generator=g).bfloat16(), ModelType.V32)
    idx = torch.randint(0, 128, (2, 1, 32), generator=g, dtype=torch.int32)
    if bad_index:
        idx[1, 0, 5] = 128  # one past the cache
    q = torch.randn(2, 1, 16, 576, generator=g).bfloat16()
    return dict(q=q, k_cache=cache, block_table=None, cache_seqlens=None, head_dim_v=512,
                tile_scheduler_metadata=get_mla_metadata()[0], is_fp8_kvcache=True, indices=idx,
                topk_length=torch.full((2,), 32, dtype=torch.int32))


def _dense_decode_args():
    q = torch.randn(2, 1, 16, 576).bfloat16()
    k = torch.randn(4, 64, 1, 576).bfloat16()
    return dict(q=q, k_cache=k, block_table=torch.tensor([[0, 1], [2, 3]], dtype=torch.int32),
                cache_seqlens=torch.tensor([100, 128], dtype=torch.int32), head_dim_v=512,
                tile_scheduler_metadata=get_mla_metadata()[0])


def _prefill_args():
    q = torch.randn(4, 16, 576).bfloat16()
    kv = torch.randn(64, 1, 576).bfloat16()
    idx = torch.randint(0, 64, (4, 1, 32), dtype=torch.int32)
    return dict(q=q, kv=kv, indices=idx, sm_scale=0.04, topk_length=torch.full((4,), 32, dtype=torch.int32))


CALLS = {
    "sparse_decode": lambda check: flash_mla_with_kvcache(**_sparse_decode_args(), check_inputs=check),
    "dense_decode": lambda check: flash_mla_with_kvcache(**_dense_decode_args(), check_inputs=check),
    "sparse_prefill": lambda check: flash_mla_sparse_fwd(**_prefill_args(), check_inputs=check),
}


@pytest.mark.parametrize("op", sorted(CALLS))
def test_value_checks_read_the_device_and_check_inputs_false_reads_nothing(op, no_launch):
    with _HostReads() as on:
        CALLS[op](None)  # default: MLAVERIFY_CHECK_INPUTS unset -> on
    assert on.count > 0
    with _HostReads() as off:
        CALLS[op](False)
    assert off.count == 0


def test_environment_switch_sets_the_default(monkeypatch, no_launch):
    monkeypatch.setenv(_checks.ENV, "0")
    with _HostReads() as off:
        CALLS["sparse_decode"](None)
    assert off.count == 0
    with _HostReads() as forced:
        CALLS["sparse_decode"](True)  # the per-call keyword wins over the environment
    assert forced.count > 0
    monkeypatch.setenv(_checks.ENV, "maybe")
    with pytest.raises(ValueError, match="MLAVERIFY_CHECK_INPUTS: expected one of"):
        CALLS["sparse_decode"](None)


def test_bad_index_is_caught_by_default_and_shape_checks_stay_when_off(no_launch):
    with pytest.raises(ValueError, match="indices: entries must be -1"):
        flash_mla_with_kvcache(**_sparse_decode_args(bad_index=True))
    args = _sparse_decode_args()
    args["indices"] = args["indices"][:, :, :16].contiguous().view(2, 1, 16)[:1]  # wrong batch
    with pytest.raises(ValueError, match="indices"):
        flash_mla_with_kvcache(**args, check_inputs=False)
    with pytest.raises(TypeError, match="check_inputs: expected None, True or False"):
        flash_mla_with_kvcache(**_sparse_decode_args(), check_inputs=1)
