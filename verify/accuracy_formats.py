"""KV-cache formats compared by `mlaverify accuracy`: the real byte formats and what-ifs from the same code.

A format is a tile size and a scale format for the NoPE part of K (RoPE stays bf16 in every format):
- the real formats (v32, v32-exact, model1) go through `quantize_kv_cache` / `dequantize_kv_cache` byte for
  byte when the keys have their model's shape, and the sparse decode reference reads those bytes;
- what-ifs (model1-f32, v32-ue8m0, or any tN-SCALE such as t32-ue8m0) go through
  `reference.cache_format.round_trip_tiles`, the same quantizer with the two choices as parameters, so the
  effect of the tile size and of the scale format can be told apart;
- bf16 is no quantization (the keys as given).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from mlaverify.reference import ModelType, dequantize_kv_cache, quantize_kv_cache
from mlaverify.reference.cache_format import TILE_SCALE_FORMATS, round_trip_tiles

__all__ = ["CacheFormat", "FORMATS", "DEFAULT_FORMATS", "parse_formats", "ACCURACY_MODELS"]

# the key shapes compared: model id -> ModelType (d_nope 512 with V = NoPE, or 448 with V = NoPE + RoPE)
ACCURACY_MODELS = {"v32": ModelType.V32, "model1": ModelType.MODEL1}
_ROUNDING = {"float32": "none", "float32-pow2": "ue8m0", "ue8m0": "ue8m0"}  # scale format -> quantize_kv_cache's


@dataclass(frozen=True)
class CacheFormat:
    name: str
    tile: int | None            # NoPE elements per scale; None: bf16, no quantization
    scale_format: str | None    # a key of TILE_SCALE_FORMATS; None for bf16
    real: ModelType | None      # the byte format this is, if any (then quantize_kv_cache writes it)
    description: str

    @property
    def quantized(self) -> bool:
        return self.tile is not None

    def applies_to(self, model: ModelType) -> bool:
        """Whether this format can hold the keys of a model (its tile divides the NoPE dims)."""
        return self.tile is None or model.d_nope % self.tile == 0

    def is_real_for(self, model: ModelType) -> bool:
        return self.real is model

    def quantize(self, keys: torch.Tensor, model: ModelType, block: int) -> torch.Tensor:
        """The byte cache [n // block, block, 1, bytes] of keys [n, d_qk] bf16 (real formats only)."""
        if not self.is_real_for(model):
            raise ValueError(f"format {self.name}: no byte layout for {model.value} keys")
        k = keys.view(-1, block, 1, model.d_qk)
        return quantize_kv_cache(k, model, scale_rounding=_ROUNDING[self.scale_format])

    def dequantized(self, keys: torch.Tensor, model: ModelType, block: int) -> torch.Tensor:
        """keys [n, d_qk] bf16 as the format gives them back: bf16 [n, d_qk]."""
        if not self.applies_to(model):
            raise ValueError(f"format {self.name}: tile {self.tile} does not divide d_nope={model.d_nope}")
        if not self.quantized:
            return keys
        if self.is_real_for(model):
            return dequantize_kv_cache(self.quantize(keys, model, block), model).view(keys.shape)
        nope = round_trip_tiles(keys[:, :model.d_nope], self.tile, self.scale_format)
        return torch.cat([nope, keys[:, model.d_nope:]], dim=-1)


FORMATS: dict[str, CacheFormat] = {f.name: f for f in (
    CacheFormat("v32", 128, "float32-pow2", ModelType.V32,
                "V32 as written by quantize_kv_cache: tile 128, power-of-two scales stored as float32"),
    CacheFormat("v32-exact", 128, "float32", ModelType.V32, "V32 with exact float32 scales (amax / 448)"),
    CacheFormat("model1", 64, "ue8m0", ModelType.MODEL1, "MODEL1: tile 64, one-byte ue8m0 scales"),
    CacheFormat("model1-f32", 64, "float32", None, "what-if: MODEL1's tile 64 with exact float32 scales"),
    CacheFormat("v32-ue8m0", 128, "ue8m0", None,
                "what-if: V32's tile 128 with one-byte ue8m0 scales (MODEL1's arithmetic)"),
    CacheFormat("bf16", None, None, None, "no quantization: the bf16 keys as given"),
)}
DEFAULT_FORMATS = ("v32", "v32-exact", "model1", "model1-f32", "v32-ue8m0", "bf16")
_GENERIC = re.compile(r"t(\d+)-(" + "|".join(re.escape(s) for s in TILE_SCALE_FORMATS) + r")$")


def parse_formats(text: str | None) -> list[CacheFormat]:
    """'v32,model1,t32-ue8m0' -> formats; tN-SCALE names any tile N with a scale format."""
    names = [n.strip() for n in (text.split(",") if text else DEFAULT_FORMATS) if n.strip()]
    if not names:
        raise ValueError("--formats: expected at least one format name")
    formats = []
    for name in names:
        if name in FORMATS:
            formats.append(FORMATS[name])
            continue
        m = _GENERIC.match(name)
        if not m or int(m.group(1)) < 1:
            raise ValueError(f"--formats: expected names from {', '.join(FORMATS)} or tN-SCALE "
                             f"(SCALE one of {', '.join(TILE_SCALE_FORMATS)}, e.g. t32-ue8m0), got {name!r}")
        formats.append(CacheFormat(name, int(m.group(1)), m.group(2), None,
                                   f"what-if: tile {m.group(1)} with {m.group(2)} scales"))
    if len({f.name for f in formats}) != len(formats):
        raise ValueError(f"--formats: a format is named twice in {text!r}")
    return formats
