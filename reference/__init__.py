"""Pure-PyTorch references of every MLA op: the spec (shared/spec/operations.md) in executable form.

The FlashMLA API (``get_mla_metadata``, ``flash_mla_with_kvcache``, ``flash_mla_sparse_fwd``, and the
dense MHA prefill ``flash_attn_varlen_func`` with its packed variants) returns
rounded outputs exactly like ``flash_mla``; the ``*_reference`` functions return the same math before
output rounding (float32, or float64 on request) for the verification engine to compare against.
"""

from .api import FlashMLASchedMeta, check_call, flash_mla_sparse_fwd, flash_mla_with_kvcache, get_mla_metadata
from .cache_format import cache_positions, dequantize_kv_cache, gather_dequantized, quantize_kv_cache
from .dense_decode import dense_decode_reference
from .mha_prefill import (
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    mha_prefill_backward_reference,
    mha_prefill_reference,
)
from .model_type import ModelType
from .sparse_decode import sparse_decode_reference
from .sparse_prefill import sparse_prefill_reference

__all__ = [
    "FlashMLASchedMeta",
    "ModelType",
    "cache_positions",
    "check_call",
    "dense_decode_reference",
    "dequantize_kv_cache",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_mla_sparse_fwd",
    "flash_mla_with_kvcache",
    "gather_dequantized",
    "get_mla_metadata",
    "mha_prefill_backward_reference",
    "mha_prefill_reference",
    "quantize_kv_cache",
    "sparse_decode_reference",
    "sparse_prefill_reference",
]
