"""Triton kernels behind FlashMLA's public API (same names, signatures, shapes and dtypes).

CUDA tensors run compiled Triton; without CUDA the package selects Triton's interpreter on
import (``_runtime``), so the same kernels run on CPU tensors. Nothing falls back to the
reference: a tensor the chosen mode cannot serve raises RuntimeError.

Call-level rules (sparse vs dense mode, ``num_splits``, scheduler-metadata reuse) and input
validation are the reference's own code (``mlaverify.reference.api.check_call`` and
``mlaverify.reference.validation``), so kernels and references reject the same inputs.
"""

from . import _runtime  # first: decides compiled vs interpreted before any kernel is built

from typing import Optional

import torch

from mlaverify.reference.api import FlashMLASchedMeta, check_call, get_mla_metadata

# Aliased so that the package attributes `dense_decode` / `sparse_decode` stay the submodules.
from .dense_decode import dense_decode as _dense_decode
from .sparse_decode import sparse_decode as _sparse_decode
from .sparse_prefill import flash_mla_sparse_fwd


def flash_mla_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: Optional[torch.Tensor],
    cache_seqlens: Optional[torch.Tensor],
    head_dim_v: int,
    tile_scheduler_metadata: FlashMLASchedMeta,
    num_splits: None = None,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    is_fp8_kvcache: bool = False,
    indices: Optional[torch.Tensor] = None,
    attn_sink: Optional[torch.Tensor] = None,
    extra_k_cache: Optional[torch.Tensor] = None,
    extra_indices_in_kvcache: Optional[torch.Tensor] = None,
    topk_length: Optional[torch.Tensor] = None,
    extra_topk_length: Optional[torch.Tensor] = None,
    *,
    check_inputs: Optional[bool] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse FP8 decode (``indices`` given) or dense decode, as FlashMLA's function of this name.

    ``check_inputs`` (keyword-only extension): False skips the input checks that read tensor values
    (index ranges, lengths, block tables), so that the call never synchronizes with the device and
    can be captured in a CUDA graph; None takes ``MLAVERIFY_CHECK_INPUTS`` (default on). Shape,
    dtype and stride checks always run.

    Returns out [b, s_q, h_q, head_dim_v] (bf16 in sparse mode, q's dtype in dense mode) and
    lse [b, h_q, s_q] float32 (natural log, +inf for a query with nothing to attend to).
    """
    mode = check_call(
        q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata, num_splits, causal,
        is_fp8_kvcache, indices, attn_sink, extra_k_cache, extra_indices_in_kvcache, topk_length, extra_topk_length,
    )
    if mode == "sparse":
        return _sparse_decode(
            q, k_cache, indices, softmax_scale=softmax_scale, attn_sink=attn_sink, topk_length=topk_length,
            extra_k_cache=extra_k_cache, extra_indices=extra_indices_in_kvcache,
            extra_topk_length=extra_topk_length, head_dim_v=head_dim_v, check_inputs=check_inputs,
        )
    return _dense_decode(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
                         check_inputs=check_inputs)


from .mha_prefill import (  # noqa: E402  (last: the MHA prefill kernels, owned by the mha team)
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
)

__all__ = [
    "FlashMLASchedMeta",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_mla_sparse_fwd",
    "flash_mla_with_kvcache",
    "get_mla_metadata",
]
