"""Triton forward kernel of the dense MHA prefill (operations.md section 4).

One program per (query block, sequence, query head). The query/key head dimension is handled
as two power-of-two pieces, ``D0 + D1`` (192 = 128 + 64, 128 = 64 + 64), so every tile is a
power of two. Scores live in the exp2 domain (logits times ``softmax_scale * log2(e)``).
Key blocks that every row of the query block sees in full run without masks; the few blocks
at the causal diagonal, at the sliding-window edge and at the end of the sequence run with masks.

Masks are bottom-right aligned: row ``j`` sees keys ``d_j - left <= t <= d_j + right`` with
``d_j = s_k - s_q + j``; ``MASK_HI`` enables the right bound (causal: right = 0), ``MASK_LO``
the left one (sliding window). ``_key_range`` turns them into block ranges.
"""

from __future__ import annotations

from . import _runtime  # noqa: F401  (decides compiled vs interpreter mode before any kernel is built)

import triton
import triton.language as tl

LN2 = tl.constexpr(0.6931471805599453)  # natural log of 2: converts base-2 lse back to natural log


@triton.jit
def _round16(x, DTYPE: tl.constexpr, UPCAST: tl.constexpr):
    """float32 -> DTYPE (bf16 or fp16), round to nearest even.

    Compiled Triton already rounds to nearest even; Triton's interpreter (3.9) truncates to
    bf16, so interpreted launches (UPCAST) round the float32 bit pattern first.
    """
    if UPCAST and DTYPE == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & -65536  # keep the high half, ties to even
        x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)


@triton.jit
def _sequence_bounds(cu_q, cu_k, seq):
    """First packed row (int64) and length of sequence `seq`, for the queries and the keys."""
    q_lo = tl.load(cu_q + seq)
    s_q = tl.load(cu_q + seq + 1) - q_lo
    k_lo = tl.load(cu_k + seq)
    s_k = tl.load(cu_k + seq + 1) - k_lo
    return q_lo.to(tl.int64), s_q, k_lo.to(tl.int64), s_k  # int64: token offsets times strides may pass 2^31


@triton.jit
def _mma(a, b, acc, UPCAST: tl.constexpr):
    """acc + a @ b with float32 accumulation on 16-bit operands.

    Triton's interpreter (3.9) computes bf16 x bf16 dots wrongly; interpreted launches feed it
    float32 copies, which gives the same value (products of 16-bit floats are exact in float32).
    """
    if UPCAST:
        res = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        res = tl.dot(a, b, acc)
    return res


@triton.jit
def _mma_split(x, b, acc, UPCAST: tl.constexpr, SPLIT: tl.constexpr):
    """acc + x @ b for a float32 ``x`` (probabilities, dS) rounded to 16 bits once, as FlashMLA does.

    With SPLIT (MLAVERIFY_P_SPLIT=1) x is carried as two 16-bit terms hi + lo (about 2^-17 instead
    of 2^-9 relative per term), at twice the tensor-core work.
    """
    hi = _round16(x, b.dtype, UPCAST)
    acc = _mma(hi, b, acc, UPCAST)
    if SPLIT:
        lo = _round16(x - hi.to(tl.float32), b.dtype, UPCAST)
        acc = _mma(lo, b, acc, UPCAST)
    return acc


@triton.jit
def _key_range(s_q, s_k, m0, win_left, win_right, MASK_LO: tl.constexpr, MASK_HI: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key blocks of query rows [m0, m0 + BLOCK_M): (lo, full_lo, full_hi, hi).

    Keys in [full_lo, full_hi) (whole blocks) are visible to every row; the blocks in
    [lo, full_lo) and [max(full_lo, full_hi), hi) need masks; keys outside [lo, hi) are hidden
    from every row.
    """
    base = s_k - s_q  # row j's diagonal key is base + j
    if MASK_HI:
        hi = tl.minimum(s_k, tl.maximum(base + m0 + BLOCK_M + win_right, 0))  # past the last row's bound
        full_hi = tl.minimum(s_k, tl.maximum(base + m0 + 1 + win_right, 0))  # past the first row's bound
    else:
        hi = s_k
        full_hi = s_k
    full_hi = (full_hi // BLOCK_N) * BLOCK_N
    if MASK_LO:
        lo = tl.maximum(base + m0 - win_left, 0)  # the first row's lowest key
        lo = (lo // BLOCK_N) * BLOCK_N
        full_lo = tl.maximum(base + m0 + BLOCK_M - 1 - win_left, 0)  # the last row's lowest key
        full_lo = ((full_lo + BLOCK_N - 1) // BLOCK_N) * BLOCK_N
    else:
        lo = s_k * 0
        full_lo = s_k * 0
    return lo, full_lo, full_hi, hi


@triton.jit
def _visible(offs_m, offs_n, s_q, s_k, win_left, win_right, MASK_LO: tl.constexpr, MASK_HI: tl.constexpr):
    """[rows, keys] bool: key exists and lies inside row's bottom-right aligned window."""
    diag = s_k - s_q + offs_m[:, None]
    visible = offs_n[None, :] < s_k
    if MASK_HI:
        visible = visible & (offs_n[None, :] <= diag + win_right)
    if MASK_LO:
        visible = visible & (offs_n[None, :] >= diag - win_left)
    return visible


@triton.jit
def _mha_fwd_block(acc, l_i, m_i, q0, q1, K, V, k_lo, s_k, s_q, n0, offs_m, win_left, win_right,
                   stride_kt, stride_kd, stride_vt, stride_vd, scale_log2,
                   D0: tl.constexpr, D1: tl.constexpr, DV: tl.constexpr,
                   MASK_LO: tl.constexpr, MASK_HI: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr,
                   UPCAST: tl.constexpr, P_SPLIT: tl.constexpr):
    """Fold key block [n0, n0 + BLOCK_N) into the running (acc, l_i, m_i) of one query block."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, D0)
    offs_d1 = D0 + tl.arange(0, D1)
    offs_v = tl.arange(0, DV)
    k_rows = (k_lo + offs_n)[:, None] * stride_kt
    v_rows = (k_lo + offs_n)[:, None] * stride_vt
    if MASKED:
        key_ok = offs_n < s_k
        k0 = tl.load(K + k_rows + offs_d0[None, :] * stride_kd, mask=key_ok[:, None], other=0.0)
        k1 = tl.load(K + k_rows + offs_d1[None, :] * stride_kd, mask=key_ok[:, None], other=0.0)
        v = tl.load(V + v_rows + offs_v[None, :] * stride_vd, mask=key_ok[:, None], other=0.0)
    else:
        k0 = tl.load(K + k_rows + offs_d0[None, :] * stride_kd)
        k1 = tl.load(K + k_rows + offs_d1[None, :] * stride_kd)
        v = tl.load(V + v_rows + offs_v[None, :] * stride_vd)
    s = _mma(q0, tl.trans(k0), None, UPCAST)  # [BLOCK_M, BLOCK_N] float32: the D0 piece of <q, k>
    s = _mma(q1, tl.trans(k1), s, UPCAST)  # plus the D1 piece
    s = s * scale_log2  # exp2 domain: scale by softmax_scale * log2(e)
    if MASKED:
        s = tl.where(_visible(offs_m, offs_n, s_q, s_k, win_left, win_right, MASK_LO, MASK_HI), s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no visible key yet: avoid -inf - -inf
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)  # rescale of what was accumulated so far
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = _mma_split(p, v, acc, UPCAST, P_SPLIT)
    return acc, l_i, m_new


@triton.jit
def _mha_fwd_kernel(
    Q, K, V, Out, Lse,  # q [total_q, h_q, D0 + D1], k [total_k, h_kv, D0 + D1], v [total_k, h_kv, DV]
    OutLo,  # like Out: out - round(out), written when STORE_LO (the backward's exact delta needs it)
    cu_q, cu_k,  # int32 [batch + 1] prefix sums of the sequence lengths
    blocks_per_seq,  # query blocks per sequence: grid axis 0 is (sequence, query block), no 65,535 cap on batch
    stride_qt, stride_qh, stride_qd,  # q strides (token, head, dim)
    stride_kt, stride_kh, stride_kd,  # k strides
    stride_vt, stride_vh, stride_vd,  # v strides
    stride_ot, stride_oh, stride_od,  # out strides
    stride_lh, stride_lt,  # lse buffer [h_q, total_q] strides
    scale_log2,  # softmax_scale * log2(e)
    win_left, win_right,  # window bounds (used when MASK_LO / MASK_HI)
    GROUP: tl.constexpr,  # query heads per KV head
    D0: tl.constexpr, D1: tl.constexpr,  # the two power-of-two pieces of d_qk
    DV: tl.constexpr,  # d_v
    MASK_LO: tl.constexpr, MASK_HI: tl.constexpr,  # left (sliding window) / right (causal) bound on keys
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,  # query rows / keys per tile
    STORE_LO: tl.constexpr,  # also write the rounding residual of out to OutLo
    UPCAST: tl.constexpr,  # interpreted launch: float32 dots and hand rounding (see _mma, _round16)
    P_SPLIT: tl.constexpr,  # P and dS as hi + lo 16-bit terms (mlaverify.kernels._options)
):
    tl.static_assert(D1 > 0)
    seq = tl.program_id(0) // blocks_per_seq
    pid_m = tl.program_id(0) % blocks_per_seq  # query blocks of a sequence run side by side
    h = tl.program_id(1)
    q_lo, s_q, k_lo, s_k = _sequence_bounds(cu_q, cu_k, seq)
    m0 = pid_m * BLOCK_M
    if m0 >= s_q:
        return
    kvh = h // GROUP  # GQA: the KV head this query head reads

    offs_m = m0 + tl.arange(0, BLOCK_M)
    row_ok = offs_m < s_q
    q_rows = (q_lo + offs_m)[:, None] * stride_qt + h * stride_qh
    q0 = tl.load(Q + q_rows + tl.arange(0, D0)[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)
    q1 = tl.load(Q + q_rows + (D0 + tl.arange(0, D1))[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max (exp2 domain)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, DV], tl.float32)  # running sum of exp2(s - m_i) * v

    lo, full_lo, full_hi, hi = _key_range(s_q, s_k, m0, win_left, win_right, MASK_LO, MASK_HI, BLOCK_M, BLOCK_N)
    K_h = K + kvh * stride_kh
    V_h = V + kvh * stride_vh
    for n0 in range(lo, tl.minimum(full_lo, hi), BLOCK_N):  # left window edge, masked
        acc, l_i, m_i = _mha_fwd_block(acc, l_i, m_i, q0, q1, K_h, V_h, k_lo, s_k, s_q, n0, offs_m, win_left,
                                       win_right, stride_kt, stride_kd, stride_vt, stride_vd, scale_log2,
                                       D0, D1, DV, MASK_LO, MASK_HI, True, BLOCK_N, UPCAST, P_SPLIT)
    for n0 in range(full_lo, full_hi, BLOCK_N):  # seen by every row, no mask
        acc, l_i, m_i = _mha_fwd_block(acc, l_i, m_i, q0, q1, K_h, V_h, k_lo, s_k, s_q, n0, offs_m, win_left,
                                       win_right, stride_kt, stride_kd, stride_vt, stride_vd, scale_log2,
                                       D0, D1, DV, MASK_LO, MASK_HI, False, BLOCK_N, UPCAST, P_SPLIT)
    for n0 in range(tl.maximum(full_lo, full_hi), hi, BLOCK_N):  # diagonal / end of sequence, masked
        acc, l_i, m_i = _mha_fwd_block(acc, l_i, m_i, q0, q1, K_h, V_h, k_lo, s_k, s_q, n0, offs_m, win_left,
                                       win_right, stride_kt, stride_kd, stride_vt, stride_vd, scale_log2,
                                       D0, D1, DV, MASK_LO, MASK_HI, True, BLOCK_N, UPCAST, P_SPLIT)

    empty = l_i == 0.0  # no visible key: out 0, lse +inf
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * LN2)  # natural log
    o_offs = (q_lo + offs_m)[:, None] * stride_ot + h * stride_oh + tl.arange(0, DV)[None, :] * stride_od
    out_hi = _round16(out, Out.dtype.element_ty, UPCAST)
    tl.store(Out + o_offs, out_hi, mask=row_ok[:, None])
    if STORE_LO:  # OutLo has Out's strides
        out_lo = _round16(out - out_hi.to(tl.float32), Out.dtype.element_ty, UPCAST)
        tl.store(OutLo + o_offs, out_lo, mask=row_ok[:, None])
    tl.store(Lse + h.to(tl.int64) * stride_lh + (q_lo + offs_m) * stride_lt, lse, mask=row_ok)  # h * total_q: int64


@triton.jit
def _mha_bwd_preprocess_kernel(
    Out, OutLo, DO, Delta,  # out, its rounding residual and dout [total_q, h_q, DV]; delta [h_q, total_q] float32
    total_q,  # packed query tokens
    stride_ot, stride_oh, stride_od,  # out strides
    stride_dt, stride_dh, stride_dd,  # dout strides
    stride_lh, stride_lt,  # delta strides
    DV: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta[h, t] = <dout[t, h], out[t, h]> = rowsum(P * dP), the softmax-backward correction.

    ``out`` is taken unrounded, as out + residual: with the 16-bit out alone, dP - delta cancels
    badly on rows with few keys and dq/dk miss the spec's elementwise bound.
    """
    offs_m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    h = tl.program_id(1).to(tl.int64)  # h * stride_lh (= total_q) passes 2^31 on long batches
    offs_v = tl.arange(0, DV)
    row_ok = offs_m < total_q
    o_offs = offs_m[:, None] * stride_ot + h * stride_oh + offs_v[None, :] * stride_od
    o = tl.load(Out + o_offs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    o += tl.load(OutLo + o_offs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + offs_m[:, None] * stride_dt + h * stride_dh + offs_v[None, :] * stride_dd,
                 mask=row_ok[:, None], other=0.0)
    delta = tl.sum(o * do.to(tl.float32), 1)
    tl.store(Delta + h * stride_lh + offs_m * stride_lt, delta, mask=row_ok)
