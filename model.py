"""
The codelm transformer: a Llama-style decoder (RMSNorm, rotate-half RoPE, SwiGLU, no biases,
grouped-query attention, optional tied embeddings), KV-cache generation, FLOP/MFU accounting, and the
checkpoint folder (model.safetensors + config.json + tokenizer.model + train_state.pt).

    from model import GPT, GPTConfig, load_model
    model, config = load_model("out/")            # a checkpoint folder
    new_tokens = model.generate([prompt_ids], max_new_tokens=128, temperature=0.8, top_p=0.95)
    model, config = load_model("hf/CodeLlama-7b-Python-hf")  # a Hugging Face Llama/Mistral folder works too

    python model.py export --ckpt out/ --to hf/        # a Hugging Face LlamaForCausalLM folder
    python model.py import --hf llama/ --to out/llama  # the other way

Fine-tuning pieces live here too: LoRA adapters (add_lora / merge_lora) and vocabulary growth for
added tokens (grow_vocab).
"""
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB_MULTIPLE = 64          # embedding rows are padded to a multiple of this (faster matmuls)
CHECKPOINT_FORMAT = "codelm"
# Peak dense bf16 tensor-core throughput, FLOP/s, for MFU (vendor datasheets, SXM parts).
PEAK_BF16_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12}


class ModelError(Exception):
    """Bad model input or checkpoint: the message names the file, key or argument."""


@dataclass
class GPTConfig:
    vocab_size: int = 32768          # tokenizer vocabulary (the embedding is padded beyond it)
    block_size: int = 2048           # longest training context
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int = 0               # grouped-query attention: key/value heads (0 = n_head)
    n_embd: int = 768
    intermediate_size: int = 0       # SwiGLU hidden size (0 = 8/3 * n_embd rounded up to 256, as Llama)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    attn_impl: str = "auto"          # 'auto' (Triton on CUDA, SDPA elsewhere) | 'triton' | 'sdpa'

    def __post_init__(self):
        if self.n_kv_head == 0:
            self.n_kv_head = self.n_head
        if self.intermediate_size == 0:
            self.intermediate_size = 256 * math.ceil(8 * self.n_embd / 3 / 256)
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ModelError(f"GPTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ModelError(f"GPTConfig: n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ModelError(f"GPTConfig: n_head {self.n_head} is not divisible by n_kv_head {self.n_kv_head}")
        if (self.n_embd // self.n_head) % 2:
            raise ModelError(f"GPTConfig: head size {self.n_embd // self.n_head} must be even for RoPE")
        if self.attn_impl not in ("auto", "triton", "sdpa"):
            raise ModelError(f"GPTConfig.attn_impl must be 'auto', 'triton' or 'sdpa', got {self.attn_impl!r}")

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self):
        return VOCAB_MULTIPLE * math.ceil(self.vocab_size / VOCAB_MULTIPLE)

    @classmethod
    def from_dict(cls, d, where="config"):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelError(f"{where}: unknown model config keys {unknown}")
        return cls(**d)


# ----------------------------------------------------------------------------- attention
def sdpa_attention(q, k, v, causal=True):
    """PyTorch scaled_dot_product_attention; GQA without repeating K/V (enable_gqa)."""
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)


# ---- Triton flash attention (FlashAttention-2) ----
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
_FLASH_HEAD_DIMS = (16, 32, 64, 128, 256)
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
    if D not in _FLASH_HEAD_DIMS:
        raise ValueError(f"triton_attention: head_dim {D} not supported (one of {_FLASH_HEAD_DIMS})")
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
    return (triton is not None and q.is_cuda and q.shape[-1] in _FLASH_HEAD_DIMS and q.dtype in _FLASH_DTYPES
            and (not causal or q.shape[2] == k.shape[2]))


def triton_attention(q, k, v, causal=True, sm_scale=None):
    """FlashAttention-2 in Triton. q (B, H, T, D); k, v (B, Hkv, T, D) with H % Hkv == 0 (GQA).
    Returns (B, H, T, D) in q's dtype; differentiable in q, k, v."""
    if triton is None:
        raise RuntimeError("triton_attention: triton is not installed (use attn_impl='sdpa')")
    _flash_check(q, k, v, causal)
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
    return _FlashAttention.apply(q, k, v, bool(causal), sm_scale)
# ---- end Triton flash attention ----


def attention(q, k, v, causal=True, impl="auto"):
    """Attention of q (B, H, T, D) over k, v (B, Hkv, T, D): the one place attention is computed for
    training and prefill. impl: 'sdpa', 'triton' (our FlashAttention-2 kernels) or 'auto'."""
    if impl == "triton" or (impl == "auto" and flash_attention_usable(q, k, causal)):
        return triton_attention(q, k, v, causal)
    return sdpa_attention(q, k, v, causal)


# ----------------------------------------------------------------------------- modules
class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()  # the mean of squares in fp32, as Llama does
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_cos_sin(positions, head_dim, theta, device=None):
    """cos, sin of shape (*positions.shape, head_dim) for the rotate-half convention (Hugging Face Llama)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = positions.to(device=device, dtype=torch.float32)[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """x (B, H, T, D); cos/sin (T, D) or (B, 1, T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.attn_impl = cfg.attn_impl
        self.q = nn.Linear(cfg.n_embd, cfg.n_head * cfg.head_dim, bias=False)
        self.k = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.v = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.o = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=False)

    def forward(self, x, cos, sin, cache=None):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            y = attention(q, k, v, causal=True, impl=self.attn_impl)
        else:
            y = cache.attend(self, q, k, v)
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.up = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.down = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        return x + self.mlp(self.mlp_norm(x))


class KVCache:
    """Preallocated keys/values for every layer, (B, Hkv, S, D). Rows are left-aligned prompts: row r's
    prompt occupies columns pad[r]..L-1 and generation continues at column L, L+1, ... for all rows."""

    def __init__(self, cfg, batch, length, device, dtype):
        shape = (batch, cfg.n_kv_head, length, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.layer_of = {}   # Attention module -> layer index
        self.rows = None     # prefill: the cache rows (a slice) that receive this prompt
        self.col = 0         # first column written by the current call
        self.mask = None     # decode: (b, 1, 1, col+1) bool, True where a key may be attended

    def attend(self, attn, q, k, v):
        i = self.layer_of[attn]
        T = q.shape[2]
        if self.rows is not None:  # prefill of one prompt: plain causal attention, then store K/V
            self.k[i][self.rows, :, self.col:self.col + T] = k
            self.v[i][self.rows, :, self.col:self.col + T] = v
            return attention(q, k, v, causal=True, impl=attn.attn_impl)
        self.k[i][:, :, self.col] = k[:, :, 0]
        self.v[i][:, :, self.col] = v[:, :, 0]
        keys, values = self.k[i][:, :, :self.col + 1], self.v[i][:, :, :self.col + 1]
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=self.mask, enable_gqa=q.shape[1] != keys.shape[1])

    def keep(self, idx):
        """Drop finished rows: keep cache rows idx (a LongTensor)."""
        self.k = [t.index_select(0, idx) for t in self.k]
        self.v = [t.index_select(0, idx) for t in self.v]


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.padded_vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.activation_checkpointing = False
        self.reset_rope()
        if self.embed.weight.device.type != "meta":
            self.apply(self._init_weights)
            for name, p in self.named_parameters():  # scale residual projections by depth (GPT-2)
                if name.endswith(("attn.o.weight", "mlp.down.weight")):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def reset_rope(self, device=None):
        """(Re)build the RoPE tables; needed after loading weights onto a model built on 'meta'."""
        cos, sin = rope_cos_sin(torch.arange(self.cfg.block_size), self.cfg.head_dim, self.cfg.rope_theta, device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    # -- accounting
    def num_params(self, matmul_only=False):
        """All parameters, or only those in matrix multiplies (the embedding lookup costs no FLOPs;
        a tied head does)."""
        n = sum(p.numel() for p in self.parameters())
        if matmul_only and not self.cfg.tie_embeddings:
            n -= self.embed.weight.numel()
        return n

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token, forward + backward: 6N + 12·L·H·Q·T (PaLM, appendix B), N the
        parameters in matmuls, attention counted as non-causal (the usual convention)."""
        cfg = self.cfg
        T = seq_len or cfg.block_size
        return 6 * self.num_params(matmul_only=True) + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * T

    # -- forward
    def forward(self, idx, targets=None, loss_mask=None):
        """idx (B, T) token ids. Returns (logits (B, T, vocab_size), loss): with targets (B, T), the mean
        cross-entropy over positions where loss_mask is 1 and targets != -1; without, None."""
        B, T = idx.shape
        if T > self.cfg.block_size:
            raise ModelError(f"sequence length {T} exceeds block_size {self.cfg.block_size}")
        x = self.embed(idx)
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        for block in self.blocks:
            if self.activation_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin)
        # padding rows never enter the softmax; slicing the weight, not the output, keeps logits a fresh
        # tensor (FSDP2 warns about, and can mishandle, a view returned from the root module)
        logits = F.linear(self.norm(x), self.head.weight[:self.cfg.vocab_size])
        if targets is None:
            return logits, None
        losses = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1, reduction="none")
        weights = (targets.reshape(-1) != -1).float()
        if loss_mask is not None:
            weights = weights * loss_mask.reshape(-1).float()
        return logits, (losses * weights).sum() / weights.sum().clamp(min=1.0)

    def _forward_cached(self, idx, cos, sin, cache):
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, cos, sin, cache)
        return self.head(self.norm(x[:, -1:]))[:, -1, :self.cfg.vocab_size].float()

    # -- generation
    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, temperature=0.0, top_p=1.0, eos_id=None, n_samples=1,
                 stop=None, generator=None, return_logits=False):
        """Sample continuations of token-id prompts. Returns len(prompts) * n_samples lists of new ids
        (sample j of prompt i at i * n_samples + j), eos excluded. Each prompt is prefilled once (causal
        attention, no padding computed) and its keys/values copied to its n_samples rows; decoding runs
        all rows as one batch and drops rows as they finish (eos, or stop(row, new_ids) -> True).
        temperature 0 is greedy. return_logits=True also returns each row's (steps, vocab) logits."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ModelError("generate: every prompt needs at least one token")
        if max_new_tokens <= 0:
            raise ModelError(f"generate: max_new_tokens must be positive, got {max_new_tokens}")
        was_training = self.training
        self.eval()
        device, dtype = self.embed.weight.device, self.embed.weight.dtype
        n, L = n_samples, max(len(p) for p in prompts)
        B = len(prompts) * n
        cache = KVCache(self.cfg, B, L + max_new_tokens, device, dtype)
        cache.layer_of = {blk.attn: i for i, blk in enumerate(self.blocks)}
        pad = torch.tensor([L - len(p) for p in prompts for _ in range(n)], device=device)
        logits = torch.empty(B, self.cfg.vocab_size, device=device)
        for i, p in enumerate(prompts):  # prefill: one pass per prompt, shared by its samples
            T = len(p)
            cos, sin = rope_cos_sin(torch.arange(T, device=device), self.cfg.head_dim, self.cfg.rope_theta, device)
            cache.rows, cache.col = slice(i * n, (i + 1) * n), L - T
            ids = torch.tensor([p], device=device)
            logits[i * n:(i + 1) * n] = self._forward_cached(ids, cos, sin, cache)
        cache.rows = None
        rows = torch.arange(B, device=device)   # cache row -> output index
        outs = [[] for _ in range(B)]
        step_logits = [[] for _ in range(B)] if return_logits else None
        col_ids = torch.arange(L + max_new_tokens, device=device)
        for step in range(max_new_tokens):
            if return_logits:
                for j, r in enumerate(rows.tolist()):
                    step_logits[r].append(logits[j].clone())
            tokens = sample_next(logits, temperature, top_p, generator)
            done = torch.zeros(len(rows), dtype=torch.bool)
            for j, (r, t) in enumerate(zip(rows.tolist(), tokens.tolist())):
                if eos_id is not None and t == eos_id:
                    done[j] = True
                    continue
                outs[r].append(t)
                if stop is not None and stop(r, outs[r]):
                    done[j] = True
            if step == max_new_tokens - 1 or bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1).to(device)
                cache.keep(keep)
                rows, tokens, pad = rows[keep], tokens[keep], pad[keep]
            col = L + step
            cache.col = col
            cache.mask = (col_ids[:col + 1][None, :] >= pad[:, None])[:, None, None, :]
            cos, sin = rope_cos_sin((col - pad)[:, None], self.cfg.head_dim, self.cfg.rope_theta, device)
            logits = self._forward_cached(tokens[:, None].to(device), cos[:, None], sin[:, None], cache)
        self.train(was_training)
        if return_logits:
            return outs, [torch.stack(s) if s else torch.empty(0, self.cfg.vocab_size) for s in step_logits]
        return outs


def sample_next(logits, temperature=0.0, top_p=1.0, generator=None):
    """Next token per row of logits (b, V): greedy at temperature 0, else temperature + nucleus (top-p)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the smallest set reaching top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return order.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------- MFU
def peak_flops(device=None):
    """Peak bf16 FLOP/s of the current CUDA device if it is in PEAK_BF16_FLOPS, else None."""
    if not torch.cuda.is_available() or (device is not None and torch.device(device).type != "cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def estimate_mfu(flops_per_token, tokens_per_second, peak, world_size=1):
    """Model FLOPs utilisation: achieved training FLOP/s over the peak of all devices."""
    return None if not peak else flops_per_token * tokens_per_second / (peak * world_size)


# ----------------------------------------------------------------------------- checkpoint folder
# out/model.safetensors, config.json, tokenizer.model, train_state.pt. A save writes every file into
# out/.ckpt.partial/, renames that folder to out/.ckpt.ready/ (the commit point), then moves the
# files into out/. A reader that finds .ckpt.ready finishes the moves first, so a kill at any moment
# leaves either the previous checkpoint or the new one, never a mix.
PARTIAL, READY = ".ckpt.partial", ".ckpt.ready"


def make_config(model_cfg, tokenizer=None, train=None, step=0, postprocess=None):
    """The config.json of a checkpoint folder: model shape, tokenizer facts (Tokenizer.to_config()),
    the training config, the step, and how generations must be post-processed (LintSeq edit format,
    Token Sugar table) so eval.py needs nothing but the folder."""
    return {"format": CHECKPOINT_FORMAT, "model": asdict(model_cfg), "tokenizer": tokenizer or {}, "train": train or {},
            "step": int(step), "postprocess": postprocess or {"edit_format": None, "sugar": None}}


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_checkpoint(folder):
    """Finish or discard an interrupted checkpoint write in folder (see above)."""
    folder = Path(folder)
    ready, partial = folder / READY, folder / PARTIAL
    if ready.is_dir():
        for f in sorted(ready.iterdir()):
            os.replace(f, folder / f.name)
        _fsync_dir(folder)
        ready.rmdir()
    if partial.exists():
        shutil.rmtree(partial, ignore_errors=True)


def save_checkpoint(folder, state_dict, config, tokenizer_file=None, train_state=None, weights_name="model.safetensors"):
    """Write a checkpoint folder atomically. state_dict: name -> tensor (plain names, full tensors;
    tied copies dropped); config: the dict for config.json; tokenizer_file: the SentencePiece model to
    copy; train_state: anything torch.save takes (resume only); weights_name: 'adapters.safetensors'
    for a LoRA adapters checkpoint (config["lora"] names its base)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    recover_checkpoint(folder)
    partial = folder / PARTIAL
    partial.mkdir()
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    if config.get("model", {}).get("tie_embeddings"):
        tensors.pop("head.weight", None)
    written = []
    save_file(tensors, partial / weights_name, metadata={"format": "pt", "step": str(config.get("step", 0))})
    written.append(weights_name)
    (partial / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    written.append("config.json")
    if tokenizer_file is not None:
        shutil.copyfile(tokenizer_file, partial / "tokenizer.model")
        written.append("tokenizer.model")
    if train_state is not None:
        torch.save(train_state, partial / "train_state.pt")
        written.append("train_state.pt")
    for name in written:
        with open(partial / name, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(partial)
    os.replace(partial, folder / READY)
    _fsync_dir(folder)
    recover_checkpoint(folder)


def read_config(folder):
    folder = Path(folder)
    recover_checkpoint(folder) if os.access(folder, os.W_OK) else None
    path = folder / "config.json"
    if not path.is_file():
        raise ModelError(f"{folder}: no config.json (not a checkpoint folder)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: not valid JSON ({e})")
    if not isinstance(config, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return config


def load_model(folder, device="cpu", dtype=None):
    """Load a checkpoint folder. Returns (model in eval mode, config dict). The model is built on the
    meta device and the weights are assigned straight from the file, cast to dtype if given, so no
    second full-precision copy is ever made."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = read_config(folder)
    if is_hf_config(config):  # a Hugging Face Llama/Mistral folder (see "Hugging Face interop")
        return load_hf_model(folder, device, dtype)
    if config.get("format") == CHECKPOINT_FORMAT and config.get("lora"):  # LoRA adapters + a base model
        return load_adapter_checkpoint(folder, config, device, dtype)
    if config.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{folder / 'config.json'}: not a codelm checkpoint (format {config.get('format')!r})")
    cfg = GPTConfig.from_dict(config["model"], where=str(folder / "config.json"))
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{folder}: missing model.safetensors")
    state = load_file(weights, device=str(device))
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    with torch.device("meta"):
        model = GPT(cfg)
    load_state(model, state, where=str(weights))
    model.reset_rope(device)
    return model.eval(), config


def load_state(model, state, where="weights"):
    """Assign a full state dict to a model, strictly: every tensor present, nothing extra, shapes equal."""
    expected = {k: v for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        expected.pop("head.weight", None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in expected
             if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}" if missing else "",
                 f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}" if unexpected else "",
                 f"wrong shapes {wrong[:4]}" if wrong else ""]
        raise ModelError(f"{where}: weights do not match the model config: " + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=False, assign=True)
    if model.cfg.tie_embeddings:
        model.head.weight = model.embed.weight


def model_state_dict(model):
    """Plain-named full state dict of a (possibly wrapped) GPT, without the tied head copy."""
    state = model.state_dict()
    if model.cfg.tie_embeddings:
        state.pop("head.weight", None)
    return state


# ---- Hugging Face interop ----
# A Hugging Face LlamaForCausalLM / MistralForCausalLM folder (config.json, model.safetensors or shards
# listed in model.safetensors.index.json, tokenizer.model) is the same network as ours under other
# names: both use rotate-half RoPE, so import and export are a renaming plus vocab padding (our
# embedding has a multiple of 64 rows; HF's has exactly vocab_size). Anything that would change the
# computation (rope scaling, sliding window, biases, another activation) is refused by name.
HF_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
_HF_LAYER_NAMES = {"self_attn.q_proj": "attn.q", "self_attn.k_proj": "attn.k", "self_attn.v_proj": "attn.v",
                   "self_attn.o_proj": "attn.o", "mlp.gate_proj": "mlp.gate", "mlp.up_proj": "mlp.up",
                   "mlp.down_proj": "mlp.down", "input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"}
_HF_TOP_NAMES = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight", "lm_head.weight": "head.weight"}
_HF_IGNORED = ("rotary_emb.inv_freq",)   # a buffer older transformers saved; recomputed from rope_theta


def is_hf_config(config):
    """Whether a parsed config.json is a Hugging Face model config (not a codelm checkpoint)."""
    return config.get("format") != CHECKPOINT_FORMAT and ("architectures" in config or "model_type" in config)


def hf_to_ours(name):
    """Our tensor name for a Hugging Face one, or None if it has no counterpart."""
    if name in _HF_TOP_NAMES:
        return _HF_TOP_NAMES[name]
    parts = name.split(".")
    if len(parts) >= 5 and parts[0] == "model" and parts[1] == "layers" and parts[2].isdigit() and parts[-1] == "weight":
        ours = _HF_LAYER_NAMES.get(".".join(parts[3:-1]))
        if ours:
            return f"blocks.{parts[2]}.{ours}.weight"
    return None


def ours_to_hf(name):
    for hf, ours in _HF_TOP_NAMES.items():
        if name == ours:
            return hf
    parts = name.split(".")
    inverse = {v: k for k, v in _HF_LAYER_NAMES.items()}
    if parts[0] == "blocks" and ".".join(parts[2:-1]) in inverse:
        return f"model.layers.{parts[1]}.{inverse['.'.join(parts[2:-1])]}.weight"
    raise ModelError(f"export: tensor {name!r} has no Hugging Face name (LoRA adapters must be merged first)")


def hf_model_config(hf, where="config.json"):
    """GPTConfig for a Hugging Face config dict; ModelError naming what we cannot run."""
    arch = hf.get("architectures") or []
    mtype = hf.get("model_type")
    if not (any(a in HF_ARCHITECTURES for a in arch) if arch else mtype in ("llama", "mistral")):
        raise ModelError(f"{where}: unsupported architecture {', '.join(arch) or repr(mtype)} "
                         f"(supported: {', '.join(HF_ARCHITECTURES)})")
    name = arch[0] if arch else mtype
    rope = hf.get("rope_scaling") or None
    params = hf.get("rope_parameters") or {}       # transformers >= 5 keeps rope_theta in here
    if rope is None and params.get("rope_type", "default") != "default":
        rope = params
    if rope is not None and (rope.get("rope_type") or rope.get("type")) != "default":
        raise ModelError(f"{where}: unsupported architecture {name} with rope_scaling {rope} (only plain RoPE)")
    for key, bad in (("attention_bias", True), ("mlp_bias", True)):
        if hf.get(key) is bad:
            raise ModelError(f"{where}: unsupported architecture {name} with {key}=true (codelm has no biases)")
    if hf.get("hidden_act", "silu") != "silu":
        raise ModelError(f"{where}: unsupported architecture {name} with hidden_act={hf['hidden_act']!r} (only silu/SwiGLU)")
    if hf.get("quantization_config"):
        raise ModelError(f"{where}: quantized weights ({hf['quantization_config'].get('quant_method', '?')}) are not supported")
    block = int(hf.get("max_position_embeddings", 2048))
    window = hf.get("sliding_window")
    if window is not None and hf.get("use_sliding_window", True) and int(window) < block:
        raise ModelError(f"{where}: unsupported architecture {name} with sliding_window={window} "
                         f"(< max_position_embeddings {block}; codelm attends over the whole context)")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size") if k not in hf]
    if missing:
        raise ModelError(f"{where}: missing keys {missing}")
    n_head = int(hf["num_attention_heads"])
    head_dim = hf.get("head_dim")
    if head_dim is not None and int(head_dim) != int(hf["hidden_size"]) // n_head:
        raise ModelError(f"{where}: unsupported architecture {name} with head_dim={head_dim} != hidden_size / num_attention_heads")
    return GPTConfig(vocab_size=int(hf["vocab_size"]), block_size=block, n_layer=int(hf["num_hidden_layers"]),
                     n_head=n_head, n_kv_head=int(hf.get("num_key_value_heads") or n_head), n_embd=int(hf["hidden_size"]),
                     intermediate_size=int(hf["intermediate_size"]),
                     rope_theta=float(hf.get("rope_theta", params.get("rope_theta", 10000.0))),
                     norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)))




def hf_weight_files(folder):
    """name -> safetensors file of a Hugging Face folder (one file, or shards via the index)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ModelError(f"{index}: not a safetensors index ({e})")
        for f in sorted(set(weight_map.values())):
            if not (folder / f).is_file():
                raise ModelError(f"{index}: shard {f} is missing")
        return {k: folder / f for k, f in weight_map.items()}
    single = folder / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(single, "pt") as f:
            return {k: single for k in f.keys()}
    if any(folder.glob("*.bin")):
        raise ModelError(f"{folder}: only PyTorch .bin weights; codelm reads safetensors (convert with transformers' save_pretrained(safe_serialization=True))")
    raise ModelError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def checkpoint_config(folder):
    """The config of any model folder in codelm's shape ({"format", "model", "tokenizer", "postprocess",
    ...}); a Hugging Face folder is translated (format 'hf', the original under "hf")."""
    from data import file_sha256  # data.py imports no torch: cheap

    folder = Path(folder)
    config = read_config(folder)
    if not is_hf_config(config):
        return config
    cfg = hf_model_config(config, where=str(folder / "config.json"))
    tok = folder / "tokenizer.model"
    if not tok.is_file():
        raise ModelError(f"{folder}: no tokenizer.model (codelm needs the SentencePiece model; tokenizer.json-only "
                         "models such as Llama 3 are not supported)")
    return {"format": "hf", "model": asdict(cfg), "tokenizer": {"file": "tokenizer.model", "sha256": file_sha256(tok)},
            "train": {}, "step": 0, "postprocess": config.get("codelm_postprocess") or {"edit_format": None, "sugar": None},
            "hf": config}


def load_hf_model(folder, device="cpu", dtype=None):
    """Load a Hugging Face Llama/Mistral folder as a GPT. Tensors are read one at a time and cast to
    dtype as they are read (no full fp32 copy of a bf16 checkpoint); strict: every tensor must map,
    every weight must be present with its shape. Returns (model in eval mode, checkpoint_config())."""
    from safetensors import safe_open

    folder = Path(folder)
    config = checkpoint_config(folder)
    cfg = GPTConfig.from_dict(config["model"])
    files = hf_weight_files(folder)
    with torch.device("meta"):
        model = GPT(cfg)
    expected = dict(model.state_dict())
    if cfg.tie_embeddings:
        expected.pop("head.weight")
    unmapped = sorted(k for k in files if hf_to_ours(k) is None and not k.endswith(_HF_IGNORED))
    if cfg.tie_embeddings and "lm_head.weight" in files:
        unmapped.append("lm_head.weight (tie_word_embeddings is true)")
    mapped = {hf_to_ours(k): k for k in files if hf_to_ours(k) is not None and not (cfg.tie_embeddings and k == "lm_head.weight")}
    missing = sorted(ours_to_hf(k) for k in expected if k not in mapped)
    unexpected = sorted(f"{v} (model has {cfg.n_layer} layers)" for k, v in mapped.items() if k not in expected)
    if unmapped or missing or unexpected:
        parts = [f"tensors with no codelm counterpart {unmapped[:8]}" if unmapped else "",
                 f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}" if missing else "",
                 f"unexpected {unexpected[:8]}" if unexpected else ""]
        raise ModelError(f"{folder}: weights do not match {cfg.n_layer} layers x {cfg.n_embd}: " + "; ".join(p for p in parts if p))
    state = {}
    by_file = {}
    for ours, hf_name in mapped.items():
        by_file.setdefault(files[hf_name], []).append((ours, hf_name))
    for path, names in sorted(by_file.items()):
        with safe_open(path, "pt", device=str(device)) as f:
            for ours, hf_name in names:
                t = f.get_tensor(hf_name)
                if dtype is not None:
                    t = t.to(dtype)
                want = tuple(expected[ours].shape)
                if ours in ("embed.weight", "head.weight"):
                    if t.dim() != 2 or t.shape[0] != cfg.vocab_size or t.shape[1] != cfg.n_embd:
                        raise ModelError(f"{path}: {hf_name} has shape {tuple(t.shape)}, config says ({cfg.vocab_size}, {cfg.n_embd})")
                    t = pad_vocab_rows(t, cfg.padded_vocab_size)
                elif tuple(t.shape) != want:
                    raise ModelError(f"{path}: {hf_name} has shape {tuple(t.shape)}, config.json implies {want}")
                state[ours] = t
    load_state(model, state, where=str(folder))
    model.reset_rope(device)
    return model.eval(), config


def pad_vocab_rows(w, rows):
    """w (vocab, dim) with zero rows appended up to `rows` (the padded vocab)."""
    if w.shape[0] == rows:
        return w
    out = torch.zeros(rows, w.shape[1], dtype=w.dtype, device=w.device)
    out[:w.shape[0]] = w
    return out


def export_hf(ckpt, to, dtype=None, force=False):
    """Write checkpoint folder `ckpt` (ours, LoRA adapters merged on load) as a Hugging Face
    LlamaForCausalLM folder: config.json, model.safetensors (HF names, vocab rows unpadded),
    tokenizer.model, tokenizer_config.json (added tokens in added_tokens_decoder),
    special_tokens_map.json, generation_config.json. Built under a temporary name, renamed at the end."""
    from safetensors.torch import save_file

    from data import Tokenizer

    ckpt, to = Path(ckpt), Path(to)
    model, config = load_model(ckpt, dtype=dtype)
    cfg = model.cfg
    tok = Tokenizer.load(ckpt)
    if to.exists() and any(to.iterdir()) and not force:
        raise ModelError(f"{to}: exists and is not empty (pass --force to replace it)")
    tensors = {}
    for name, t in model_state_dict(model).items():
        if name in ("embed.weight", "head.weight"):
            t = t[:cfg.vocab_size]
        tensors[ours_to_hf(name)] = t.detach().contiguous().cpu()
    wdtype = next(iter(tensors.values())).dtype
    piece = tok.sp.id_to_piece
    specials = {kind: (piece(i) if i is not None and 0 <= i < tok.base_vocab_size else None, i)
                for kind, i in (("bos", tok.bos_id), ("eos", tok.eos_id), ("unk", tok.unk_id), ("pad", tok.pad_id))}
    hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
          "hidden_size": cfg.n_embd, "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.n_layer,
          "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
          "hidden_act": "silu", "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
          "rope_theta": cfg.rope_theta, "rope_scaling": None,
          "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
          "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False, "pretraining_tp": 1,
          "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": 0.02, "use_cache": True,
          "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id,
          "torch_dtype": str(wdtype).removeprefix("torch."),
          "codelm_postprocess": config.get("postprocess") or {"edit_format": None, "sugar": None}}
    decoder = {}
    for kind, (content, i) in specials.items():
        if content is not None:
            decoder[str(i)] = {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                               "single_word": False, "special": True}
    for content, i in sorted(tok.added_tokens.items(), key=lambda kv: kv[1]):
        decoder[str(i)] = {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                           "single_word": False, "special": False}
    special_map = {f"{kind}_token": content for kind, (content, _) in specials.items() if content is not None}
    tok_config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "add_eos_token": False,
                  "add_prefix_space": False, "legacy": False, "clean_up_tokenization_spaces": False,
                  "model_max_length": cfg.block_size, "sp_model_kwargs": {}, **special_map,
                  "added_tokens_decoder": dict(sorted(decoder.items(), key=lambda kv: int(kv[0])))}
    gen = {"_from_model_config": True, "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = to.with_name(f".{to.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        shutil.copyfile(Path(tok.model_path), tmp / "tokenizer.model")
        for name, obj in (("config.json", hf), ("tokenizer_config.json", tok_config),
                          ("special_tokens_map.json", special_map), ("generation_config.json", gen)):
            (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
        old = to.with_name(f".{to.name}.old-{os.getpid()}")
        if to.exists():
            os.replace(to, old)
        os.replace(tmp, to)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return to
# ---- end Hugging Face interop ----


# ---- vocabulary growth ----
@torch.no_grad()
def grow_vocab(model, vocab_size, init_ids=None, mean_of=None):
    """Grow a GPT's embedding (and untied head) to vocab_size tokens (rows padded to VOCAB_MULTIPLE), for
    tokens added to the tokenizer. Rows init_ids (default: the new ones) are set to the mean of rows
    [0, mean_of) (default: the old vocab): a neutral embedding and output logits near the average, not
    noise. Pass mean_of = the tokenizer's size when the embedding has unused rows beyond it."""
    cfg = model.cfg
    old = cfg.vocab_size
    init_ids = list(range(old, vocab_size)) if init_ids is None else list(init_ids)
    mean_of = old if mean_of is None else min(int(mean_of), old)
    if vocab_size > old:
        cfg.vocab_size = vocab_size
        rows = cfg.padded_vocab_size

        def grown(w):
            out = torch.zeros(rows, w.shape[1], dtype=w.dtype, device=w.device)
            out[:old] = w[:old]
            return nn.Parameter(out, requires_grad=w.requires_grad)

        model.embed.weight = grown(model.embed.weight)
        model.embed.num_embeddings = rows
        model.head.weight = model.embed.weight if cfg.tie_embeddings else grown(model.head.weight)
        model.head.out_features = rows
    if init_ids:
        for w in {id(w): w for w in (model.embed.weight, model.head.weight)}.values():
            w[init_ids] = w[:mean_of].float().mean(0).to(w.dtype)
    return model
# ---- end vocabulary growth ----


# ---- LoRA ----
# LoRA (Hu et al. 2021): a frozen weight W plus a trainable low-rank update, y = x W^T + s * x A^T B^T with
# A (r x in, Kaiming-uniform), B (out x r, zeros: training starts from the base model), s = alpha / r.
# LoRALinear keeps the original weight Parameter under the same name (`blocks.0.attn.q.weight`), so
# base weights load and save as before and adapters appear as extra `...q.lora_A` / `...q.lora_B`.
# Merging (W + s * B A, computed in fp32) is one function, used both on modules and on state dicts,
# so a merged checkpoint and an adapters checkpoint merged on load are bit-identical.
LORA_TARGETS = {"q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.o",
                "gate": "mlp.gate", "up": "mlp.up", "down": "mlp.down"}
_LORA_HF_ALIASES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
                    "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}


def lora_delta(A, B, scale):
    """s * B @ A in fp32: the update LoRA adds to a weight."""
    return (B.float() @ A.float()) * scale


def merged_weight(W, A, B, scale):
    return (W.float() + lora_delta(A, B, scale)).to(W.dtype)


class LoRALinear(nn.Linear):
    """A bias-free nn.Linear whose weight is frozen, plus trainable lora_A / lora_B."""

    def __init__(self, base, r, alpha, dropout=0.0):
        nn.Module.__init__(self)
        if base.bias is not None:
            raise ModelError("LoRA: linear layers with a bias are not supported")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight                     # the same Parameter: names and storage unchanged
        self.weight.requires_grad_(False)
        self.register_parameter("bias", None)
        self.r, self.alpha, self.scale = int(r), float(alpha), float(alpha) / int(r)
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(self.r, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.r, **kw))
        if self.lora_A.device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        y = F.linear(x, self.weight)
        return y + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scale

    def merged(self):
        """A plain nn.Linear holding W + s * B A (this module is left unchanged)."""
        out = nn.Linear(self.in_features, self.out_features, bias=False, device="meta")
        out.weight = nn.Parameter(merged_weight(self.weight.detach(), self.lora_A.detach(), self.lora_B.detach(), self.scale))
        return out


def parse_lora_targets(targets):
    """'q,v' / ('q', 'v') / HF names ('q_proj') -> a tuple of our short names; ModelError on unknown ones."""
    if isinstance(targets, str):
        targets = [t for t in targets.split(",")]
    out = []
    for t in targets:
        t = _LORA_HF_ALIASES.get(t.strip(), t.strip())
        if t not in LORA_TARGETS:
            raise ModelError(f"lora_targets: {t!r} matches no module (choose among {', '.join(LORA_TARGETS)})")
        if t not in out:
            out.append(t)
    if not out:
        raise ModelError("lora_targets: empty (choose among " + ", ".join(LORA_TARGETS) + ")")
    return tuple(out)


def add_lora(model, r, alpha=16.0, dropout=0.0, targets=("q", "v")):
    """Freeze every parameter of model and wrap the target projections of every block in LoRALinear.
    Returns the names of the wrapped modules. ModelError when a target matches no module."""
    if int(r) <= 0:
        raise ModelError(f"lora_r must be positive, got {r}")
    targets = parse_lora_targets(targets)
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for t in targets:
        suffix = "." + LORA_TARGETS[t]
        hits = [(n, m) for n, m in model.named_modules() if n.endswith(suffix) and type(m) is nn.Linear]
        if not hits:
            raise ModelError(f"lora_targets: {t!r} matches no module of this model")
        for name, module in hits:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, LoRALinear(module, r, alpha, dropout))
            wrapped.append(name)
    return wrapped


def merge_lora(model):
    """Replace every LoRALinear of model by a plain nn.Linear with the merged weight (in place)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.merged())
    return model


def lora_state_dict(state):
    """The adapter tensors of a state dict (names ending in .lora_A / .lora_B)."""
    return {k: v for k, v in state.items() if k.endswith((".lora_A", ".lora_B"))}


def merge_lora_state(state, scale):
    """A plain state dict: every `X.weight` with adapters `X.lora_A`, `X.lora_B` replaced by the merged
    weight, adapter entries dropped. Same arithmetic as LoRALinear.merged()."""
    out = {k: v for k, v in state.items() if not k.endswith((".lora_A", ".lora_B"))}
    for k in state:
        if k.endswith(".lora_A"):
            base = k[:-len(".lora_A")]
            out[base + ".weight"] = merged_weight(state[base + ".weight"], state[k], state[base + ".lora_B"], scale)
    return out


def load_adapter_checkpoint(folder, config, device="cpu", dtype=None):
    """A LoRA adapters checkpoint: config.json["lora"] names the base folder (ours or Hugging Face); the
    base is loaded, grown to this vocab, the adapters (and new token rows) applied and merged."""
    from safetensors.torch import load_file

    folder = Path(folder)
    lora = config["lora"]
    base = Path(lora["base"])
    if not base.is_absolute():
        base = (folder / base).resolve()
    if not (base / "config.json").is_file():
        raise ModelError(f"{folder / 'config.json'}: LoRA base model {base} not found (the adapters need it)")
    model, _ = load_model(base, device=device, dtype=dtype)
    cfg = GPTConfig.from_dict(config["model"], where=str(folder / "config.json"))
    grow_vocab(model, cfg.vocab_size, lora.get("init_ids") or [], lora.get("mean_of"))
    add_lora(model, lora["r"], lora["alpha"], 0.0, lora["targets"])
    adapters = load_file(folder / "adapters.safetensors", device=str(device))
    ids = lora.get("token_ids")   # rows of embed/head that were trained (tokens the fine-tune added)
    state = dict(model.state_dict())
    missing = sorted(set(lora_state_dict(state)) - set(adapters))
    if missing:
        raise ModelError(f"{folder / 'adapters.safetensors'}: missing adapters {missing[:8]}")
    for k, v in adapters.items():
        if k.endswith((".lora_A", ".lora_B")) and k in state:
            state[k] = v.to(state[k].dtype)
        elif ids and k in ("embed.weight.new_rows", "head.weight.new_rows"):
            w = state[k[:-len(".new_rows")]].clone()
            w[ids] = v.to(w.dtype)
            state[k[:-len(".new_rows")]] = w
        else:
            raise ModelError(f"{folder / 'adapters.safetensors'}: unexpected tensor {k!r}")
    state = merge_lora_state(state, lora["alpha"] / lora["r"])
    with torch.device("meta"):
        plain = GPT(cfg)
    if cfg.tie_embeddings:
        state.pop("head.weight", None)
    load_state(plain, state, where=str(folder))
    plain.reset_rope(device)
    return plain.eval(), config
# ---- end LoRA ----


# ---- command line (keep this section last) ----
def main(argv=None):
    """python model.py export --ckpt out/ --to hf/      a checkpoint as a Hugging Face Llama folder
    python model.py import --hf llama/ --to out/llama    a Hugging Face Llama/Mistral folder as a checkpoint
    python model.py info --ckpt out/                      shape, parameters, tokenizer of a model folder"""
    import argparse
    import inspect
    import sys

    parser = argparse.ArgumentParser(prog="model.py", description=inspect.cleandoc(main.__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    p = sub.add_parser("export", help="write a checkpoint (ours; LoRA adapters are merged) as a Hugging Face LlamaForCausalLM folder")
    p.add_argument("--ckpt", required=True, help="checkpoint folder (config.json + model.safetensors or adapters.safetensors)")
    p.add_argument("--to", required=True, help="output folder")
    p.add_argument("--dtype", choices=sorted(dtypes), help="weight dtype of the export (default: as stored)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    p = sub.add_parser("import", help="convert a Hugging Face Llama/Mistral folder into a codelm checkpoint folder")
    p.add_argument("--hf", required=True, help="folder with config.json, model.safetensors (or shards) and tokenizer.model")
    p.add_argument("--to", required=True, help="output checkpoint folder")
    p.add_argument("--dtype", choices=sorted(dtypes), help="weight dtype (default: as stored)")
    p = sub.add_parser("info", help="print the shape and size of a model folder (ours or Hugging Face)")
    p.add_argument("--ckpt", required=True)
    args = parser.parse_args(argv)
    from data import DataError, Tokenizer

    try:
        if args.cmd == "export":
            export_hf(args.ckpt, args.to, dtypes.get(args.dtype), args.force)
            print(f"wrote {args.to} (LlamaForCausalLM)", file=sys.stderr)
        elif args.cmd == "import":
            model, config = load_model(args.hf, dtype=dtypes.get(args.dtype))
            tok = Tokenizer.load(args.hf)
            save_checkpoint(args.to, model_state_dict(model), make_config(model.cfg, tok.to_config(), {}, 0, config.get("postprocess")),
                            tokenizer_file=tok.model_path)
            print(f"wrote {args.to} (codelm checkpoint)", file=sys.stderr)
        else:
            config = checkpoint_config(args.ckpt)
            cfg = GPTConfig.from_dict(config["model"])
            with torch.device("meta"):
                n = GPT(cfg).num_params()
            print(json.dumps({"format": config.get("format"), "params": n, "model": config["model"],
                              "lora": config.get("lora"), "postprocess": config.get("postprocess")}, indent=2))
    except (ModelError, DataError) as e:
        sys.exit(f"model.py: error: {e}")


if __name__ == "__main__":
    main()
