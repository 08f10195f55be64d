"""Pure-PyTorch references of every MLA op: the spec (shared/spec/operations.md) in executable form.

The FlashMLA API (``get_mla_metadata``, ``flash_mla_with_kvcache``, ``flash_mla_sparse_fwd``, and the
dense MHA prefill ``flash_attn_varlen_func`` with its packed variants) returns
rounded outputs exactly like ``flash_mla``; the ``*_reference`` functions return the same math before
output rounding (float32, or float64 on request) for the verification engine to compare against.
"""

import importlib

# name -> the submodule that defines it. Loaded on first use (PEP 562), so that light users of the
# package (the CLI's help, `mlaverify.reference.configs`, `.model_type`) do not pay for importing torch.
_EXPORTS = {
    "FlashMLASchedMeta": "api", "check_call": "api", "flash_mla_sparse_fwd": "api",
    "flash_mla_with_kvcache": "api", "get_mla_metadata": "api",
    "cache_positions": "cache_format", "dequantize_kv_cache": "cache_format",
    "gather_dequantized": "cache_format", "quantize_kv_cache": "cache_format",
    "dense_decode_reference": "dense_decode",
    "flash_attn_varlen_func": "mha_prefill", "flash_attn_varlen_kvpacked_func": "mha_prefill",
    "flash_attn_varlen_qkvpacked_func": "mha_prefill", "mha_prefill_backward_reference": "mha_prefill",
    "mha_prefill_reference": "mha_prefill",
    "ModelType": "model_type",
    "sparse_decode_reference": "sparse_decode",
    "sparse_prefill_reference": "sparse_prefill",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
