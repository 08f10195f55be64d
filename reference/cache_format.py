"""FP8 KV-cache formats, byte exact (kv-cache-formats.md): quantize, dequantize, gather, positions.

V32:    per token 656 bytes = 512 fp8 NoPE | 4 float32 scales | 64 bf16 RoPE; tokens contiguous.
MODEL1: per page block of B tokens: B data records of 576 bytes (448 fp8 NoPE | 64 bf16 RoPE),
        then B scale records of 8 bytes (7 ue8m0 exponents | 1 padding byte); block stride is
        ceil(B * 584 / 576) * 576 bytes, while the tensor still reads [num_blocks, B, 1, 584].
"""

from __future__ import annotations

import torch

from .model_type import ModelType

FP8_MAX = 448.0  # largest finite float8_e4m3fn
MIN_SCALE_INV = 1e-4  # floor for all-zero (or tiny) tiles
SCALE_ROUNDINGS = ("ue8m0", "none")
CACHE_DTYPES = (torch.float8_e4m3fn, torch.int8, torch.uint8)


def _tile_scales(nope: torch.Tensor, tile: int, scale_rounding: str) -> torch.Tensor:
    """Per-tile scales for nope [..., d_nope] float32 -> [..., d_nope // tile] float32."""
    tiles = nope.unflatten(-1, (-1, tile))  # [..., num_tiles, tile]
    scale_inv = tiles.abs().amax(dim=-1) / FP8_MAX
    scale_inv = scale_inv.clamp_min(MIN_SCALE_INV)
    if scale_rounding == "ue8m0":
        return torch.exp2(torch.ceil(torch.log2(scale_inv)))  # rounded UP to a power of two
    return scale_inv


def _quantize_tiles(nope: torch.Tensor, scales: torch.Tensor, tile: int) -> torch.Tensor:
    """fp8 values of nope / scale, round to nearest even; [..., d_nope] float8_e4m3fn."""
    scaled = nope.unflatten(-1, (-1, tile)) / scales.unsqueeze(-1)
    # amax / scale <= 448 up to one float32 rounding step; keep the quantizer saturating at 448.
    scaled = scaled.clamp(-FP8_MAX, FP8_MAX)
    return scaled.flatten(-2).to(torch.float8_e4m3fn)


def quantize_kv_cache(
    k: torch.Tensor, model_type: ModelType | str | None = None, *, scale_rounding: str = "ue8m0"
) -> torch.Tensor:
    """Quantize k [num_blocks, B, 1, d_qk] bf16 into the FP8 cache of its model type.

    Returns a float8_e4m3fn tensor [num_blocks, B, 1, bytes_per_token] laid out byte for byte as
    kv-cache-formats.md says. ``scale_rounding="none"`` keeps exact float32 scales (amax / 448,
    clamped at 1e-4): a V32-only test mode that catches kernels reading scales as powers of two.
    """
    if not isinstance(k, torch.Tensor):
        raise TypeError(f"k: expected a torch.Tensor, got {type(k).__name__}")
    if k.dtype != torch.bfloat16:
        raise TypeError(f"k: expected dtype torch.bfloat16, got {k.dtype}")
    if k.dim() != 4 or k.shape[2] != 1:
        raise ValueError(f"k: expected shape [num_blocks, page_block_size, 1, d_qk], got {list(k.shape)}")
    model = ModelType.parse(model_type, d_qk=k.shape[-1])
    if k.shape[-1] != model.d_qk:
        raise ValueError(f"k: expected last dim d_qk={model.d_qk} for {model.name}, got {k.shape[-1]}")
    if scale_rounding not in SCALE_ROUNDINGS:
        raise ValueError(f"scale_rounding: expected one of {SCALE_ROUNDINGS}, got {scale_rounding!r}")
    if scale_rounding == "none" and model is ModelType.MODEL1:
        raise ValueError(
            "scale_rounding: 'none' (exact float32 scales) is V32-only; MODEL1 stores ue8m0 "
            "(power-of-two) scales and cannot hold arbitrary ones"
        )

    num_blocks, block_size = k.shape[0], k.shape[1]
    tokens = k[:, :, 0, :]  # [nb, B, d_qk]
    nope = tokens[..., : model.d_nope].float()  # [nb, B, d_nope]
    rope = tokens[..., model.d_nope :].contiguous()  # [nb, B, 64] bf16, stored unquantized
    scales = _tile_scales(nope, model.tile, scale_rounding)  # [nb, B, num_tiles]
    fp8 = _quantize_tiles(nope, scales, model.tile)  # [nb, B, d_nope]

    fp8_bytes = fp8.view(torch.uint8)
    rope_bytes = rope.view(torch.uint8)  # [nb, B, 128], little-endian bf16
    if model is ModelType.V32:
        scale_bytes = scales.contiguous().view(torch.uint8)  # [nb, B, 16], little-endian float32
        records = torch.cat([fp8_bytes, scale_bytes, rope_bytes], dim=-1)  # [nb, B, 656]
        return records.unsqueeze(2).view(torch.float8_e4m3fn)  # [nb, B, 1, 656]

    exponents = torch.log2(scales).round().to(torch.int32) + 127  # ue8m0: scale = 2^(byte - 127)
    scale_records = torch.zeros(num_blocks, block_size, 8, dtype=torch.uint8, device=k.device)
    scale_records[..., : model.num_tiles] = exponents.to(torch.uint8)  # byte 7 is padding (0)
    stride0 = model.block_stride_bytes(block_size)
    buffer = torch.zeros(num_blocks, stride0, dtype=torch.uint8, device=k.device)
    data = torch.cat([fp8_bytes, rope_bytes], dim=-1)  # [nb, B, 576]
    buffer[:, : 576 * block_size] = data.reshape(num_blocks, 576 * block_size)
    buffer[:, 576 * block_size : 584 * block_size] = scale_records.reshape(num_blocks, 8 * block_size)
    view = buffer.as_strided((num_blocks, block_size, 1, 584), (stride0, 584, 584, 1))
    return view.view(torch.float8_e4m3fn)


def _byte_view(cache: torch.Tensor) -> torch.Tensor:
    return cache if cache.dtype == torch.uint8 else cache.view(torch.uint8)


def gather_cache_bytes(cache: torch.Tensor, positions: torch.Tensor, model_type: ModelType) -> tuple:
    """Raw bytes of the tokens at cache positions (int64 [...], all valid).

    Returns (data [..., d_nope + 128] uint8, scale bytes [..., scale_bytes] uint8), read with the
    cache tensor's own strides (the V32 block stride may exceed B * 656).
    """
    u8 = _byte_view(cache)
    num_blocks, block_size = u8.shape[0], u8.shape[1]
    block = positions // block_size
    offset = positions % block_size
    if model_type is ModelType.V32:
        records = u8[:, :, 0, :][block, offset]  # [..., 656]
        data = torch.cat([records[..., :512], records[..., 528:656]], dim=-1)  # [..., 640]
        return data, records[..., 512:528]
    base, stride0 = u8.storage_offset(), u8.stride(0)
    data_region = torch.as_strided(u8, (num_blocks, block_size, 576), (stride0, 576, 1), base)
    scale_region = torch.as_strided(u8, (num_blocks, block_size, 8), (stride0, 8, 1), base + 576 * block_size)
    return data_region[block, offset], scale_region[block, offset]


def dequantize_bytes(data: torch.Tensor, scale_bytes: torch.Tensor, model_type: ModelType) -> torch.Tensor:
    """Token bytes (from gather_cache_bytes) -> bf16 [..., d_qk], exactly as kv-cache-formats.md."""
    d_nope = model_type.d_nope
    fp8 = data[..., :d_nope].contiguous().view(torch.float8_e4m3fn)  # [..., d_nope]
    rope = data[..., d_nope:].contiguous().view(torch.bfloat16)  # [..., 64]
    if model_type is ModelType.V32:
        scales = scale_bytes.contiguous().view(torch.float32)  # [..., 4] as stored
    else:
        scales = torch.exp2(scale_bytes[..., : model_type.num_tiles].float() - 127.0)  # [..., 7] = 2^(byte-127)
    nope = _dequantize_tiles(fp8, scales, model_type.tile, model_type.scale_format)
    return torch.cat([nope, rope], dim=-1)


def _dequantize_tiles(fp8: torch.Tensor, scales: torch.Tensor, tile: int, scale_format: str) -> torch.Tensor:
    """fp8 [..., d] and float32 scales [..., d // tile] -> bf16 [..., d], in the arithmetic of the format.

    float32 (V32): bf16(float(q) * scale); ue8m0 (MODEL1): bf16(q) * bf16(scale), computed in bf16.
    """
    if scale_format == "float32":
        nope = fp8.float().unflatten(-1, (-1, tile)) * scales.unsqueeze(-1)
        return nope.flatten(-2).to(torch.bfloat16)
    nope = fp8.to(torch.bfloat16).unflatten(-1, (-1, tile)) * scales.to(torch.bfloat16).unsqueeze(-1)
    return nope.flatten(-2)


# scale formats of round_trip_tiles -> (scale rounding, dequantization arithmetic)
TILE_SCALE_FORMATS = {
    "float32": ("none", "float32"),         # exact amax / 448 stored as float32 (V32's exact mode)
    "float32-pow2": ("ue8m0", "float32"),   # powers of two stored as float32 (V32 as quantize_kv_cache writes it)
    "ue8m0": ("ue8m0", "ue8m0"),            # one exponent byte per tile, dequantized in bf16 (MODEL1)
}


def round_trip_tiles(nope: torch.Tensor, tile: int, scale_format: str) -> torch.Tensor:
    """nope [..., d] (bf16 or float32) quantized to fp8 per tile of ``tile`` and dequantized: bf16 [..., d].

    The same code as quantize_kv_cache and dequantize_kv_cache, with the tile size and scale format as
    parameters, so what-if formats (MODEL1 tiles with float32 scales, ...) differ from the real ones only
    in those two choices: tile 128 with "float32-pow2" is V32's NoPE exactly, tile 64 with "ue8m0" MODEL1's.
    """
    if scale_format not in TILE_SCALE_FORMATS:
        raise ValueError(f"scale_format: expected one of {sorted(TILE_SCALE_FORMATS)}, got {scale_format!r}")
    if not isinstance(tile, int) or tile < 1 or nope.shape[-1] % tile:
        raise ValueError(f"tile: expected a positive divisor of the last dim {nope.shape[-1]}, got {tile!r}")
    rounding, arithmetic = TILE_SCALE_FORMATS[scale_format]
    values = nope.float()
    scales = _tile_scales(values, tile, rounding)  # [..., d // tile] float32
    return _dequantize_tiles(_quantize_tiles(values, scales, tile), scales, tile, arithmetic)


def gather_dequantized(cache: torch.Tensor, positions: torch.Tensor, model_type: ModelType) -> torch.Tensor:
    """Dequantized bf16 keys [..., d_qk] of the tokens at (valid, int64) cache positions."""
    data, scale_bytes = gather_cache_bytes(cache, positions, model_type)
    return dequantize_bytes(data, scale_bytes, model_type)


def dequantize_kv_cache(cache: torch.Tensor, model_type: ModelType | str | None = None) -> torch.Tensor:
    """FP8 cache [num_blocks, B, 1, bytes_per_token] -> bf16 [num_blocks, B, 1, d_qk], exact."""
    from .validation import check_kv_cache  # local import: validation imports this module

    model = check_kv_cache(cache, "cache", model_type)
    num_blocks, block_size = cache.shape[0], cache.shape[1]
    positions = torch.arange(num_blocks * block_size, device=cache.device).view(num_blocks, block_size)
    return gather_dequantized(cache, positions, model).unsqueeze(2)  # [nb, B, 1, d_qk]


def cache_positions(indices: torch.Tensor, block_table: torch.Tensor, page_block_size: int) -> torch.Tensor:
    """Logical token indices [b, ...] of each sequence -> paged-cache positions, -1 kept -1.

    position = block_table[i, t // page_block_size] * page_block_size + t % page_block_size.
    """
    if indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"indices: expected int32 or int64, got {indices.dtype}")
    if block_table.dim() != 2 or block_table.shape[0] != indices.shape[0]:
        raise ValueError(
            f"block_table: expected shape [b={indices.shape[0]}, max_blocks], got {list(block_table.shape)}"
        )
    if page_block_size < 1:
        raise ValueError(f"page_block_size: expected >= 1, got {page_block_size}")
    flat = indices.reshape(indices.shape[0], -1).long()  # [b, n]
    invalid = flat == -1
    max_t = block_table.shape[1] * page_block_size
    bad = ~invalid & ((flat < 0) | (flat >= max_t))
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"indices: logical token indices must be -1 or in [0, {max_t}) (the block table covers "
            f"{block_table.shape[1]} blocks of {page_block_size}); got {int(flat[where])} at {list(where)}"
        )
    safe = flat.clamp_min(0)
    blocks = torch.gather(block_table.long(), 1, safe // page_block_size)
    positions = blocks * page_block_size + safe % page_block_size
    positions = torch.where(invalid, torch.full_like(positions, -1), positions)
    return positions.view(indices.shape).to(indices.dtype)
