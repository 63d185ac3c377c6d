"""
The codelm transformer: a Llama-style decoder (RMSNorm, rotate-half RoPE, SwiGLU, no biases,
grouped-query attention, optional tied embeddings), KV-cache generation, FLOP/MFU accounting, and the
checkpoint folder (model.safetensors + config.json + tokenizer.model + train_state.pt).

    from model import GPT, GPTConfig, load_model
    model, config = load_model("out/")            # a checkpoint folder
    new_tokens = model.generate([prompt_ids], max_new_tokens=128, temperature=0.8, top_p=0.95)
    model, config = load_model("hf/CodeLlama-7b-Python-hf")  # a Hugging Face Llama/Mistral folder works too

The Triton attention kernels are in flash_attention.py, Hugging Face import/export in hf.py, LoRA and
vocabulary growth in finetune.py.
"""
import fcntl
import json
import math
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from flash_attention import flash_attention_usable, triton_attention

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


@contextmanager
def _folder_lock(folder):
    """An exclusive lock on a checkpoint folder (flock on the directory itself; the kernel releases it
    when the holder dies): one writer or repairer at a time, so a reader never repairs, or deletes,
    a save that a live writer is still making."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _repair(folder):
    """Finish moving a committed save (.ckpt.ready) into place, drop an uncommitted one; under the lock."""
    ready, partial = folder / READY, folder / PARTIAL
    if ready.is_dir():
        for f in sorted(ready.iterdir()):
            os.replace(f, folder / f.name)
        _fsync_dir(folder)
        ready.rmdir()
    if partial.exists():
        shutil.rmtree(partial, ignore_errors=True)


def recover_checkpoint(folder):
    """Finish or discard an interrupted checkpoint write in folder (see above). Safe to call from
    several processes at once, and while another process is saving (it waits for the save)."""
    folder = Path(folder)
    if (folder / READY).exists() or (folder / PARTIAL).exists():
        with _folder_lock(folder):
            _repair(folder)


def _write_failure(e, folder):
    """What stopped a write, in a few words: the OS's reason, or (for writers that only report a short
    write, as torch.save does) a full disk when there is no space left."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename + ': ' if e.filename else ''}{e.strerror}"
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    try:
        if shutil.disk_usage(folder).free == 0:
            return f"no space left on device ({first})"
    except OSError:
        pass
    return first


def save_checkpoint(folder, state_dict, config, tokenizer_file=None, train_state=None, weights_name="model.safetensors"):
    """Write a checkpoint folder atomically. state_dict: name -> tensor (plain names, full tensors;
    tied copies dropped); config: the dict for config.json; tokenizer_file: the SentencePiece model to
    copy; train_state: anything torch.save takes (resume only); weights_name: 'adapters.safetensors'
    for a LoRA adapters checkpoint (config["lora"] names its base). A failed write (disk full) raises
    ModelError naming the cause and leaves the previous checkpoint as it was, with no partial folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _folder_lock(folder):
        _repair(folder)
        partial = folder / PARTIAL
        try:
            _write_files(partial, state_dict, config, tokenizer_file, train_state, weights_name)
        except (OSError, RuntimeError) as e:
            shutil.rmtree(partial, ignore_errors=True)
            raise ModelError(f"{folder}: checkpoint not saved, the previous one is kept ({_write_failure(e, folder)})")
        os.replace(partial, folder / READY)  # the commit point
        _fsync_dir(folder)
        _repair(folder)


def _write_files(partial, state_dict, config, tokenizer_file, train_state, weights_name):
    partial.mkdir()
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    if config.get("model", {}).get("tie_embeddings"):
        tensors.pop("head.weight", None)  # the config is a plain dict here; see without_tied_head
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
    # hf.py and finetune.py build on this file, so they are imported here, where a folder needs them
    import finetune
    import hf

    folder = Path(folder)
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
