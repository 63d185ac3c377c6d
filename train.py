"""
Train a codelm model: one process (CPU or one GPU) or many under torchrun (DDP or FSDP2).

    python train.py config/quickstart.py                  # CPU, ~10 min; prepares data/stdlib on first run
    python train.py config/quickstart.py --max_iters=100 --compile=true
    torchrun --nproc_per_node=8 train.py config/tinycodelm_150m.py
    torchrun --nproc_per_node=2 train.py config/quickstart.py --parallel=fsdp   # CPU works too (gloo)
    python train.py config/quickstart.py --init_from=resume                     # continue out_dir exactly

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
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

# ----------------------------------------------------------------------------- defaults
# I/O
out_dir = "out"
init_from = "scratch"       # 'scratch' | 'resume' (continue out_dir) | a checkpoint folder to start from
data_dir = "data/stdlib"
data_src = ""               # if data_dir holds no corpus yet, prepare it from this ('stdlib', folder, .jsonl)
data_vocab_size = 32768     # tokenizer size when data_src prepares the corpus
task = "pretrain"           # 'pretrain': random windows of the token shards
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
optimizer = "adamw"
# evaluation, logging, checkpoints
eval_interval = 200         # val loss (and a checkpoint) every this many steps
eval_iters = 20             # val batches per evaluation
log_interval = 10
always_save_checkpoint = True   # False: save only when val loss improves
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
    import torch.distributed as dist

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
        import torch.distributed as dist

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
    from model import GPTConfig

    g = globals()
    return GPTConfig(vocab_size=vocab, **{k: g[k] for k in _MODEL_KEYS})


def make_optimizer(model, fused):
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=learning_rate, betas=(beta1, beta2), fused=fused or None)
    raise TrainError(f"optimizer must be 'adamw', got {optimizer!r}")


def full_state(raw_model, opt=None):
    """Full (unsharded) model and optimizer state dicts with plain parameter names, on CPU; a collective
    under FSDP (every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(raw_model, options=options)
    if raw_model.cfg.tie_embeddings:
        state.pop("head.weight", None)
    return state, (get_optimizer_state_dict(raw_model, opt, options=options) if opt is not None else None)


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
    import torch.distributed as dist

    from data import DataError, Tokenizer, load_corpus_meta, open_shards, prepare_corpus, sample_windows
    from model import (GPT, GPTConfig, estimate_mfu, load_model, load_state, make_config, peak_flops,
                       read_config, save_checkpoint)

    config = {k: globals()[k] for k in _config_keys()}
    if task != "pretrain":
        raise TrainError(f"task must be 'pretrain', got {task!r}")
    if parallel not in ("ddp", "fsdp"):
        raise TrainError(f"parallel must be 'ddp' or 'fsdp', got {parallel!r}")
    rank, world, local_rank, dev = setup_distributed()
    master = rank == 0
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
    meta = load_corpus_meta(data_dir)
    shards = {s: open_shards(data_dir, s, meta) for s in ("train", "val")}
    tok = Tokenizer.load(data_dir)
    for s, arrays in shards.items():
        longest = max(len(a) for a in arrays)
        if longest <= block_size:
            raise TrainError(f"block_size {block_size} is larger than the {s} split of {data_dir} ({longest:,} tokens in its largest shard); lower block_size")

    # model: from scratch, from a checkpoint, or resumed
    resume_state = None
    start_step, best_val = 0, float("inf")
    if init_from == "scratch":
        cfg = model_config_from_globals(meta["vocab_size"])
        model = GPT(cfg)
    else:
        src = out if init_from == "resume" else Path(init_from)
        ckpt = read_config(src)
        cfg = GPTConfig.from_dict(ckpt["model"], where=str(src / "config.json"))
        if init_from == "resume":
            wanted = model_config_from_globals(meta["vocab_size"])
            diff = [f"{f.name}={getattr(cfg, f.name)!r} there, {getattr(wanted, f.name)!r} here" for f in fields(cfg)
                    if getattr(cfg, f.name) != getattr(wanted, f.name)]
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
        if meta["vocab_size"] > cfg.vocab_size:
            raise TrainError(f"tokenizer/model vocab mismatch: {data_dir} has {meta['vocab_size']} token ids but the model in {src} has {cfg.vocab_size}")
        model, _ = load_model(src, device="cpu", dtype=torch.float32)
        model.cfg.block_size = cfg.block_size
        model.reset_rope()
    model.to(dev)
    model.activation_checkpointing = activation_checkpointing
    raw_model = model
    if world > 1 and parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32)
        for block in model.blocks:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
    opt = make_optimizer(model, fused=dev.type == "cuda")
    if resume_state is not None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(raw_model, opt, resume_state["optimizer"], options=StateDictOptions(full_state_dict=True))
        torch.set_rng_state(resume_state["rng"]["torch"])
    if compile:
        model = torch.compile(model)
    if world > 1 and parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

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
            save_checkpoint(out, state, make_config(raw_model.cfg, tok.to_config(), config, step, meta.get("postprocess")),
                            tokenizer_file=Path(data_dir) / "tokenizer.model", train_state=train_state)
        if world > 1:
            dist.barrier()

    log = Log(out, master, append=resume_state is not None)
    n_params = raw_model.num_params()
    tokens_per_step = batch_size * block_size * gradient_accumulation_steps
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
        if step >= max_iters:
            break
        lr = lr_at(step)
        for group in opt.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=dev)
        for micro in range(accum):
            x, y = batch("train", step, rank * accum + micro)
            set_sync(micro == accum - 1)
            with autocast:
                _, loss = model(x, y)
            (loss / accum).backward()
            loss_sum += loss.detach().float() / accum
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
    if world > 1:
        dist.destroy_process_group()


def _hms(seconds):
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _config_keys():
    from configurator import configurable

    return list(configurable(globals()))


def main(argv=None):
    from configurator import ConfigError, configure, describe

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("Settings (defaults):")
        print("\n".join(describe(globals())))
        return
    from data import DataError
    from model import ModelError

    try:
        configure(globals(), argv)
        run()
    except (ConfigError, TrainError, DataError, ModelError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        raise SystemExit(_EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
