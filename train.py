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
types). gradient_accumulation_steps counts micro-batches over all processes, so a config gives the same
global batch on any number of GPUs. Logs go to stdout and, as JSON lines, to out_dir/log.jsonl.
"""
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import distribute_tensor
from torch.nn.parallel import DistributedDataParallel as DDP

import eval as codelm_eval
from configurator import ConfigError, configurable, configure, describe
from data import (DataError, SFTData, SFTSchedule, Tokenizer, collate_sft, load_corpus_meta, load_sft_meta, open_shards,
                  prepare_corpus, sample_windows)
from finetune import add_lora, grow_vocab, lora_state_dict, merge_lora_state, parse_lora_targets
from hf import checkpoint_config
from model import (GPT, GPTConfig, ModelError, estimate_mfu, load_model, make_config, peak_flops, save_checkpoint,
                   without_tied_head)
from optim import AdamW8bit

# ----------------------------------------------------------------------------- defaults
# I/O
out_dir = "out"
init_from = "scratch"       # 'scratch' | 'resume' (continue out_dir) | a checkpoint folder to start from
data_dir = "data/stdlib"
data_src = ""               # if data_dir holds no corpus yet, prepare it from this ('stdlib', folder, .jsonl)
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
lr_decay_iters = 0          # step at which the decay reaches min_lr (0 = max_iters)
weight_decay = 0.1          # applied to weights with >= 2 dimensions only
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0             # 0 = off
optimizer = "adamw"         # 'adamw' (torch) | 'adamw8bit' (ours: 8-bit block-wise moments, ~2 bytes/param of state)
# fine-tuning: task='sft' with init_from a checkpoint folder (ours, or a Hugging Face Llama/Mistral one)
epochs = 0                  # sft: passes over the training examples; sets max_iters (0 = run max_iters steps)
batch_tokens = 0            # sft: micro-batches by padded tokens (length-bucketed) instead of batch_size examples
lora_r = 0                  # LoRA rank; 0 = full fine-tuning
lora_alpha = 16.0           # LoRA scale = lora_alpha / lora_r
lora_dropout = 0.0
lora_targets = ("q", "v")   # among q, k, v, o, gate, up, down (--lora_targets=q,k,v,o)
lora_save = "merged"        # 'merged': a plain checkpoint (eval.py, export) | 'adapters': adapters + the base's path
lora_new_tokens = True      # LoRA: also train the embedding/head rows of tokens the data added to the vocab
# evaluation, logging, checkpoints
eval_interval = 200         # val loss (and a checkpoint) every this many steps
eval_iters = 20             # val batches per evaluation
log_interval = 10
always_save_checkpoint = True   # False: save only when val loss improves
eval_humaneval_interval = 0     # HumanEval pass@1 (greedy, sandboxed, on rank 0) every this many steps; 0 = off
eval_humaneval_limit = 0        # only the first N problems (0 = all 164)
# system
device = "auto"             # 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps'
dtype = "auto"              # 'auto' (bfloat16 on CUDA, float32 elsewhere) | 'bfloat16' | 'float32'
parallel = "ddp"            # under torchrun: 'ddp' | 'fsdp' (FSDP2 fully_shard per block, then the root)
compile = False             # torch.compile the model
activation_checkpointing = False
seed = 1337
# -----------------------------------------------------------------------------

_MODEL_KEYS = ("n_layer", "n_head", "n_kv_head", "n_embd", "intermediate_size", "block_size", "rope_theta",
              "norm_eps", "tie_embeddings", "attn_impl")
_EXIT_BAD_INPUT, _EXIT_NONFINITE = 2, 3


class TrainError(Exception):
    """Bad input to a training run; the message names the key, file or step."""


# ----------------------------------------------------------------------------- distributed setup
def setup_distributed():
    """(rank, world_size, local_rank, device). Under torchrun: nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda" and world > 1:
        dev = f"cuda:{local_rank}"
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError(f"device={device!r} but CUDA is not available")
        torch.cuda.set_device(dev)
    if world > 1:
        dist.init_process_group(backend="nccl" if dev.startswith("cuda") else "gloo")
    return rank, world, local_rank, torch.device(dev)


def all_reduce_mean(t, world):
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= world
    return t


# ----------------------------------------------------------------------------- schedule and batches
def lr_at(step):
    """Linear warmup to learning_rate, then cosine / linear decay to min_lr at lr_decay_iters, or constant."""
    if step < warmup_iters:
        return learning_rate * (step + 1) / (warmup_iters + 1)
    if lr_schedule == "constant":
        return learning_rate
    end = lr_decay_iters or max_iters
    if step >= end:
        return min_lr
    progress = (step - warmup_iters) / max(1, end - warmup_iters)
    if lr_schedule == "linear":
        return learning_rate + progress * (min_lr - learning_rate)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


def batch_rng(split, step, micro):
    """The generator for one micro-batch: a pure function of (seed, split, step, micro-batch index), so
    a resumed run replays the same batches and any world size sees the same global batch."""
    return np.random.default_rng([seed, {"train": 0, "val": 1}[split], step, micro])


# ----------------------------------------------------------------------------- model, optimizer
def model_config_from_globals(vocab):
    g = globals()
    return GPTConfig(vocab_size=vocab, **{k: g[k] for k in _MODEL_KEYS})


def make_optimizer(model, fused, no_decay_names=()):
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.requires_grad and p.dim() >= 2 and n not in no_decay_names]
    no_decay = [p for n, p in named if p.requires_grad and (p.dim() < 2 or n in no_decay_names)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=learning_rate, betas=(beta1, beta2), fused=fused or None)
    if optimizer == "adamw8bit":
        return AdamW8bit(groups, lr=learning_rate, betas=(beta1, beta2))
    raise TrainError(f"optimizer must be 'adamw' or 'adamw8bit', got {optimizer!r}")


def full_state(raw_model, opt=None):
    """Full (unsharded) model and optimizer state dicts with plain parameter names, on CPU; a collective
    under FSDP (every rank must call it)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = without_tied_head(get_model_state_dict(raw_model, options=options), raw_model.cfg)
    return state, (get_optimizer_state_dict(raw_model, opt, options=options) if opt is not None else None)


# ---- fine-tuning (task='sft', init_from a checkpoint or Hugging Face folder, vocab growth, LoRA) ----
def check_vocab_extension(src, src_tok, meta):
    """The data's tokenizer may extend the checkpoint's (same SentencePiece model, more added tokens),
    never change it; returns how many token ids the model must have."""
    data_added = meta["tokenizer"].get("added_tokens") or {}
    for t, i in (src_tok.get("added_tokens") or {}).items():
        if data_added.get(t) != i:
            where = f"at id {data_added[t]}" if t in data_added else "not at all"
            raise TrainError(f"tokenizer/model vocab mismatch: {src} has added token {t!r} at id {i}, {data_dir} has it {where} "
                             f"(make the data with --tokenizer {src})")
    return meta["vocab_size"]


def finetune_model(src, ckpt, meta, resume_state):
    """The model to train from a checkpoint folder (ours, a LoRA adapters one, or Hugging Face), on CPU
    in fp32: grown to the data's vocabulary (rows of new tokens = mean of the known ones) and wrapped
    with LoRA if lora_r > 0. Returns (model, finetune info), the info going into config.json["finetune"]:
    the base folder, the new token ids and how they were initialised, the LoRA settings. Resuming a
    LoRA run rebuilds the base the same way and takes the trained tensors from train_state.pt (a
    merged checkpoint cannot be split into base and adapters again)."""
    info = ckpt.get("finetune") if resume_state is not None else None
    if info and info.get("lora"):
        lo = info["lora"]
        now = {"r": lora_r, "alpha": float(lora_alpha), "targets": list(parse_targets())}
        if {k: lo[k] for k in now} != now:
            raise TrainError(f"init_from='resume': the run in {src} trained LoRA {({k: lo[k] for k in now})}, this one asks for {now}")
        model, _ = load_model(info["base"], device="cpu", dtype=torch.float32)
        grow_vocab(model, info["vocab_size"], info["init_ids"], info["mean_of"])
        add_lora(model, lo["r"], lo["alpha"], lora_dropout, lo["targets"])
        if lo.get("token_ids"):
            for p in {id(p): p for p in (model.embed.weight, model.head.weight)}.values():
                p.requires_grad_(True)
        load_trainable(model, resume_state["lora_state"], lo.get("token_ids"))
    else:
        model, _ = load_model(src, device="cpu", dtype=torch.float32)
    model.cfg.block_size = block_size
    model.reset_rope()
    if resume_state is not None:
        if lora_r > 0 and not (info and info.get("lora")):
            raise TrainError(f"init_from='resume': the run in {src} did not train LoRA adapters; set lora_r=0")
        return model, info
    if lora_r > 0 and task != "sft":
        raise TrainError("LoRA (lora_r > 0) is for task='sft'")
    src_tok = Tokenizer.load(src).to_config()
    check_vocab_extension(src, src_tok, meta)
    src_added = src_tok.get("added_tokens") or {}
    new_ids = sorted(i for t, i in (meta["tokenizer"].get("added_tokens") or {}).items() if t not in src_added)
    known = src_tok.get("vocab_size") or model.cfg.vocab_size
    init_ids = [i for i in new_ids if i >= known]  # rows no token of the base used (start_id reuse keeps its rows)
    base_vocab = model.cfg.vocab_size
    grow_vocab(model, max(base_vocab, meta["vocab_size"]), init_ids, known)
    info = {"base": str(Path(src).resolve()), "base_format": ckpt.get("format"), "base_vocab_size": base_vocab,
            "vocab_size": model.cfg.vocab_size, "new_token_ids": new_ids, "init_ids": init_ids, "mean_of": known, "lora": None}
    if lora_r > 0:
        if lora_save not in ("merged", "adapters"):
            raise TrainError(f"lora_save must be 'merged' or 'adapters', got {lora_save!r}")
        add_lora(model, lora_r, lora_alpha, lora_dropout, parse_targets())
        ids = new_ids if lora_new_tokens and new_ids else None
        if ids:  # the added tokens' rows learn too (else every new token keeps the same mean embedding)
            for p in {id(p): p for p in (model.embed.weight, model.head.weight)}.values():
                p.requires_grad_(True)
        info["lora"] = {"r": lora_r, "alpha": float(lora_alpha), "targets": list(parse_targets()), "token_ids": ids}
    return model, info


def parse_targets():
    try:
        return parse_lora_targets(lora_targets)
    except ModelError as e:
        raise TrainError(str(e))


def new_rows_only(model, ids):
    """Zero the embedding/head gradient outside rows `ids` (LoRA + added tokens: only the new tokens'
    rows learn; with no weight decay on them, Adam leaves the other rows bit-identical)."""
    for p in {id(p): p for p in (model.embed.weight, model.head.weight)}.values():
        g = p.grad
        if g is None:
            continue
        local = g.to_local() if hasattr(g, "to_local") else g
        mask = torch.zeros(g.shape[0], 1, dtype=g.dtype, device=local.device)
        mask[ids] = 1
        if hasattr(g, "to_local"):  # FSDP2: a sharded gradient; shard the row mask the same way
            mask = distribute_tensor(mask, g.device_mesh, g.placements)
        g.mul_(mask)


def pack_trainable(state, ids):
    """The tensors a LoRA run trains, from a full state dict: adapters, and the new tokens' rows."""
    out = dict(lora_state_dict(state))
    for name in ("embed.weight", "head.weight") if ids else ():
        if name in state:
            out[name + ".new_rows"] = state[name][ids].clone()
    return out


@torch.no_grad()
def load_trainable(model, packed, ids):
    """Put pack_trainable()'s tensors back into a model wrapped the same way."""
    for k, v in packed.items():
        if k.endswith(".new_rows"):
            model.get_parameter(k[:-len(".new_rows")])[ids] = v
        else:
            model.get_parameter(k).copy_(v)


def finetune_checkpoint(state, ckpt_config, train_state, info):
    """Turn a training state dict into what a fine-tuning checkpoint stores: merged weights (a plain
    checkpoint), or adapters alone + config["lora"] naming the base; train_state keeps the trained
    tensors for resume. Returns (state to write, weights file name)."""
    if not info:
        return state, "model.safetensors"
    ckpt_config["finetune"] = info
    lo = info.get("lora")
    if not lo:
        return state, "model.safetensors"
    trainable = pack_trainable(state, lo.get("token_ids"))
    train_state["lora_state"] = trainable
    if lora_save == "adapters":
        ckpt_config["lora"] = {"r": lo["r"], "alpha": lo["alpha"], "targets": lo["targets"], "base": info["base"],
                               "token_ids": lo.get("token_ids"), "init_ids": info["init_ids"], "mean_of": info["mean_of"]}
        return trainable, "adapters.safetensors"
    return merge_lora_state(state, lo["alpha"] / lo["r"]), "model.safetensors"


class SFTFeed:
    """task='sft': this rank's micro-batches of whole examples (data.SFTSchedule) and the loss weights.
    The loss of a step is the mean over all its loss tokens (every micro-batch, every rank), so each
    micro-batch's mean loss is divided by N / (world * n) (n its tokens, N the step's): any batching,
    accumulation or world size computes the same objective."""

    def __init__(self, meta, rank, world, accum, pad_id, dev):
        self.rank, self.world, self.accum, self.dev, self.pad = rank, world, accum, dev, pad_id or 0
        self.data = {s: SFTData(data_dir, s, meta) for s in ("train", "val")}
        longest = max(meta["train"]["longest"], meta["val"]["longest"]) - 1
        if longest > block_size:
            raise TrainError(f"{data_dir}: examples up to {longest + 1} tokens need block_size >= {longest} (got {block_size}); "
                             "raise block_size or re-make the data with a smaller --max_len")
        if batch_tokens <= 0 and batch_size <= 0:
            raise TrainError("task='sft' needs batch_size > 0 or batch_tokens > 0")
        if 0 < batch_tokens < longest:
            print(f"note: batch_tokens={batch_tokens} is below the longest example ({longest}); such examples get a batch of their own", file=sys.stderr)
        bs = 0 if batch_tokens > 0 else batch_size
        self.loss_tokens = {s: self._loss_tokens(d) for s, d in self.data.items()}
        try:
            self.sched = SFTSchedule(self.data["train"].lengths, gradient_accumulation_steps, seed, bs, batch_tokens)
            self.val_plan = SFTSchedule(self.data["val"].lengths, 1, seed, bs, batch_tokens).plan(0)
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
            batches = [self.sched.micro_batch(step, j) for j in range(gradient_accumulation_steps)]
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
        k = min(eval_iters, len(self.val_plan))
        n = self.world * math.ceil(k / self.world)
        sums = torch.zeros(2, device=self.dev, dtype=torch.float64)
        model.eval()
        for i in range(self.rank, n, self.world):
            x, y = collate_sft(self.data["val"], self.val_plan[i % k], self.pad)
            x, y = torch.from_numpy(x).to(self.dev), torch.from_numpy(y).to(self.dev)
            with autocast:
                _, loss = model(x, y)
            cnt = int((y != -1).sum())
            sums += torch.stack([loss.double() * cnt, torch.tensor(float(cnt), device=self.dev, dtype=torch.float64)])
        model.train()
        if self.world > 1:
            dist.all_reduce(sums)
        return (sums[0] / sums[1].clamp(min=1)).item()


def set_epochs(feed):
    """epochs > 0 sets max_iters to that many passes over the training examples."""
    global max_iters
    if epochs > 0:
        max_iters = feed.sched.steps(epochs)
# ---- end fine-tuning ----


# ----------------------------------------------------------------------------- logging
class Log:
    """Readable lines on stdout and the same records as JSON lines in out_dir/log.jsonl (rank 0 only)."""

    def __init__(self, folder, master, append):
        self.master = master
        self.f = open(Path(folder) / "log.jsonl", "a" if append else "w") if master else None

    def __call__(self, line, **record):
        if not self.master:
            return
        print(line, flush=True)
        if record:
            self.f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
            self.f.flush()


# ----------------------------------------------------------------------------- the run
def run():
    config = {k: globals()[k] for k in _config_keys()}
    if task not in ("pretrain", "sft"):
        raise TrainError(f"task must be 'pretrain' or 'sft', got {task!r}")
    if parallel not in ("ddp", "fsdp"):
        raise TrainError(f"parallel must be 'ddp' or 'fsdp', got {parallel!r}")
    rank, world, local_rank, dev = setup_distributed()
    master = rank == 0
    executor = None
    if eval_humaneval_interval > 0:
        if world > 1 and parallel == "fsdp":
            raise TrainError("eval_humaneval_interval needs parallel='ddp' or one process (FSDP shards the weights rank 0 would generate with)")
        if master:  # the sandbox's executor: a separate clean process, started once and reused
            executor = codelm_eval.Executor(workers=min(4, os.cpu_count() or 1), quiet=True).start()
    if gradient_accumulation_steps % world:
        raise TrainError(f"gradient_accumulation_steps={gradient_accumulation_steps} must be divisible by the number of processes ({world})")
    accum = gradient_accumulation_steps // world
    amp_dtype = {"auto": torch.bfloat16 if dev.type == "cuda" else torch.float32, "bfloat16": torch.bfloat16,
                 "float32": torch.float32}.get(dtype)
    if amp_dtype is None:
        raise TrainError(f"dtype must be 'auto', 'bfloat16' or 'float32', got {dtype!r}")
    torch.manual_seed(seed)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # output folder: writable before any work is done
    out = Path(out_dir)
    if master:
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise TrainError(f"out_dir {out_dir!r} is not writable ({e.strerror})")

    # data: prepared on rank 0 if asked and missing
    if data_src and not (Path(data_dir) / "meta.json").is_file():
        if master:
            prepare_corpus(data_src, data_dir, vocab_size=data_vocab_size)
        if world > 1:
            dist.barrier()
    meta = load_sft_meta(data_dir) if task == "sft" else load_corpus_meta(data_dir)
    shards = {s: open_shards(data_dir, s, meta) for s in ("train", "val")} if task == "pretrain" else {}
    tok = Tokenizer.load(data_dir)
    sft = SFTFeed(meta, rank, world, accum, tok.pad_id, dev) if task == "sft" else None  # (see "fine-tuning")
    for s, arrays in shards.items():
        longest = max(len(a) for a in arrays)
        if longest <= block_size:
            raise TrainError(f"block_size {block_size} is larger than the {s} split of {data_dir} ({longest:,} tokens in its largest shard); lower block_size")

    # model: from scratch, from a checkpoint, or resumed
    resume_state, finetune = None, None
    start_step, best_val = 0, float("inf")
    if init_from == "scratch" and lora_r > 0:
        raise TrainError("LoRA (lora_r > 0) needs init_from: a checkpoint folder to adapt")
    if init_from == "scratch":
        cfg = model_config_from_globals(meta["vocab_size"])
        model = GPT(cfg)
    else:
        src = out if init_from == "resume" else Path(init_from)
        ckpt = checkpoint_config(src)  # ours, or a Hugging Face folder translated
        cfg = GPTConfig.from_dict(ckpt["model"], where=str(src / "config.json"))
        if init_from == "resume":
            wanted = model_config_from_globals(meta["vocab_size"])
            diff = [f"{f.name}={getattr(cfg, f.name)!r} there, {getattr(wanted, f.name)!r} here" for f in fields(cfg)
                    if getattr(cfg, f.name) != getattr(wanted, f.name)
                    and (f.name == "block_size" or not ckpt.get("finetune"))]  # a fine-tune's shape is its base's
            if diff:
                raise TrainError(f"init_from='resume': the model config in {src / 'config.json'} differs from this run's: {'; '.join(diff)}")
            if not (src / "train_state.pt").is_file():
                raise TrainError(f"init_from='resume': {src} has no train_state.pt")
            resume_state = torch.load(src / "train_state.pt", map_location="cpu", weights_only=False)
            start_step, best_val = resume_state["step"], resume_state["best_val_loss"]
        else:
            cfg.block_size = block_size
        want_sha = (ckpt.get("tokenizer") or {}).get("sha256")
        if want_sha and want_sha != meta["tokenizer"]["sha256"]:
            raise TrainError(f"tokenizer/model vocab mismatch: {data_dir} was tokenized with a different tokenizer than {src} (sha256 {meta['tokenizer']['sha256'][:12]} vs {want_sha[:12]})")
        if meta["vocab_size"] > cfg.vocab_size and init_from == "resume":
            raise TrainError(f"tokenizer/model vocab mismatch: {data_dir} has {meta['vocab_size']} token ids but the model in {src} has {cfg.vocab_size}")
        # grows the vocab to the data's added tokens, adds LoRA (see "fine-tuning")
        model, finetune = finetune_model(src, ckpt, meta, resume_state)
    model.to(dev)
    model.activation_checkpointing = activation_checkpointing
    raw_model = model
    if world > 1 and parallel == "fsdp":
        mp = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32)
        for block in model.blocks:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
    new_rows = ((finetune or {}).get("lora") or {}).get("token_ids")  # LoRA: rows of added tokens train too
    opt = make_optimizer(model, fused=dev.type == "cuda", no_decay_names=("embed.weight", "head.weight") if new_rows else ())
    if sft is not None:
        set_epochs(sft)
    if resume_state is not None:
        set_optimizer_state_dict(raw_model, opt, resume_state["optimizer"], options=StateDictOptions(full_state_dict=True))
        torch.set_rng_state(resume_state["rng"]["torch"])
    if compile:
        model = torch.compile(model)
    if world > 1 and parallel == "ddp":
        model = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    use_autocast = dev.type == "cuda" and amp_dtype != torch.float32 and not (world > 1 and parallel == "fsdp")
    autocast = torch.autocast(device_type="cuda", dtype=amp_dtype) if use_autocast else nullcontext()

    def set_sync(on):
        """Gradient all-reduce only on the last micro-batch of a step."""
        if world > 1 and parallel == "ddp":
            model.require_backward_grad_sync = on
        elif world > 1 and parallel == "fsdp":
            raw_model.set_requires_gradient_sync(on)

    def batch(split, step, micro):
        x, y = sample_windows(shards[split], batch_size, block_size, batch_rng(split, step, micro))
        if int(x.max()) >= raw_model.cfg.vocab_size or int(y.max()) >= raw_model.cfg.vocab_size:
            raise TrainError(f"{data_dir}: corrupt shard (token id >= vocab size {raw_model.cfg.vocab_size})")
        return x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)

    @torch.no_grad()
    def val_loss():
        if sft is not None:
            return sft.val_loss(model, autocast)
        model.eval()
        n = world * math.ceil(eval_iters / world)  # every rank runs the same number of forwards (FSDP)
        total = torch.zeros((), device=dev)
        for i in range(rank, n, world):
            x, y = batch("val", 0, i)
            with autocast:
                _, loss = model(x, y)
            total += loss.float()
        model.train()
        return all_reduce_mean(total / (n // world), world).item()

    def save(step, best):
        state, opt_state = full_state(raw_model, opt)  # collective
        if master:
            train_state = {"step": step, "best_val_loss": best, "optimizer": opt_state, "world_size": world,
                           "rng": {"torch": torch.get_rng_state()}, "config": config}
            ckpt_config = make_config(raw_model.cfg, tok.to_config(), config, step, meta.get("postprocess"))
            state, weights_name = finetune_checkpoint(state, ckpt_config, train_state, finetune)  # LoRA: merged or adapters
            save_checkpoint(out, state, ckpt_config, tokenizer_file=tok.model_path,
                            train_state=train_state, weights_name=weights_name)
        if world > 1:
            dist.barrier()

    log = Log(out, master, append=resume_state is not None)
    n_params = raw_model.num_params()
    tokens_per_step = batch_size * block_size * gradient_accumulation_steps if sft is None else sft.tokens(start_step)
    flops_per_token = raw_model.flops_per_token(block_size)
    peak = peak_flops(dev)
    log(f"model {n_params / 1e6:.2f}M parameters ({raw_model.cfg.n_layer}x{raw_model.cfg.n_embd}, vocab {raw_model.cfg.vocab_size}) | "
        f"{world} process(es) on {dev.type} ({parallel if world > 1 else 'single'}) | {tokens_per_step:,} tokens/step | "
        f"data {data_dir} ({meta['train']['tokens']:,} train tokens)",
        event="start", params=n_params, world_size=world, device=dev.type, parallel=parallel if world > 1 else None,
        tokens_per_step=tokens_per_step, start_step=start_step, config=config)

    step = start_step
    t_last, ema_step_time = time.time(), None
    model.train()
    while True:
        if step % eval_interval == 0 and (step > start_step or resume_state is None) or step == max_iters:
            vl = val_loss()
            if not math.isfinite(vl):  # never save a checkpoint that evaluates to nan/inf
                log(f"step {step} | val loss is {vl}: stopping; the last good checkpoint is in {out_dir}",
                    event="nonfinite", step=step, val_loss=vl)
                raise SystemExit(_EXIT_NONFINITE)
            improved = vl < best_val
            best_val = min(best_val, vl)
            saving = step > 0 and (always_save_checkpoint or improved)
            log(f"step {step} | val loss {vl:.4f}" + (f" | saved {out_dir}" if saving else ""), event="eval", step=step, val_loss=vl)
            if saving:
                save(step, best_val)
            if eval_humaneval_interval and step > 0 and (step % eval_humaneval_interval == 0 or step == max_iters):
                if master:
                    with autocast:
                        he = codelm_eval.evaluate(raw_model, tok, ("humaneval",), limit=eval_humaneval_limit or None,
                                                  executor=executor, postprocess=meta.get("postprocess"))["humaneval"]
                    log(f"step {step} | humaneval pass@1 {100 * he['pass@1']:.1f}% ({he['passed']}/{he['n_samples']}, "
                        f"{he['generate_s'] + he['execute_s']:.0f}s)", event="humaneval", step=step, **he)
                if world > 1:
                    dist.barrier()
        if step >= max_iters:
            break
        lr = lr_at(step)
        for group in opt.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=dev)
        for micro in range(accum):
            if sft is not None:  # whole examples; div weighs the micro-batch by its loss tokens
                x, y, div = sft.batch(step, micro)
            else:
                (x, y), div = batch("train", step, rank * accum + micro), accum
            set_sync(micro == accum - 1)
            with autocast:
                _, loss = model(x, y)
            (loss / div).backward()
            loss_sum += loss.detach().float() / div
        if new_rows:
            new_rows_only(raw_model, new_rows)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
        loss_value = all_reduce_mean(loss_sum, world).item()  # also the per-step sync point
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):  # before the update touches the weights
            what = f"loss is {loss_value}" if not math.isfinite(loss_value) else f"gradient norm is {grad_norm}"
            log(f"step {step} | {what}: stopping; the last good checkpoint is in {out_dir}",
                event="nonfinite", step=step, loss=loss_value, grad_norm=grad_norm)
            raise SystemExit(_EXIT_NONFINITE)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sft is not None:  # examples vary in length: count this step's real tokens
            tokens_per_step = sft.tokens(step)
        step += 1
        now = time.time()
        dt, t_last = now - t_last, now
        if step > start_step + 1:  # the first step includes compilation and warmup
            ema_step_time = dt if ema_step_time is None else 0.9 * ema_step_time + 0.1 * dt
        if step % log_interval == 0 or step == max_iters:
            st = ema_step_time or dt
            tps = tokens_per_step / st
            mfu = estimate_mfu(flops_per_token, tps, peak, world)
            eta = (max_iters - step) * st
            log(f"step {step}/{max_iters} | loss {loss_value:.4f} | lr {lr:.2e} | grad norm {grad_norm:.3f} | "
                f"{tps:,.0f} tok/s" + (f" | mfu {100 * mfu:.1f}%" if mfu is not None else "") +
                f" | {1000 * st:.0f} ms/step | eta {_hms(eta)}",
                event="train", step=step, loss=loss_value, lr=lr, grad_norm=grad_norm, tokens_per_sec=tps,
                mfu=mfu, step_ms=1000 * st, eta_s=eta)
    if executor is not None:
        executor.close()
    if world > 1:
        dist.destroy_process_group()


def _hms(seconds):
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _config_keys():
    return list(configurable(globals()))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("Settings (defaults):")
        print("\n".join(describe(globals())))
        return
    try:
        configure(globals(), argv)
        run()
    except (ConfigError, TrainError, DataError, ModelError) as e:
        if os.environ.get("RANK", "0") == "0":  # every rank stops; one says why
            print(f"train.py: error: {e}", file=sys.stderr)
        raise SystemExit(_EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A finished distributed run ends here, without interpreter teardown: a process group can
        # outlive destroy_process_group (FSDP's device mesh holds it), and its threads dying in teardown
        # aborted FSDP test runs now and then (SIGABRT, "terminate called without an active exception")
        # after checkpoint and logs were written. Logs are flushed per line; nothing else is pending.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
