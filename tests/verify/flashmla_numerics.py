"""FlashMLA's legitimate numerics behind the FlashMLA API (test-only name): the engine's false-positive guard.

A thin alias of `mlaverify.reference.numerics_emulation` (the reference with the rounding a correct
fast kernel is allowed: bf16 P before P @ V, bf16 dS in the MHA backward, float32 accumulation, one
rounding of each output). An engine that reports a failure for this module reports a bug that is not there.
"""
from __future__ import annotations

from mlaverify.reference.numerics_emulation import (MLAVERIFY_CAPABILITIES, FlashMLASchedMeta,  # noqa: F401
                                                    flash_attn_varlen_func, flash_mla_sparse_fwd,
                                                    flash_mla_with_kvcache, get_mla_metadata)

__all__ = ["FlashMLASchedMeta", "get_mla_metadata", "flash_mla_with_kvcache", "flash_mla_sparse_fwd",
           "flash_attn_varlen_func"]
