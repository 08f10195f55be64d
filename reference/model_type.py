"""Model types and the constants each one implies (operations.md, "Model types")."""

from __future__ import annotations

import enum
import math


class ModelType(enum.Enum):
    """The two MLA model families. The value is the lower-case id used in reports and case ids."""

    V32 = "v32"  # DeepSeek V3 / V3.1 / V3.2
    MODEL1 = "model1"  # the next DeepSeek model (FlashMLA's ModelType::MODEL1)

    @property
    def d_qk(self) -> int:
        return 576 if self is ModelType.V32 else 512

    @property
    def d_rope(self) -> int:
        return 64

    @property
    def d_nope(self) -> int:
        return self.d_qk - self.d_rope  # 512 (V32) or 448 (MODEL1): the FP8-quantized part

    @property
    def d_v(self) -> int:
        return 512  # V32: K[:512] = NoPE only; MODEL1: K[:512] = all of K, RoPE included

    @property
    def tile(self) -> int:
        return 128 if self is ModelType.V32 else 64  # NoPE elements per FP8 scale

    @property
    def num_tiles(self) -> int:
        return self.d_nope // self.tile  # 4 (V32) or 7 (MODEL1)

    @property
    def scale_format(self) -> str:
        return "float32" if self is ModelType.V32 else "ue8m0"

    @property
    def scale_bytes(self) -> int:
        return 16 if self is ModelType.V32 else 8  # 4 float32, or 7 ue8m0 bytes + 1 padding byte

    @property
    def bytes_per_token(self) -> int:
        # V32: 512 fp8 + 16 scale bytes + 128 RoPE bytes; MODEL1: 448 fp8 + 128 RoPE + 8 scale bytes.
        return self.d_nope + self.scale_bytes + 2 * self.d_rope

    @property
    def bandwidth_bytes_per_token(self) -> int:
        # FlashMLA's benchmark counts 656 for V32 and leaves MODEL1's 8 scale bytes out (576).
        return 656 if self is ModelType.V32 else 576

    def block_stride_bytes(self, page_block_size: int) -> int:
        """Bytes from one page block's base to the next in the layout quantize_kv_cache produces."""
        if self is ModelType.V32:
            return page_block_size * 656
        return math.ceil(page_block_size * 584 / 576) * 576  # kv-cache-formats.md: multiple of 576

    @classmethod
    def from_d_qk(cls, d_qk: int) -> "ModelType":
        for model in cls:
            if model.d_qk == d_qk:
                return model
        raise ValueError(f"d_qk: expected 576 (V32) or 512 (MODEL1), got {d_qk}")

    @classmethod
    def from_bytes_per_token(cls, n: int) -> "ModelType":
        for model in cls:
            if model.bytes_per_token == n:
                return model
        raise ValueError(f"bytes_per_token: expected 656 (V32) or 584 (MODEL1), got {n}")

    @classmethod
    def parse(cls, value: "ModelType | str | None", *, d_qk: int | None = None) -> "ModelType":
        """Accept a ModelType, its id ('v32', 'model1'), or None (then inferred from d_qk)."""
        if isinstance(value, ModelType):
            return value
        if value is None:
            if d_qk is None:
                raise ValueError("model_type: cannot infer the model type without d_qk")
            return cls.from_d_qk(d_qk)
        if isinstance(value, str):
            try:
                return cls(value.lower())
            except ValueError:
                pass
            try:
                return cls[value.upper()]
            except KeyError:
                pass
        raise ValueError(f"model_type: expected ModelType.V32, ModelType.MODEL1, 'v32' or 'model1', got {value!r}")
