"""
Train a codelm model: one process (CPU or one GPU) or many under torchrun (DDP or FSDP2).

    python train.py config/quickstart.py                  # CPU, ~10 min; prepares data/stdlib on first run
    python train.py config/quickstart.py --max_iters=100 --compile=true
    torchrun --nproc_per_node=8 train.py config/tinycodelm_150m.py
    torchrun --nproc_per_node=2 train.py config/quickstart.py --parallel=fsdp   # CPU works too (gloo)
    python train.py config/quickstart.py --init_from=resume                     # continue out_dir exactly
    python train.py config/intent_lora.py --init_from=hf/CodeLlama-7b-Python-hf  # fine-tune (task='sft', LoRA)

Multi-node: run on every node
    torchrun --nnodes=N --node_rank=R --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 train.py CONFIG

Every default below can be set in a config file or with --key=value (configurator.py checks names and
types; check_settings the ranges). gradient_accumulation_steps counts micro-batches over all processes,
so a config gives the same global batch on any number of GPUs. Logs go to stdout and, as JSON lines, to
out_dir/log.jsonl.

When things go wrong: a non-finite loss, gradient or weight norm stops the run (exit 3) without saving,
so the last checkpoint stays the last good one. A scratch run refuses an out_dir that holds a checkpoint
(--init_from=resume continues it, --overwrite=true replaces it) and keeps the old log.jsonl until its own
first checkpoint. Ctrl-C or SIGTERM finishes the step, saves, and exits 130 / 143; a second one exits at
once. A resume drops log records past the checkpoint's step, so every step is logged once. Bad settings:
one line `train.py: error: ...`, exit 2.
"""
import json
import math
import os
import re
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

import eval as codelm_eval
from checkpoint import CheckpointError, recover_checkpoint, save_checkpoint
from configurator import ConfigError, configurable, configure, describe
from data import BATCH_BUDGETS as _SFT_BUDGETS  # (a private name: configurator takes public globals as settings)
from data import (DataError, SFTData, SFTSchedule, Tokenizer, atomic_write_bytes, collate_sft, format_eta,
                  exit_process, load_corpus_meta, load_sft_meta, open_shards, prepare_corpus, run_command,
                  sample_windows)
from finetune import LoraSettings, finetune_checkpoint, finetune_model, new_rows_only, parse_lora_targets
from hf import checkpoint_config
from model import GPT, GPTConfig, ModelError, estimate_mfu, make_config, peak_flops, without_tied_head
from optim import AdamW8bit
from sandbox import PR_SET_PDEATHSIG, prctl  # sandbox.py holds the Linux system calls

# ----------------------------------------------------------------------------- defaults
# I/O
out_dir = "out"
init_from = "scratch"       # 'scratch' | 'resume' (continue out_dir) | a checkpoint folder to start from
data_dir = "data/stdlib"
data_src = ""               # if data_dir holds no corpus yet, prepare it from this ('stdlib', folder, .jsonl)
data_mix = ()               # pretraining mixture instead of data_dir: ("data/text:0.5", "data/code:0.5"), corpora
                            # made with one tokenizer (data.py corpus --tokenizer); each micro-batch draws its corpus
data_vocab_size = 32768     # tokenizer size when data_src prepares the corpus
task = "pretrain"           # 'pretrain': random windows of the token shards | 'sft': masked examples (data.py sft/intent)
# model (taken from the checkpoint when init_from is one; block_size may still be changed)
n_layer = 12
n_head = 12
n_kv_head = 0               # 0 = n_head (no grouped-query attention)
n_embd = 768
intermediate_size = 0       # 0 = Llama's 8/3 * n_embd rounded up to 256
block_size = 1024
rope_theta = 10000.0
norm_eps = 1e-5
tie_embeddings = False
attn_impl = "auto"          # 'auto' (Triton on CUDA, SDPA elsewhere) | 'triton' | 'sdpa'
# optimization
batch_size = 8                      # sequences per micro-batch, per process
gradient_accumulation_steps = 1     # micro-batches per optimizer step, over all processes
max_iters = 1000
learning_rate = 6e-4
min_lr = 6e-5
lr_schedule = "cosine"      # after warmup: 'cosine' | 'linear' (to min_lr) | 'constant'
warmup_iters = 100
warmup_fraction = 0.0       # warmup as a share of the run's steps (rounded up, as Hugging Face's warmup_ratio); 0 = warmup_iters
lr_decay_iters = 0          # step at which the decay reaches min_lr (0 = max_iters)
weight_decay = 0.1          # applied to weights with >= 2 dimensions only
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0             # 0 = off
optimizer = "adamw"         # 'adamw' (torch) | 'adamw8bit' (ours: 8-bit block-wise moments, ~2 bytes/param of state)
# fine-tuning: task='sft' with init_from a checkpoint folder (ours, or a Hugging Face Llama/Mistral one)
epochs = 0                  # sft: passes over the training examples; sets max_iters (0 = run max_iters steps)
batch_tokens = 0            # sft: micro-batches by tokens (length-bucketed) instead of batch_size examples
sft_budget = "padded"       # sft: batch_tokens counts 'padded' (rows x longest) | 'unpadded' (the examples' own tokens)
sft_longest_first = False   # sft: each epoch visits the longest examples first (else shuffled)
lora_r = 0                  # LoRA rank; 0 = full fine-tuning
lora_alpha = 16.0           # LoRA scale = lora_alpha / lora_r
lora_dropout = 0.0
lora_targets = ("q", "v")   # among q, k, v, o, gate, up, down (--lora_targets=q,k,v,o)
lora_save = "merged"        # 'merged': a plain checkpoint (eval.py, export) | 'adapters': adapters + the base's path
lora_new_tokens = True      # LoRA: also train the embedding/head rows of tokens the data added to the vocab
lora_train_embeddings = False   # LoRA: train the whole embedding and head beside the adapters (PEFT's modules_to_save)
# evaluation, logging, checkpoints
eval_interval = 200         # val loss (and a checkpoint) every this many steps
eval_iters = 20             # val batches per evaluation
log_interval = 10
always_save_checkpoint = True   # False: save only when val loss improves
overwrite = False               # a scratch run may replace a checkpoint already in out_dir
eval_humaneval_interval = 0     # HumanEval pass@1 (greedy, sandboxed, on rank 0) every this many steps; 0 = off
eval_humaneval_limit = 0        # only the first N problems (0 = all 164)
# system
device = "auto"             # 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps'
dtype = "auto"              # 'auto' (bfloat16 on CUDA, float32 elsewhere) | 'bfloat16' | 'float32'
parallel = "ddp"            # under torchrun: 'ddp' | 'fsdp' (FSDP2 fully_shard per block, then the root)
compile = False             # torch.compile the model
activation_checkpointing = False
seed = 1337
# after training: a sampled continuation of this prompt on stdout ('' = off), as a first look at the model
sample_prompt = ""
sample_tokens = 100
sample_temperature = 0.8
# -----------------------------------------------------------------------------

_DEFAULT_WARMUP_ITERS = warmup_iters   # warmup_fraction may be set only while warmup_iters keeps this
_STOP_GRACE_S = 60   # after Ctrl-C / SIGTERM, a run that has not saved and exited by then exits anyway

_MODEL_KEYS = ("n_layer", "n_head", "n_kv_head", "n_embd", "intermediate_size", "block_size", "rope_theta",
               "norm_eps", "tie_embeddings", "attn_impl")
_EXIT_NONFINITE = 3


class TrainError(Exception):
    """Bad input to a training run; the message names the key, file or step."""


_BAD_INPUT = (ConfigError, TrainError, DataError, ModelError, CheckpointError)


# ----------------------------------------------------------------------------- settings
def settings(argv=()):
    """The run's settings: the defaults above, then each config file and --key=value of argv in order.
    The module's globals are never changed, so a process may call this (and run) any number of times."""
    values = configurable(globals())  # a fresh dict of the defaults
    configure(values, list(argv))
    return SimpleNamespace(**values)


_CHOICES = {"task": ("pretrain", "sft"), "lr_schedule": ("cosine", "linear", "constant"),
            "optimizer": ("adamw", "adamw8bit"), "parallel": ("ddp", "fsdp"), "dtype": ("auto", "bfloat16", "float32"),
            "attn_impl": ("auto", "triton", "sdpa"), "lora_save": ("merged", "adapters"), "sft_budget": _SFT_BUDGETS}
_AT_LEAST_1 = ("n_layer", "n_head", "n_embd", "block_size", "gradient_accumulation_steps", "eval_interval",
               "eval_iters", "log_interval", "data_vocab_size", "sample_tokens")
_AT_LEAST_0 = ("max_iters", "warmup_iters", "lr_decay_iters", "n_kv_head", "intermediate_size", "epochs", "batch_tokens",
               "lora_r", "eval_humaneval_interval", "eval_humaneval_limit", "batch_size")
_NON_NEGATIVE = ("learning_rate", "min_lr", "weight_decay", "grad_clip", "sample_temperature")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_settings(cfg):
    """Every setting in its allowed range before any work; TrainError names the key and the range."""
    def need(ok, key, allowed):
        if not ok:
            raise TrainError(f"{key} must be {allowed}, got {getattr(cfg, key)!r}")

    for key, allowed in _CHOICES.items():
        need(getattr(cfg, key) in allowed, key, "one of " + ", ".join(map(repr, allowed)))
    for key in _AT_LEAST_1:
        need(getattr(cfg, key) >= 1, key, ">= 1")
    for key in _AT_LEAST_0:
        need(getattr(cfg, key) >= 0, key, ">= 0")
    for key in _NON_NEGATIVE:
        need(math.isfinite(getattr(cfg, key)) and getattr(cfg, key) >= 0, key, "a finite number >= 0")
    for key in ("beta1", "beta2", "lora_dropout", "warmup_fraction"):
        need(0 <= getattr(cfg, key) < 1, key, "in [0, 1)")
    for key in ("rope_theta", "norm_eps", "lora_alpha"):
        need(math.isfinite(getattr(cfg, key)) and getattr(cfg, key) > 0, key, "a finite number > 0")
    if cfg.warmup_fraction > 0 and cfg.warmup_iters != _DEFAULT_WARMUP_ITERS:
        raise TrainError(f"warmup_fraction={cfg.warmup_fraction!r} and warmup_iters={cfg.warmup_iters!r} both set the warmup; "
                         f"set only one (leave warmup_iters at its default, {_DEFAULT_WARMUP_ITERS})")
    need(0 <= cfg.seed < 2**63, "seed", "in [0, 2**63)")
    need(_DEVICE.fullmatch(cfg.device), "device", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    need(cfg.n_embd % cfg.n_head == 0, "n_embd", f"a multiple of n_head={cfg.n_head}")
    need(cfg.batch_size >= 1 or (cfg.task == "sft" and cfg.batch_tokens > 0), "batch_size",
         ">= 1 (or 0 with task='sft' and batch_tokens > 0)")
    if cfg.lora_r > 0 and cfg.init_from == "scratch":
        raise TrainError("LoRA (lora_r > 0) needs init_from: a checkpoint folder to adapt")
    if cfg.lora_r > 0 and cfg.task != "sft":
        raise TrainError("LoRA (lora_r > 0) is for task='sft'")
    parse_lora_targets(cfg.lora_targets)  # ModelError naming the unknown target
    if cfg.data_mix:
        if cfg.task != "pretrain":
            raise TrainError("data_mix is for task='pretrain'")
        parse_mixture(cfg.data_mix)


def parse_mixture(entries):
    """[(folder, weight)] of data_mix's 'FOLDER:WEIGHT' entries, weights normalised to sum to 1."""
    sources = []
    for entry in entries:
        folder, sep, text = str(entry).rpartition(":")
        try:
            weight = float(text) if sep and folder else math.nan
        except ValueError:
            weight = math.nan
        if not (math.isfinite(weight) and weight >= 0):
            raise TrainError(f"data_mix: {entry!r} is not FOLDER:WEIGHT with a finite weight >= 0")
        if not (Path(folder) / "meta.json").is_file():
            raise TrainError(f"data_mix: {folder} holds no corpus (no meta.json; make it with data.py corpus)")
        sources.append((folder, weight))
    total = sum(w for _, w in sources)
    if not total > 0:
        raise TrainError(f"data_mix: the weights sum to {total}; they must sum to a positive number")
    return [(folder, w / total) for folder, w in sources]


def lora_settings(cfg):
    return LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=tuple(cfg.lora_targets),
                        save=cfg.lora_save, new_tokens=cfg.lora_new_tokens, embeddings=cfg.lora_train_embeddings)


# ----------------------------------------------------------------------------- processes
@dataclass
class Env:
    """Where this process runs: its rank among world processes, its device, its share of a step's
    micro-batches, and the precision."""
    rank: int
    world: int
    dev: torch.device
    accum: int
    amp_dtype: torch.dtype
    use_autocast: bool
    fsdp: bool

    @property
    def master(self):
        return self.rank == 0

    def autocast(self):
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype) if self.use_autocast else nullcontext()


def die_with_parent():
    """Under torchrun: the kernel sends this rank SIGTERM when its launcher dies (Linux PR_SET_PDEATHSIG),
    so killing torchrun never leaves ranks training on their own."""
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent == 1 or os.getppid() != parent:  # the launcher died before the call
        raise SystemExit(f"train.py: error: the launcher of rank {os.environ.get('RANK')} is gone")


def setup_distributed(device):
    """(rank, world_size, local_rank, torch.device). Under torchrun: nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if dev == "cuda" and world > 1:
        dev = f"cuda:{local_rank}"
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError(f"device={device!r} but CUDA is not available")
        if torch.device(dev).index is not None and torch.device(dev).index >= torch.cuda.device_count():
            raise TrainError(f"device={dev!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(dev)
    if dev == "mps" and not torch.backends.mps.is_available():
        raise TrainError("device='mps' but MPS is not available")
    if world > 1 and not dist.is_initialized():  # (a process running several trainings keeps its group)
        dist.init_process_group(backend="nccl" if dev.startswith("cuda") else "gloo")
    return rank, world, local_rank, torch.device(dev)


def start(cfg):
    """Set up this process: parent-death signal, process group, device, precision, seed."""
    die_with_parent()
    rank, world, _, dev = setup_distributed(cfg.device)
    fsdp = world > 1 and cfg.parallel == "fsdp"
    if cfg.eval_humaneval_interval > 0 and fsdp:
        raise TrainError("eval_humaneval_interval needs parallel='ddp' or one process (FSDP shards the weights rank 0 would generate with)")
    if cfg.gradient_accumulation_steps % world:
        raise TrainError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must be divisible by the number of processes ({world})")
    amp_dtype = {"auto": torch.bfloat16 if dev.type == "cuda" else torch.float32, "bfloat16": torch.bfloat16,
                 "float32": torch.float32}[cfg.dtype]
    torch.manual_seed(cfg.seed)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    use_autocast = dev.type == "cuda" and amp_dtype != torch.float32 and not fsdp
    return Env(rank, world, dev, cfg.gradient_accumulation_steps // world, amp_dtype, use_autocast, fsdp)


def all_agree(env, ok):
    """True on every rank when ok is true on every rank (a collective: also a barrier)."""
    if env.world == 1:
        return ok
    t = torch.tensor([0.0 if ok else 1.0], device=env.dev)
    dist.all_reduce(t)
    return t.item() == 0


# ----------------------------------------------------------------------------- schedule, batches, optimizer
def warmup_steps(cfg, max_iters):
    """The run's warmup in steps: warmup_iters, or warmup_fraction of its max_iters rounded up (as
    Hugging Face's Trainer turns warmup_ratio into steps, which the papers' recipes use)."""
    if cfg.warmup_fraction > 0:
        return math.ceil(cfg.warmup_fraction * max_iters)
    return cfg.warmup_iters


def lr_at(step, cfg, max_iters):
    """Linear warmup to learning_rate, then cosine / linear decay to min_lr at lr_decay_iters (0 = the
    run's max_iters), or constant."""
    warmup = warmup_steps(cfg, max_iters)
    if step < warmup:
        return cfg.learning_rate * (step + 1) / (warmup + 1)
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    end = cfg.lr_decay_iters or max_iters
    if step >= end:
        return cfg.min_lr
    progress = (step - warmup) / max(1, end - warmup)
    if cfg.lr_schedule == "linear":
        return cfg.learning_rate + progress * (cfg.min_lr - cfg.learning_rate)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def batch_rng(seed, split, step, micro):
    """The generator for one micro-batch: a pure function of (seed, split, step, micro-batch index), so
    a resumed run replays the same batches and any world size sees the same global batch."""
    return np.random.default_rng([seed, {"train": 0, "val": 1}[split], step, micro])


def model_config(cfg, vocab):
    """The GPTConfig a scratch run builds from the settings."""
    return GPTConfig(vocab_size=vocab, **{k: getattr(cfg, k) for k in _MODEL_KEYS})


def make_optimizer(model, name, lr, betas, weight_decay, fused=False, no_decay_names=()):
    """AdamW ('adamw': torch's, 'adamw8bit': ours) with weight decay on the trainable weights of >= 2
    dimensions (minus no_decay_names), none on the others."""
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.requires_grad and p.dim() >= 2 and n not in no_decay_names]
    no_decay = [p for n, p in named if p.requires_grad and (p.dim() < 2 or n in no_decay_names)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)
    if name == "adamw8bit":
        return AdamW8bit(groups, lr=lr, betas=betas)
    raise TrainError(f"optimizer must be 'adamw' or 'adamw8bit', got {name!r}")


def full_state(raw_model, opt=None):
    """Full (unsharded) model and optimizer state dicts with plain parameter names, on CPU; a collective
    under FSDP (every rank must call it)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = without_tied_head(get_model_state_dict(raw_model, options=options), raw_model.cfg)
    return state, (get_optimizer_state_dict(raw_model, opt, options=options) if opt is not None else None)


@torch.no_grad()
def weights_sq_norm(raw_model, env):
    """Sum of the squared weights in float32 over all ranks: not finite when a weight is (or when a
    weight beyond ~1e19 overflows it: a diverged run, never a trained one). One pass over the weights."""
    total = torch.zeros((), device=env.dev)
    for p in raw_model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p  # FSDP2: this rank's shard
        total += local.float().pow(2).sum()
    if env.world > 1 and env.fsdp:
        dist.all_reduce(total)
    return total.item()


# ----------------------------------------------------------------------------- output folder and log
def prepare_out_dir(cfg, env):
    """out_dir exists and is writable, an unfinished save of a killed run is finished or discarded, and
    a scratch or fine-tuning run does not replace a checkpoint there unless told to. Rank 0 does it;
    every rank stops if it fails."""
    out, error = Path(cfg.out_dir), None
    if env.master:
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
            recover_checkpoint(out)
        except OSError as e:
            error = TrainError(f"out_dir {cfg.out_dir!r} is not writable ({e.strerror})")
        if error is None and cfg.init_from != "resume" and not cfg.overwrite and (out / "config.json").is_file():
            error = TrainError(f"out_dir {cfg.out_dir!r} already holds a checkpoint: continue it with --init_from=resume, "
                               "or replace it with --overwrite=true")
    if not all_agree(env, error is None):
        raise error or TrainError("rank 0 could not use out_dir")
    return out


def _json_safe(value):
    """Non-finite floats as null: log.jsonl stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def trim_log(path, step):
    """Drop the records of steps after `step` (a run killed after its last checkpoint logged them; the
    resumed run logs them again) and any line a kill cut short."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step") is None or record["step"] <= step:
            kept.append(line)
    atomic_write_bytes(path, "".join(kept).encode("utf-8"))


class Log:
    """Readable lines on stdout and the same records as JSON lines in out_dir/log.jsonl (rank 0 only).
    A new run in a folder with an old log writes log.jsonl.new until its first checkpoint, then
    renames it over the old one; a resumed run trims the log to its checkpoint's step and appends."""

    def __init__(self, folder, master, resume_step=None):
        self.master, self.pending, self.f = master, None, None
        if not master:
            return
        path = Path(folder) / "log.jsonl"
        if resume_step is not None:
            trim_log(path, resume_step)
        elif path.exists():
            self.pending, path = path, path.with_name("log.jsonl.new")
        self.f = open(path, "a" if resume_step is not None else "w", encoding="utf-8")

    def checkpoint_saved(self):
        if self.pending is not None:
            os.replace(self.f.name, self.pending)  # the open file keeps writing under the new name
            self.pending = None

    def __call__(self, line, **record):
        if not self.master:
            return
        print(line, flush=True)
        if record:
            self.f.write(json.dumps(_json_safe({"time": round(time.time(), 3), **record}), allow_nan=False) + "\n")
            self.f.flush()

    def close(self):
        if self.f is not None:
            self.f.close()


# ----------------------------------------------------------------------------- data
@dataclass
class Data:
    """The run's data: meta.json and the tokenizer (of data_dir, or of data_mix's first corpus), and the
    pretraining shards of each source with its weight, or the SFT feed."""
    folder: str
    meta: dict
    tok: Tokenizer
    sources: list    # pretraining: [(folder, weight, {"train": shards, "val": shards})]
    sft: object

    @property
    def weights(self):
        return [w for _, w, _ in self.sources]


def load_data(cfg, env):
    """Open data_dir (prepared from data_src on rank 0 first when it holds no corpus yet) or the corpora
    of data_mix (one tokenizer)."""
    if cfg.data_src and not cfg.data_mix and not (Path(cfg.data_dir) / "meta.json").is_file():
        if env.master:
            prepare_corpus(cfg.data_src, cfg.data_dir, vocab_size=cfg.data_vocab_size)
        if env.world > 1:
            dist.barrier()
    if cfg.task == "sft":
        meta, tok = load_sft_meta(cfg.data_dir), Tokenizer.load(cfg.data_dir)
        return Data(cfg.data_dir, meta, tok, [], SFTFeed(cfg, meta, env, tok.pad_id))
    sources = []
    for folder, weight in parse_mixture(cfg.data_mix) if cfg.data_mix else [(cfg.data_dir, 1.0)]:
        meta = load_corpus_meta(folder)
        if sources and meta["tokenizer"]["sha256"] != sources[0][3]["tokenizer"]["sha256"]:
            raise TrainError(f"data_mix: {folder} was tokenized with another tokenizer than {sources[0][0]} "
                             f"(make it with data.py corpus --tokenizer {sources[0][0]}/tokenizer.model)")
        shards = {s: open_shards(folder, s, meta) for s in ("train", "val")}
        for s, arrays in shards.items():
            longest = max(len(a) for a in arrays)
            if longest <= cfg.block_size:
                raise TrainError(f"block_size {cfg.block_size} is larger than the {s} split of {folder} ({longest:,} tokens in its largest shard); lower block_size")
        sources.append((folder, weight, shards, meta))
    meta = dict(sources[0][3])
    meta["train"] = {**meta["train"], "tokens": sum(m["train"]["tokens"] for *_, m in sources)}
    return Data(sources[0][0], meta, Tokenizer.load(sources[0][0]), [src[:3] for src in sources], None)


def draw_source(rng, weights):
    """The corpus a micro-batch comes from: the first draw of its generator, so the choice is as
    deterministic as the windows (and a single corpus draws nothing)."""
    if len(weights) == 1:
        return 0
    return min(int(np.searchsorted(np.cumsum(weights), rng.random(), side="right")), len(weights) - 1)


class SFTFeed:
    """task='sft': this rank's micro-batches of whole examples (data.SFTSchedule) and the loss weights.
    The loss of a step is the mean over all its loss tokens (every micro-batch, every rank), so each
    micro-batch's mean loss is divided by N / (world * n) (n its tokens, N the step's): any batching,
    accumulation or world size computes the same objective."""

    def __init__(self, cfg, meta, env, pad_id):
        self.rank, self.world, self.accum, self.dev, self.pad = env.rank, env.world, env.accum, env.dev, pad_id or 0
        self.micro_batches, self.eval_iters = cfg.gradient_accumulation_steps, cfg.eval_iters
        self.data = {s: SFTData(cfg.data_dir, s, meta) for s in ("train", "val")}
        longest = max(meta["train"]["longest"], meta["val"]["longest"]) - 1
        if longest > cfg.block_size:
            raise TrainError(f"{cfg.data_dir}: examples up to {longest + 1} tokens need block_size >= {longest} (got {cfg.block_size}); "
                             "raise block_size or re-make the data with a smaller --max_len")
        if 0 < cfg.batch_tokens < longest:
            print(f"note: batch_tokens={cfg.batch_tokens} is below the longest example ({longest}); such examples get a batch of their own", file=sys.stderr)
        bs = 0 if cfg.batch_tokens > 0 else cfg.batch_size
        self.loss_tokens = {s: self._loss_tokens(d) for s, d in self.data.items()}
        try:
            self.sched = SFTSchedule(self.data["train"].lengths, cfg.gradient_accumulation_steps, cfg.seed, bs, cfg.batch_tokens,
                                     budget=cfg.sft_budget, longest_first=cfg.sft_longest_first)
            # val batches: the same budget (the same memory), shuffled (the first eval_iters are a fair sample)
            self.val_plan = SFTSchedule(self.data["val"].lengths, 1, cfg.seed, bs, cfg.batch_tokens, budget=cfg.sft_budget).plan(0)
            self.steps_per_epoch = self.sched.steps(1)
        except DataError as e:
            raise TrainError(str(e))
        self._step = (None, None)

    @staticmethod
    def _loss_tokens(d):
        """Per example: tokens with loss that are targets (every masked token but the first)."""
        if len(d) == 0:
            return np.zeros(0, dtype=np.int64)
        cm = np.concatenate([[0], np.cumsum(d.mask, dtype=np.int64)])
        return cm[d.offsets[1:]] - cm[d.offsets[:-1] + 1]

    def _step_batches(self, step):
        if self._step[0] != step:
            batches = [self.sched.micro_batch(step, j) for j in range(self.micro_batches)]
            n = [int(self.loss_tokens["train"][b].sum()) for b in batches]
            self._step = (step, (batches, n, sum(n)))
        return self._step[1]

    def batch(self, step, micro):
        """(x, y, divisor) for micro-batch `micro` of this rank at `step`: loss / divisor is its share."""
        batches, n, total = self._step_batches(step)
        j = self.rank * self.accum + micro
        x, y = collate_sft(self.data["train"], batches[j], self.pad)
        div = total / max(1, self.world * n[j]) if n[j] else float("inf")
        return torch.from_numpy(x).to(self.dev), torch.from_numpy(y).to(self.dev), div

    def tokens(self, step):
        """Tokens (no padding) processed by all ranks at `step`."""
        batches, _, _ = self._step_batches(step)
        return int(sum(int(self.data["train"].lengths[b].sum() - len(b)) for b in batches))

    @torch.no_grad()
    def val_loss(self, model, autocast):
        """Mean loss over the loss tokens of the first eval_iters val micro-batches (all ranks run the
        same number of forwards, as FSDP needs)."""
        k = min(self.eval_iters, len(self.val_plan))
        n = self.world * math.ceil(k / self.world)
        sums = torch.zeros(2, device=self.dev, dtype=torch.float64)
        model.eval()
        for i in range(self.rank, n, self.world):
            x, y = collate_sft(self.data["val"], self.val_plan[i % k], self.pad)
            x, y = torch.from_numpy(x).to(self.dev), torch.from_numpy(y).to(self.dev)
            with autocast():
                _, loss = model(x, y)
            cnt = int((y != -1).sum())
            sums += torch.stack([loss.double() * cnt, torch.tensor(float(cnt), device=self.dev, dtype=torch.float64)])
        model.train()
        if self.world > 1:
            dist.all_reduce(sums)
        return (sums[0] / sums[1].clamp(min=1)).item()


def run_length(cfg, data):
    """The run's max_iters: epochs > 0 (task='sft') sets it to that many passes over the examples."""
    max_iters = data.sft.sched.steps(cfg.epochs) if data.sft is not None and cfg.epochs > 0 else cfg.max_iters
    if warmup_steps(cfg, max_iters) >= max_iters > 0:
        print(f"warning: a warmup of {warmup_steps(cfg, max_iters)} steps >= the run's {max_iters} steps: the learning rate never "
              f"leaves warmup (it peaks at {lr_at(max_iters - 1, cfg, max_iters):.2e}, not {cfg.learning_rate:.2e}); "
              "lower warmup_iters or warmup_fraction", file=sys.stderr)
    return max_iters


# ----------------------------------------------------------------------------- the model a run starts from
def load_start(cfg, data, out):
    """(model on CPU, fine-tuning info or None, resume state or None) for init_from: 'scratch' builds
    the configured shape; 'resume' continues out_dir; a checkpoint folder (ours, or Hugging Face) is
    fine-tuned: grown to the data's vocabulary, with LoRA adapters if lora_r > 0 (finetune.py)."""
    meta = data.meta
    if cfg.init_from == "scratch":
        return GPT(model_config(cfg, meta["vocab_size"])), None, None
    resume = cfg.init_from == "resume"
    src = out if resume else Path(cfg.init_from)
    ckpt = checkpoint_config(src)  # ours, or a Hugging Face folder translated
    shape = GPTConfig.from_dict(ckpt["model"], where=str(src / "config.json"))
    resume_state = load_resume_state(cfg, src, ckpt, shape, meta) if resume else None
    want_sha = (ckpt.get("tokenizer") or {}).get("sha256")
    if want_sha and want_sha != meta["tokenizer"]["sha256"]:
        raise TrainError(f"tokenizer/model vocab mismatch: {data.folder} was tokenized with a different tokenizer than {src} (sha256 {meta['tokenizer']['sha256'][:12]} vs {want_sha[:12]})")
    if resume and meta["vocab_size"] > shape.vocab_size:
        raise TrainError(f"tokenizer/model vocab mismatch: {data.folder} has {meta['vocab_size']} token ids but the model in {src} has {shape.vocab_size}")
    model, info = finetune_model(src, ckpt, meta, data.folder, cfg.block_size, lora_settings(cfg), resume_state)
    return model, info, resume_state


def load_resume_state(cfg, src, ckpt, shape, meta):
    """train_state.pt of out_dir, after checking that this run asks for the model it holds."""
    wanted = model_config(cfg, meta["vocab_size"])
    diff = [f"{f.name}={getattr(shape, f.name)!r} there, {getattr(wanted, f.name)!r} here" for f in fields(shape)
            if getattr(shape, f.name) != getattr(wanted, f.name)
            and (f.name == "block_size" or not ckpt.get("finetune"))]  # a fine-tune's shape is its base's
    if diff:
        raise TrainError(f"init_from='resume': the model config in {src / 'config.json'} differs from this run's: {'; '.join(diff)}")
    if not (src / "train_state.pt").is_file():
        raise TrainError(f"init_from='resume': {src} has no train_state.pt")
    try:
        state = torch.load(src / "train_state.pt", map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as e:
        raise TrainError(f"{src / 'train_state.pt'}: unreadable ({e})")
    check_same_sft_batches(cfg, src, state.get("config", {}))
    return state


_SFT_BATCH_KEYS = ("seed", "gradient_accumulation_steps", "batch_size", "batch_tokens", "sft_budget", "sft_longest_first")


def check_same_sft_batches(cfg, src, before):
    """A resumed SFT run replays the batches of the run it continues only with the settings that chose
    them (a checkpoint older than a setting ran with its default); TrainError names those that differ."""
    if cfg.task != "sft":
        return
    keys = [k for k in _SFT_BATCH_KEYS if not (k == "batch_size" and cfg.batch_tokens > 0)]  # unused by a token budget
    # globals()[k]: the default above, for a key the checkpoint's run did not have yet
    diff = [f"{k}={before.get(k, globals()[k])!r} there, {getattr(cfg, k)!r} here" for k in keys
            if before.get(k, globals()[k]) != getattr(cfg, k)]
    if diff:
        raise TrainError(f"init_from='resume': the run in {src} chose its batches with other settings ({'; '.join(diff)}); "
                         "resume with the same ones")


def resume_note(state, cfg, env):
    """One line on what a resume at another world size guarantees, or None."""
    before = state.get("world_size", 1)
    if before == env.world:
        return None
    was_fsdp = before > 1 and state.get("config", {}).get("parallel") == "fsdp"
    if was_fsdp or env.fsdp:
        return (f"resuming a {before}-process run on {env.world}: it continues from the same state but not bit for bit "
                "(FSDP reduces gradients in another order at another world size)")
    return f"resuming a {before}-process run on {env.world}: bit-exact (the same global batches, the same arithmetic)"


# ----------------------------------------------------------------------------- the training loop
class StopSignal:
    """Ctrl-C / SIGTERM while training: the first asks the run to stop after the current step and save;
    another one, a second or more later, exits at once (a launcher such as torchrun forwards the user's
    Ctrl-C to ranks that already got it, so repeats within a second count as one). A thread acts on the
    signals, woken through signal.set_wakeup_fd, not the main thread's handler: the main thread may wait
    in a call that signals do not interrupt (a collective, the checkpoint folder's lock held by a
    reader), and a second signal must still end the run then."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, out_dir):
        self.out_dir, self.signum, self.at, self.previous = out_dir, None, 0.0, {}

    def __enter__(self):
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)  # (set_wakeup_fd requires it)
        self.previous_wakeup = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="stop-signal", daemon=True).start()
        for s in self.SIGNALS:
            self.previous[s] = signal.signal(s, lambda *_: None)  # the watcher thread acts; this only wakes it
            signal.siginterrupt(s, False)  # restart interrupted system calls: a collective in flight must not fail
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(self.previous_wakeup)
        os.close(self.write_fd)  # the watcher reads end of file and ends

    def _watch(self):
        while received := os.read(self.read_fd, 64):  # one byte per signal
            for signum in received:
                if signum in self.SIGNALS:
                    self._handle(signum)
        os.close(self.read_fd)

    def _handle(self, signum):
        if self.signum is None:
            self.signum, self.at = signum, time.monotonic()
            # if another rank died instead of stopping, the collectives of the save would wait for it forever
            watchdog = threading.Timer(_STOP_GRACE_S, os._exit, (128 + signum,))
            watchdog.daemon = True
            watchdog.start()
            if os.environ.get("RANK", "0") == "0":
                os.write(2, f"train.py: {signal.Signals(signum).name}: finishing this step, then saving (again to exit now)\n".encode())
        elif time.monotonic() - self.at > 1.0:
            os.write(2, f"train.py: {signal.Signals(signum).name} again: exiting now; the last checkpoint in {self.out_dir} is kept\n".encode())
            os._exit(128 + signum)


class Trainer:
    """A run after set-up: the model (raw and wrapped), optimizer, data and log, and the loop's steps."""

    def __init__(self, cfg, env, data, out, model, finetune_info, resume_state, max_iters):
        self.cfg, self.env, self.data, self.out, self.info, self.max_iters = cfg, env, data, out, finetune_info, max_iters
        self.config = dict(vars(cfg))  # the settings as given, into every checkpoint and the log
        self.raw = model.to(env.dev)
        model.activation_checkpointing = cfg.activation_checkpointing
        if env.fsdp:
            mp = MixedPrecisionPolicy(param_dtype=env.amp_dtype, reduce_dtype=torch.float32)
            for block in model.blocks:
                fully_shard(block, mp_policy=mp)
            fully_shard(model, mp_policy=mp)
        self.new_rows = ((finetune_info or {}).get("lora") or {}).get("token_ids")  # LoRA: rows of added tokens train too
        self.opt = make_optimizer(model, cfg.optimizer, cfg.learning_rate, (cfg.beta1, cfg.beta2), cfg.weight_decay,
                                  fused=env.dev.type == "cuda",
                                  no_decay_names=("embed.weight", "head.weight") if self.new_rows else ())
        self.start_step, self.best_val, self.saved_step = 0, float("inf"), None
        if resume_state is not None:
            set_optimizer_state_dict(self.raw, self.opt, resume_state["optimizer"], options=StateDictOptions(full_state_dict=True))
            torch.set_rng_state(resume_state["rng"]["torch"])
            self.start_step = self.saved_step = resume_state["step"]
            self.best_val = resume_state["best_val_loss"]
        seen = resume_state.get("tokens_by_source", {}) if resume_state is not None else {}
        self.tokens_seen = {folder: seen.get(folder, 0) for folder, _, _ in data.sources}  # pretraining tokens per corpus
        self.model = torch.compile(model) if cfg.compile else model
        if env.world > 1 and not env.fsdp:
            self.model = DDP(self.model, device_ids=[env.dev.index] if env.dev.type == "cuda" else None)
        self.resumed = resume_state is not None
        self.log = Log(out, env.master, resume_step=self.start_step if self.resumed else None)
        self.executor = None
        if cfg.eval_humaneval_interval > 0 and env.master:  # the sandbox: a separate clean process, started once
            self.executor = codelm_eval.Executor(workers=min(4, os.cpu_count() or 1), quiet=True).start()
        if self.resumed and (note := resume_note(resume_state, cfg, env)):
            self.log(note, event="resume_world_size", before=resume_state.get("world_size", 1), now=env.world)

    # -- pieces of a step
    def set_sync(self, on):
        """Gradient all-reduce only on the last micro-batch of a step."""
        if self.env.world > 1 and not self.env.fsdp:
            self.model.require_backward_grad_sync = on
        elif self.env.fsdp:
            self.raw.set_requires_gradient_sync(on)

    def batch(self, split, step, micro):
        """Micro-batch `micro` of `step`: windows of the corpus its generator draws (data_mix)."""
        cfg, vocab = self.cfg, self.raw.cfg.vocab_size
        rng = batch_rng(cfg.seed, split, step, micro)
        folder, _, shards = self.data.sources[draw_source(rng, self.data.weights)]
        x, y = sample_windows(shards[split], cfg.batch_size, cfg.block_size, rng)
        if int(x.max()) >= vocab or int(y.max()) >= vocab:
            raise TrainError(f"{folder}: corrupt shard (token id >= vocab size {vocab})")
        return x.to(self.env.dev, non_blocking=True), y.to(self.env.dev, non_blocking=True)

    @torch.no_grad()
    def val_loss(self):
        env = self.env
        if self.data.sft is not None:
            return self.data.sft.val_loss(self.model, env.autocast)
        self.model.eval()
        n = env.world * math.ceil(self.cfg.eval_iters / env.world)  # every rank runs the same number of forwards (FSDP)
        total = torch.zeros((), device=env.dev)
        for i in range(env.rank, n, env.world):
            x, y = self.batch("val", 0, i)
            with env.autocast():
                _, loss = self.model(x, y)
            total += loss.float()
        self.model.train()
        total /= n // env.world
        if env.world > 1:
            dist.all_reduce(total)
            total /= env.world
        return total.item()

    def train_step(self, step, stop):
        """One optimizer step. Returns (loss, grad norm, lr, whether any rank was asked to stop)."""
        env, sft = self.env, self.data.sft
        lr = lr_at(step, self.cfg, self.max_iters)
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=env.dev)
        for micro in range(env.accum):
            if sft is not None:  # whole examples; div weighs the micro-batch by its loss tokens
                x, y, div = sft.batch(step, micro)
            else:
                (x, y), div = self.batch("train", step, env.rank * env.accum + micro), env.accum
            self.set_sync(micro == env.accum - 1)
            with env.autocast():
                _, loss = self.model(x, y)
            (loss / div).backward()
            loss_sum += loss.detach().float() / div
        if self.new_rows:
            new_rows_only(self.raw, self.new_rows)
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        summed = torch.stack([loss_sum, torch.tensor(float(stop.signum is not None), device=env.dev)])
        if env.world > 1:  # one all-reduce: the loss, and whether any rank got a signal (all stop together)
            dist.all_reduce(summed)
        loss_value, stopping = (summed[0] / env.world).item(), summed[1].item() > 0  # also the per-step sync point
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):  # before the update touches the weights
            what = f"loss is {loss_value}" if not math.isfinite(loss_value) else f"gradient norm is {grad_norm}"
            self.diverged(step, what, loss=loss_value, grad_norm=grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss_value, grad_norm, lr, stopping

    def diverged(self, step, what, **record):
        """Stop without saving: the last checkpoint stays the last good one."""
        kept = (f"the last good checkpoint is in {self.cfg.out_dir} (step {self.saved_step})" if self.saved_step is not None
                else "no checkpoint of this run was saved")
        self.log(f"step {step} | {what}: stopping; {kept}", event="nonfinite", step=step, **record)
        raise SystemExit(_EXIT_NONFINITE)

    def save(self, step):
        """A checkpoint of the state after `step` steps, never of a diverged one (collective under FSDP).
        The log says "saved" only once it is."""
        env, cfg = self.env, self.cfg
        norm = weights_sq_norm(self.raw, env)
        if not math.isfinite(norm):
            self.diverged(step, f"the weights' squared norm is {norm}", weights_sq_norm=norm)
        state, opt_state = full_state(self.raw, self.opt)  # collective
        error = None
        if env.master:
            train_state = {"step": step, "best_val_loss": self.best_val, "optimizer": opt_state, "world_size": env.world,
                           "tokens_by_source": dict(self.tokens_seen),
                           "rng": {"torch": torch.get_rng_state()}, "config": self.config}
            ckpt_config = make_config(self.raw.cfg, self.data.tok.to_config(), self.config, step, self.data.meta.get("postprocess"))
            state, weights_name = finetune_checkpoint(state, ckpt_config, train_state, self.info, cfg.lora_save)  # LoRA: merged or adapters
            try:
                save_checkpoint(self.out, state, ckpt_config, tokenizer_file=self.data.tok.model_path,
                                train_state=train_state, weights_name=weights_name)
            except CheckpointError as e:
                error = e
        if not all_agree(env, error is None):
            raise error or TrainError("rank 0 could not save the checkpoint")
        self.saved_step = step
        self.log.checkpoint_saved()
        self.log(f"step {step} | saved {cfg.out_dir}", event="checkpoint", step=step)

    def evaluate(self, step):
        """Validation loss at `step`; a checkpoint when due; HumanEval pass@1 when asked."""
        cfg, env = self.cfg, self.env
        vl = self.val_loss()
        if not math.isfinite(vl):  # never save a checkpoint that evaluates to nan/inf
            self.diverged(step, f"val loss is {vl}", val_loss=vl)
        improved = vl < self.best_val
        self.best_val = min(self.best_val, vl)
        self.log(f"step {step} | val loss {vl:.4f}", event="eval", step=step, val_loss=vl)
        if step > 0 and (cfg.always_save_checkpoint or improved):
            self.save(step)
        if cfg.eval_humaneval_interval and step > 0 and (step % cfg.eval_humaneval_interval == 0 or step == self.max_iters):
            if env.master:
                self.humaneval(step)
            if env.world > 1:
                dist.barrier()

    def humaneval(self, step):
        """HumanEval pass@1 on rank 0. An evaluation that fails (the executor died, the sandbox could not be
        set up) is logged and training goes on: the run, not the side measurement, is what matters."""
        cfg = self.cfg
        try:
            with self.env.autocast():
                he = codelm_eval.evaluate(self.raw, self.data.tok, ("humaneval",), limit=cfg.eval_humaneval_limit or None,
                                          executor=self.executor, postprocess=self.data.meta.get("postprocess"))["humaneval"]
        except (codelm_eval.EvalError, codelm_eval.ExecutorError, DataError, OSError) as e:
            self.log(f"step {step} | humaneval failed ({type(e).__name__}: {e}); training goes on",
                     event="humaneval_failed", step=step, error=f"{type(e).__name__}: {e}")
            return
        self.log(f"step {step} | humaneval pass@1 {100 * he['pass@1']:.1f}% ({he['passed']}/{he['n_samples']}, "
                 f"{he['generate_s'] + he['execute_s']:.0f}s)", event="humaneval", step=step, **he)

    def count_sources(self, step):
        """Add `step`'s tokens to the corpus each micro-batch drew from (every rank counts them all:
        the draw is the first number of the micro-batch's generator, cheap to repeat)."""
        cfg, folders = self.cfg, list(self.tokens_seen)
        for j in range(cfg.gradient_accumulation_steps):
            i = draw_source(batch_rng(cfg.seed, "train", step, j), self.data.weights)
            self.tokens_seen[folders[i]] += cfg.batch_size * cfg.block_size

    def report(self, step, loss, grad_norm, lr, step_time, tokens):
        tps = tokens / step_time
        seen = sum(self.tokens_seen.values())
        mix = (" | seen " + ", ".join(f"{Path(f).name} {100 * n / seen:.0f}%" for f, n in self.tokens_seen.items())
               if len(self.tokens_seen) > 1 and seen else "")
        mfu = estimate_mfu(self.raw.flops_per_token(self.cfg.block_size), tps, peak_flops(self.env.dev), self.env.world)
        eta = (self.max_iters - step) * step_time
        self.log(f"step {step}/{self.max_iters} | loss {loss:.4f} | lr {lr:.2e} | grad norm {grad_norm:.3f} | "
                 f"{tps:,.0f} tok/s" + (f" | mfu {100 * mfu:.1f}%" if mfu is not None else "") +
                 f" | {1000 * step_time:.0f} ms/step | eta {format_eta(eta)}" + mix,
                 event="train", step=step, loss=loss, lr=lr, grad_norm=grad_norm, tokens_per_sec=tps,
                 mfu=mfu, step_ms=1000 * step_time, eta_s=eta, tokens_by_source=dict(self.tokens_seen) or None)

    def tokens_per_step(self, step):
        if self.data.sft is not None:  # examples vary in length: count this step's real tokens
            return self.data.sft.tokens(step)
        return self.cfg.batch_size * self.cfg.block_size * self.cfg.gradient_accumulation_steps

    def log_start(self):
        cfg, env, raw = self.cfg, self.env, self.raw
        n_params, tokens = raw.num_params(), self.tokens_per_step(self.start_step)
        mode = cfg.parallel if env.world > 1 else "single"
        self.log(f"model {n_params / 1e6:.2f}M parameters ({raw.cfg.n_layer}x{raw.cfg.n_embd}, vocab {raw.cfg.vocab_size}) | "
                 f"{env.world} process(es) on {env.dev.type} ({mode}) | {tokens:,} tokens/step | "
                 f"data {' + '.join(f'{f} x{w:.2f}' for f, w, _ in self.data.sources) if len(self.data.sources) > 1 else self.data.folder} "
                 f"({self.data.meta['train']['tokens']:,} train tokens)",
                 event="start", params=n_params, world_size=env.world, device=env.dev.type,
                 parallel=cfg.parallel if env.world > 1 else None, tokens_per_step=tokens, start_step=self.start_step,
                 max_iters=self.max_iters, config=self.config)
        if cfg.warmup_fraction > 0:
            warmup = warmup_steps(cfg, self.max_iters)
            self.log(f"warmup {warmup} steps ({cfg.warmup_fraction:g} of {self.max_iters} steps, rounded up)",
                     event="warmup", warmup_iters=warmup, warmup_fraction=cfg.warmup_fraction, max_iters=self.max_iters)

    def loop(self):
        """Train to max_iters, evaluating (and saving) every eval_interval steps. Returns the exit code:
        0, or 128 + the signal that stopped the run early (after a checkpoint)."""
        cfg, step = self.cfg, self.start_step
        t_last, ema_step_time = time.time(), None
        self.model.train()
        with StopSignal(cfg.out_dir) as stop:
            stopping = False
            while True:
                if step % cfg.eval_interval == 0 and (step > self.start_step or not self.resumed) or step == self.max_iters:
                    self.evaluate(step)
                if stopping:
                    if self.saved_step != step:
                        self.save(step)
                    name = signal.Signals(stop.signum or signal.SIGTERM).name
                    self.log(f"step {step} | stopped by {name}; the checkpoint in {cfg.out_dir} is at step {step} "
                             "(continue with --init_from=resume)", event="stopped", step=step, signal=name)
                    return 128 + (stop.signum or signal.SIGTERM)
                if step >= self.max_iters:
                    return 0
                loss, grad_norm, lr, stopping = self.train_step(step, stop)
                tokens = self.tokens_per_step(step)
                if self.data.sft is None:
                    self.count_sources(step)
                step += 1
                now = time.time()
                dt, t_last = now - t_last, now
                if step > self.start_step + 1:  # the first step includes compilation and warmup
                    ema_step_time = dt if ema_step_time is None else 0.9 * ema_step_time + 0.1 * dt
                if step % cfg.log_interval == 0 or step == self.max_iters:
                    self.report(step, loss, grad_norm, lr, ema_step_time or dt, tokens)

    def sample(self):
        """A sampled continuation of sample_prompt on stdout: what the model writes now."""
        cfg, tok = self.cfg, self.data.tok
        if not cfg.sample_prompt or self.env.fsdp or not self.env.master:  # FSDP: no rank holds the whole model
            return
        prompt = tok.encode(cfg.sample_prompt)
        n = max(1, min(cfg.sample_tokens, self.raw.cfg.block_size - len(prompt)))
        generator = torch.Generator(device=self.env.dev).manual_seed(cfg.seed)
        with self.env.autocast():
            new = self.raw.generate([prompt], n, temperature=cfg.sample_temperature, eos_id=tok.eos_id, generator=generator)[0]
        text = tok.decode(prompt + new)
        self.log(f"sample (temperature {cfg.sample_temperature}, {len(new)} tokens):\n{text}\n", event="sample", text=text)

    def close(self):
        if self.executor is not None:
            self.executor.close()
        self.log.close()


# ----------------------------------------------------------------------------- the run
def run(cfg):
    """One training run with settings cfg (see settings()). Returns the process exit code."""
    check_settings(cfg)
    env = start(cfg)
    out = prepare_out_dir(cfg, env)
    data = load_data(cfg, env)
    model, finetune_info, resume_state = load_start(cfg, data, out)
    trainer = Trainer(cfg, env, data, out, model, finetune_info, resume_state, run_length(cfg, data))
    try:
        trainer.log_start()
        code = trainer.loop()
        if code == 0:
            trainer.sample()
    finally:
        trainer.close()
    if env.world > 1:  # leave together; the process then ends without teardown (data.exit_process)
        dist.barrier()  # (destroy_process_group here left a rank waiting now and then after its peer had exited)
    return code


def main(argv=None):
    """train.py's command line: settings from config files and --key=value, then run(). Bad input ends
    as `train.py: error: MESSAGE` (rank 0 says it), exit 2."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("Settings (defaults):")
        print("\n".join(describe(globals())))
        return 0
    if os.environ.get("RANK", "0") != "0":  # every rank stops on bad input; rank 0 alone says why
        try:
            return run(settings(argv))
        except _BAD_INPUT:
            raise SystemExit(2)
    return run_command("train.py", lambda a: run(settings(a)), argv, errors=_BAD_INPUT,
                       kept="the last checkpoint in out_dir is kept")


if __name__ == "__main__":
    exit_process(main)  # under torchrun: no teardown after the final barrier (see data.exit_process)
