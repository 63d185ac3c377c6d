"""
Triton FlashAttention-2 kernels for codelm: forward, backward (dK/dV and dQ kernels), their registration
as torch ops (so torch.compile sees them) and the autograd function. model.attention() calls
triton_attention() on CUDA; everything else in the project uses SDPA.

    from flash_attention import triton_attention
    o = triton_attention(q, k, v, causal=True)   # q (B, H, T, D), k/v (B, Hkv, T, D), H % Hkv == 0

CPU tests run the kernels under TRITON_INTERPRET=1 (set before triton is imported).
"""
import math
import os

import torch

# Forward: each program owns BLOCK_M query rows of one (batch, head) and streams over key blocks with
# an online softmax in base 2 (log2(e) folded into the scale), fp32 accumulators; it saves the
# log-sum-exp (base 2, of the scaled scores) for the backward. Backward: a preprocess computes
# delta = rowsum(dO * O); a dK/dV kernel owns BLOCK_N keys of one kv head and streams over the query
# blocks of every query head in its GQA group (so dK/dV are summed in registers, no repeated K/V, no
# atomics); a dQ kernel owns BLOCK_M query rows and streams over key blocks. Causal = the usual mask
# aligned at the start (query i sees keys 0..i, needs Tq == Tk); non-causal allows Tq != Tk. Every loop
# is split into blocks that need no mask and the few that do (the diagonal and the tail past T), so any
# T >= 1 works. Inputs are read through their strides (no copies); O is laid out (B, T, H, D) in memory
# so the caller's transpose(1, 2).view(B, T, H*D) is free. Under TRITON_INTERPRET=1 (CPU tests) dots run
# in fp32 because the interpreter's bf16 tl.dot is wrong; on GPU they use the input dtype with fp32
# accumulation (fp32 inputs use exact "ieee" dots, not tf32).
try:
    import triton
    import triton.language as tl
except ImportError:  # macOS / CPU-only installs: attention falls back to SDPA
    triton = None

    class tl:  # stand-in so the kernel signatures below still parse; they are never compiled
        constexpr = None

_FLASH_INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")
FLASH_HEAD_DIMS = (16, 32, 64, 128, 256)  # head sizes the kernels are built for (model.py uses SDPA for others)
_FLASH_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_LOG2E = 1.4426950408889634
# how the kernels are exposed to torch: "triton_op" (torch >= 2.6: torch.compile sees and fuses the
# kernels), "custom_op" (opaque op, torch >= 2.4; always used under the interpreter) or "none" (plain
# Python call). Override with CODELM_FLASH_OP if one of them misbehaves on some torch version.
_FLASH_OP_MODE = os.environ.get("CODELM_FLASH_OP", "auto")
_FLASH_AUTOTUNE = os.environ.get("CODELM_FLASH_AUTOTUNE", "1") != "0"  # 0: first config only (fast start)
_triton_jit = triton.jit if triton is not None else (lambda fn: fn)


@_triton_jit
def _flash_mm(a, b, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    # a @ b with fp32 accumulation. UPCAST only under the interpreter (its bf16 dot is broken);
    # IEEE for fp32 inputs (exact fp32 products instead of tf32).
    if UPCAST:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32))
    elif IEEE:
        c = tl.dot(a, b, input_precision="ieee")
    else:
        c = tl.dot(a, b)
    return c


@_triton_jit
def _flash_fwd_inner(acc, l_i, m_i, q, K, V, stride_kt, stride_kd, stride_vt, stride_vd,
                     offs_m, lo, hi, N_K, qk_scale,
                     HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                     MASK: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kT_ptrs = K + offs_n[None, :] * stride_kt + offs_d[:, None] * stride_kd  # (D, BLOCK_N)
        v_ptrs = V + offs_n[:, None] * stride_vt + offs_d[None, :] * stride_vd  # (BLOCK_N, D)
        if MASK:
            kT = tl.load(kT_ptrs, mask=offs_n[None, :] < N_K, other=0.0)
            v = tl.load(v_ptrs, mask=offs_n[:, None] < N_K, other=0.0)
        else:
            kT = tl.load(kT_ptrs)
            v = tl.load(v_ptrs)
        qk = _flash_mm(q, kT, UPCAST, IEEE) * qk_scale  # scores in log2 units
        if MASK:
            valid = offs_n[None, :] < N_K
            if CAUSAL:
                valid = valid & (offs_m[:, None] >= offs_n[None, :])
            qk = tl.where(valid, qk, float("-inf"))
        # every row sees key 0 in its first block, so m_new is finite and no row turns into NaN
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _flash_mm(p.to(v.dtype), v, UPCAST, IEEE)
        m_i = m_new
    return acc, l_i, m_i


@_triton_jit
def _flash_fwd_kernel(Q, K, V, O, LSE, qk_scale,
                      stride_qb, stride_qh, stride_qt, stride_qd,
                      stride_kb, stride_kh, stride_kt, stride_kd,
                      stride_vb, stride_vh, stride_vt, stride_vd,
                      stride_ob, stride_oh, stride_ot, stride_od,
                      H, GROUP, N_Q, N_K, T_BUCKET,
                      HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, UPCAST: tl.constexpr,
                      IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    qk_scale = tl.cast(qk_scale, tl.float32)  # inductor passes Python floats as fp64; math stays fp32
    start_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    b = (off_bh // H).to(tl.int64)
    h = (off_bh % H).to(tl.int64)
    hk = h // GROUP
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + hk * stride_kh
    V += b * stride_vb + hk * stride_vh
    O += b * stride_ob + h * stride_oh
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
                mask=offs_m[:, None] < N_Q, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if CAUSAL:  # keys before this block's first row are visible to all its rows (Tq == Tk)
        full_hi = start_m * BLOCK_M
        masked_hi = tl.minimum(full_hi + BLOCK_M, N_K)
    else:
        full_hi = (N_K // BLOCK_N) * BLOCK_N
        masked_hi = N_K
    acc, l_i, m_i = _flash_fwd_inner(acc, l_i, m_i, q, K, V, stride_kt, stride_kd, stride_vt, stride_vd,
                                     offs_m, 0, full_hi, N_K, qk_scale,
                                     HEAD_DIM, BLOCK_N, CAUSAL, False, UPCAST, IEEE)
    acc, l_i, m_i = _flash_fwd_inner(acc, l_i, m_i, q, K, V, stride_kt, stride_kd, stride_vt, stride_vd,
                                     offs_m, full_hi, masked_hi, N_K, qk_scale,
                                     HEAD_DIM, BLOCK_N, CAUSAL, True, UPCAST, IEEE)
    acc = acc / l_i[:, None]
    tl.store(LSE + off_bh.to(tl.int64) * N_Q + offs_m, m_i + tl.log2(l_i), mask=offs_m < N_Q)
    tl.store(O + offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od,
             acc.to(O.dtype.element_ty), mask=offs_m[:, None] < N_Q)


@_triton_jit
def _flash_bwd_preprocess(O, DO, DELTA,
                          stride_ob, stride_oh, stride_ot, stride_od,
                          stride_dob, stride_doh, stride_dot, stride_dod,
                          H, N_Q, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    start_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    b = (off_bh // H).to(tl.int64)
    h = (off_bh % H).to(tl.int64)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mask = offs_m[:, None] < N_Q
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od,
                mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod,
                 mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + off_bh.to(tl.int64) * N_Q + offs_m, tl.sum(o * do, 1), mask=offs_m < N_Q)


@_triton_jit
def _flash_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA,
                          stride_qt, stride_qd, stride_dot, stride_dod,
                          offs_n, lo, hi, N_Q, qk_scale,
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr,
                          MASK: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    offs_d = tl.arange(0, HEAD_DIM)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        qT_ptrs = Q + offs_m[None, :] * stride_qt + offs_d[:, None] * stride_qd  # (D, BLOCK_M)
        do_ptrs = DO + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod  # (BLOCK_M, D)
        if MASK:
            qT = tl.load(qT_ptrs, mask=offs_m[None, :] < N_Q, other=0.0)
            do = tl.load(do_ptrs, mask=offs_m[:, None] < N_Q, other=0.0)
            lse = tl.load(LSE + offs_m, mask=offs_m < N_Q, other=0.0)
            delta = tl.load(DELTA + offs_m, mask=offs_m < N_Q, other=0.0)
        else:
            qT = tl.load(qT_ptrs)
            do = tl.load(do_ptrs)
            lse = tl.load(LSE + offs_m)
            delta = tl.load(DELTA + offs_m)
        pT = tl.exp2(_flash_mm(k, qT, UPCAST, IEEE) * qk_scale - lse[None, :])  # (BLOCK_N, BLOCK_M)
        if MASK:
            valid = offs_m[None, :] < N_Q
            if CAUSAL:
                valid = valid & (offs_m[None, :] >= offs_n[:, None])
            pT = tl.where(valid, pT, 0.0)
        dv += _flash_mm(pT.to(do.dtype), do, UPCAST, IEEE)
        dpT = _flash_mm(v, tl.trans(do), UPCAST, IEEE)
        dsT = pT * (dpT - delta[None, :])
        dk += _flash_mm(dsT.to(qT.dtype), tl.trans(qT), UPCAST, IEEE)
    return dk, dv


@_triton_jit
def _flash_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, qk_scale, sm_scale,
                           stride_qb, stride_qh, stride_qt, stride_qd,
                           stride_kb, stride_kh, stride_kt, stride_kd,
                           stride_vb, stride_vh, stride_vt, stride_vd,
                           stride_dob, stride_doh, stride_dot, stride_dod,
                           stride_dkb, stride_dkh, stride_dkt, stride_dkd,
                           stride_dvb, stride_dvh, stride_dvt, stride_dvd,
                           H, GROUP, N_Q, N_K, T_BUCKET,
                           HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, UPCAST: tl.constexpr,
                           IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    qk_scale = tl.cast(qk_scale, tl.float32)  # inductor passes Python floats as fp64
    sm_scale = tl.cast(sm_scale, tl.float32)
    start_n = tl.program_id(0)
    off_bhk = tl.program_id(1)
    H_KV = H // GROUP
    b = (off_bhk // H_KV).to(tl.int64)
    hk = (off_bhk % H_KV).to(tl.int64)
    n0 = start_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    kv_mask = offs_n[:, None] < N_K
    k = tl.load(K + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :] * stride_kd,
                mask=kv_mask, other=0.0)
    v = tl.load(V + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :] * stride_vd,
                mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    # query blocks: [n0, n0+BLOCK_N) straddle the diagonal (causal only), then whole blocks with no
    # mask, then the tail past the last whole block (masked). Key rows past N_K only feed their own
    # (unstored) dK/dV rows, so they need no mask here.
    full_q = (N_Q // BLOCK_M) * BLOCK_M
    if CAUSAL:
        lo_full = n0 + BLOCK_N
        hi_full = tl.maximum(lo_full, full_q)
    else:
        lo_full = 0
        hi_full = full_q
    for g in range(0, GROUP):  # the query heads sharing this kv head
        h = hk * GROUP + g
        Qh = Q + b * stride_qb + h * stride_qh
        DOh = DO + b * stride_dob + h * stride_doh
        LSEh = LSE + (b * H + h) * N_Q
        DELTAh = DELTA + (b * H + h) * N_Q
        if CAUSAL:
            dk, dv = _flash_bwd_dkdv_inner(dk, dv, k, v, Qh, DOh, LSEh, DELTAh,
                                           stride_qt, stride_qd, stride_dot, stride_dod,
                                           offs_n, n0, tl.minimum(n0 + BLOCK_N, N_Q), N_Q, qk_scale,
                                           HEAD_DIM, BLOCK_M, CAUSAL, True, UPCAST, IEEE)
        dk, dv = _flash_bwd_dkdv_inner(dk, dv, k, v, Qh, DOh, LSEh, DELTAh,
                                       stride_qt, stride_qd, stride_dot, stride_dod,
                                       offs_n, lo_full, hi_full, N_Q, qk_scale,
                                       HEAD_DIM, BLOCK_M, CAUSAL, False, UPCAST, IEEE)
        dk, dv = _flash_bwd_dkdv_inner(dk, dv, k, v, Qh, DOh, LSEh, DELTAh,
                                       stride_qt, stride_qd, stride_dot, stride_dod,
                                       offs_n, hi_full, N_Q, N_Q, qk_scale,
                                       HEAD_DIM, BLOCK_M, CAUSAL, True, UPCAST, IEEE)
    dk *= sm_scale
    tl.store(DK + b * stride_dkb + hk * stride_dkh + offs_n[:, None] * stride_dkt + offs_d[None, :] * stride_dkd,
             dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + b * stride_dvb + hk * stride_dvh + offs_n[:, None] * stride_dvt + offs_d[None, :] * stride_dvd,
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@_triton_jit
def _flash_bwd_dq_inner(dq, q, do, lse, delta, K, V, stride_kt, stride_kd, stride_vt, stride_vd,
                        offs_m, lo, hi, N_K, qk_scale,
                        HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                        MASK: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kT_ptrs = K + offs_n[None, :] * stride_kt + offs_d[:, None] * stride_kd  # (D, BLOCK_N)
        vT_ptrs = V + offs_n[None, :] * stride_vt + offs_d[:, None] * stride_vd
        if MASK:
            kT = tl.load(kT_ptrs, mask=offs_n[None, :] < N_K, other=0.0)
            vT = tl.load(vT_ptrs, mask=offs_n[None, :] < N_K, other=0.0)
        else:
            kT = tl.load(kT_ptrs)
            vT = tl.load(vT_ptrs)
        p = tl.exp2(_flash_mm(q, kT, UPCAST, IEEE) * qk_scale - lse[:, None])
        if MASK:
            valid = offs_n[None, :] < N_K
            if CAUSAL:
                valid = valid & (offs_m[:, None] >= offs_n[None, :])
            p = tl.where(valid, p, 0.0)
        dp = _flash_mm(do, vT, UPCAST, IEEE)
        ds = p * (dp - delta[:, None])
        dq += _flash_mm(ds.to(kT.dtype), tl.trans(kT), UPCAST, IEEE)
    return dq


@_triton_jit
def _flash_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, qk_scale, sm_scale,
                         stride_qb, stride_qh, stride_qt, stride_qd,
                         stride_kb, stride_kh, stride_kt, stride_kd,
                         stride_vb, stride_vh, stride_vt, stride_vd,
                         stride_dob, stride_doh, stride_dot, stride_dod,
                         stride_dqb, stride_dqh, stride_dqt, stride_dqd,
                         H, GROUP, N_Q, N_K, T_BUCKET,
                         HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, UPCAST: tl.constexpr,
                         IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    qk_scale = tl.cast(qk_scale, tl.float32)  # inductor passes Python floats as fp64
    sm_scale = tl.cast(sm_scale, tl.float32)
    start_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    b = (off_bh // H).to(tl.int64)
    h = (off_bh % H).to(tl.int64)
    hk = h // GROUP
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_mask = offs_m < N_Q
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
                mask=row_mask[:, None], other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod,
                 mask=row_mask[:, None], other=0.0)
    lse = tl.load(LSE + off_bh.to(tl.int64) * N_Q + offs_m, mask=row_mask, other=0.0)
    delta = tl.load(DELTA + off_bh.to(tl.int64) * N_Q + offs_m, mask=row_mask, other=0.0)
    K += b * stride_kb + hk * stride_kh
    V += b * stride_vb + hk * stride_vh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if CAUSAL:
        full_hi = start_m * BLOCK_M
        masked_hi = tl.minimum(full_hi + BLOCK_M, N_K)
    else:
        full_hi = (N_K // BLOCK_N) * BLOCK_N
        masked_hi = N_K
    dq = _flash_bwd_dq_inner(dq, q, do, lse, delta, K, V, stride_kt, stride_kd, stride_vt, stride_vd,
                             offs_m, 0, full_hi, N_K, qk_scale, HEAD_DIM, BLOCK_N, CAUSAL, False, UPCAST, IEEE)
    dq = _flash_bwd_dq_inner(dq, q, do, lse, delta, K, V, stride_kt, stride_kd, stride_vt, stride_vd,
                             offs_m, full_hi, masked_hi, N_K, qk_scale, HEAD_DIM, BLOCK_N, CAUSAL, True,
                             UPCAST, IEEE)
    dq *= sm_scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqt + offs_d[None, :] * stride_dqd,
             dq.to(DQ.dtype.element_ty), mask=row_mask[:, None])


# Autotuning candidates as (BLOCK_M, BLOCK_N, num_warps, num_stages), per kernel, GPU generation and
# head-dim class. Causal loops need BLOCK_M % BLOCK_N == 0 (fwd, dq) and BLOCK_N % BLOCK_M == 0 (dkdv).
# Configs that do not fit a GPU's shared memory are dropped by the autotuner (OutOfResources).
# Best config is cached per (T bucket, causal, head dim, dtypes).
_FLASH_CONFIGS = {
    # Hopper (sm90)
    ("fwd", 9, "small"): [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 4), (64, 64, 4, 4)],
    ("fwd", 9, 128): [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3)],
    ("fwd", 9, 256): [(64, 32, 4, 2), (64, 64, 4, 2), (128, 32, 8, 2), (128, 64, 8, 2)],
    ("dkdv", 9, "small"): [(32, 128, 4, 3), (64, 128, 8, 3), (32, 64, 4, 3), (64, 64, 4, 2)],
    ("dkdv", 9, 128): [(32, 128, 8, 3), (64, 128, 8, 2), (32, 64, 4, 3), (64, 64, 4, 2)],
    ("dkdv", 9, 256): [(16, 64, 4, 2), (32, 64, 4, 1), (32, 32, 4, 2), (16, 32, 4, 2)],
    ("dq", 9, "small"): [(128, 32, 4, 3), (128, 64, 8, 3), (64, 32, 4, 3), (64, 64, 4, 2)],
    ("dq", 9, 128): [(128, 32, 8, 3), (128, 64, 8, 2), (64, 32, 4, 3), (64, 64, 4, 2)],
    ("dq", 9, 256): [(64, 16, 4, 2), (64, 32, 4, 1), (32, 32, 4, 2), (32, 16, 4, 2)],
    # Ampere (sm80/86/89) and anything else: fewer stages (less shared memory)
    ("fwd", 8, "small"): [(128, 64, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 32, 4, 4)],
    ("fwd", 8, 128): [(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 2)],
    ("fwd", 8, 256): [(64, 32, 4, 2), (64, 64, 4, 1), (128, 32, 8, 1), (32, 32, 4, 1)],
    ("dkdv", 8, "small"): [(32, 128, 4, 2), (64, 128, 8, 2), (32, 64, 4, 3), (64, 64, 4, 2)],
    ("dkdv", 8, 128): [(32, 128, 8, 2), (32, 64, 4, 2), (64, 64, 4, 2), (16, 64, 4, 2)],
    ("dkdv", 8, 256): [(16, 64, 4, 1), (32, 64, 4, 1), (32, 32, 4, 1), (16, 32, 4, 1)],
    ("dq", 8, "small"): [(128, 32, 4, 2), (128, 64, 8, 2), (64, 32, 4, 3), (64, 64, 4, 2)],
    ("dq", 8, 128): [(128, 32, 8, 2), (64, 32, 4, 2), (64, 64, 4, 2), (64, 16, 4, 2)],
    ("dq", 8, 256): [(64, 16, 4, 1), (64, 32, 4, 1), (32, 32, 4, 1), (32, 16, 4, 1)],
}
# under the interpreter: one small config (no tuning), blocks small enough that tests cross several
_FLASH_INTERPRET_CONFIGS = {"fwd": (32, 16, 4, 1), "dkdv": (16, 32, 4, 1), "dq": (32, 16, 4, 1)}
_FLASH_KERNELS = {"fwd": "_flash_fwd_kernel", "dkdv": "_flash_bwd_dkdv_kernel", "dq": "_flash_bwd_dq_kernel"}
_flash_autotuners = {}


def _flash_kernel(kind, head_dim, device):
    """The autotuned kernel for this kernel kind, GPU generation and head-dim class (built once)."""
    if _FLASH_INTERPRET or device.type != "cuda":
        arch, dclass = 0, 0
        configs = [_FLASH_INTERPRET_CONFIGS[kind]]
    else:
        arch = 9 if torch.cuda.get_device_capability(device)[0] >= 9 else 8
        dclass = head_dim if head_dim >= 128 else "small"
        configs = _FLASH_CONFIGS[(kind, arch, dclass)][:None if _FLASH_AUTOTUNE else 1]
    key = (kind, arch, dclass, len(configs))
    if key not in _flash_autotuners:
        configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                   for bm, bn, w, s in configs]
        _flash_autotuners[key] = triton.autotune(configs=configs, key=["T_BUCKET", "CAUSAL", "HEAD_DIM"])(
            globals()[_FLASH_KERNELS[kind]])
    return _flash_autotuners[key]


def _flash_wrap(kernel):
    wrap = getattr(torch.library, "wrap_triton", None)
    return wrap(kernel) if wrap is not None and not _FLASH_INTERPRET else kernel


def _flash_empty(shape, dtype, device):
    return torch.empty(shape, dtype=dtype, device=device)


def _flash_empty_like(t):
    return torch.empty_like(t)


def _flash_t_bucket(t):
    # autotune shape class: T rounded up to a power of two; under torch.compile with a dynamic T
    # (a SymInt) one class, tuned on the first shape seen
    return min(triton.next_power_of_2(t), 16384) if isinstance(t, int) else 0


def _flash_attn_fwd_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                         sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    o = _flash_empty((B, Tq, H, D), q.dtype, q.device).transpose(1, 2)  # (B, H, T, D) view
    lse = _flash_empty((B, H, Tq), torch.float32, q.device)
    kernel = _flash_kernel("fwd", D, q.device)
    grid = lambda meta: (triton.cdiv(Tq, meta["BLOCK_M"]), B * H)
    _flash_wrap(kernel)[grid](
        q, k, v, o, lse, sm_scale * _LOG2E, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
        H, H // Hkv, Tq, Tk, _flash_t_bucket(max(Tq, Tk)),
        HEAD_DIM=D, CAUSAL=causal, UPCAST=_FLASH_INTERPRET, IEEE=q.dtype == torch.float32)
    return o, lse


def _flash_attn_bwd_impl(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                         lse: torch.Tensor, causal: bool, sm_scale: float
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    delta = _flash_empty((B, H, Tq), torch.float32, q.device)
    dq, dk, dv = _flash_empty_like(q), _flash_empty_like(k), _flash_empty_like(v)
    pre_block = 32 if _FLASH_INTERPRET else 64
    _flash_wrap(_flash_bwd_preprocess)[(triton.cdiv(Tq, pre_block), B * H)](
        o, do, delta, *o.stride(), *do.stride(), H, Tq, HEAD_DIM=D, BLOCK_M=pre_block)
    common = dict(HEAD_DIM=D, CAUSAL=causal, UPCAST=_FLASH_INTERPRET, IEEE=q.dtype == torch.float32)
    tb = _flash_t_bucket(max(Tq, Tk))
    grid_kv = lambda meta: (triton.cdiv(Tk, meta["BLOCK_N"]), B * Hkv)
    _flash_wrap(_flash_kernel("dkdv", D, q.device))[grid_kv](
        q, k, v, do, lse, delta, dk, dv, sm_scale * _LOG2E, sm_scale,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
        H, H // Hkv, Tq, Tk, tb, **common)
    grid_q = lambda meta: (triton.cdiv(Tq, meta["BLOCK_M"]), B * H)
    _flash_wrap(_flash_kernel("dq", D, q.device))[grid_q](
        q, k, v, do, lse, delta, dq, sm_scale * _LOG2E, sm_scale,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
        H, H // Hkv, Tq, Tk, tb, **common)
    return dq, dk, dv


def _flash_register_ops(ns="codelm"):
    """Expose fwd/bwd as torch ops so torch.compile keeps them in one graph (no graph break)."""
    lib = torch.library
    mode = _FLASH_OP_MODE
    if mode == "auto":
        mode = "triton_op" if hasattr(lib, "triton_op") and not _FLASH_INTERPRET else "custom_op"
    if mode == "custom_op" and not hasattr(lib, "custom_op"):
        mode = "none"
    if mode == "none":
        return _flash_attn_fwd_impl, _flash_attn_bwd_impl
    ops = getattr(torch.ops, ns)
    if hasattr(ops, "flash_attn_fwd"):  # this file imported twice (e.g. as __main__ and as a module)
        return ops.flash_attn_fwd, ops.flash_attn_bwd
    if mode == "triton_op":  # compile sees the kernels (fake impl derived from the function itself)
        fwd = lib.triton_op(f"{ns}::flash_attn_fwd", mutates_args=())(_flash_attn_fwd_impl)
        bwd = lib.triton_op(f"{ns}::flash_attn_bwd", mutates_args=())(_flash_attn_bwd_impl)
    else:  # opaque op with explicit shape functions
        fwd = lib.custom_op(f"{ns}::flash_attn_fwd", mutates_args=())(_flash_attn_fwd_impl)
        bwd = lib.custom_op(f"{ns}::flash_attn_bwd", mutates_args=())(_flash_attn_bwd_impl)

        @fwd.register_fake
        def _(q, k, v, causal, sm_scale):
            B, H, Tq, D = q.shape
            return q.new_empty((B, Tq, H, D)).transpose(1, 2), q.new_empty((B, H, Tq), dtype=torch.float32)

        @bwd.register_fake
        def _(do, q, k, v, o, lse, causal, sm_scale):
            return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    return fwd, bwd


_flash_op_pair = None


def _flash_ops():
    """The registered (fwd, bwd) ops, registered on first need."""
    global _flash_op_pair
    if _flash_op_pair is None:  # a separate namespace when interpreted: a process may import this file both ways
        _flash_op_pair = _flash_register_ops("codelm_interpret" if _FLASH_INTERPRET else "codelm")
    return _flash_op_pair


# Register at import where the kernels can run, so torch.compile never registers mid-trace; elsewhere
# (CPU-only machines) skip it: registering a triton_op imports Inductor, ~2 s on every start.
if triton is not None and (_FLASH_INTERPRET or torch.cuda.is_available()):
    _flash_ops()


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale):
        o, lse = _flash_ops()[0](q, k, v, causal, sm_scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.sm_scale = causal, sm_scale
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable  # no double backward
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _flash_ops()[1](do, q, k, v, o, lse, ctx.causal, ctx.sm_scale)
        return dq, dk, dv, None, None


def _flash_check(q, k, v, causal):
    """Raise ValueError naming the bad argument, before anything launches."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"triton_attention: {name} must be a 4-D tensor (B, heads, T, head_dim), got {shape}")
    B, H, Tq, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"triton_attention: v shape {tuple(v.shape)} must equal k shape {tuple(k.shape)}")
    Bk, Hkv, Tk, Dk = k.shape
    if Bk != B:
        raise ValueError(f"triton_attention: k batch size {Bk} != q batch size {B}")
    if Dk != D:
        raise ValueError(f"triton_attention: k head_dim {Dk} != q head_dim {D}")
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"triton_attention: q heads ({H}) must be a multiple of k/v heads ({Hkv})")
    if D not in FLASH_HEAD_DIMS:
        raise ValueError(f"triton_attention: head_dim {D} not supported (one of {FLASH_HEAD_DIMS})")
    if Tq < 1 or Tk < 1 or B < 1:
        raise ValueError(f"triton_attention: empty input (q shape {tuple(q.shape)}, k shape {tuple(k.shape)})")
    if causal and Tq != Tk:
        raise ValueError(f"triton_attention: causal needs equal q and k lengths, got q T={Tq}, k T={Tk}")
    if q.dtype not in _FLASH_DTYPES:
        raise ValueError(f"triton_attention: q dtype {q.dtype} not supported (float16, bfloat16, float32)")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"triton_attention: {name} dtype {t.dtype} != q dtype {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"triton_attention: {name} is on {t.device} but q is on {q.device}")
    if q.device.type != "cuda" and not _FLASH_INTERPRET:
        raise ValueError(f"triton_attention: q is on {q.device}; the Triton kernels need a CUDA device "
                         "(or TRITON_INTERPRET=1 set before importing triton, for tests)")


def flash_attention_usable(q, k, causal=True):
    """Whether impl='auto' should use triton_attention for these inputs (else SDPA)."""
    return (triton is not None and q.is_cuda and q.shape[-1] in FLASH_HEAD_DIMS and q.dtype in _FLASH_DTYPES
            and (not causal or q.shape[2] == k.shape[2]))


def triton_attention(q, k, v, causal=True, sm_scale=None):
    """FlashAttention-2 in Triton. q (B, H, T, D); k, v (B, Hkv, T, D) with H % Hkv == 0 (GQA).
    Returns (B, H, T, D) in q's dtype; differentiable in q, k, v."""
    if triton is None:
        raise RuntimeError("triton_attention: triton is not installed (use attn_impl='sdpa')")
    _flash_check(q, k, v, causal)
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
    return _FlashAttention.apply(q, k, v, bool(causal), sm_scale)
