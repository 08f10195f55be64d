"""Building blocks for planted-bug implementations.

A planted implementation is a module object exposing the FlashMLA API (the names of
``mlaverify.reference``), identical to the reference except for one deliberate, realistic bug.
Each bug is written as a wrapper around the reference, perturbing its inputs or outputs so that
the result is exactly what a kernel with that bug would return.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Callable

import torch

import mlaverify.reference as ref

__all__ = ["PlantedBug", "build_module", "API_NAMES", "clone_cache_bytes", "block_bytes", "fresh_meta"]

# The FlashMLA API names a planted module forwards to the reference unless its bug replaces them.
API_NAMES = (
    "get_mla_metadata",
    "flash_mla_with_kvcache",
    "flash_mla_sparse_fwd",
    "FlashMLASchedMeta",
    "flash_attn_varlen_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_varlen_kvpacked_func",
)


@dataclass(frozen=True)
class PlantedBug:
    """One deliberate bug: what it is, which ops/models it lives in, and the functions it replaces."""

    name: str  # importable as mlaverify.verify.planted.<name>
    description: str  # one line, as a kernel developer would describe the mistake
    ops: tuple[str, ...]  # the ops whose cases can expose it (selftest runs only these)
    models: tuple[str, ...]  # model ids whose cases can expose it
    overrides: dict[str, Callable] = field(default_factory=dict, compare=False)
    # Built on the reference, a planted module claims what the reference does ("reference" profile: no
    # bit-for-bit batch-permutation check); a bug that lives in batch invariance claims the full profile.
    capabilities: str = "reference"


def build_module(bug: PlantedBug) -> types.ModuleType:
    """A module object with the reference API, the bug's overrides in place."""
    module = types.ModuleType(
        f"mlaverify.verify.planted.{bug.name}", f"Planted bug (self-test only): {bug.description}"
    )
    for name in API_NAMES:
        for source in _api_sources():
            if hasattr(source, name):
                setattr(module, name, getattr(source, name))
                break
    for name, fn in bug.overrides.items():
        setattr(module, name, fn)
    module.PLANTED_BUG = bug.name
    module.MLAVERIFY_CAPABILITIES = {"base": bug.capabilities, "name": f"planted ({bug.capabilities})"}
    return module


def _api_sources() -> list:
    """Where the reference API lives: the package, then the MHA module (if not re-exported)."""
    sources = [ref]
    try:
        from mlaverify.reference import mha_prefill
    except ImportError:
        return sources
    return sources + [mha_prefill]


def fresh_meta():
    """A new scheduler metadata object, so a perturbed call never trips the caller's reuse check."""
    return ref.get_mla_metadata()[0]


def clone_cache_bytes(cache: torch.Tensor) -> torch.Tensor:
    """A uint8 copy of a paged FP8 cache with the same shape and strides (block gaps included)."""
    u8 = cache.view(torch.uint8)
    nb = u8.shape[0]
    span = (nb - 1) * u8.stride(0) + u8.shape[1] * u8.stride(1) if nb else 0
    buf = torch.zeros(max(span, 1), dtype=torch.uint8, device=cache.device)
    out = buf.as_strided(u8.shape, u8.stride(), 0)
    out.copy_(u8)
    return out


def block_bytes(u8: torch.Tensor) -> torch.Tensor:
    """Writable [num_blocks, page_block_size * bytes_per_token] byte view of one cache's blocks."""
    nb, block_size, _, bpt = u8.shape
    return u8.as_strided((nb, block_size * bpt), (u8.stride(0), 1), u8.storage_offset())


def as_cache_dtype(u8: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return u8 if like.dtype == torch.uint8 else u8.view(like.dtype)


Pre = Callable[[dict], dict]  # kwargs of the call -> kwargs handed to the reference
Post = Callable[[dict, tuple], tuple]  # (kwargs as called, reference outputs) -> returned outputs


def kvcache_wrapper(pre: Pre | None = None, post: Post | None = None) -> Callable:
    """``flash_mla_with_kvcache`` with FlashMLA's signature, perturbed by ``pre``/``post``."""

    def flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata,
                               num_splits=None, softmax_scale=None, causal=False, is_fp8_kvcache=False,
                               indices=None, attn_sink=None, extra_k_cache=None, extra_indices_in_kvcache=None,
                               topk_length=None, extra_topk_length=None):
        kw = dict(q=q, k_cache=k_cache, block_table=block_table, cache_seqlens=cache_seqlens,
                  head_dim_v=head_dim_v, tile_scheduler_metadata=tile_scheduler_metadata, num_splits=num_splits,
                  softmax_scale=softmax_scale, causal=causal, is_fp8_kvcache=is_fp8_kvcache, indices=indices,
                  attn_sink=attn_sink, extra_k_cache=extra_k_cache,
                  extra_indices_in_kvcache=extra_indices_in_kvcache, topk_length=topk_length,
                  extra_topk_length=extra_topk_length)
        called = dict(kw)
        if pre is not None:
            kw = pre(kw)
        kw["tile_scheduler_metadata"] = fresh_meta()
        outputs = ref.flash_mla_with_kvcache(**kw)
        return tuple(post(called, outputs)) if post is not None else outputs

    return flash_mla_with_kvcache


def sparse_fwd_wrapper(pre: Pre | None = None, post: Post | None = None) -> Callable:
    """``flash_mla_sparse_fwd`` with FlashMLA's signature, perturbed by ``pre``/``post``."""

    def flash_mla_sparse_fwd(q, kv, indices, sm_scale, d_v=512, attn_sink=None, topk_length=None):
        kw = dict(q=q, kv=kv, indices=indices, sm_scale=sm_scale, d_v=d_v, attn_sink=attn_sink,
                  topk_length=topk_length)
        called = dict(kw)
        if pre is not None:
            kw = pre(kw)
        outputs = ref.flash_mla_sparse_fwd(**kw)
        return tuple(post(called, outputs)) if post is not None else outputs

    return flash_mla_sparse_fwd


def is_sparse(kw: dict) -> bool:
    return kw.get("indices") is not None
