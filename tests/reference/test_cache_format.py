"""FP8 cache formats: golden bytes written by hand, round trips, strides, padding, positions."""

import math

import pytest
import torch

from mlaverify.reference import ModelType, cache_positions, dequantize_kv_cache, quantize_kv_cache
from mlaverify.reference.cache_format import round_trip_tiles


def raw_bytes(cache: torch.Tensor, n: int) -> list:
    u8 = cache.view(torch.uint8)
    return torch.as_strided(u8, (n,), (1,), u8.storage_offset()).tolist()


def one_token_v32() -> torch.Tensor:
    k = torch.zeros(1, 1, 1, 576, dtype=torch.bfloat16)
    k[0, 0, 0, 0] = 1.0
    k[0, 0, 0, 1] = -2.0
    k[0, 0, 0, 512] = 1.0  # first RoPE element
    return k


def test_v32_golden_bytes_ue8m0():
    cache = quantize_kv_cache(one_token_v32())
    assert cache.shape == (1, 1, 1, 656) and cache.dtype == torch.float8_e4m3fn
    expected = [0] * 656
    # tile 0: amax 2 -> 2/448 rounded up to 2^-7; 1/2^-7 = 128 = fp8 0x70; -2/2^-7 = -256 = fp8 0xF8
    expected[0], expected[1] = 0x70, 0xF8
    expected[512:516] = [0x00, 0x00, 0x00, 0x3C]  # float32 2^-7, little-endian
    for t in (1, 2, 3):  # all-zero tiles: 1e-4 rounded up to 2^-13 = 0x39000000
        expected[512 + 4 * t : 516 + 4 * t] = [0x00, 0x00, 0x00, 0x39]
    expected[528:530] = [0x80, 0x3F]  # bf16 1.0 = 0x3F80
    assert raw_bytes(cache, 656) == expected


def test_v32_golden_bytes_exact_scales():
    cache = quantize_kv_cache(one_token_v32(), scale_rounding="none")
    expected = [0] * 656
    # scale = 2/448 = float32 0x3B924925; 1/scale = 224 = fp8 0x76; -2/scale = -448 = fp8 0xFE
    expected[0], expected[1] = 0x76, 0xFE
    expected[512:516] = [0x25, 0x49, 0x92, 0x3B]
    for t in (1, 2, 3):  # 1e-4 as float32 = 0x38D1B717
        expected[512 + 4 * t : 516 + 4 * t] = [0x17, 0xB7, 0xD1, 0x38]
    expected[528:530] = [0x80, 0x3F]
    assert raw_bytes(cache, 656) == expected


def test_model1_golden_bytes():
    k = torch.zeros(1, 2, 1, 512, dtype=torch.bfloat16)
    k[0, 0, 0, 0], k[0, 0, 0, 1] = 1.0, -2.0
    k[0, 0, 0, 448] = 1.0  # token 0, first RoPE element
    k[0, 1, 0, 511] = -2.0  # token 1, last RoPE element (bf16 0xC000)
    cache = quantize_kv_cache(k)
    assert cache.shape == (1, 2, 1, 584) and cache.stride() == (1728, 584, 584, 1)
    expected = [0] * 1728  # ceil(2 * 584 / 576) * 576 = 1728 bytes per block
    expected[0], expected[1] = 0x70, 0xF8
    expected[448:450] = [0x80, 0x3F]
    expected[576 + 448 + 126 : 576 + 448 + 128] = [0x00, 0xC0]
    # scale region at 576 * B = 1152: 7 exponent bytes (2^-7 -> 120, 2^-13 -> 114) + 1 padding byte
    expected[1152:1160] = [120, 114, 114, 114, 114, 114, 114, 0]
    expected[1160:1168] = [114] * 7 + [0]
    assert raw_bytes(cache, 1728) == expected


@pytest.mark.parametrize("block_size", [1, 2, 61, 64, 69, 256])
def test_model1_block_stride_is_multiple_of_576(block_size):
    cache = quantize_kv_cache(torch.zeros(2, block_size, 1, 512, dtype=torch.bfloat16))
    assert cache.stride(0) == math.ceil(block_size * 584 / 576) * 576
    assert cache.stride(0) % 576 == 0 and cache.stride(1) == 584


@pytest.mark.parametrize(
    "model, rounding",
    [(ModelType.V32, "ue8m0"), (ModelType.V32, "none"), (ModelType.MODEL1, "ue8m0")],
    ids=["v32-ue8m0", "v32-exact", "model1-ue8m0"],
)
def test_round_trip_error_within_half_fp8_step(model, rounding):
    gen = torch.Generator().manual_seed(1)
    k = (torch.randn(3, 5, 1, model.d_qk, generator=gen) * 3).bfloat16()
    k[0, 0, 0, :128] = 0  # an all-zero tile
    k[1, 2, 0, 5] = 300.0  # an outlier
    back = dequantize_kv_cache(quantize_kv_cache(k, scale_rounding=rounding))
    assert back.shape == k.shape and back.dtype == torch.bfloat16
    assert torch.equal(back[..., model.d_nope :], k[..., model.d_nope :])  # RoPE exact
    nope = k[..., : model.d_nope].float().unflatten(-1, (-1, model.tile))
    amax = nope.abs().amax(-1, keepdim=True)
    scale = (amax / 448).clamp_min(1e-4)
    if rounding == "ue8m0":
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    err = (back[..., : model.d_nope].float().unflatten(-1, (-1, model.tile)) - nope).abs()
    # e4m3 has 3 mantissa bits: half a step is 2^-4 of the value's binade; the bf16 rounding of the
    # product adds at most 2^-9 relative.
    step = torch.exp2(torch.floor(torch.log2((nope / scale).abs().clamp_min(2**-6)))) * 2**-3
    bound = 0.5 * step * scale + nope.abs() * 2**-8 + 1e-30
    assert bool((err <= bound).all())


def test_ue8m0_scales_are_powers_of_two_v32():
    k = (torch.randn(2, 3, 1, 576) * 7).bfloat16()
    cache = quantize_kv_cache(k)
    scales = cache.view(torch.uint8)[..., 512:528].contiguous().view(torch.float32)
    mantissa, _ = torch.frexp(scales)
    assert bool((mantissa == 0.5).all())


def test_exact_scales_are_not_powers_of_two():
    k = (torch.randn(2, 3, 1, 576) * 7).bfloat16()
    scales = quantize_kv_cache(k, scale_rounding="none").view(torch.uint8)[..., 512:528].contiguous().view(torch.float32)
    mantissa, _ = torch.frexp(scales)
    assert bool((mantissa != 0.5).any())


def test_model1_refuses_exact_scales():
    with pytest.raises(ValueError, match="scale_rounding.*V32-only"):
        quantize_kv_cache(torch.zeros(1, 1, 1, 512, dtype=torch.bfloat16), scale_rounding="none")


def test_model1_padding_and_gap_bytes_are_never_read():
    k = torch.randn(2, 3, 1, 512).bfloat16()
    cache = quantize_kv_cache(k)
    before = dequantize_kv_cache(cache)
    u8 = cache.view(torch.uint8)
    flat = torch.as_strided(u8, (2 * cache.stride(0),), (1,), u8.storage_offset())
    for block in range(2):
        base = block * cache.stride(0)
        for t in range(3):
            flat[base + 576 * 3 + 8 * t + 7] = 0xFF  # padding byte
        flat[base + 584 * 3 : base + cache.stride(0)] = 0x7F  # gap up to the next block (NaN as fp8)
    assert torch.equal(dequantize_kv_cache(cache), before)


def test_v32_block_stride_taken_from_tensor():
    k = torch.randn(3, 4, 1, 576).bfloat16()
    dense = quantize_kv_cache(k)
    padded = torch.full((3, 5, 1, 656), float("nan")).to(torch.float8_e4m3fn)  # B + 1 tokens per block
    padded.view(torch.uint8)[:, :4] = dense.view(torch.uint8)
    sliced = padded[:, :4]
    assert sliced.stride(0) == 5 * 656
    assert torch.equal(dequantize_kv_cache(sliced), dequantize_kv_cache(dense))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
def test_byte_views_are_accepted(dtype):
    cache = quantize_kv_cache(torch.randn(1, 2, 1, 576).bfloat16())
    assert torch.equal(dequantize_kv_cache(cache.view(dtype)), dequantize_kv_cache(cache))


def test_model_type_inference():
    assert ModelType.from_d_qk(576) is ModelType.V32 and ModelType.from_d_qk(512) is ModelType.MODEL1
    assert ModelType.from_bytes_per_token(656) is ModelType.V32
    assert ModelType.from_bytes_per_token(584) is ModelType.MODEL1
    assert (ModelType.V32.d_nope, ModelType.MODEL1.d_nope) == (512, 448)
    assert (ModelType.V32.num_tiles, ModelType.MODEL1.num_tiles) == (4, 7)
    with pytest.raises(ValueError, match="bytes_per_token.*656.*584.*got 600"):
        ModelType.from_bytes_per_token(600)


def test_cache_positions():
    block_table = torch.tensor([[3, 1], [0, 2]], dtype=torch.int32)
    indices = torch.tensor([[0, 4, 5, -1], [7, 3, -1, 0]], dtype=torch.int32)
    got = cache_positions(indices, block_table, page_block_size=4)
    assert got.tolist() == [[12, 4, 5, -1], [11, 3, -1, 0]]
    assert got.dtype == torch.int32
    with pytest.raises(ValueError, match="indices.*-1 or in \\[0, 8\\).*got 8"):
        cache_positions(torch.tensor([[8]], dtype=torch.int32), block_table[:1], 4)


@pytest.mark.parametrize(
    "k, kwargs, match",
    [
        (torch.zeros(1, 1, 1, 576), {}, "k: expected dtype torch.bfloat16"),
        (torch.zeros(1, 1, 2, 576, dtype=torch.bfloat16), {}, "k: expected shape"),
        (torch.zeros(1, 1, 1, 500, dtype=torch.bfloat16), {}, "d_qk: expected 576"),
        (torch.zeros(1, 1, 1, 512, dtype=torch.bfloat16), {"model_type": "v32"}, "last dim d_qk=576"),
        (torch.zeros(1, 1, 1, 576, dtype=torch.bfloat16), {"scale_rounding": "pow2"}, "scale_rounding"),
    ],
    ids=["dtype", "h_kv", "d_qk", "model-mismatch", "rounding"],
)
def test_quantize_bad_input(k, kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        quantize_kv_cache(k, **kwargs)


# ---- what-if formats: the same quantizer with the tile size and scale format as parameters ----------
def _outlier_keys(model: ModelType, seed: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(3, 16, 1, model.d_qk, generator=gen) * 0.1
    k[..., 5] *= 40.0  # an outlier channel: its tile's scale is set by it
    k[0, 0, 0, :128] = 0  # an all-zero tile
    return k.bfloat16()


@pytest.mark.parametrize(
    "model, rounding, tile, scale_format",
    [(ModelType.V32, "ue8m0", 128, "float32-pow2"), (ModelType.V32, "none", 128, "float32"),
     (ModelType.MODEL1, "ue8m0", 64, "ue8m0")],
    ids=["v32", "v32-exact", "model1"],
)
def test_round_trip_tiles_reproduces_the_real_formats_bit_for_bit(model, rounding, tile, scale_format):
    k = _outlier_keys(model)
    real = dequantize_kv_cache(quantize_kv_cache(k, scale_rounding=rounding))[..., : model.d_nope]
    what_if = round_trip_tiles(k[..., : model.d_nope], tile, scale_format)
    assert what_if.dtype == torch.bfloat16
    assert torch.equal(what_if.view(torch.int16), real.view(torch.int16))


def test_model1_arithmetic_with_float32_scales_and_tile_128_is_v32_exact():
    """On power-of-two scales the bf16 product of MODEL1 and the float32 product of V32 agree exactly."""
    k = _outlier_keys(ModelType.V32)[..., :512]
    assert torch.equal(round_trip_tiles(k, 128, "ue8m0"), round_trip_tiles(k, 128, "float32-pow2"))
    assert not torch.equal(round_trip_tiles(k, 128, "float32"), round_trip_tiles(k, 128, "ue8m0"))
    assert not torch.equal(round_trip_tiles(k, 64, "ue8m0"), round_trip_tiles(k, 128, "ue8m0"))


def test_round_trip_tiles_bad_input():
    k = torch.zeros(2, 448, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="tile: expected a positive divisor of the last dim 448, got 128"):
        round_trip_tiles(k, 128, "ue8m0")
    with pytest.raises(ValueError, match="scale_format: expected one of"):
        round_trip_tiles(k, 64, "e5m2")
