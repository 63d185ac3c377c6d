"""
The codelm transformer: a Llama-style decoder (RMSNorm, rotate-half RoPE, SwiGLU, no biases,
grouped-query attention, optional tied embeddings), KV-cache generation, FLOP/MFU accounting, and the
checkpoint folder (model.safetensors + config.json + tokenizer.model or tokenizer.json + train_state.pt).
A few GPTConfig fields describe the imported families (hf.py): LayerNorm with or without scale/bias
(OLMo, GPT-NeoX), q/k/v and output biases (Qwen2, GPT-NeoX), a plain GeLU MLP, parallel residual and
partial rotary (GPT-NeoX), linear / llama3 RoPE scaling (Llama 3.x, DeepSeek-Coder), q/k/v clipping (OLMo);
their defaults are our own model.

    from model import GPT, GPTConfig, load_model
    model, config = load_model("out/")            # a checkpoint folder
    new_tokens = model.generate([prompt_ids], max_new_tokens=128, temperature=0.8, top_p=0.95)
    model, config = load_model("hf/CodeLlama-7b-Python-hf")  # a Hugging Face Llama/Mistral folder works too

The Triton attention kernels are in flash_attention.py, the crash-safe saving and reading of the
checkpoint folder in checkpoint.py, Hugging Face import/export in hf.py, LoRA and vocabulary growth in
finetune.py.
"""
import json
import math
import warnings
import weakref
from dataclasses import asdict, dataclass, fields
from itertools import groupby
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from checkpoint import reading_checkpoint
from flash_attention import FLASH_HEAD_DIMS, flash_attention_usable, triton_attention

NORMS = ("rmsnorm", "layernorm")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh")
ROPE_SCALINGS = ("none", "linear", "llama3")
VOCAB_MULTIPLE = 64          # embedding rows are padded to a multiple of this (faster matmuls)
STATIC_CACHE_MULTIPLE = 128  # generate(compile=True): cache lengths rounded up to this (fewer shapes to compile)
PACKED_MAX_BYTES = 4 << 30   # generation on CPU packs fp32 weights for oneDNN (a second copy) only up to this size
PACK_BATCH = 8               # the batch oneDNN's packing is tuned for (any batch gives the same results)
_PACKED = weakref.WeakKeyDictionary()  # GPT -> (its weights (weak), their (address, version), packed copies)
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
    # architecture variants of imported models (the defaults are ours: Llama blocks)
    norm: str = "rmsnorm"            # 'rmsnorm' | 'layernorm'
    norm_affine: bool = True         # False: no learned scale (OLMo's non-parametric LayerNorm)
    norm_bias: bool = False          # learned shift (GPT-NeoX's LayerNorm)
    qkv_bias: bool = False           # biases on the q/k/v projections (Qwen2, GPT-NeoX)
    out_bias: bool = False           # bias on the attention output projection (GPT-NeoX)
    mlp_bias: bool = False
    mlp_gated: bool = True           # True: down(act(gate(x)) * up(x)) (SwiGLU); False: down(act(up(x)))
    mlp_act: str = "silu"            # 'silu' | 'gelu' (exact erf) | 'gelu_tanh'
    parallel_residual: bool = False  # x + attn(norm1(x)) + mlp(norm2(x)) (GPT-NeoX)
    rotary_fraction: float = 1.0     # RoPE on the first fraction of each head's dims (GPT-NeoX: 0.25)
    rope_scaling: str = "none"       # 'none' | 'linear' | 'llama3'
    rope_factor: float = 1.0         # linear / llama3: positions (or low frequencies) divided by this
    rope_low_freq_factor: float = 1.0     # llama3 only
    rope_high_freq_factor: float = 4.0    # llama3 only
    rope_original_context: int = 8192     # llama3 only: the context the model was pretrained at
    qkv_clip: float = 0.0            # > 0: q, k, v clamped to [-qkv_clip, qkv_clip] (OLMo's clip_qkv)

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
        for name, allowed in (("norm", NORMS), ("mlp_act", ACTIVATIONS), ("rope_scaling", ROPE_SCALINGS)):
            if getattr(self, name) not in allowed:
                raise ModelError(f"GPTConfig.{name} must be one of {', '.join(map(repr, allowed))}, got {getattr(self, name)!r}")
        if self.norm == "rmsnorm" and (self.norm_bias or not self.norm_affine):
            raise ModelError("GPTConfig: rmsnorm has a scale and no bias (norm_affine=True, norm_bias=False)")
        if self.norm_bias and not self.norm_affine:
            raise ModelError("GPTConfig: norm_bias needs norm_affine")
        if not 0 < self.rotary_fraction <= 1 or self.rotary_dim % 2:
            raise ModelError(f"GPTConfig.rotary_fraction {self.rotary_fraction} must give an even number of rotary dims "
                             f"in (0, head size {self.head_dim}], got {self.rotary_dim}")
        if self.rope_scaling != "none" and self.rope_factor < 1:
            raise ModelError(f"GPTConfig.rope_factor must be >= 1 with rope_scaling {self.rope_scaling!r}, got {self.rope_factor}")
        if self.rope_scaling == "llama3" and not self.rope_high_freq_factor > self.rope_low_freq_factor > 0:
            raise ModelError("GPTConfig: llama3 RoPE needs rope_high_freq_factor > rope_low_freq_factor > 0")

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @property
    def rotary_dim(self):
        """Dims of each head that RoPE rotates (the first ones; the rest pass through)."""
        return int(self.head_dim * self.rotary_fraction)

    @property
    def padded_vocab_size(self):
        return VOCAB_MULTIPLE * math.ceil(self.vocab_size / VOCAB_MULTIPLE)

    @classmethod
    def from_dict(cls, d, where="config"):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelError(f"{where}: unknown model config keys {unknown}")
        missing = [k for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd") if k not in d]
        if missing:  # a default here would only fail later, as a shape mismatch
            raise ModelError(f"{where}: model config lacks {', '.join(missing)}")
        return cls(**d)


# ----------------------------------------------------------------------------- attention
def sdpa_attention(q, k, v, causal=True):
    """PyTorch scaled_dot_product_attention; GQA without repeating K/V (enable_gqa)."""
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)


def attention_impl(cfg):
    """The attention a model of cfg runs: cfg.attn_impl, but SDPA for a head size the Triton kernel is not
    built for (Pythia-2.8B's 80, say), with a warning where Triton was asked for or would run (CUDA)."""
    if cfg.attn_impl == "sdpa" or cfg.head_dim in FLASH_HEAD_DIMS:
        return cfg.attn_impl
    if cfg.attn_impl == "triton" or torch.cuda.is_available():
        warnings.warn(f"attention: head size {cfg.head_dim} is not one the Triton kernel is built for "
                      f"({', '.join(map(str, FLASH_HEAD_DIMS))}): using SDPA", stacklevel=2)
    return "sdpa"


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
        if x.dtype == self.weight.dtype == torch.float32:  # the same sums as below, in one call instead of eight
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        x32 = x.float()  # the mean of squares in fp32, rounded to x's dtype before the scale, as Llama does
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LayerNorm(nn.Module):
    """LayerNorm in fp32, with an optional learned scale and shift (OLMo has neither, GPT-NeoX both)."""

    def __init__(self, dim, eps=1e-5, affine=True, bias=False):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x):
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), (self.dim,), w, b, self.eps).type_as(x)


def make_norm(cfg):
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.n_embd, cfg.norm_eps)
    return LayerNorm(cfg.n_embd, cfg.norm_eps, cfg.norm_affine, cfg.norm_bias)


def rope_inv_freq(cfg, device=None):
    """Inverse frequencies of the rotary dims, with linear or llama3 scaling (as Hugging Face computes them)."""
    dim = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    if cfg.rope_scaling == "linear":
        inv_freq = inv_freq / cfg.rope_factor
    elif cfg.rope_scaling == "llama3":  # long wavelengths slowed by rope_factor, short kept, a smooth ramp between
        wavelen = 2 * math.pi / inv_freq
        low_wavelen = cfg.rope_original_context / cfg.rope_low_freq_factor
        high_wavelen = cfg.rope_original_context / cfg.rope_high_freq_factor
        scaled = torch.where(wavelen > low_wavelen, inv_freq / cfg.rope_factor, inv_freq)
        smooth = (cfg.rope_original_context / wavelen - cfg.rope_low_freq_factor) / (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)
        smoothed = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


def rope_tables(positions, cfg, device=None):
    """RoPE as apply_rope computes it: cos, sin of shape (*positions.shape, head_dim) and swap (head_dim,).
    Rotate-half (Hugging Face Llama) is x * cos + [-x2, x1] * sin on the first rotary_dim dims; here its sign
    is folded into sin and [x2, x1] is x[..., swap], so no concatenation is needed per call; the dims past
    rotary_dim (partial rotary) have cos 1, sin 0 and pass through unchanged."""
    D, R = cfg.head_dim, cfg.rotary_dim
    angles = positions.to(device=device, dtype=torch.float32)[..., None] * rope_inv_freq(cfg, device)
    cos, sin = angles.cos(), angles.sin()
    rest = angles.new_zeros(*angles.shape[:-1], D - R)
    cos, sin = torch.cat([cos, cos, rest + 1], dim=-1), torch.cat([-sin, sin, rest], dim=-1)
    half = torch.arange(R // 2, device=device)
    swap = torch.cat([half + R // 2, half, torch.arange(R, D, device=device)])
    return cos, sin, swap


def apply_rope(x, cos, sin, swap):
    """x (..., D) rotated by the tables of rope_tables (broadcast over x's leading dims), in fp32."""
    xf = x.float()
    return (xf * cos).addcmul_(xf.index_select(-1, swap), sin).type_as(x)


def packed_linear(x, weight, bias=None):
    """x @ W.T + bias with W packed for oneDNN (GPT.packed_weights): the one place that calls oneDNN's op."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def linear(module, x, packed=None):
    """module(x) (an nn.Linear), through its weight packed for oneDNN where packed (GPT.packed_weights) has one:
    generation on CPU."""
    w = packed.get(module) if packed else None
    return module(x) if w is None else packed_linear(x, w, module.bias)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.attn_impl, self.qkv_clip = attention_impl(cfg), cfg.qkv_clip
        self.q = nn.Linear(cfg.n_embd, cfg.n_head * cfg.head_dim, bias=cfg.qkv_bias)
        self.k = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=cfg.qkv_bias)
        self.v = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=cfg.qkv_bias)
        self.o = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=cfg.out_bias)

    def forward(self, x, rope, cache=None, last=False, packed=None):
        """x (B, T, C) -> (B, T, C); last=True: the last position's output alone (B, 1, C), every position's
        key/value still computed (and stored in cache). packed: GPT.packed_weights() (generation)."""
        B, T, _ = x.shape
        q, k, v = linear(self.q, x[:, -1:] if last else x, packed), linear(self.k, x, packed), linear(self.v, x, packed)
        if self.qkv_clip > 0:
            q, k, v = (t.clamp(-self.qkv_clip, self.qkv_clip) for t in (q, k, v))
        Tq = q.shape[1]
        q = q.view(B, Tq, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q = apply_rope(q, rope[0][-1:], rope[1][-1:], rope[2]) if last else apply_rope(q, *rope)
        k = apply_rope(k, *rope)
        if cache is None:
            y = attention(q, k, v, causal=True, impl=self.attn_impl)
        else:
            y = cache.attend(self, q, k, v)
        return linear(self.o, y.transpose(1, 2).reshape(B, Tq, self.n_head * self.head_dim), packed)

    def decode(self, x, rope, mask, keys, values, col, end, packed=None):
        """One new token per row: x (b, C) -> (b, C), in few tensor operations (each costs microseconds of
        dispatch, and a small model's step is mostly made of them). Its key/value are written at column col
        (a (1,) tensor) of keys/values (b, Hkv, S, D), and it attends to their first end columns (None: all
        S, the static-shape step), mask allowing."""
        b = x.shape[0]
        q, k, v = linear(self.q, x, packed), linear(self.k, x, packed), linear(self.v, x, packed)
        if self.qkv_clip > 0:
            q, k, v = (t.clamp(-self.qkv_clip, self.qkv_clip) for t in (q, k, v))
        q = apply_rope(q.view(b, self.n_head, 1, self.head_dim), *rope)
        keys.index_copy_(2, col, apply_rope(k.view(b, self.n_kv_head, 1, self.head_dim), *rope))
        values.index_copy_(2, col, v.view(b, self.n_kv_head, 1, self.head_dim))
        if end is not None:
            keys, values = keys[:, :, :end], values[:, :, :end]
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=self.n_head != self.n_kv_head)
        return linear(self.o, y.reshape(b, self.n_head * self.head_dim), packed)


def activation(x, kind):
    if kind == "silu":
        return F.silu(x)
    return F.gelu(x, approximate="tanh" if kind == "gelu_tanh" else "none")


class MLP(nn.Module):
    """SwiGLU (gated, ours and Llama's) or a plain two-layer MLP (GPT-NeoX's GeLU)."""

    def __init__(self, cfg):
        super().__init__()
        self.act = cfg.mlp_act
        self.gate = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=cfg.mlp_bias) if cfg.mlp_gated else None
        self.up = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=cfg.mlp_bias)

    def forward(self, x, packed=None):
        if self.gate is None:
            return linear(self.down, activation(linear(self.up, x, packed), self.act), packed)
        return linear(self.down, activation(linear(self.gate, x, packed), self.act) * linear(self.up, x, packed), packed)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.parallel = cfg.parallel_residual
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        self.mlp_norm = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, *attn_args, decode=False, last=False, packed=None):
        """x (B, T, C), attn_args those of Attention.forward; decode=True: x (b, C), those of Attention.decode.
        last=True (the prefill's last block): the output at the last position alone, (B, 1, C)."""
        if decode:
            h = self.attn.decode(self.attn_norm(x), *attn_args, packed)
        else:
            h = self.attn(self.attn_norm(x), *attn_args, last=last, packed=packed)
        if last:
            x = x[:, -1:]
        if self.parallel:  # both branches read the block's input
            return x + h + self.mlp(self.mlp_norm(x), packed)
        x = x + h
        return x + self.mlp(self.mlp_norm(x), packed)


class KVCache:
    """Keys/values of every layer, preallocated (B, Hkv, S, D) and written in place. Prompts are left-padded
    to a common length L: row r's prompt holds columns pad[r]..L-1 (the columns before are masked out) and
    decoding writes columns L, L+1, ... of every row. The rows in use are the first ones (see take)."""

    def __init__(self, model, batch, length):
        cfg, w = model.cfg, model.embed.weight
        shape = (batch, cfg.n_kv_head, length, cfg.head_dim)
        self.k = [torch.zeros(shape, device=w.device, dtype=w.dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=w.device, dtype=w.dtype) for _ in range(cfg.n_layer)]
        self.cols = torch.arange(length, device=w.device)  # a step's column is a slice of it (no tensor to build)
        self.cos, self.sin, self.swap = rope_tables(self.cols, cfg, w.device)  # RoPE at every position
        self.layer_of = {blk.attn: i for i, blk in enumerate(model.blocks)}  # Attention module -> layer index
        self.rows = slice(0, batch)  # prefill: the rows of the current forward
        self.col = 0                 # prefill: the first column it writes

    def tensors(self):
        return self.k + self.v + [self.cols, self.cos, self.sin, self.swap]

    def attend(self, attn, q, k, v):
        """Prefill: whole prompts stored at columns col.. of rows, each attending to itself alone (the last
        block: the last position alone, which sees every key)."""
        i, end = self.layer_of[attn], self.col + k.shape[2]
        self.k[i][self.rows, :, self.col:end], self.v[i][self.rows, :, self.col:end] = k, v
        if q.shape[2] < k.shape[2]:
            return sdpa_attention(q, k, v, causal=False)
        return attention(q, k, v, causal=True, impl=attn.attn_impl)

    def take(self, idx, cols):
        """Rows idx (a LongTensor; repeats copy a row) become the first rows, in place, their first cols columns."""
        for t in self.k + self.v:
            t[:len(idx), :, :cols] = t[idx, :, :cols]


class EagerDecoder:
    """generate()'s decoding steps in eager PyTorch: finished rows leave the batch (the cache keeps the rows
    in use first) and each step attends to the columns written so far."""

    def __init__(self, model, cache, pad, packed):
        self.model, self.cache, self.pad, self.packed = model, cache, pad, packed

    def drop(self, idx, cols):
        """Only rows idx (a LongTensor into the rows in use) go on; their first cols columns are written."""
        self.cache.take(idx, cols)
        self.pad = None if self.pad is None or not self.pad[idx].any() else self.pad[idx]

    def step(self, tokens, col):
        return self.model._decode_step(tokens, col, self.pad, self.cache, self.packed)


class StaticDecoder:
    """generate(compile=True)'s decoding steps, all of the same shapes: every row stays in the batch (a
    finished row's logits are dropped, not computed less) and every step attends to the whole cache, masked,
    so one compiled graph serves every step (on CUDA a CUDA graph: no kernel launch costs)."""

    def __init__(self, step_fn, cache, pad):
        self.step_fn, self.cache, B = step_fn, cache, len(cache.k[0])
        self.pad = torch.zeros(B, dtype=torch.long, device=cache.cols.device) if pad is None else pad
        self.rows = torch.arange(B, device=cache.cols.device)  # the batch rows still in use
        self.tokens = torch.zeros_like(self.rows)              # every row's input token
        self.col = torch.zeros_like(self.rows[:1])             # the step's column: one tensor, written in place

    def drop(self, idx, cols):
        self.rows = self.rows[idx]

    def step(self, tokens, col):
        some = len(self.rows) < len(self.tokens)
        if some:
            tokens = self.tokens.index_copy_(0, self.rows, tokens)
        if self.cache.cols.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
        logits = self.step_fn(tokens, self.col.fill_(col), self.pad, self.cache)
        return logits[self.rows] if some else logits.clone()  # a CUDA graph's next replay overwrites its output


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.padded_vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = make_norm(cfg)
        self.head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.activation_checkpointing = False
        self._static = None  # generate(compile=True): (shape key, its KVCache, its compiled step), reused
        self.reset_rope()
        if self.embed.weight.device.type != "meta":
            self.apply(self._init_weights)
            for name, p in self.named_parameters():  # scale residual projections by depth (GPT-2)
                if name.endswith(("attn.o.weight", "mlp.down.weight")):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def reset_rope(self, device=None):
        """(Re)build the RoPE tables; needed after loading weights onto a model built on 'meta'."""
        cos, sin, swap = rope_tables(torch.arange(self.cfg.block_size), self.cfg, device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("rope_swap", swap, persistent=False)

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
        rope = (self.rope_cos[:T], self.rope_sin[:T], self.rope_swap)
        for block in self.blocks:
            if self.activation_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, rope, use_reentrant=False)
            else:
                x = block(x, rope)
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

    def _prefill(self, prompts, n, cache, packed):
        """Each run of equal-length prompts in one causal forward (no padding computed), their keys/values
        stored in cache, each prompt ending at column L - 1 of its n sample rows. Returns (each row's logits
        after its prompt, each row's left padding or None when no row has any)."""
        L, device = max(map(len, prompts)), self.embed.weight.device
        logits = []
        for T, run in groupby(range(len(prompts)), key=lambda i: len(prompts[i])):
            run = list(run)
            cache.rows, cache.col = slice(run[0], run[-1] + 1), L - T
            x = self.embed(torch.tensor([prompts[i] for i in run], device=device))
            for j, block in enumerate(self.blocks):  # the last block: only the last position is needed
                x = block(x, (cache.cos[:T], cache.sin[:T], cache.swap), cache, last=j == len(self.blocks) - 1, packed=packed)
            logits.append(self._logits(x[:, -1], packed))
        if n > 1:  # each prompt's keys/values to its n sample rows
            cache.take(torch.arange(len(prompts), device=device).repeat_interleave(n), L)
        pad = torch.tensor([L - len(p) for p in prompts for _ in range(n)], device=device)
        return torch.cat(logits).repeat_interleave(n, 0), pad if L > min(map(len, prompts)) else None

    def _decode_step(self, tokens, col, pad, cache, packed=None):
        """Logits after one more token per row in use (tokens (b,)), stored at cache column col, attending to
        the columns up to it. pad: (b,) each row's left padding, or None when no row has any (no mask)."""
        if pad is None:
            pos, mask = slice(col, col + 1), None
        else:
            pos, mask = col - pad, (cache.cols[:col + 1] >= pad[:, None])[:, None, None]
        rope = (cache.cos[pos][:, None, None], cache.sin[pos][:, None, None], cache.swap)
        return self._decode_forward(tokens, rope, mask, cache, cache.cols[col:col + 1], col + 1, packed)

    def _static_step(self, tokens, col, pad, cache):
        """_decode_step with the same shapes at every column (what torch.compile and CUDA graphs replay): all
        of the cache's rows and columns, the columns not written yet masked; col a (1,) tensor, pad (B,)."""
        pos, mask = col - pad, ((cache.cols >= pad[:, None]) & (cache.cols <= col))[:, None, None]
        rope = (cache.cos[pos][:, None, None], cache.sin[pos][:, None, None], cache.swap)
        return self._decode_forward(tokens, rope, mask, cache, col, None)

    def _decode_forward(self, tokens, rope, mask, cache, col, end, packed=None):
        """Logits (b, vocab) after one token per row (tokens (b,)): Attention.decode's arguments, its
        keys/values the first b rows of cache; packed: packed_weights()."""
        b = len(tokens)
        x = self.embed(tokens)
        for block, keys, values in zip(self.blocks, cache.k, cache.v):
            x = block(x, rope, mask, keys[:b], values[:b], col, end, decode=True, packed=packed)
        return self._logits(x, packed)

    def _logits(self, x, packed=None):
        """Generation's fp32 logits over the vocabulary (its padding left out) from the last block's output."""
        head = packed.get(self.head) if packed else None
        if head is None:
            return F.linear(self.norm(x), self.head.weight[:self.cfg.vocab_size]).float()
        return packed_linear(self.norm(x), head)

    def packed_weights(self):
        """{nn.Linear: its weight packed for oneDNN} for generation on CPU in fp32 (else {}). At a decoding
        step's few rows, oneDNN's matmul on weights packed once takes about half the time of the default one
        (BENCHMARKS.md), and a row's result does not depend on the rows beside it. The copies are kept until
        a weight is replaced or written in place (an optimizer step, load_state_dict: train.py evaluates
        between updates); a write through .data is not seen, as autograd does not see it."""
        w = self.embed.weight
        if (w.device.type != "cpu" or w.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
                or not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
            return {}  # (the ops are the ones torch.compile's CPU freezing packs weights with)
        linears = [m for m in self.modules() if type(m) is nn.Linear]  # not LoRA's (its forward adds more)
        if sum(m.weight.numel() * 4 for m in linears) > PACKED_MAX_BYTES:
            return {}
        versions = [(m.weight.data_ptr(), m.weight._version) for m in linears]
        kept = _PACKED.get(self)
        if kept is not None and kept[1] == versions and all(r() is m.weight for r, m in zip(kept[0], linears)):
            return kept[2]
        _PACKED.pop(self, None)  # the old copies are freed first
        pack = torch.ops.mkldnn._reorder_linear_weight
        try:
            packed = {m: pack(m.weight[:self.cfg.vocab_size] if m is self.head else m.weight, PACK_BATCH)
                      for m in linears}  # (the output layer without the vocabulary's padding rows)
        except RuntimeError:  # a oneDNN build that cannot pack them (another CPU architecture): the default matmuls
            return {}
        _PACKED[self] = ([weakref.ref(m.weight) for m in linears], versions, packed)
        return packed

    def _static_decoding(self, batch, length):
        """(KVCache, step) of generate(compile=True), kept for the next call of the same shape (the length
        rounded up, so that eval's batches share a few): compiled once, and a CUDA graph replays on the same
        memory (mark_static_address: the cache is not copied into the graph's inputs at each step)."""
        w = self.embed.weight
        key = (batch, STATIC_CACHE_MULTIPLE * math.ceil(length / STATIC_CACHE_MULTIPLE), w.device, w.dtype)
        if self._static is not None and self._static[0] == key:
            for t in self._static[1].k + self._static[1].v:
                t.zero_()
            return self._static[1:]
        self._static = None  # the previous cache's memory is freed first
        cache = KVCache(self, batch, key[1])
        cuda = w.device.type == "cuda"
        if cuda:
            for t in cache.tensors():  # no guard: a new cache of the same shape re-records, not recompiles
                torch._dynamo.mark_static_address(t, guard=False)
        step = torch.compile(self._static_step, mode="reduce-overhead" if cuda else None, fullgraph=True)
        self._static = (key, cache, step)
        return cache, step

    # -- generation
    @torch.inference_mode()  # cheaper per op than no_grad: no autograd bookkeeping at all
    def generate(self, prompts, max_new_tokens, temperature=0.0, top_p=1.0, eos_id=None, n_samples=1,
                 stop=None, generator=None, return_logits=False, min_p=0.0, repetition_penalty=1.0,
                 generators=None, banned_ids=None, compile=False):
        """Sample continuations of token-id prompts: len(prompts) * n_samples lists of new ids (sample j of
        prompt i at i * n_samples + j), eos excluded. Each prompt is prefilled once (equal lengths together);
        all samples decode as one batch that drops rows as they finish (eos, or stop(row, new_ids) -> True).
        temperature 0 is greedy; top_p, min_p as in sample_next; repetition_penalty (CTRL) divides the
        positive logits of tokens already in the row (prompt included) and multiplies the negative ones.
        generators: one torch.Generator (CPU) per output row, each row drawing only from its own (its tokens
        do not depend on its batch). banned_ids: tokens never sampled. return_logits=True also returns each
        row's (steps, vocab) logits. compile=True: decoding steps of fixed shapes, torch.compile'd (CUDA graphs
        on CUDA), their cache kept for the next call; the first call of each shape compiles."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ModelError("generate: every prompt needs at least one token")
        if max_new_tokens <= 0:
            raise ModelError(f"generate: max_new_tokens must be positive, got {max_new_tokens}")
        n, L, B, V = n_samples, max(map(len, prompts)), len(prompts) * n_samples, self.cfg.vocab_size
        if generators is not None and len(generators) != B:
            raise ModelError(f"generate: {len(generators)} generators for {B} rows")
        was_training, device = self.training, self.embed.weight.device
        self.eval()
        if compile:
            cache, step_fn = self._static_decoding(B, L + max_new_tokens)
        else:
            cache = KVCache(self, B, L + max_new_tokens)
        packed = self.packed_weights()
        logits, pad = self._prefill(prompts, n, cache, packed)
        decoder = StaticDecoder(step_fn, cache, pad) if compile else EagerDecoder(self, cache, pad, packed)
        rows, outs, step_logits = list(range(B)), [[] for _ in range(B)], [[] for _ in range(B)]  # rows: row -> output
        seen = None if repetition_penalty == 1.0 else torch.zeros(B, V, dtype=torch.bool, device=device)
        for i, p in enumerate(prompts if seen is not None else ()):  # seen: the tokens already in each row
            seen[i * n:(i + 1) * n, torch.tensor(p, device=device).clamp(max=V - 1)] = True
        for step in range(max_new_tokens):
            for j, r in enumerate(rows if return_logits else ()):
                step_logits[r].append(logits[j])
            if seen is not None:
                logits = torch.where(seen, torch.where(logits > 0, logits / repetition_penalty,
                                                       logits * repetition_penalty), logits)
            if banned_ids:
                logits = logits.index_fill(1, torch.tensor(banned_ids, device=device), float("-inf"))
            uniform = None if generators is None or temperature <= 0 else torch.stack(
                [torch.rand((), generator=generators[r]) for r in rows]).to(device)
            tokens = sample_next(logits, temperature, top_p, generator, min_p=min_p, uniform=uniform)
            if seen is not None:
                seen.scatter_(1, tokens[:, None], True)
            live = finish_rows(tokens.tolist(), rows, outs, eos_id, stop)
            if not live or step == max_new_tokens - 1:
                break
            if len(live) < len(rows):  # drop finished rows
                idx = torch.tensor(live, device=device)
                decoder.drop(idx, L + step)
                rows, tokens, seen = [rows[j] for j in live], tokens[idx], seen if seen is None else seen[idx]
            logits = decoder.step(tokens, L + step)
        self.train(was_training)
        return (outs, [torch.stack(s) if s else torch.empty(0, V) for s in step_logits]) if return_logits else outs


def finish_rows(tokens, rows, outs, eos_id, stop):
    """Hand each row's new token to its output (rows: row -> output index) unless it is eos; returns the
    rows that go on (not at eos, not stopped by stop(output index, new ids))."""
    live = []
    for j, (r, t) in enumerate(zip(rows, tokens)):
        if t != eos_id:
            outs[r].append(t)
            if stop is None or not stop(r, outs[r]):
                live.append(j)
    return live


def sample_next(logits, temperature=0.0, top_p=1.0, generator=None, min_p=0.0, uniform=None):
    """Next token per row of logits (b, V): greedy at temperature 0, else temperature, then min-p (drop
    tokens below min_p x the top probability) and nucleus (top-p). uniform: (b,) numbers in [0, 1), one
    per row, drawn with instead of generator (inverse CDF: a row's token depends on its number only)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if min_p > 0:
        probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
    if top_p >= 1.0 and uniform is None:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    if top_p < 1.0:
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the smallest set reaching top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    if uniform is None:
        return order.gather(-1, torch.multinomial(sorted_probs, 1, generator=generator)).squeeze(-1)
    cdf = sorted_probs.cumsum(-1)
    choice = torch.searchsorted(cdf, (uniform.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1), right=True)
    return order.gather(-1, choice.clamp(max=cdf.shape[-1] - 1)).squeeze(-1)


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
# out/model.safetensors (or adapters.safetensors), config.json (make_config), the tokenizer file and
# train_state.pt, saved and read crash-safely by checkpoint.py.
def make_config(model_cfg, tokenizer=None, train=None, step=0, postprocess=None):
    """The config.json of a checkpoint folder: model shape, tokenizer facts (Tokenizer.to_config()),
    the training config, the step, and how generations must be post-processed (LintSeq edit format,
    Token Sugar table) so eval.py needs nothing but the folder."""
    return {"format": CHECKPOINT_FORMAT, "model": asdict(model_cfg), "tokenizer": tokenizer or {}, "train": train or {},
            "step": int(step), "postprocess": postprocess or {"edit_format": None, "sugar": None}}


def read_config(folder):
    """The config.json of a checkpoint folder (an unfinished save of a killed writer finished first)."""
    folder = Path(folder)
    path = folder / "config.json"
    with reading_checkpoint(folder):
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
    second full-precision copy is ever made. The folder is read under reading_checkpoint: the config
    and the weights are always of the same save."""
    folder = Path(folder)
    with reading_checkpoint(folder):
        return _load_model(folder, device, dtype)


def _load_model(folder, device, dtype):
    # hf.py and finetune.py build on this file, so they are imported here, where a folder needs them
    import finetune
    import hf

    config = read_config(folder)
    if hf.is_hf_config(config):  # a Hugging Face Llama/Mistral folder
        return hf.load_hf_model(folder, device, dtype)
    if config.get("format") == CHECKPOINT_FORMAT and config.get("lora"):  # LoRA adapters + a base model
        return finetune.load_adapter_checkpoint(folder, config, device, dtype)
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
    expected = model_state_dict(model)
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


def without_tied_head(state, cfg):
    """state without "head.weight" when cfg ties it to the embedding: a checkpoint stores the tied matrix
    once, as embed.weight (the one place that rule lives)."""
    if cfg.tie_embeddings:
        state = {k: v for k, v in state.items() if k != "head.weight"}
    return state


def model_state_dict(model):
    """Plain-named full state dict of a (possibly wrapped) GPT, without the tied head copy."""
    return without_tied_head(model.state_dict(), model.cfg)
