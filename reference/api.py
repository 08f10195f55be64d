"""FlashMLA's public API, argument for argument, computed by the references.

``get_mla_metadata``, ``flash_mla_with_kvcache`` and ``flash_mla_sparse_fwd`` take exactly the
arguments of DeepSeek's ``flash_mla`` package and return the same shapes and dtypes. The call-level
rules (sparse vs dense mode, ``num_splits``, scheduler-metadata reuse) live in ``check_call`` so
that the Triton kernels enforce them through the same code.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .dense_decode import dense_decode_reference
from .sparse_decode import sparse_decode_reference
from .sparse_prefill import sparse_prefill_reference
from .validation import check_softmax_scale


@dataclasses.dataclass
class FlashMLASchedMeta:
    """Scheduler metadata. Like FlashMLA's, it is filled on first use and may then be reused only
    with calls of the same configuration; a mismatching reuse raises ValueError."""

    @dataclasses.dataclass(frozen=True)
    class Config:
        b: int
        s_q: int
        h_q: int
        page_block_size: int
        h_k: int
        causal: bool
        is_fp8_kvcache: bool
        topk: Optional[int]
        extra_page_block_size: Optional[int]
        extra_topk: Optional[int]

    have_initialized: bool = False
    config: Optional[Config] = None


def get_mla_metadata(*args, **kwargs) -> tuple[FlashMLASchedMeta, None]:
    """An empty FlashMLASchedMeta (filled on first use); the arguments exist for compatibility."""
    return FlashMLASchedMeta(), None


def _record_config(sched_meta, q, k_cache, causal, is_fp8_kvcache, indices, extra_k_cache, extra_indices) -> None:
    if not isinstance(sched_meta, FlashMLASchedMeta):
        raise TypeError(
            f"tile_scheduler_metadata: expected the FlashMLASchedMeta returned by get_mla_metadata(), "
            f"got {type(sched_meta).__name__}"
        )
    config = FlashMLASchedMeta.Config(
        b=q.shape[0], s_q=q.shape[1], h_q=q.shape[2], page_block_size=k_cache.shape[1], h_k=k_cache.shape[2],
        causal=bool(causal), is_fp8_kvcache=bool(is_fp8_kvcache),
        topk=indices.shape[-1] if indices is not None else None,
        extra_page_block_size=extra_k_cache.shape[1] if extra_k_cache is not None else None,
        extra_topk=extra_indices.shape[-1] if extra_indices is not None else None,
    )
    if not sched_meta.have_initialized:
        sched_meta.config = config
        sched_meta.have_initialized = True
        return
    for field in dataclasses.fields(config):
        was, now = getattr(sched_meta.config, field.name), getattr(config, field.name)
        if was != now:
            raise ValueError(
                f"tile_scheduler_metadata: reused with a different configuration: {field.name} was {was}, "
                f"now {now}; call get_mla_metadata() again for calls of another shape"
            )


def check_call(
    q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata, num_splits, causal,
    is_fp8_kvcache, indices, attn_sink, extra_k_cache, extra_indices_in_kvcache, topk_length, extra_topk_length,
) -> str:
    """Call-level checks of flash_mla_with_kvcache; returns the mode, "sparse" or "dense"."""
    if num_splits is not None:
        raise ValueError(f"num_splits: must be None (kept for compatibility), got {num_splits!r}")
    if not isinstance(q, torch.Tensor) or not isinstance(k_cache, torch.Tensor):
        raise TypeError("q and k_cache: expected torch.Tensor")
    if indices is not None:
        if causal:
            raise ValueError("causal: must be False in sparse mode (indices given), got True")
        if not is_fp8_kvcache:
            raise ValueError("is_fp8_kvcache: must be True in sparse mode (indices given), got False")
        mode = "sparse"
    else:
        extras = {
            "attn_sink": attn_sink, "extra_k_cache": extra_k_cache,
            "extra_indices_in_kvcache": extra_indices_in_kvcache, "topk_length": topk_length,
            "extra_topk_length": extra_topk_length,
        }
        for name, value in extras.items():
            if value is not None:
                raise ValueError(f"{name}: only valid in sparse mode (with indices); dense decode got one")
        if block_table is None or cache_seqlens is None:
            raise ValueError("block_table and cache_seqlens: required in dense mode (indices is None), got None")
        if is_fp8_kvcache:
            raise ValueError("is_fp8_kvcache: dense decode takes a bf16/fp16 cache; got is_fp8_kvcache=True")
        mode = "dense"
    _record_config(
        tile_scheduler_metadata, q, k_cache, causal, is_fp8_kvcache, indices, extra_k_cache, extra_indices_in_kvcache
    )
    return mode


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse decode (``indices`` given) or dense decode. Returns out (q's dtype) and lse
    [b, h_q, s_q] float32."""
    mode = check_call(
        q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata, num_splits, causal,
        is_fp8_kvcache, indices, attn_sink, extra_k_cache, extra_indices_in_kvcache, topk_length, extra_topk_length,
    )
    softmax_scale = check_softmax_scale(softmax_scale)
    if mode == "sparse":
        out, lse = sparse_decode_reference(
            q, k_cache, indices, softmax_scale=softmax_scale, attn_sink=attn_sink, topk_length=topk_length,
            extra_k_cache=extra_k_cache, extra_indices=extra_indices_in_kvcache,
            extra_topk_length=extra_topk_length, head_dim_v=head_dim_v,
        )
    else:
        out, lse = dense_decode_reference(
            q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale=softmax_scale, causal=causal
        )
    return out.to(q.dtype), lse.float()


def flash_mla_sparse_fwd(
    q: torch.Tensor,
    kv: torch.Tensor,
    indices: torch.Tensor,
    sm_scale: float,
    d_v: int = 512,
    attn_sink: Optional[torch.Tensor] = None,
    topk_length: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse prefill. Returns out [s_q, h_q, d_v] bf16, max_logits [s_q, h_q] and lse [s_q, h_q]
    float32 (natural log)."""
    out, max_logits, lse = sparse_prefill_reference(
        q, kv, indices, check_softmax_scale(sm_scale, "sm_scale", required=True), d_v=d_v, attn_sink=attn_sink,
        topk_length=topk_length,
    )
    return out.to(torch.bfloat16), max_logits.float(), lse.float()
