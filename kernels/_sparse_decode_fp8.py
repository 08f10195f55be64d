"""In-kernel FP8 KV-cache dequantization for the sparse decode kernel (V32 and MODEL1 layouts).

Byte layouts are those of ``shared/spec/kv-cache-formats.md``. Every loader takes a tile of
``BLOCK_N`` cache positions plus a validity mask; invalid positions load nothing (masked
loads give 0), so bytes of slots that no considered entry points at, NaN included, never
reach the result.

Triton's interpreter converts float32 to bfloat16 by truncation and computes bfloat16
arithmetic (dot included) on the raw bits, so under ``INTERPRET`` the "bfloat16" operands of
``tl.dot`` are float32 tensors holding values rounded to bfloat16 (ties to even, by bit
arithmetic). Compiled kernels use real bfloat16 operands; both hold the same values.
"""

from __future__ import annotations

from . import _runtime  # noqa: F401  (decides compiled/interpreted before any kernel is built)

import triton
import triton.language as tl

# V32: 656-byte token records [512 x fp8 NoPE | 4 x float32 scale | 64 x bf16 RoPE].
V32_TOKEN_BYTES = tl.constexpr(656)
V32_SCALE_OFFSET = tl.constexpr(512)
V32_ROPE_OFFSET = tl.constexpr(528)
V32_TILE = tl.constexpr(128)
V32_NUM_TILES = tl.constexpr(4)
# MODEL1: per page block, data region [B x (448 fp8 NoPE | 64 bf16 RoPE)] of 576-byte rows,
# then scale region [B x (7 ue8m0 bytes | 1 pad)].
M1_DATA_BYTES = tl.constexpr(576)
M1_NOPE = tl.constexpr(448)
M1_SCALE_BYTES = tl.constexpr(8)
M1_TILE = tl.constexpr(64)
M1_NUM_TILES = tl.constexpr(7)
# The 64 RoPE dims take the 8th 64-wide tile of MODEL1's 512-dim key.
M1_TILES_PADDED = tl.constexpr(8)
ROPE_DIM = tl.constexpr(64)
# 2^-127: ue8m0 byte 0, a float32 subnormal that the exponent-bit construction cannot express.
UE8M0_ZERO_BYTE_SCALE = tl.constexpr(5.877471754111438e-39)


@triton.jit
def round_to_bf16(x, INTERPRET: tl.constexpr):
    """float32 -> the dot operand type holding bf16(x), rounded to nearest, ties to even."""
    if INTERPRET:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # RTNE on the dropped 16 bits
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(tl.bfloat16)


@triton.jit
def bf16_operand(x, INTERPRET: tl.constexpr):
    """A loaded bfloat16 tensor as a dot operand (float32 in the interpreter, exact)."""
    if INTERPRET:
        return x.to(tl.float32)
    else:
        return x


@triton.jit
def fp8_to_f32(raw, INTERPRET: tl.constexpr):
    """float8_e4m3fn bytes (uint8) -> float32. The interpreter's converter reads the NaN
    encoding (S.1111.111) as +-480; restore NaN there so it behaves as the GPU does."""
    value = raw.to(tl.float8e4nv, bitcast=True).to(tl.float32)
    if INTERPRET:
        value = tl.where((raw & 0x7F) == 0x7F, float("nan"), value)
    return value


@triton.jit
def store_bf16(ptrs, x, mask, INTERPRET: tl.constexpr):
    """Store float32 `x` as bfloat16, rounded to nearest even, in both modes."""
    if INTERPRET:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # RTNE, keep the high half
        tl.store(ptrs, bits.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptrs, x.to(tl.bfloat16), mask=mask)


@triton.jit
def _block_base(pos, stride_block, page_block):
    """Byte offset (int64) of each position's page block, and the in-block token offset."""
    block = pos // page_block
    offset = pos - block * page_block
    return block.to(tl.int64) * stride_block, offset.to(tl.int64)


# The loaders below dequantize one 128-dim chunk of a step's keys at a time (V32: one scale tile; MODEL1:
# two 64-dim tiles, the last chunk tile 6 + RoPE), so that the sm_90 build keeps one chunk's bytes and
# float32 temporaries in registers beside the [64, 512] float32 accumulator instead of a whole
# [BLOCK_N, 512] tile (255 registers and 16-400 B of spill before).
CHUNK = tl.constexpr(128)
NUM_CHUNKS = tl.constexpr(4)


@triton.jit
def v32_tokens(cache_ptr, pos, stride_block, page_block):
    """[BLOCK_N] pointers to the 656-byte V32 token records of `pos` (a [num_blocks, B, 1, 656] cache)."""
    block_base, offset = _block_base(pos, stride_block, page_block)
    return cache_ptr + block_base + offset * V32_TOKEN_BYTES


@triton.jit
def v32_chunk(token, valid, C: tl.constexpr, INTERPRET: tl.constexpr):
    """Dequantized NoPE dims [128 C, 128 C + 128) of a V32 tile: [BLOCK_N, 128] (scale tile C)."""
    cols = tl.arange(0, V32_TILE)
    raw = tl.load(token[:, None] + (C * V32_TILE + cols[None, :]), mask=valid[:, None], other=0)
    # float32 scale used as stored (any value, not assumed a power of two); typed pointer before the offset
    scale = tl.load((token + V32_SCALE_OFFSET).to(tl.pointer_type(tl.float32)) + C, mask=valid, other=0.0)
    return round_to_bf16(fp8_to_f32(raw, INTERPRET) * scale[:, None], INTERPRET)


@triton.jit
def v32_rope(token, valid, INTERPRET: tl.constexpr):
    """The bf16 RoPE part [BLOCK_N, 64] of a V32 tile (typed pointers first: 16-byte vector loads)."""
    rope_cols = tl.arange(0, ROPE_DIM)
    rope_ptrs = (token + V32_ROPE_OFFSET).to(tl.pointer_type(tl.bfloat16))[:, None] + rope_cols[None, :]
    return bf16_operand(tl.load(rope_ptrs, mask=valid[:, None], other=0.0), INTERPRET)


@triton.jit
def model1_rows(cache_ptr, pos, stride_block, page_block):
    """([BLOCK_N] data-row pointers, [BLOCK_N] scale-row pointers) of MODEL1 positions `pos`."""
    block_base, offset = _block_base(pos, stride_block, page_block)
    data = cache_ptr + block_base + offset * M1_DATA_BYTES
    scales = cache_ptr + block_base + page_block * M1_DATA_BYTES + offset * M1_SCALE_BYTES
    return data, scales


@triton.jit
def model1_chunk(data, scales, valid, C: tl.constexpr, BLOCK_N: tl.constexpr, INTERPRET: tl.constexpr):
    """Dequantized MODEL1 key dims [128 C, 128 C + 128): tiles 2C and 2C + 1 of 448 NoPE dims then the
    64 RoPE dims (tile 7), [BLOCK_N, 128]; all of it is V."""
    cols = tl.arange(0, M1_TILE)
    if 2 * C + 1 == M1_NUM_TILES:  # the last chunk: NoPE tile 6, then the RoPE part (bf16 as stored)
        raw = tl.load(data[:, None] + (C * CHUNK + cols[None, :]), mask=valid[:, None], other=0)
        sbyte = tl.load(scales + 2 * C, mask=valid, other=0)
        deq = round_to_bf16(fp8_to_f32(raw, INTERPRET) * _ue8m0(sbyte)[:, None], INTERPRET)  # [BLOCK_N, 64]
        # Byte offsets first (scalar loads): typed-first pointers would stage RoPE through shared memory
        # with cp.async as in V32, +4 KB per block, which pushed BLOCK_H 16 past sm_89's 99 KB.
        rope_ptrs = (data[:, None] + M1_NOPE + cols[None, :] * 2).to(tl.pointer_type(tl.bfloat16))
        rope = bf16_operand(tl.load(rope_ptrs, mask=valid[:, None], other=0.0), INTERPRET)  # [BLOCK_N, 64]
        # [BLOCK_N, 2, 64] -> [BLOCK_N, 128]: tile 6 then RoPE, without a float32 round trip of RoPE
        return tl.reshape(tl.permute(tl.join(deq, rope), (0, 2, 1)), [BLOCK_N, CHUNK])
    else:
        tiles = 2 * C + tl.arange(0, 2)
        nope_ptrs = data[:, None, None] + (tiles[None, :, None] * M1_TILE + cols[None, None, :])
        raw = tl.load(nope_ptrs, mask=valid[:, None, None], other=0)
        sbyte = tl.load(scales[:, None] + tiles[None, :], mask=valid[:, None], other=0)
        deq = fp8_to_f32(raw, INTERPRET) * _ue8m0(sbyte)[:, :, None]  # [BLOCK_N, 2, 64]
        return round_to_bf16(tl.reshape(deq, [BLOCK_N, CHUNK]), INTERPRET)


@triton.jit
def _ue8m0(sbyte):
    """ue8m0 scale bytes -> float32 2^(byte - 127), built from the exponent bits (byte 0: 2^-127)."""
    sbits = sbyte.to(tl.int32) << 23
    return tl.where(sbyte == 0, UE8M0_ZERO_BYTE_SCALE, sbits.to(tl.float32, bitcast=True))
