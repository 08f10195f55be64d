"""The named production configurations of configs-and-performance.md, as data.

One table for everyone: the reference benchmark, the kernel benchmark and the verification
engine's presets all read these records instead of restating the numbers.
"""

from __future__ import annotations

import dataclasses

from .model_type import ModelType


@dataclasses.dataclass(frozen=True)
class SparseDecodeConfig:
    name: str
    model: ModelType
    h_q: int
    s_k: int  # main cache tokens per sequence
    topk: int
    page_block_size: int
    extra_s_k: int = 0  # 0: no extra cache
    extra_topk: int = 0
    extra_page_block_size: int = 0
    extra_topk_length: bool = False  # whether extra_topk_length is passed (varlen extra list)
    s_q: int = 2  # speculative decoding: two query tokens per step
    batch_sizes: tuple = (2, 64, 74, 128)


@dataclasses.dataclass(frozen=True)
class SparsePrefillConfig:
    name: str
    model: ModelType
    h_q: int
    topk: int
    s_kv_range: tuple  # (smallest, largest) s_kv benchmarked by FlashMLA
    s_q: int = 4096
    attn_sink: bool = True


@dataclasses.dataclass(frozen=True)
class DenseDecodeConfig:
    name: str
    b: int
    s_q: int
    h_q: int
    h_kv: int
    s_k: int
    d: int = 576
    causal: bool = False
    page_block_size: int = 64


_MODEL1_BATCHES = (2, 64, 74, 128, 148, 256)

SPARSE_DECODE = (
    SparseDecodeConfig("v32", ModelType.V32, 128, 32768, 2048, 64),
    SparseDecodeConfig("model1-config1", ModelType.MODEL1, 64, 16384, 128, 256, 16384, 512, 64, False,
                       batch_sizes=_MODEL1_BATCHES),
    SparseDecodeConfig("model1-config2", ModelType.MODEL1, 128, 16384, 128, 256, 16384, 1024, 64, False,
                       batch_sizes=_MODEL1_BATCHES),
    SparseDecodeConfig("model1-config3", ModelType.MODEL1, 64, 16384, 128, 256, 16384, 1024, 2, True,
                       batch_sizes=_MODEL1_BATCHES),
    SparseDecodeConfig("model1-config4", ModelType.MODEL1, 128, 16384, 128, 256, 16384, 1024, 2, True,
                       batch_sizes=_MODEL1_BATCHES),
)

SPARSE_PREFILL = (
    SparsePrefillConfig("v32", ModelType.V32, 128, 2048, (8192, 131072)),
    SparsePrefillConfig("model1-config1", ModelType.MODEL1, 64, 512, (8192, 65536)),
    SparsePrefillConfig("model1-config2", ModelType.MODEL1, 128, 1024, (8192, 65536)),
)

@dataclasses.dataclass(frozen=True)
class DenseDecodeGrid:
    """The dense decode production grid of configs-and-performance.md (every combination)."""

    b: int = 128
    s_q: tuple = (1, 2)
    s_k: tuple = (4096, 8192, 16384, 32768)
    h_q: int = 128
    h_kv: int = 1
    d: int = 576
    causal: tuple = (False, True)
    page_block_size: int = 64


DENSE_DECODE_GRID = DenseDecodeGrid()

DENSE_DECODE = (
    # configs-and-performance.md: b = 128, s_q in {1, 2}, s_k 4096..32768, h_q 128, h_kv 1, d 576
    DenseDecodeConfig("compute-bound", b=128, s_q=2, h_q=128, h_kv=1, s_k=8192),
    DenseDecodeConfig("compute-bound-causal", b=128, s_q=2, h_q=128, h_kv=1, s_k=8192, causal=True),
    DenseDecodeConfig("memory-bound", b=128, s_q=1, h_q=16, h_kv=1, s_k=8192),
    DenseDecodeConfig("long", b=128, s_q=1, h_q=128, h_kv=1, s_k=32768),
)


def find(table, name: str):
    for config in table:
        if config.name == name:
            return config
    raise ValueError(f"config: expected one of {[c.name for c in table]}, got {name!r}")
