"""Triton backward kernels of the dense MHA prefill (operations.md section 4).

Deterministic by construction, no atomics:
- ``_mha_bwd_dkdv_kernel``: one program per (key block, sequence, KV head). It owns its dk/dv
  rows and loops over the query heads of its GQA group and over their query blocks, so dk and
  dv are summed over the group in a fixed order.
- ``_mha_bwd_dq_kernel``: one program per (query block, sequence, query head), looping over
  key blocks like the forward pass.

Probabilities are recomputed from the saved lse: ``P = exp2(s * scale * log2(e) - lse * log2(e))``;
a row with lse = +inf (no visible key, or a padding row) gets P = 0 and contributes nothing.
``delta = rowsum(dout * out)`` comes from ``_mha_bwd_preprocess_kernel``.
"""

from __future__ import annotations

from . import _runtime  # noqa: F401  (decides compiled vs interpreter mode before any kernel is built)

import triton
import triton.language as tl

from ._mha_prefill_fwd import _key_range, _mma, _mma_split, _round16, _sequence_bounds, _visible

LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): natural-log lse -> exp2 domain


@triton.jit
def _query_range(s_q, s_k, n0, win_left, win_right, MASK_LO: tl.constexpr, MASK_HI: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query rows of key block [n0, n0 + BLOCK_N): (lo, full_lo, full_hi, hi), as _key_range for keys.

    Row j sees key t iff t - right - base <= j (MASK_HI) and j <= t + left - base (MASK_LO),
    base = s_k - s_q.
    """
    base = s_k - s_q
    if MASK_HI:
        lo = tl.maximum(n0 - win_right - base, 0)  # the first row that sees key n0
        lo = (lo // BLOCK_M) * BLOCK_M
        full_lo = tl.maximum(n0 + BLOCK_N - 1 - win_right - base, 0)  # rows from here see the block's last key
        full_lo = ((full_lo + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
    else:
        lo = s_q * 0
        full_lo = s_q * 0
    if MASK_LO:
        hi = tl.minimum(s_q, tl.maximum(n0 + BLOCK_N + win_left - base, 0))  # past the last row seeing the last key
        full_hi = tl.minimum(s_q, tl.maximum(n0 + 1 + win_left - base, 0))  # past the last row seeing key n0
        full_hi = (full_hi // BLOCK_M) * BLOCK_M
    else:
        hi = s_q
        full_hi = s_q
    return lo, full_lo, full_hi, hi


@triton.jit
def _mma_split_b(a, x, acc, UPCAST: tl.constexpr, SPLIT: tl.constexpr):
    """acc + a @ x for a float32 ``x`` (P, dS) rounded to 16 bits as `_mma_split` rounds it (x the right operand)."""
    hi = _round16(x, a.dtype, UPCAST)
    acc = _mma(a, hi, acc, UPCAST)
    if SPLIT:
        acc = _mma(a, _round16(x - hi.to(tl.float32), a.dtype, UPCAST), acc, UPCAST)
    return acc


@triton.jit
def _mha_bwd_dkdv_block(dk0_t, dk1_t, dv_t, k0_t, k1_t, v_t, Q_h, DO_h, Lse_h, Delta_h, q_lo, s_q, s_k, m0,
                        offs_n, win_left, win_right, stride_qt, stride_qd, stride_dt, stride_dd, stride_lt, scale_log2,
                        D0: tl.constexpr, D1: tl.constexpr, DV: tl.constexpr, MASK_LO: tl.constexpr,
                        MASK_HI: tl.constexpr, MASKED: tl.constexpr, BLOCK_M: tl.constexpr, UPCAST: tl.constexpr,
                        P_SPLIT: tl.constexpr):
    """Add the contribution of query rows [m0, m0 + BLOCK_M) of one head to a key block's dk, dv.

    Dims first: the accumulators are dK^T [D, BLOCK_N] and dV^T [DV, BLOCK_N], so that every product has
    the head dims or the query rows (>= 64) as its M, never the program's BLOCK_N keys: S = Q K^T,
    dP = dO V^T (M = BLOCK_M), dV^T += dO^T P, dK^T += Q^T dS (M = the dims). With 32 keys per program
    that is wgmma on sm_90 where the keys-first form (M = 32) was mma.sync.
    """
    offs_m = m0 + tl.arange(0, BLOCK_M)
    row_ok = offs_m < s_q
    q_rows = (q_lo + offs_m)[:, None] * stride_qt
    q0 = tl.load(Q_h + q_rows + tl.arange(0, D0)[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)
    q1 = tl.load(Q_h + q_rows + (D0 + tl.arange(0, D1))[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO_h + (q_lo + offs_m)[:, None] * stride_dt + tl.arange(0, DV)[None, :] * stride_dd,
                 mask=row_ok[:, None], other=0.0)
    lse2 = tl.load(Lse_h + (q_lo + offs_m) * stride_lt, mask=row_ok, other=float("inf")) * LOG2E
    delta = tl.load(Delta_h + (q_lo + offs_m) * stride_lt, mask=row_ok, other=0.0)
    s = _mma(q0, k0_t, None, UPCAST)  # [BLOCK_M, BLOCK_N] = q k^T, D0 piece
    s = _mma(q1, k1_t, s, UPCAST)  # plus the D1 piece
    p = tl.math.exp2(s * scale_log2 - lse2[:, None])  # rows with lse +inf give 0
    if MASKED:  # keys past s_k only touch their own (unstored) rows; rows past s_q have lse +inf
        diag = s_k - s_q + offs_m[:, None]  # [BLOCK_M, 1]: each row's diagonal key
        if MASK_HI:
            p = tl.where(offs_n[None, :] <= diag + win_right, p, 0.0)
        if MASK_LO:
            p = tl.where(offs_n[None, :] >= diag - win_left, p, 0.0)
    dv_t = _mma_split_b(tl.trans(do), p, dv_t, UPCAST, P_SPLIT)  # dV^T += dO^T P
    dp = _mma(do, v_t, None, UPCAST)  # dP = dO V^T
    ds = p * (dp - delta[:, None])  # dS = P * (dP - delta)
    dk0_t = _mma_split_b(tl.trans(q0), ds, dk0_t, UPCAST, P_SPLIT)  # dK^T += Q^T dS (times softmax_scale at the end)
    dk1_t = _mma_split_b(tl.trans(q1), ds, dk1_t, UPCAST, P_SPLIT)
    return dk0_t, dk1_t, dv_t


@triton.jit
def _mha_bwd_dkdv_kernel(
    Q, K, V, DO, Lse, Delta, DK, DV_out,  # dk like k, dv like v; lse and delta [h_q, total_q] float32
    cu_q, cu_k,  # int32 [batch + 1]
    blocks_per_seq,  # key blocks per sequence: grid axis 0 is (sequence, key block), no 65,535 cap on batch
    stride_qt, stride_qh, stride_qd,  # q strides (token, head, dim)
    stride_kt, stride_kh, stride_kd,  # k strides
    stride_vt, stride_vh, stride_vd,  # v strides
    stride_dt, stride_dh, stride_dd,  # dout strides
    stride_lh, stride_lt,  # lse / delta strides
    stride_gkt, stride_gkh, stride_gkd,  # dk strides
    stride_gvt, stride_gvh, stride_gvd,  # dv strides
    softmax_scale, scale_log2,  # softmax_scale and softmax_scale * log2(e)
    win_left, win_right,  # window bounds (used when MASK_LO / MASK_HI)
    GROUP: tl.constexpr,  # query heads per KV head
    D0: tl.constexpr, D1: tl.constexpr, DV: tl.constexpr,  # d_qk = D0 + D1; d_v
    MASK_LO: tl.constexpr, MASK_HI: tl.constexpr,  # left (sliding window) / right (causal) bound on keys
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,  # query rows per step / keys owned by the program
    UPCAST: tl.constexpr,  # interpreted launch: float32 dots and hand rounding
    P_SPLIT: tl.constexpr,  # P and dS as hi + lo 16-bit terms (mlaverify.kernels._options)
):
    tl.static_assert(D1 > 0)
    seq = tl.program_id(0) // blocks_per_seq
    pid_n = tl.program_id(0) % blocks_per_seq
    kvh = tl.program_id(1)
    q_lo, s_q, k_lo, s_k = _sequence_bounds(cu_q, cu_k, seq)
    n0 = pid_n * BLOCK_N
    if n0 >= s_k:
        return

    offs_n = n0 + tl.arange(0, BLOCK_N)
    key_ok = offs_n < s_k
    offs_d0 = tl.arange(0, D0)
    offs_d1 = D0 + tl.arange(0, D1)
    offs_v = tl.arange(0, DV)
    k_rows = (k_lo + offs_n)[:, None] * stride_kt + kvh * stride_kh
    # K^T and V^T formed once, before the loops (a transpose inside them rebuilds the operand every step)
    k0_t = tl.trans(tl.load(K + k_rows + offs_d0[None, :] * stride_kd, mask=key_ok[:, None], other=0.0))
    k1_t = tl.trans(tl.load(K + k_rows + offs_d1[None, :] * stride_kd, mask=key_ok[:, None], other=0.0))
    v_t = tl.trans(tl.load(V + (k_lo + offs_n)[:, None] * stride_vt + kvh * stride_vh + offs_v[None, :] * stride_vd,
                           mask=key_ok[:, None], other=0.0))
    dk0_t = tl.zeros([D0, BLOCK_N], tl.float32)
    dk1_t = tl.zeros([D1, BLOCK_N], tl.float32)
    dv_t = tl.zeros([DV, BLOCK_N], tl.float32)

    lo, full_lo, full_hi, hi = _query_range(s_q, s_k, n0, win_left, win_right, MASK_LO, MASK_HI, BLOCK_M, BLOCK_N)
    for g in range(GROUP):  # the query heads of this KV head, in a fixed order
        h = kvh * GROUP + g
        Q_h = Q + h * stride_qh
        DO_h = DO + h * stride_dh
        Lse_h = Lse + h.to(tl.int64) * stride_lh  # h * total_q: int64
        Delta_h = Delta + h.to(tl.int64) * stride_lh
        for m0 in range(lo, tl.minimum(full_lo, hi), BLOCK_M):  # diagonal edge, masked
            dk0_t, dk1_t, dv_t = _mha_bwd_dkdv_block(
                dk0_t, dk1_t, dv_t, k0_t, k1_t, v_t, Q_h, DO_h, Lse_h, Delta_h, q_lo, s_q, s_k, m0, offs_n,
                win_left, win_right, stride_qt, stride_qd, stride_dt, stride_dd, stride_lt, scale_log2,
                D0, D1, DV, MASK_LO, MASK_HI, True, BLOCK_M, UPCAST, P_SPLIT)
        for m0 in range(full_lo, full_hi, BLOCK_M):  # rows that see the whole block, no mask
            dk0_t, dk1_t, dv_t = _mha_bwd_dkdv_block(
                dk0_t, dk1_t, dv_t, k0_t, k1_t, v_t, Q_h, DO_h, Lse_h, Delta_h, q_lo, s_q, s_k, m0, offs_n,
                win_left, win_right, stride_qt, stride_qd, stride_dt, stride_dd, stride_lt, scale_log2,
                D0, D1, DV, MASK_LO, MASK_HI, False, BLOCK_M, UPCAST, P_SPLIT)
        for m0 in range(tl.maximum(full_lo, full_hi), hi, BLOCK_M):  # left window edge, masked
            dk0_t, dk1_t, dv_t = _mha_bwd_dkdv_block(
                dk0_t, dk1_t, dv_t, k0_t, k1_t, v_t, Q_h, DO_h, Lse_h, Delta_h, q_lo, s_q, s_k, m0, offs_n,
                win_left, win_right, stride_qt, stride_qd, stride_dt, stride_dd, stride_lt, scale_log2,
                D0, D1, DV, MASK_LO, MASK_HI, True, BLOCK_M, UPCAST, P_SPLIT)

    # stored as they are accumulated, dims by rows: pointers [D, BLOCK_N], no transpose of the accumulators
    dk_cols = (k_lo + offs_n)[None, :] * stride_gkt + kvh * stride_gkh
    tl.store(DK + dk_cols + offs_d0[:, None] * stride_gkd, _round16(dk0_t * softmax_scale, DK.dtype.element_ty, UPCAST),
             mask=key_ok[None, :])
    tl.store(DK + dk_cols + offs_d1[:, None] * stride_gkd, _round16(dk1_t * softmax_scale, DK.dtype.element_ty, UPCAST),
             mask=key_ok[None, :])
    tl.store(DV_out + (k_lo + offs_n)[None, :] * stride_gvt + kvh * stride_gvh + offs_v[:, None] * stride_gvd,
             _round16(dv_t, DV_out.dtype.element_ty, UPCAST), mask=key_ok[None, :])


@triton.jit
def _mha_bwd_dq_block(dq0, dq1, q0, q1, do, lse2, delta, K_h, V_h, k_lo, s_k, s_q, n0, offs_m, win_left, win_right,
                      stride_kt, stride_kd, stride_vt, stride_vd, scale_log2,
                      D0: tl.constexpr, D1: tl.constexpr, DV: tl.constexpr, MASK_LO: tl.constexpr,
                      MASK_HI: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr,
                      P_SPLIT: tl.constexpr):
    """Add key block [n0, n0 + BLOCK_N) to the dq of one query block."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    k_rows = (k_lo + offs_n)[:, None] * stride_kt
    v_rows = (k_lo + offs_n)[:, None] * stride_vt
    if MASKED:
        key_ok = offs_n < s_k
        k0 = tl.load(K_h + k_rows + tl.arange(0, D0)[None, :] * stride_kd, mask=key_ok[:, None], other=0.0)
        k1 = tl.load(K_h + k_rows + (D0 + tl.arange(0, D1))[None, :] * stride_kd, mask=key_ok[:, None], other=0.0)
        v = tl.load(V_h + v_rows + tl.arange(0, DV)[None, :] * stride_vd, mask=key_ok[:, None], other=0.0)
    else:
        k0 = tl.load(K_h + k_rows + tl.arange(0, D0)[None, :] * stride_kd)
        k1 = tl.load(K_h + k_rows + (D0 + tl.arange(0, D1))[None, :] * stride_kd)
        v = tl.load(V_h + v_rows + tl.arange(0, DV)[None, :] * stride_vd)
    s = _mma(q0, tl.trans(k0), None, UPCAST)  # [BLOCK_M, BLOCK_N], D0 piece
    s = _mma(q1, tl.trans(k1), s, UPCAST)  # plus the D1 piece
    p = tl.math.exp2(s * scale_log2 - lse2[:, None])  # P recomputed from lse
    if MASKED:
        p = tl.where(_visible(offs_m, offs_n, s_q, s_k, win_left, win_right, MASK_LO, MASK_HI), p, 0.0)
    dp = _mma(do, tl.trans(v), None, UPCAST)  # dP = dO V^T
    ds = p * (dp - delta[:, None])  # dS = P * (dP - delta)
    dq0 = _mma_split(ds, k0, dq0, UPCAST, P_SPLIT)  # dQ += dS K (times softmax_scale at the end)
    dq1 = _mma_split(ds, k1, dq1, UPCAST, P_SPLIT)
    return dq0, dq1


@triton.jit
def _mha_bwd_dq_kernel(
    Q, K, V, DO, Lse, Delta, DQ,  # dq like q
    cu_q, cu_k,  # int32 [batch + 1]
    blocks_per_seq,  # query blocks per sequence: grid axis 0 is (sequence, query block)
    stride_qt, stride_qh, stride_qd,  # q strides
    stride_kt, stride_kh, stride_kd,  # k strides
    stride_vt, stride_vh, stride_vd,  # v strides
    stride_dt, stride_dh, stride_dd,  # dout strides
    stride_lh, stride_lt,  # lse / delta strides
    stride_gqt, stride_gqh, stride_gqd,  # dq strides
    softmax_scale, scale_log2,
    win_left, win_right,  # window bounds (used when MASK_LO / MASK_HI)
    GROUP: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, DV: tl.constexpr,
    MASK_LO: tl.constexpr, MASK_HI: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreted launch: float32 dots and hand rounding
    P_SPLIT: tl.constexpr,  # P and dS as hi + lo 16-bit terms (mlaverify.kernels._options)
):
    tl.static_assert(D1 > 0)
    seq = tl.program_id(0) // blocks_per_seq
    pid_m = tl.program_id(0) % blocks_per_seq
    h = tl.program_id(1)
    q_lo, s_q, k_lo, s_k = _sequence_bounds(cu_q, cu_k, seq)
    m0 = pid_m * BLOCK_M
    if m0 >= s_q:
        return
    kvh = h // GROUP

    offs_m = m0 + tl.arange(0, BLOCK_M)
    row_ok = offs_m < s_q
    offs_d0 = tl.arange(0, D0)
    offs_d1 = D0 + tl.arange(0, D1)
    q_rows = (q_lo + offs_m)[:, None] * stride_qt + h * stride_qh
    q0 = tl.load(Q + q_rows + offs_d0[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)
    q1 = tl.load(Q + q_rows + offs_d1[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + (q_lo + offs_m)[:, None] * stride_dt + h * stride_dh + tl.arange(0, DV)[None, :] * stride_dd,
                 mask=row_ok[:, None], other=0.0)
    lse_off = h.to(tl.int64) * stride_lh + (q_lo + offs_m) * stride_lt  # h * total_q: int64
    lse2 = tl.load(Lse + lse_off, mask=row_ok, other=float("inf")) * LOG2E
    delta = tl.load(Delta + lse_off, mask=row_ok, other=0.0)
    dq0 = tl.zeros([BLOCK_M, D0], tl.float32)
    dq1 = tl.zeros([BLOCK_M, D1], tl.float32)

    lo, full_lo, full_hi, hi = _key_range(s_q, s_k, m0, win_left, win_right, MASK_LO, MASK_HI, BLOCK_M, BLOCK_N)
    K_h = K + kvh * stride_kh
    V_h = V + kvh * stride_vh
    for n0 in range(lo, tl.minimum(full_lo, hi), BLOCK_N):  # left window edge, masked
        dq0, dq1 = _mha_bwd_dq_block(dq0, dq1, q0, q1, do, lse2, delta, K_h, V_h, k_lo, s_k, s_q, n0, offs_m,
                                     win_left, win_right, stride_kt, stride_kd, stride_vt, stride_vd, scale_log2,
                                     D0, D1, DV, MASK_LO, MASK_HI, True, BLOCK_N, UPCAST, P_SPLIT)
    for n0 in range(full_lo, full_hi, BLOCK_N):  # seen by every row, no mask
        dq0, dq1 = _mha_bwd_dq_block(dq0, dq1, q0, q1, do, lse2, delta, K_h, V_h, k_lo, s_k, s_q, n0, offs_m,
                                     win_left, win_right, stride_kt, stride_kd, stride_vt, stride_vd, scale_log2,
                                     D0, D1, DV, MASK_LO, MASK_HI, False, BLOCK_N, UPCAST, P_SPLIT)
    for n0 in range(tl.maximum(full_lo, full_hi), hi, BLOCK_N):  # diagonal / end of sequence, masked
        dq0, dq1 = _mha_bwd_dq_block(dq0, dq1, q0, q1, do, lse2, delta, K_h, V_h, k_lo, s_k, s_q, n0, offs_m,
                                     win_left, win_right, stride_kt, stride_kd, stride_vt, stride_vd, scale_log2,
                                     D0, D1, DV, MASK_LO, MASK_HI, True, BLOCK_N, UPCAST, P_SPLIT)

    dq_rows = (q_lo + offs_m)[:, None] * stride_gqt + h * stride_gqh
    tl.store(DQ + dq_rows + offs_d0[None, :] * stride_gqd, _round16(dq0 * softmax_scale, DQ.dtype.element_ty, UPCAST),
             mask=row_ok[:, None])
    tl.store(DQ + dq_rows + offs_d1[None, :] * stride_gqd, _round16(dq1 * softmax_scale, DQ.dtype.element_ty, UPCAST),
             mask=row_ok[:, None])
