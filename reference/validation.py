"""Input validation shared by the references and the Triton kernels (one implementation).

Every check raises TypeError (wrong type or dtype) or ValueError (shape, stride, device, value)
with a message naming the argument, what was expected and what came. Nothing is clamped.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import torch

from .cache_format import CACHE_DTYPES
from .model_type import ModelType

SPARSE_D_QK = (576, 512)
DENSE_D = (576, 512)
HEAD_DIM_V = 512


def check_has_data(x: torch.Tensor, name: str) -> None:
    """A meta tensor has a shape and no values: nothing can be computed from it."""
    if x.device.type == "meta":
        raise ValueError(f"{name}: expected a tensor with data (on cpu or cuda), got a meta tensor")


def check_softmax_scale(value, name: str = "softmax_scale", *, required: bool = False) -> float | None:
    """A finite real scale as a python float (None stays None unless ``required``). Accepts what FlashMLA's
    binding converts: python and numpy numbers and 0-d real tensors."""
    if value is None and not required:
        return None
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.dtype.is_complex and value.dtype != torch.bool:
        check_has_data(value, name)
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        want = "a finite float" if required else "None or a finite float"
        raise TypeError(f"{name}: expected {want}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite float, got {float(value)}")
    return float(value)


def check_tensor(x, name: str, *, ndim: int | None = None, dtypes=None, device=None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    check_has_data(x, name)
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got {x.dim()} (shape {list(x.shape)})")
    if dtypes is not None and x.dtype not in dtypes:
        want = " or ".join(str(d) for d in dtypes)
        raise TypeError(f"{name}: expected dtype {want}, got {x.dtype}")
    if device is not None and x.device != device:
        raise ValueError(f"{name}: expected device {device} (that of q), got {x.device}")
    return x


def check_shape(x: torch.Tensor, name: str, expected: list, labels: str) -> None:
    if list(x.shape) != list(expected):
        raise ValueError(f"{name}: expected shape [{labels}] = {list(expected)}, got {list(x.shape)}")


def check_last_dim_contiguous(x: torch.Tensor, name: str) -> None:
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        raise ValueError(f"{name}: the last dimension must be contiguous (stride 1), got stride {x.stride(-1)}")


def _check_query(q, labels: str, dtypes, head_dims, op: str) -> tuple:
    """q of shape [labels], last dim in head_dims and contiguous, every dim >= 1; returns its shape."""
    check_tensor(q, "q", ndim=len(labels.split(",")), dtypes=dtypes)
    if q.shape[-1] not in head_dims:
        allowed = " or ".join(str(d) for d in head_dims)
        raise ValueError(f"q: head dim must be {allowed} for {op}, got {q.shape[-1]}")
    if min(q.shape) < 1:
        raise ValueError(f"q: expected [{labels}] all >= 1, got shape {list(q.shape)}")
    check_last_dim_contiguous(q, "q")
    return tuple(q.shape)


def _check_head_dim_v(value, name: str) -> None:
    if value != HEAD_DIM_V:
        raise ValueError(f"{name}: expected {HEAD_DIM_V}, got {value}")


def _first(mask: torch.Tensor) -> list:
    return [int(i) for i in mask.nonzero()[0]]


def check_lengths(lengths, name: str, batch: int, limit: int, limit_name: str, device, label: str = "b",
                  check_values: bool = True) -> None:
    """A [batch] int32 length tensor with every value in [0, limit] (values read only if check_values)."""
    check_tensor(lengths, name, ndim=1, dtypes=(torch.int32,), device=device)
    check_shape(lengths, name, [batch], label)
    if not check_values:  # reading values synchronizes with the device (no CUDA-graph capture)
        return
    bad = (lengths < 0) | (lengths > limit)
    if bool(bad.any()):
        at = _first(bad)
        raise ValueError(
            f"{name}: values must lie in [0, {limit_name}={limit}]; got {int(lengths[tuple(at)])} at {at}"
        )


def check_kv_cache(cache, name: str, model_type=None, *, device=None) -> ModelType:
    """An FP8 cache tensor [num_blocks, B, 1, bytes_per_token]; returns its model type."""
    check_tensor(cache, name, ndim=4, dtypes=CACHE_DTYPES, device=device)
    n_bytes = cache.shape[3]
    if model_type is None:
        try:
            model = ModelType.from_bytes_per_token(n_bytes)
        except ValueError:
            raise ValueError(
                f"{name}: bytes per token (last dim) must be 656 (V32) or 584 (MODEL1), got {n_bytes}"
            ) from None
    else:
        model = ModelType.parse(model_type)
        if n_bytes != model.bytes_per_token:
            raise ValueError(
                f"{name}: bytes per token (last dim) must be {model.bytes_per_token} for {model.name} "
                f"(d_qk={model.d_qk}), got {n_bytes}"
            )
    if cache.shape[2] != 1:
        raise ValueError(f"{name}: sparse FP8 caches hold one KV head (dim 2 == 1), got h_kv={cache.shape[2]}")
    block_size = cache.shape[1]
    if block_size < 1:
        raise ValueError(f"{name}: page_block_size (dim 1) must be >= 1, got {block_size}")
    if cache.stride(3) != 1 or (block_size > 1 and cache.stride(1) != n_bytes):
        raise ValueError(
            f"{name}: a page block must be contiguous: expected stride(1) == {n_bytes} and stride(3) == 1, "
            f"got strides {list(cache.stride())}"
        )
    min_stride0 = model.block_stride_bytes(block_size) if model is ModelType.MODEL1 else block_size * n_bytes
    if cache.shape[0] > 1 and cache.stride(0) < min_stride0:
        raise ValueError(f"{name}: block stride (stride(0)) must be >= {min_stride0} bytes, got {cache.stride(0)}")
    if model is ModelType.MODEL1 and cache.shape[0] > 1 and cache.stride(0) % 576 != 0:
        raise ValueError(f"{name}: MODEL1 block stride must be a multiple of 576 bytes, got {cache.stride(0)}")
    return model


def _considered(indices: torch.Tensor, lengths) -> torch.Tensor:
    """Mask [b, s_q, topk] of the entries a length tensor [b] leaves in play."""
    slots = torch.arange(indices.shape[-1], device=indices.device)
    if lengths is None:
        return torch.ones_like(indices, dtype=torch.bool)
    return slots.view(1, 1, -1) < lengths.view(-1, 1, 1)


def check_decode_indices(indices: torch.Tensor, lengths, num_positions: int, name: str) -> None:
    """Considered decode indices are -1 or a cache position in [0, num_positions)."""
    considered = _considered(indices, lengths)
    bad = considered & (indices != -1) & ((indices < 0) | (indices >= num_positions))
    if bool(bad.any()):
        at = _first(bad)
        raise ValueError(
            f"{name}: entries must be -1 (invalid) or a cache position in [0, {num_positions}) "
            f"(num_blocks * page_block_size); got {int(indices[tuple(at)])} at {at}"
        )


@dataclasses.dataclass(frozen=True)
class SparseDecodeShapes:
    b: int
    s_q: int
    h_q: int
    d_qk: int
    topk: int
    extra_topk: int  # 0 without an extra cache
    model_type: ModelType
    page_block_size: int
    extra_page_block_size: int  # 0 without an extra cache


def check_sparse_decode_inputs(
    q, k_cache, indices, topk_length=None, attn_sink=None, extra_k_cache=None, extra_indices=None,
    extra_topk_length=None, head_dim_v: int = HEAD_DIM_V, check_values: bool = True,
) -> SparseDecodeShapes:
    """check_values=False skips the checks that read tensor values (lengths and index ranges)."""
    b, s_q, h_q, d_qk = _check_query(q, "b, s_q, h_q, d_qk", (torch.bfloat16,), SPARSE_D_QK, "sparse decode")
    dev = q.device
    _check_head_dim_v(head_dim_v, "head_dim_v")
    model = ModelType.from_d_qk(d_qk)
    check_kv_cache(k_cache, "k_cache", model, device=dev)
    check_tensor(indices, "indices", ndim=3, dtypes=(torch.int32,), device=dev)
    topk = indices.shape[-1]
    check_shape(indices, "indices", [b, s_q, topk], "b, s_q, topk")
    if topk < 1:
        raise ValueError(f"indices: topk (last dim) must be >= 1, got {topk}")
    check_last_dim_contiguous(indices, "indices")
    if topk_length is not None:
        check_lengths(topk_length, "topk_length", b, topk, "topk", dev, check_values=check_values)
    if attn_sink is not None:
        check_tensor(attn_sink, "attn_sink", ndim=1, dtypes=(torch.float32,), device=dev)
        check_shape(attn_sink, "attn_sink", [h_q], "h_q")
    if check_values:
        check_decode_indices(indices, topk_length, k_cache.shape[0] * k_cache.shape[1], "indices")

    extra_topk, extra_pbs = 0, 0
    if extra_k_cache is None:
        if extra_indices is not None:
            raise ValueError("extra_indices_in_kvcache: given without extra_k_cache")
        if extra_topk_length is not None:
            raise ValueError("extra_topk_length: given without extra_k_cache")
    else:
        check_kv_cache(extra_k_cache, "extra_k_cache", model, device=dev)
        if extra_indices is None:
            raise ValueError("extra_indices_in_kvcache: required when extra_k_cache is given, got None")
        check_tensor(extra_indices, "extra_indices_in_kvcache", ndim=3, dtypes=(torch.int32,), device=dev)
        extra_topk = extra_indices.shape[-1]
        check_shape(extra_indices, "extra_indices_in_kvcache", [b, s_q, extra_topk], "b, s_q, extra_topk")
        if extra_topk < 1:
            raise ValueError(f"extra_indices_in_kvcache: extra_topk (last dim) must be >= 1, got {extra_topk}")
        check_last_dim_contiguous(extra_indices, "extra_indices_in_kvcache")
        if extra_topk_length is not None:
            check_lengths(extra_topk_length, "extra_topk_length", b, extra_topk, "extra_topk", dev,
                          check_values=check_values)
        extra_positions = extra_k_cache.shape[0] * extra_k_cache.shape[1]
        if check_values:
            check_decode_indices(extra_indices, extra_topk_length, extra_positions, "extra_indices_in_kvcache")
        extra_pbs = extra_k_cache.shape[1]
    return SparseDecodeShapes(b, s_q, h_q, d_qk, topk, extra_topk, model, k_cache.shape[1], extra_pbs)


@dataclasses.dataclass(frozen=True)
class SparsePrefillShapes:
    s_q: int
    h_q: int
    d_qk: int
    s_kv: int
    topk: int


def check_sparse_prefill_inputs(q, kv, indices, d_v=HEAD_DIM_V, attn_sink=None, topk_length=None,
                                check_values: bool = True) -> SparsePrefillShapes:
    s_q, h_q, d_qk = _check_query(q, "s_q, h_q, d_qk", (torch.bfloat16,), SPARSE_D_QK, "sparse prefill")
    dev = q.device
    check_tensor(kv, "kv", ndim=3, dtypes=(torch.bfloat16,), device=dev)
    s_kv = kv.shape[0]
    if kv.shape[1] != 1:
        raise ValueError(f"kv: sparse prefill takes one KV head (dim 1 == 1), got h_kv={kv.shape[1]}")
    check_shape(kv, "kv", [s_kv, 1, d_qk], "s_kv, 1, d_qk")
    check_last_dim_contiguous(kv, "kv")
    check_tensor(indices, "indices", ndim=3, dtypes=(torch.int32,), device=dev)
    topk = indices.shape[-1]
    check_shape(indices, "indices", [s_q, 1, topk], "s_q, 1, topk")
    if topk < 1:
        raise ValueError(f"indices: topk (last dim) must be >= 1, got {topk}")
    check_last_dim_contiguous(indices, "indices")
    _check_head_dim_v(d_v, "d_v")
    if topk_length is not None:
        check_lengths(topk_length, "topk_length", s_q, topk, "topk", dev, label="s_q", check_values=check_values)
    if attn_sink is not None:
        check_tensor(attn_sink, "attn_sink", ndim=1, dtypes=(torch.float32,), device=dev)
        check_shape(attn_sink, "attn_sink", [h_q], "h_q")
    return SparsePrefillShapes(s_q, h_q, d_qk, s_kv, topk)


@dataclasses.dataclass(frozen=True)
class DenseDecodeShapes:
    b: int
    s_q: int
    h_q: int
    h_kv: int
    d: int
    page_block_size: int
    max_blocks: int


def check_dense_decode_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v=HEAD_DIM_V,
                              check_values: bool = True) -> DenseDecodeShapes:
    b, s_q, h_q, d = _check_query(q, "b, s_q, h_q, d", (torch.bfloat16, torch.float16), DENSE_D, "dense decode")
    dev = q.device
    _check_head_dim_v(head_dim_v, "head_dim_v")
    check_tensor(k_cache, "k_cache", ndim=4, device=dev)
    if k_cache.dtype != q.dtype:
        raise TypeError(f"k_cache: expected dtype {q.dtype} (that of q), got {k_cache.dtype}")
    num_blocks, block_size, h_kv, d_k = k_cache.shape
    if d_k != d:
        raise ValueError(f"k_cache: expected head dim {d} (that of q), got {d_k}")
    if block_size < 1 or h_kv < 1:
        raise ValueError(f"k_cache: expected page_block_size >= 1 and h_kv >= 1, got shape {list(k_cache.shape)}")
    if h_q % h_kv != 0:
        raise ValueError(f"q: h_q={h_q} must be a multiple of h_kv={h_kv} (k_cache dim 2)")
    check_last_dim_contiguous(k_cache, "k_cache")
    check_tensor(block_table, "block_table", ndim=2, dtypes=(torch.int32,), device=dev)
    if block_table.shape[0] != b:
        raise ValueError(f"block_table: expected shape [b={b}, max_blocks], got {list(block_table.shape)}")
    max_blocks = block_table.shape[1]
    check_lengths(cache_seqlens, "cache_seqlens", b, max_blocks * block_size, "max_blocks * page_block_size", dev,
                  check_values=check_values)
    if not check_values:
        return DenseDecodeShapes(b, s_q, h_q, h_kv, d, block_size, max_blocks)
    # Block-table entries a sequence actually uses must name real blocks; the rest may be garbage.
    used = torch.arange(max_blocks, device=dev).view(1, -1) * block_size < cache_seqlens.view(-1, 1)
    bad = used & ((block_table < 0) | (block_table >= num_blocks))
    if bool(bad.any()):
        at = _first(bad)
        raise ValueError(
            f"block_table: entries used by cache_seqlens must lie in [0, num_blocks={num_blocks}); "
            f"got {int(block_table[tuple(at)])} at {at}"
        )
    return DenseDecodeShapes(b, s_q, h_q, h_kv, d, block_size, max_blocks)
