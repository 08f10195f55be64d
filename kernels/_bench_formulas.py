"""FLOP and byte counts of the MLA ops (configs-and-performance.md, "FLOPs and bytes").

Pure functions of integers, so that they are unit-tested on their own; the benchmark derives
the integers (attended entries, unique positions, valid indices) from the actual inputs.
"""

from __future__ import annotations

V32_TOKEN_BYTES = 656  # FP8 V32 cache: bytes read per retrieved token
MODEL1_TOKEN_BYTES = 576  # FP8 MODEL1 cache: FlashMLA counts 576 (scale bytes left out)


def fp8_token_bytes(d_qk: int) -> int:
    """Bytes counted per retrieved FP8 cache token: 656 for d_qk 576 (V32), 576 otherwise."""
    return V32_TOKEN_BYTES if d_qk == 576 else MODEL1_TOKEN_BYTES


def sparse_decode_flops(h_q: int, attended: int, d_qk: int, d_v: int = 512) -> int:
    """2 * h_q * N_att * (d_qk + d_v), N_att = attended (query token, list entry) pairs of all lists.

    ``attended`` is b * s_q * topk (or s_q * sum(topk_length)), plus the same for the extra cache.
    """
    return 2 * h_q * attended * (d_qk + d_v)


def sparse_decode_bytes(b: int, s_q: int, h_q: int, d_qk: int, unique_positions: int, d_v: int = 512) -> int:
    """Q in bf16, each unique cache position once in FP8, O in bf16."""
    return 2 * b * s_q * h_q * d_qk + unique_positions * fp8_token_bytes(d_qk) + 2 * b * s_q * h_q * d_v


def sparse_prefill_flops(attended: int, h_q: int, d_qk: int, d_v: int = 512) -> int:
    """2 * attended * h_q * (d_qk + d_v), attended = s_q * topk or sum(topk_length)."""
    return 2 * attended * h_q * (d_qk + d_v)


def sparse_prefill_bytes(valid_indices: int, s_q: int, h_q: int, d_qk: int, d_v: int = 512) -> int:
    """Every valid index reads one bf16 kv row; q read and out written once, in bf16."""
    return valid_indices * d_qk * 2 + s_q * h_q * (d_qk + d_v) * 2


def dense_decode_flops(b: int, s_q: int, h_q: int, d: int, s_k_mean: float, d_v: int = 512) -> float:
    """b * h_q * s_q * (2 * d * s_k_mean + 2 * s_k_mean * d_v)."""
    return b * h_q * s_q * (2 * d * s_k_mean + 2 * s_k_mean * d_v)


def dense_decode_bytes(b: int, s_q: int, h_q: int, h_kv: int, d: int, s_k_mean: float, d_v: int = 512) -> float:
    """b * (Q + the sequence's KV heads in bf16/fp16 + O), 2 bytes per element."""
    return b * (s_q * h_q * d * 2 + s_k_mean * h_kv * d * 2 + s_q * h_q * d_v * 2)


def tflops(flops: float, ms: float) -> float:
    """FLOPs per call and milliseconds per call -> TFLOP/s."""
    return flops / (ms * 1e-3) / 1e12


def gb_per_s(n_bytes: float, ms: float) -> float:
    """Bytes per call and milliseconds per call -> GB/s (10^9 bytes)."""
    return n_bytes / (ms * 1e-3) / 1e9
