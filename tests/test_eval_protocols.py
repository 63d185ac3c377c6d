"""eval.py's protocols: prompt formats (instruction vs completion) and the two LintSeq arms scored alike,
the stop rule, sampling that does not depend on batching, min-p and repetition penalty, prompt start
tokens, presets."""
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import eval as ev
from data import LINTSEQ_DIFF_TOKEN, Tokenizer
from model import load_model, sample_next

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")


@pytest.fixture(scope="module")
def humaneval():
    return ev.load_humaneval()[0]


@pytest.fixture(scope="module")
def ex():
    executor = ev.Executor(workers=2, quiet=True).start()
    yield executor
    executor.close()


class ScriptedModel(torch.nn.Module):
    """Always writes the same ids (then eos), asking stop() after each token as GPT.generate does, and
    keeps the prompts it was given."""

    def __init__(self, script, eos_id, block_size=2048):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.cfg, self.script, self.eos_id, self.prompts = types.SimpleNamespace(block_size=block_size), script, eos_id, []

    def generate(self, prompts, max_new_tokens, eos_id=None, n_samples=1, stop=None, **_):
        self.prompts += prompts
        outs = []
        for r in range(len(prompts) * n_samples):
            out = []
            for t in (self.script + [self.eos_id])[:max_new_tokens]:
                if t == eos_id:
                    break
                out.append(t)
                if stop(r, out):
                    break
            outs.append(out)
        return outs


# ----------------------------------------------------------------------------- prompt formats
def test_instruction_text_is_humanevalpack_synthesize(humaneval, mbpp_path):
    # HumanEval/0 as HumanEvalPack (bigcode/humanevalpack, python) publishes it in its dataset card
    assert humaneval[0]["instruction"] == (
        "Write a Python function `has_close_elements(numbers: List[float], threshold: float) -> bool` to solve the "
        "following problem:\nCheck if in given list of numbers, are any two numbers closer to each other than\n"
        "given threshold.\n>>> has_close_elements([1.0, 2.0, 3.0], 0.5)\nFalse\n"
        ">>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\nTrue")
    assert humaneval[2]["instruction"] == (
        "Write a Python function `truncate_number(number: float) -> float` to solve the following problem:\n"
        "Given a positive floating point number, it can be decomposed into\nand integer part (largest integer "
        "smaller than given number) and decimals\n(leftover part always smaller than 1).\n\n"
        "Return the decimal part of the number.\n>>> truncate_number(3.5)\n0.5")
    # the code an answer runs after: imports and the helpers the prompt defines before the function
    assert humaneval[0]["preamble"] == "from typing import List\n\n\n"
    assert "def is_palindrome" in humaneval[10]["preamble"] and "def make_palindrome" not in humaneval[10]["preamble"]
    mbpp = ev.load_mbpp(mbpp_path)[0]
    assert mbpp[0]["instruction"] == ("Write a python function to remove first and last occurrence of a given "
                                      'character from the string.\nassert remove_Occ("hello","l") == "heo"')


def test_plain_answers_are_whole_programs_or_their_first_fenced_block(ex, humaneval):
    p = humaneval[0]
    program = p["prompt"] + p["canonical"]
    pp = {"prompt_format": "instruction"}
    for answer in (program, f"Here it is:\n```python\n{program}```\nand more:\n```\nx = 1\n```\n",
                   f"```python\n{program}"):  # an unclosed fence runs to the end
        prog, comp, err = ev.build_program(p, answer, pp)
        assert err is None and comp.strip() == program.strip(), answer
        assert prog["code"].startswith(p["preamble"]) and ex.check(prog, 5)["passed"]
    # the same answer in completion mode is cut to nothing by the column-0 stops: the bias the format removes
    prog, comp, err = ev.build_program(p, program.removeprefix("from typing import List\n\n\n"), {})
    assert comp == "" and not ex.check(prog, 5)["passed"]


@pytest.mark.parametrize("wrong", [False, True])
def test_both_lintseq_arms_give_the_same_program_and_verdict(ex, humaneval, tokenizer_path, wrong):
    """A LintSeq checkpoint and its baseline (lintseq.py --baseline, same programs without edits), each
    scored as its own record says, with no flag: the same instruction, the same program, the same verdict."""
    lintseq = pytest.importorskip("lintseq")
    p = humaneval[0]
    program = p["prompt"] + (p["canonical"].replace("<", ">") if wrong else p["canonical"])
    tok = Tokenizer(tokenizer_path)
    tok.add_tokens([LINTSEQ_DIFF_TOKEN])
    edits = lintseq.make_records(p["instruction"], program, s=1)[0]
    arms = {"lintseq": ({"edit_format": "lintseq", "prompt_format": "instruction"}, edits["completion"]),
            "baseline": ({"prompt_format": "instruction"}, lintseq.make_records(p["instruction"], program, baseline=True)[0]["completion"])}
    seen = {}
    for arm, (record, answer) in arms.items():
        pp = ev.checkpoint_postprocess({"postprocess": record}, "out/" + arm, None)  # as eval.py --ckpt reads it
        model = ScriptedModel(tok.encode(answer), tok.eos_id)
        metrics, records = ev.evaluate(model, tok, limit=1, postprocess=pp, executor=ex, return_records=True)
        prompt = tok.decode(model.prompts[0][1:])
        expected = lintseq.make_records(p["instruction"], program, s=1, baseline=arm == "baseline")[0]["prompt"]
        assert model.prompts[0][0] == tok.eos_id and prompt == expected  # the prompt its training records had
        seen[arm] = (records[0]["completion"].strip(), records[0]["passed"], metrics["humaneval"]["pass@1"])
    assert seen["lintseq"] == seen["baseline"]
    assert seen["lintseq"][1] is (not wrong)


def test_prompt_start_follows_the_training_record(humaneval, tokenizer_path):
    tok = Tokenizer(tokenizer_path)
    assert tok.bos_id is not None and tok.bos_id != tok.eos_id
    for start, first in ((None, tok.eos_id), ("eot", tok.eos_id), ("bos", tok.bos_id), ("none", None)):
        model = ScriptedModel(tok.encode("    return 1\n"), tok.eos_id)
        ev.generate_completions(model, tok, humaneval[:1], postprocess={"prompt_start": start}, label=None)
        ids = model.prompts[0]
        assert (ids[0] == first) if first is not None else ids == tok.encode(humaneval[0]["prompt"])


def test_unknown_modes_are_named(tiny_ckpt):
    with pytest.raises(ev.DataError, match="unknown prompt_format 'chat'"):
        ev.checkpoint_postprocess({"postprocess": {"prompt_format": "chat"}}, tiny_ckpt, None)


# ----------------------------------------------------------------------------- stops and sampling
def naive_stop(tok, new_ids, stops, col0):
    """Where decoding the whole row after every token would stop (the reference for StopRule)."""
    for t in range(len(new_ids)):
        text = ("\n" if col0 else "") + tok.decode(new_ids[:t + 1])
        if any(s in text for s in stops):
            return t
    return None


def test_stop_rule_stops_where_decoding_every_step_would(tokenizer_path, humaneval):
    tok = Tokenizer(tokenizer_path)
    pp = ev.as_postprocess({})
    texts = [p["canonical"] + tail for p in humaneval[:12]
             for tail in ("\ndef helper(x):\n    pass\n", "\n\n\nif __name__ == '__main__':\n", "\n#x", "")]
    texts += ["def f():\n", "    x = 1\nprint(x)\n", "  \n\n\n\nclass A: pass\n", "    s = '\\ndef'\n@dec\n"]
    checked = 0
    for text in texts:
        ids = tok.encode(text)
        for col0 in (True, False):
            for stops in (ev.STOP_HUMANEVAL, ev.STOP_MBPP):
                rule = ev.StopRule(tok, pp, [stops], [col0], [10 ** 6], 1)
                got = next((t for t in range(len(ids)) if rule(0, ids[:t + 1])), None)
                assert got == naive_stop(tok, ids, stops, col0), (text, col0)
                checked += got is not None
    assert checked > 20  # the texts do reach stops


def test_samples_do_not_depend_on_batching(tiny_ckpt, humaneval):
    """Sample j of a problem depends only on (seed, problem, j): the same text whatever batch or
    subset of problems it is generated with (what lets ranks split the work)."""
    model, _ = load_model(tiny_ckpt)
    tok = Tokenizer.load(tiny_ckpt)
    s = dict(n_samples=3, temperature=1.0, top_p=0.9, max_new_tokens=10)
    whole, _ = ev.generate_completions(model, tok, humaneval[:3], ev.Sampling(batch_size=9, **s), label=None)
    small, _ = ev.generate_completions(model, tok, humaneval[:3], ev.Sampling(batch_size=2, **s), label=None)
    alone, _ = ev.generate_completions(model, tok, humaneval[1:2], ev.Sampling(batch_size=1, **s), label=None)
    assert whole == small and alone == whole[3:6]
    assert len(set(whole)) > 3  # real sampling, not one text
    other, _ = ev.generate_completions(model, tok, humaneval[:3], ev.Sampling(batch_size=9, seed=1, **s), label=None)
    assert other != whole


def test_min_p_drops_unlikely_tokens():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log().repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    drawn = sample_next(logits, 1.0, min_p=0.2, generator=g)  # keeps p >= 0.1
    assert set(drawn.tolist()) == {0, 1, 2}
    u = torch.rand(4000, generator=g)
    drawn = sample_next(logits, 1.0, min_p=0.2, uniform=u)
    counts = torch.bincount(drawn, minlength=4).float() / 4000
    assert counts[3] == 0 and abs(counts[0] - 0.5 / 0.95) < 0.03 and abs(counts[2] - 0.15 / 0.95) < 0.03


def test_repetition_penalty_applies_to_every_token_already_in_the_row(tiny_ckpt):
    model, _ = load_model(tiny_ckpt)
    prompt = [5, 9, 9, 17, 3]
    outs, logits = model.generate([prompt], 40, repetition_penalty=1.3, return_logits=True)
    seen = set(prompt)
    for t, row in zip(outs[0], logits[0]):
        idx = torch.tensor(sorted(seen))
        pen = row.clone()
        pen[idx] = torch.where(row[idx] > 0, row[idx] / 1.3, row[idx] * 1.3)
        assert t == int(pen.argmax())
        seen.add(t)
    plain = model.generate([prompt], 40)[0]
    assert plain != outs[0]  # the tiny random model repeats a token by step 40 without it


def test_two_ranks_write_what_one_process_writes(tmp_path, tiny_ckpt):
    """torchrun --nproc_per_node=2 eval.py (gloo on CPU): each rank generates its share, rank 0 judges;
    results.jsonl is byte-identical to one process's."""
    from conftest import run_torchrun
    args = ["--ckpt", str(tiny_ckpt), "--limit", "3", "--n_samples", "2", "--temperature", "1.0", "--k", "1,2",
            "--max_new_tokens", "8", "--batch_size", "4", "--workers", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, str(REPO / "eval.py"), *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    two = run_torchrun([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(REPO / "eval.py"), *args, "--out", str(tmp_path / "two")],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    for name in ("results.jsonl", "samples.jsonl"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["ranks"] == 2


# ----------------------------------------------------------------------------- presets
def test_preset_recorded_flags_win_and_context_cuts_said(tmp_path, tiny_ckpt):
    out = tmp_path / "e"
    r = subprocess.run([sys.executable, str(REPO / "eval.py"), "--ckpt", str(tiny_ckpt), "--preset", "intent",
                        "--temperature", "0.5", "--limit", "3", "--max_new_tokens", "200", "--out", str(out),
                        "--workers", "1"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "metrics.json").read_text())["settings"]
    assert s["preset"] == "intent" and s["preset_settings"] == ev.PRESETS["intent"]
    assert s["sampling"]["temperature"] == 0.5 and s["sampling"]["repetition_penalty"] == 1.05
    assert s["overridden_by_flags"] == ["temperature"]
    # the context (256 tokens) cuts prompts and caps new tokens: said on stdout, with the counts metrics.json has
    m = json.loads((out / "metrics.json").read_text())["tasks"]["humaneval"]
    assert m["new_tokens_capped"] == 3 and m["prompts_truncated"] >= 1
    assert (f"humaneval: {m['prompts_truncated']} of 3 prompts cut from the left and 3 given fewer than "
            "--max_new_tokens 200 new tokens, to fit the model's 256-token context") in r.stdout


def lintseq_plus_fixture(path, mbpp_path, numbers):
    """An MbppPlus.jsonl made from the MBPP problems with these task numbers (in this order); inputs only for
    Mbpp/226 and Mbpp/227, which the test runs."""
    inputs = {226: ([["abcdef"]], [["python"], [""]]), 227: ([[10, 20, 0]], [[-10, -20, -30], [5, 5, 5]])}
    docs = {d["task_id"]: d for _, d in ev.read_jsonl(mbpp_path)}
    rows = [{"task_id": f"Mbpp/{i}", "prompt": f'"""\n{docs[i]["text"]}\n{docs[i]["test_list"][0]}\n"""\n',
             "entry_point": re.search(r"def (\w+)", docs[i]["code"]).group(1), "canonical_solution": docs[i]["code"],
             "base_input": inputs.get(i, ([], []))[0], "plus_input": inputs.get(i, ([], []))[1], "atol": 0}
            for i in numbers]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_lintseq_problems_are_mbpp_plus_v020_after_its_first_100():
    """The task numbers named in eval.py are MBPP+ v0.2.0 (378 tasks) and v0.1.0 (399) as EvalPlus's own fix
    scripts index them (tools/mbpp/fix_v010.py checks v0.1.0 positions, fix_v020.py v0.2.0 positions), and the
    paper's problems are v0.2.0's after its first 100."""
    scored = sorted(ev.task_numbers(ev.LINTSEQ_MBPP))
    v020 = sorted(ev.task_numbers(ev.LINTSEQ_MBPP_HELD_OUT) | set(scored))
    v010 = sorted(set(v020) | ev.task_numbers(ev.MBPP_PLUS_V010_ONLY))
    assert (len(v010), len(v020), len(scored)) == (399, 378, 278) and v020[100:] == scored and v020[99] == 224
    assert [v010[i] for i in (37, 65, 94, 107, 160, 216, 270, 334, 345, 375, 392)] == [
        83, 115, 164, 229, 295, 442, 582, 734, 746, 783, 803]
    assert [v020[i] for i in (55, 215, 236)] == [102, 459, 559]
    assert ev.task_numbers("2-4 6") == {2, 3, 4, 6}
    assert [ev.mbpp_plus_version(v) for v in (v020, v010, v020[1:])] == ["v0.2.0", "v0.1.0", "unknown"]


def test_lintseq_preset_scores_mbpp_on_the_papers_problems(tmp_path, mbpp_path, capsys):
    """--preset lintseq: MBPP+ v0.2.0 without its first 100 problems (held out by the paper), chosen by task
    number, so the file's order does not matter and a v0.1.0 file gives the same problems (said on stderr); a
    file without all of them is refused; asked as the paper's evaluation asks (the description naming the
    signature); mbpp gets the same task numbers with MBPP's own tests; the selection is in metrics.json."""
    scored = sorted(ev.task_numbers(ev.LINTSEQ_MBPP))
    v020 = sorted(ev.task_numbers(ev.LINTSEQ_MBPP_HELD_OUT) | set(scored))
    plus = lintseq_plus_fixture(tmp_path / "MbppPlus.jsonl", mbpp_path, v020)
    data = ev.load_tasks(["mbpp_plus"], plus_paths={"mbpp_plus": plus})
    assert data["mbpp_plus"][1]["version"] == "v0.2.0"
    data = ev.lintseq_mbpp(data, ["mbpp", "mbpp_plus"], mbpp_path)
    assert [p["task_id"] for p in data["mbpp_plus"][0]] == [f"Mbpp/{n}" for n in scored]
    assert [p["task_id"] for p in data["mbpp"][0]] == [f"MBPP/{n}" for n in scored]
    for t in ("mbpp", "mbpp_plus"):
        assert [p["instruction"] for p in data[t][0][:2]] == [
            "Write a python function `odd_values_string(str)` to remove the characters which have odd index values "
            "of a given string.", "Write a function `min_of_three(a,b,c)` to find minimum of three numbers."]
        assert data[t][1]["selection"]["held_out_ids"] == ["Mbpp/2", "Mbpp/224"]
    assert "assert min_of_three(10,20,0)==0" in data["mbpp"][0][1]["test"]  # MBPP's own tests
    assert capsys.readouterr().err == ""
    assert ev.lintseq_signature("from collections import defaultdict\ndef f(x):\n") == "rom collections import defaultdict"
    # another order, v0.1.0 (399 tasks): the same problems, the version said once
    v010 = sorted(set(v020) | ev.task_numbers(ev.MBPP_PLUS_V010_ONLY))
    old = lintseq_plus_fixture(tmp_path / "MbppPlus-v0.1.0.jsonl", mbpp_path, v010[::-1])
    data = ev.lintseq_mbpp(ev.load_tasks(["mbpp_plus"], plus_paths={"mbpp_plus": old}), ["mbpp_plus"], mbpp_path)
    assert sorted(ev.mbpp_number(p["task_id"]) for p in data["mbpp_plus"][0]) == scored
    assert data["mbpp_plus"][1]["version"] == "v0.1.0"
    assert capsys.readouterr().err == (f"eval.py: warning: --preset lintseq: {old} is MBPP+ v0.1.0 (399 tasks), not "
                                       "v0.2.0 (378) as in the LintSeq paper: its 278 problems are scored with this "
                                       "file's tests\n")
    extra = lintseq_plus_fixture(tmp_path / "extra.jsonl", mbpp_path, v020 + [900])
    ev.lintseq_mbpp(ev.load_tasks(["mbpp_plus"], plus_paths={"mbpp_plus": extra}), ["mbpp_plus"], mbpp_path)
    assert "extra.jsonl is no known MBPP+ release (379 tasks), not v0.2.0" in capsys.readouterr().err
    short = lintseq_plus_fixture(tmp_path / "short.jsonl", mbpp_path, v020[:-1])
    with pytest.raises(ev.EvalError, match=r"short.jsonl lacks 1 of the LintSeq paper's 278 MBPP\+ problems "
                                           r"\(first Mbpp/809\); the paper used MBPP\+ v0.2.0"):
        ev.lintseq_mbpp(ev.load_tasks(["mbpp_plus"], plus_paths={"mbpp_plus": short}), ["mbpp_plus"], mbpp_path)
    rows = [{"task_id": f"{pre}/226", "completion": "def odd_values_string(s):\n    return s[::2]\n"}
            for pre in ("Mbpp", "MBPP")]
    rows += [{"task_id": f"{pre}/227", "completion": "def min_of_three(a, b, c):\n    return min(a, b, c)\n"}
             for pre in ("Mbpp", "MBPP")]
    f = tmp_path / "s.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def run(*extra):
        return subprocess.run([sys.executable, str(REPO / "eval.py"), "--samples", str(f), "--preset", "lintseq",
                               "--out", str(tmp_path / "o"), "--workers", "2", "--limit", "2", *extra],
                              capture_output=True, text=True, cwd=REPO, timeout=300)
    r = run("--tasks", "mbpp,mbpp_plus", "--mbpp_plus_path", str(plus))
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())["tasks"]
    assert [(m[t]["pass@1"], m[t]["n_problems"]) for t in ("mbpp", "mbpp_plus")] == [(1.0, 2), (1.0, 2)]
    assert m["mbpp_plus"]["dataset"]["version"] == "v0.2.0"
    assert m["mbpp_plus"]["dataset"]["selection"] == {
        "preset": "lintseq", "held_out": 100, "held_out_ids": ["Mbpp/2", "Mbpp/224"], "n_problems": 278,
        "task_ids": ["Mbpp/226", "Mbpp/809"],
        "why": "LintSeq scores MBPP(+) on MBPP+ v0.2.0 without its first 100 problems"}
    r = run("--tasks", "mbpp_plus", "--mbpp_plus_path", str(short), "--out", str(tmp_path / "o2"))
    assert r.returncode == 2 and "lacks 1 of the LintSeq paper's 278" in r.stderr, r.stderr



# ----------------------------------------------------------------------------- EvalPlus
def evalplus_fixture(path, humaneval, canonical_of=None, inputs=None, atol=None):
    """A HumanEvalPlus-format file made from HumanEval problems (0 and 2 unless inputs, {problem: (base inputs,
    plus inputs)}, says others; atol: {problem: the file's atol}, else 0)."""
    inputs = inputs or {0: ([[[1.0, 2.0, 3.0], 0.5], [[1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3]],
                            [[[float(i) for i in range(10)] + [3.05], 0.1], [[float(2 * i) for i in range(12)], 1.0]]),
                        2: ([[3.5]], [[10.25], [7.0], [123.456]])}
    rows = []
    for i, (base, plus) in inputs.items():
        p = humaneval[i]
        rows.append({"task_id": p["task_id"], "prompt": p["prompt"], "entry_point": p["test"].rsplit("check(", 1)[1][:-1],
                     "canonical_solution": (canonical_of or {}).get(i, p["canonical"]), "base_input": base,
                     "plus_input": plus, "atol": (atol or {}).get(i, 0)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def score_humaneval_plus(tmp_path, plus, samples):
    """results.jsonl's records of `eval.py --samples` over (task_id, completion) pairs, judged on the
    HumanEval+ file plus."""
    f = tmp_path / "s.jsonl"
    f.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in samples))
    r = subprocess.run([sys.executable, str(REPO / "eval.py"), "--samples", str(f), "--tasks", "humaneval_plus",
                        "--humaneval_plus_path", str(plus), "--out", str(tmp_path / "o"), "--workers", "2"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]


def test_evalplus_judging_base_and_plus_with_tolerance(tmp_path, humaneval):
    plus = evalplus_fixture(tmp_path / "HumanEvalPlus.jsonl", humaneval)
    short_only = humaneval[0]["canonical"].replace("    for idx", "    if len(numbers) > 8:\n        return False\n    for idx", 1)
    samples = [("HumanEval/0", humaneval[0]["canonical"]), ("HumanEval/0", short_only),
               ("HumanEval/2", "    return number % 1.0 + 1e-9\n"), ("HumanEval/2", "    return number % 1.0 + 1e-3\n"),
               ("HumanEval/2", "    return int(number % 1.0 * 100) / 100\n")]
    res = score_humaneval_plus(tmp_path, plus, samples)
    # canonical: both; wrong only on long (plus) inputs: base only; 1e-9 off: within the float tolerance;
    # 1e-3 off: outside it; right on 3.5 (base) but truncating 10.25 -> 0.25 ok, 123.456 -> 0.45 wrong: base only
    assert [(x["base_passed"], x["passed"]) for x in res] == [(True, True), (True, False), (True, True),
                                                             (False, False), (True, False)]
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())["tasks"]["humaneval_plus"]
    assert m["pass@1"] == pytest.approx((1 / 2 + 1 / 3) / 2) and m["base_pass@1"] == pytest.approx((1 + 2 / 3) / 2)


def test_evalplus_bad_files_are_named(tmp_path, humaneval):
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps({"task_id": "HumanEval/0", "completion": ""}) + "\n")

    def run(plus):
        return subprocess.run([sys.executable, str(REPO / "eval.py"), "--samples", str(f), "--tasks", "humaneval_plus",
                               "--humaneval_plus_path", str(plus), "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, cwd=REPO, timeout=300)

    broken = evalplus_fixture(tmp_path / "wrong.jsonl", humaneval, {2: "    return 1 / (number - 3.5)\n"})  # 3.5: base
    r = run(broken)
    assert r.returncode == 2 and "canonical solution(s) fail their own base inputs, first HumanEval/2" in r.stderr, r.stderr
    rows = (tmp_path / "wrong.jsonl").read_text().splitlines()
    (tmp_path / "nofield.jsonl").write_text(rows[0] + "\n" + json.dumps({"task_id": "HumanEval/2", "prompt": "x"}) + "\n")
    r = run(tmp_path / "nofield.jsonl")
    assert r.returncode == 2 and "nofield.jsonl:2: missing field 'entry_point'" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, str(REPO / "eval.py"), "--samples", str(f), "--tasks", "humaneval_plus"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2 and "--humaneval_plus_path FILE" in r.stderr
    assert not (tmp_path / "o").exists()


def test_samples_of_humaneval_and_humaneval_plus_in_one_file(tmp_path, humaneval):
    """HumanEval and HumanEval+ share task ids: records name their task (as eval.py's own files do) and
    are scored in it; an unnamed record whose id both tasks have is refused, naming the line. Records
    may hold EvalPlus's "solution" (a whole program) instead of a completion."""
    plus = evalplus_fixture(tmp_path / "HumanEvalPlus.jsonl", humaneval)
    short_only = humaneval[0]["canonical"].replace("    for idx", "    if len(numbers) > 8:\n        return False\n"
                                                   "    for idx", 1)
    rows = [{"task_id": "HumanEval/0", "task": "humaneval", "completion": short_only},  # passes HumanEval's tests
            {"task_id": "HumanEval/0", "task": "humaneval_plus", "completion": short_only},  # fails the plus inputs
            {"task_id": "HumanEval/2", "task": "humaneval_plus", "completion": humaneval[2]["canonical"]},
            {"task_id": "HumanEval/2", "task": "humaneval", "solution": humaneval[2]["prompt"] + "    return number - int(number)\n"},
            {"task_id": "HumanEval/2", "task": "humaneval_plus", "solution": "def truncate_number(x):\n    return 0.25\n"}]
    f = tmp_path / "s.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def run(samples, out):
        return subprocess.run([sys.executable, str(REPO / "eval.py"), "--samples", str(samples), "--tasks",
                               "humaneval,humaneval_plus", "--humaneval_plus_path", str(plus), "--out", str(out),
                               "--workers", "2"], capture_output=True, text=True, cwd=REPO, timeout=300)
    r = run(f, tmp_path / "o")
    assert r.returncode == 0, r.stderr
    res = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert [(x["task"], x["task_id"], x["passed"]) for x in res] == [
        ("humaneval", "HumanEval/0", True), ("humaneval", "HumanEval/2", True),  # task by task, in --tasks order
        ("humaneval_plus", "HumanEval/0", False), ("humaneval_plus", "HumanEval/2", True), ("humaneval_plus", "HumanEval/2", False)]
    assert res[1]["solution"].startswith(humaneval[2]["prompt"]) and "completion" not in res[1]  # EvalPlus's whole programs
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())["tasks"]
    assert (m["humaneval"]["n_samples"], m["humaneval_plus"]["n_samples"], m["humaneval_plus"]["base_pass@1"]) == (2, 3, 0.75)
    again = run(tmp_path / "o" / "results.jsonl", tmp_path / "o2")  # eval.py's output is a samples file again
    assert again.returncode == 0
    assert (tmp_path / "o2" / "results.jsonl").read_text() == (tmp_path / "o" / "results.jsonl").read_text()
    f.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "task"}) + "\n" for r in rows))
    r = run(f, tmp_path / "o3")
    assert r.returncode == 2 and ("s.jsonl:1: task_id 'HumanEval/0' is in humaneval and humaneval_plus: give each record "
                                  'a "task" field') in r.stderr, r.stderr
    f.write_text(json.dumps({"task_id": "HumanEval/0", "task": "mbpp", "completion": ""}) + "\n")
    r = run(f, tmp_path / "o3")
    assert r.returncode == 2 and "s.jsonl:1: task 'mbpp' does not have task_id 'HumanEval/0'" in r.stderr, r.stderr
    assert not (tmp_path / "o3").exists()


# ----------------------------------------------------------------------------- Token Sugar figures
def test_token_sugar_figures_from_a_scripted_model(ex, humaneval, tokenizer_path):
    """A model that writes shorthand: tokens generated, the share saved against the desugared code
    re-encoded, sugars per sample and desugar failures come out as counted by hand."""
    sugar = pytest.importorskip("sugar")
    table = {"sugars": [{"code": "abs(SUGARWILDCARD_0 - SUGARWILDCARD_1)", "type": "expr", "id": "abc1"}]}
    tok = Tokenizer(tokenizer_path)
    tok.add_tokens(sugar.load_sugars(table).tokens())
    p = humaneval[0]
    sweet = p["canonical"].replace("abs(elem - elem2)", "<abc1_expr_token>elem;elem2<\\expr_token>")
    script = tok.encode(sweet + "\ndef extra():\n    pass\n")
    model = ScriptedModel(script, tok.eos_id)
    m, records = ev.evaluate(model, tok, limit=1, postprocess={"sugar": table}, executor=ex, return_records=True)
    fig = m["humaneval"]["sugar"]
    used = tok.encode(sweet)  # up to the stop at "\ndef extra" (which takes its own newline)
    assert records[0]["passed"] and records[0]["completion"] == p["canonical"]
    assert fig["tokens_saved_share"] == pytest.approx(1 - len(used) / len(tok.encode(records[0]["completion"])))
    assert fig["tokens_saved_share"] > 0 and fig["sugars_per_sample"] == 1 and fig["desugar_failures"] == 0
    assert fig["generated_tokens_per_sample"] == m["humaneval"]["new_tokens"] > len(used)
    broken = ScriptedModel(tok.encode(sweet.replace("elem;elem2", "elem")), tok.eos_id)
    m, _ = ev.evaluate(broken, tok, limit=1, postprocess={"sugar": table}, executor=ex, return_records=True)
    assert m["humaneval"]["sugar"]["desugar_failures"] == 1


def test_tokensugar_protocol_stop_rule_and_banned_words(ex, humaneval, tokenizer_path, tiny_ckpt):
    """--preset tokensugar: a column-0 line starting with a lowercase letter or "<" ends the completion
    (in generation and post-processing alike); `pass`, `#` and `...` are never generated."""
    tok = Tokenizer(tokenizer_path)
    p = humaneval[0]
    script = tok.encode(p["canonical"] + "\nresult = has_close_elements([1.0], 0.5)\nprint(result)\n")
    protocol = ev.Sampling(**{k: v for k, v in ev.PRESETS["tokensugar"].items() if k in ev.Sampling.__dataclass_fields__})
    m, rec = ev.evaluate(ScriptedModel(script, tok.eos_id), tok, limit=1, sampling=protocol, executor=ex,
                         return_records=True)
    assert rec[0]["completion"] == p["canonical"] and rec[0]["passed"]
    assert "\nr" in rec[0]["raw"] and "([1.0]" not in rec[0]["raw"]  # generation stopped within that line's start
    _, rec = ev.evaluate(ScriptedModel(script, tok.eos_id), tok, limit=1, executor=ex, return_records=True)
    assert "result = " in rec[0]["completion"]  # the bigcode stops alone keep that line
    banned = ev.banned_ids(tok, ("pass", "#", "..."))
    texts = {tok.decode([i]).strip() for i in banned}
    assert "#" in texts and all(t == "pass" or "#" in t or "..." in t for t in texts)
    assert not {tok.decode([i]).strip() for i in range(tok.vocab_size) if i not in banned} & {"pass", "#", "..."}
    model, _ = load_model(tiny_ckpt)
    free = model.generate([[5, 9, 17]], 20)[0]
    ban = sorted(set(free))[:5]
    kept = model.generate([[5, 9, 17]], 20, banned_ids=ban)[0]
    assert not set(kept) & set(ban)


# ----------------------------------------------------------------------------- MBPP+
MBPP_PLUS = {  # MbppPlus.jsonl records (EvalPlus release format) for five MBPP problems, inputs written here
    "Mbpp/2": ("similar_elements",
               "def similar_elements(test_tup1, test_tup2):\n  return tuple(set(test_tup1) & set(test_tup2))\n",
               [[[3, 4, 5, 6], [5, 7, 4, 10]], [[1, 2, 3, 4], [5, 4, 3, 7]]], [[[], []], [[1, 2, 3, 9], [9, 3, 2]]]),
    # stored as strings (JSON has no complex numbers): the canonical solution fails on them unconverted
    "Mbpp/124": ("angle_complex",
                 "import cmath\ndef angle_complex(a,b):\n  cn=complex(a,b)\n  angle=cmath.phase(a+b)\n  return angle\n",
                 [["0.0", "1j"], ["2.0", "1j"]], [["0.0", "2j"], ["-1.5", "0.5j"]]),
    "Mbpp/787": ("text_match_three",
                 "import re\ndef text_match_three(text):\n        patterns = 'ab{3}?'\n"
                 "        return re.search(patterns,  text)\n",
                 [["ac"], ["dc"], ["abbbba"]], [["caacabbbba"], [""], ["xabbbbbbbbbbbbbbbbbbbb"]]),
    "Mbpp/3": ("is_not_prime",
               "import math\ndef is_not_prime(n):\n    if n == 1:\n        return True\n"
               "    for i in range(2, int(math.sqrt(n))+1):\n        if n % i == 0:\n            return True\n    return False\n",
               [[2], [10], [35], [37]], [[7919], [7920]]),
    # answers a Counter, which the channel does not carry: judged in the sample (MBPP_PLUS_IN_PROCESS)
    "Mbpp/88": ("freq_count",
                "import collections\ndef freq_count(list1):\n  freq_count= collections.Counter(list1)\n  return freq_count\n",
                [[[10, 10, 10, 10, 20, 20, 40, 50, 30]]], [[[]], [[1, "a", 1]]]),
}


def mbpp_plus_fixture(path):
    rows = [{"task_id": tid, "prompt": f'"""\nWrite a function.\nassert {entry} is not None\n"""\n', "entry_point": entry,
             "canonical_solution": code, "base_input": base, "plus_input": plus, "atol": 0}
            for tid, (entry, code, base, plus) in MBPP_PLUS.items()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mbpp_plus_inputs_oracles_and_time_limits_as_evalplus(tmp_path):
    """MBPP+ as EvalPlus judges it: inputs stored as lists or strings reach the function as tuples and
    complex numbers; Mbpp/2's answers compare as sets; Mbpp/787's answers (re.Match) compare as "not
    None"; Mbpp/88's Counter answers are judged in the sample; a candidate that loops on one plus input is
    stopped at its per-input time limit and fails (EvalPlus's status "fail") while the rest of the run goes on."""
    plus = mbpp_plus_fixture(tmp_path / "MbppPlus.jsonl")
    samples = [
        ("Mbpp/2", "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))\n"),  # order differs
        ("Mbpp/2", "def similar_elements(a, b):\n    if type(a) is not tuple:\n        raise TypeError('expected tuples')\n"
                   "    return tuple(set(a) & set(b))\n"),  # passes only when the inputs are converted
        ("Mbpp/2", "def similar_elements(a, b):\n    return tuple(set(a) | set(b))\n"),
        ("Mbpp/124", "import cmath\ndef angle_complex(a, b):\n    return cmath.phase(complex(a) + b)\n"),
        ("Mbpp/124", "import cmath\ndef angle_complex(a, b):\n    return cmath.phase(a + b) + 1e-3\n"),
        ("Mbpp/787", "import re\ndef text_match_three(text):\n    return re.search('abbb', text)\n"),  # a Match or None
        ("Mbpp/787", "def text_match_three(text):\n    return 'abbb' in text\n"),  # a bool: compared as itself
        ("Mbpp/787", "import re\ndef text_match_three(text):\n    return re.search('c', text)\n"),
        ("Mbpp/3", "def is_not_prime(n):\n    while n == 7919:\n        pass\n"
                   "    return n == 1 or any(n % i == 0 for i in range(2, int(n ** 0.5) + 1))\n"),  # loops on one plus input
        ("Mbpp/3", "def is_not_prime(n):\n    return n == 1 or any(n % i == 0 for i in range(2, int(n ** 0.5) + 1))\n"),
        ("Mbpp/88", "def freq_count(xs):\n    out = {}\n    for x in xs:\n"
                    "        out[x] = out.get(x, 0) + 1\n    return out\n"),
        ("Mbpp/88", "def freq_count(xs):\n    return {x: 1 for x in xs}\n"),
    ]
    f = tmp_path / "s.jsonl"
    f.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in samples))
    r = subprocess.run([sys.executable, str(REPO / "eval.py"), "--samples", str(f), "--tasks", "mbpp_plus",
                        "--mbpp_plus_path", str(plus), "--out", str(tmp_path / "o"), "--workers", "2",
                        "--min_time_limit", "1"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr  # (the canonical solutions pass their base inputs: Mbpp/124's only when converted)
    res = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert [(x["base_passed"], x["passed"]) for x in res] == [
        (True, True), (True, True), (False, False), (True, True), (False, False),
        (True, True), (True, True), (False, False), (True, False), (True, True), (True, True), (False, False)], \
        [x["result"] for x in res]
    assert [x.get("mode") for x in res[-2:]] == ["in_process", "in_process"]
    # stopped by the judge at the input's limit, not by the sample's timeout ("timed out")
    assert res[8]["result"] == "failed: time limit exceeded: no answer within 1.0 s"
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())["tasks"]["mbpp_plus"]
    assert m["timed_out"] == 0 and m["n_problems"] == 5


def evalplus_check_code(**problem):
    """The judge's EvalPlus check code, run here on plain functions (what the sandbox runs, minus the sandbox)."""
    p = dict(reference="", entry_point="f", inputs=[], atol=0.0, dataset="mbpp", conversion=None, not_none=False,
             min_time=4.0, factor=4.0)
    ns = {"_PROBLEM": json.dumps(dict(p, **problem))}
    exec(ev.EVALPLUS_CHECK, ns)
    return ns


def test_mbpp_plus_input_conversions():
    """Each MBPP+ conversion gives the function what EvalPlus's loader (mbpp_deserialize_inputs) gives it."""
    convert = evalplus_check_code()["_convert"]
    cases = {"args": ([[1, 2], [3]], [(1, 2), (3,)]), "args_items": ([[[1, 2], [3]]], [[(1, 2), (3,)]]),
             "args_nested": ([[[1], [2, 3]]], [((1,), (2, 3))]), "first": ([[1, 2], 5], [(1, 2), 5]),
             "first_items": ([[[1, 2]], 3], [[(1, 2)], 3]), "first_mixed": ([[[1], 2]], [((1,), 2)]),
             "second": ([1, [2, 3]], [1, (2, 3)]), "dict_values": ([{"a": [1, 2]}, 3], [{"a": (1, 2)}, 3]),
             "sets": ([[[1, 2], []]], [[{1, 2}, {}]]), "float_complex": (["1", "2j"], [1.0, 2j]),
             "complex": (["(1+2j)"], [1 + 2j]), "deep": ([[[1, [2]]], 3], [((1, (2,)),), 3])}
    assert set(cases) == set(ev.MBPP_PLUS_INPUTS)
    for kind, (stored, given) in cases.items():
        out = convert(stored, kind)
        assert out == given and [type(a) for a in out] == [type(a) for a in given], kind
    assert type(convert([[[]]], "sets")[0][0]) is dict  # an empty list becomes {} (as EvalPlus does)
    assert [ev.MBPP_PLUS_CONVERSION[n] for n in (2, 63, 106, 115, 124, 252, 259, 278, 307, 580, 722, 753)] == [
        "args", "args_items", "second", "sets", "float_complex", "complex", "args_nested", "first_mixed", "first",
        "deep", "dict_values", "first_items"]
    assert 11 not in ev.MBPP_PLUS_CONVERSION


def test_evalplus_comparison_rules():
    """atol: raised to 1e-6 by a float answer and kept for the rest of that run (base and plus are runs of
    their own, as in EvalPlus); numpy.allclose's closeness; the special oracles."""
    ref = "def f(x):\n    return [x, x]\n"
    near = lambda x: [x, x + 1e-9]  # noqa: E731
    evalplus_check_code(reference=ref, inputs=[[[1.0], [2]]])["_evalplus_check"](near)  # [2, 2.000000001] passes: atol kept
    with pytest.raises(AssertionError, match="input 1: wrong output"):
        evalplus_check_code(reference=ref, inputs=[[[1.0]], [[2]]])["_evalplus_check"](near)  # a new run: exact again
    close = evalplus_check_code()["_close"]
    inf = float("inf")
    assert close([1.0, inf], [1.0 + 1e-9, inf], 1e-6) and not close([1.0, 2.0], [1.0, 2.1], 1e-6)
    assert not close(["a", 1.0], ["a", 1.0], 1e-6) and not close([1.0], [1.0, 1.0], 1e-6)
    same = evalplus_check_code(entry_point="sum_div")["_same"]
    assert same(0, 7, [10], 0)[0] and not same(3, 7, [10], 0)[0]
    same = evalplus_check_code(entry_point="surface_Area")["_same"]
    assert same(35, 33, [3, 4], 0)[0] and not same(34, 33, [3, 4], 0)[0]  # the oracle: 34.63... rounded
    same = evalplus_check_code(entry_point="find_zero", dataset="humaneval", atol=1e-6)["_same"]
    assert same(3.0, 1.0, [[-6, 11, -6, 1]], 1e-6)[0] and not same(2.5, 1.0, [[-6, 11, -6, 1]], 1e-6)[0]


def evalplus_same(out, exp, atol):
    """EvalPlus's verdict on one answer (evalplus/eval/__init__.py, unsafe_execute, as of evalplus 26d6d00),
    computed here with numpy: (passed, the atol for the next input of the run)."""
    exact = out == exp
    if atol == 0 and (isinstance(exp, float) or (isinstance(exp, (list, tuple)) and exp
                                                 and all(isinstance(i, float) for i in exp))):
        atol = 1e-6
    if exact or atol == 0:
        return bool(exact), atol
    try:
        assert type(out) == type(exp)
        if isinstance(exp, (list, tuple)):
            assert len(out) == len(exp)
        assert np.allclose(out, exp, rtol=1e-07, atol=atol)
        return True, atol
    except BaseException:
        return False, atol


def elementwise_close(out, exp, atol):
    """The comparison eval.py made before: numbers within atol + 1e-7 |exp|, lists element by element."""
    if isinstance(out, (list, tuple)) and isinstance(exp, (list, tuple)):
        return (type(out) == type(exp) and len(out) == len(exp)
                and all(elementwise_close(a, b, atol) for a, b in zip(out, exp)))
    if not (isinstance(out, (bool, int, float, complex)) and isinstance(exp, (bool, int, float, complex))):
        return False
    return out == exp or abs(out - exp) <= atol + 1e-07 * abs(exp)


INF = float("inf")
# (answer, expected, atol) where an element-by-element comparison and numpy.allclose disagree: numpy broadcasts
# inner shapes, compares infinities by equality (|1e308 - inf| <= atol + rtol * inf holds, but not for numpy),
# and raises on ragged lists and on ints past int64 (object arrays)
DISAGREE = [([[1.0]], [[1.0, 1.0]], 1e-6), ([(0,), (1,)], [(0, 0), (1, 1)], 1e-6), ([-INF], [INF], 1e-6),
            (1e308, INF, 0.0), ((1.0, 1e308), (1.0, INF), 0.0), ([1.0, [2.0 + 1e-9]], [1.0, [2.0]], 1e-6),
            ([2 ** 70 + 1], [2 ** 70], 1e-6)]
AGREE = [(1.0 + 1e-9, 1.0, 0.0), (1.0 + 1e-5, 1.0, 0.0), ([1.0, INF], [1.0 + 1e-9, INF], 0.0), ([], [], 0.0),
         ([1], [], 0.0), ([True, 2.0], [1, 2.0 + 1e-8], 1e-6), ((1.0, 2.0), [1.0, 2.0], 0.0), (1 + 1e-9j, 1 + 0j, 1e-6),
         (["a", 1.0], ["a", 1.0 + 1e-9], 1e-6), ([None, 1.0], [None, 1.0 + 1e-9], 1e-6),
         (float("nan"), float("nan"), 0.0),
         ([[1.0, 2.0]], [[1.0], [2.0]], 1e-6), ({"a": 1.0}, {"a": 1.0 + 1e-9}, 1e-6), (0, 1e-7, 0.0), (1.0, 1, 1e-6),
         ([2 ** 62], [2 ** 62 + 1], 1e-6), (2 ** 70 + 1, 2 ** 70, 1e-6), (10.0 + 1e-5, 10.0, 1e-6)]


def test_evalplus_float_comparison_is_numpys():
    """The judge's comparison gives EvalPlus's verdict (numpy.allclose after a type and top-level length check,
    atol raised to 1e-6 by a float or a non-empty list of floats), also where an element-by-element one would not."""
    same = evalplus_check_code(dataset="humaneval")["_same"]
    for out, exp, atol in DISAGREE:
        assert evalplus_same(out, exp, atol)[0] != elementwise_close(out, exp, max(atol, 1e-6)), (out, exp)
    for out, exp, atol in DISAGREE + AGREE:
        assert same(out, exp, [], atol) == evalplus_same(out, exp, atol), (out, exp, atol)
    assert same([1.0], [], [], 0.0) == (False, 0.0)  # is_floats([]) is False (EvalPlus since 2024-05): atol stays 0
    # an answer shaped (1, 8192, 1) against (1, 4096) would make numpy broadcast into 2^25 elements: the judge
    # fails it without allocating (EvalPlus might pass it); smaller broadcasts are numpy's
    small = ([[[1.0]] * 64], [[1.0] * 64])
    assert same(*small, [], 1e-6) == evalplus_same(*small, 1e-6) == (True, 1e-6)
    assert not same([[[1.0]] * 8192], [[1.0] * 4096], [], 1e-6)[0]
    assert same((1.0, 2.0 + 1e-9), (1.0, 2.0), [], 0.0) == (True, 1e-6)


def test_evalplus_judging_agrees_with_numpy_end_to_end(tmp_path, humaneval):
    """Through eval.py: HumanEval/20 answers an infinity (a float tuple, so atol 1e-6) and HumanEval/87 has a
    file atol on lists of int pairs; the verdicts are EvalPlus's, computed here from the answers with numpy."""
    inputs = {20: ([[[1.0, 2.0, 3.9, 4.0]]], [[[INF, 1.0]], [[-INF, INF, 0.5]]]),
              87: ([[[[1, 0], [0, 1]], 1]], [[[[2, 5], [5, 2]], 5], [[[1, 2], [3, 4]], 9]])}
    file_atol = {87: 1e-6}
    plus = evalplus_fixture(tmp_path / "HumanEvalPlus.jsonl", humaneval, inputs=inputs, atol=file_atol)
    closest, rows = humaneval[20]["canonical"], humaneval[87]["canonical"]
    wrap = lambda body, ret: body.replace("    return ", "    result = ") + f"    return {ret}\n"  # noqa: E731
    samples = [("HumanEval/20", closest),
               ("HumanEval/20", wrap(closest, "tuple(1e308 if x == float('inf') else x for x in result)")),
               ("HumanEval/20", wrap(closest, "tuple(-x if x == float('inf') else x for x in result)")),
               ("HumanEval/20", wrap(closest, "tuple(x + 1e-7 for x in result)")),
               ("HumanEval/87", rows), ("HumanEval/87", wrap(rows, "[(i,) for i, j in result]")),
               ("HumanEval/87", wrap(rows, "[(i, j + 1) for i, j in result]"))]
    res = score_humaneval_plus(tmp_path, plus, samples)

    def verdict(task_id, completion, runs, close):  # (base passed, all passed), each run with its own atol
        p_number = int(task_id.split("/")[1])
        p = humaneval[p_number]
        ref, cand = {}, {}
        exec(p["prompt"] + p["canonical"], ref)
        exec(p["prompt"] + completion, cand)
        name = p["test"].rsplit("check(", 1)[1][:-1]
        passed = []
        for run in runs:
            atol, ok = file_atol.get(p_number, 0.0), True
            for args in run:
                out, exp = cand[name](*args), ref[name](*args)
                good, atol = close(out, exp, atol)
                ok = ok and good
            passed.append(ok)
        return passed[0], passed[0] and passed[1]

    def elementwise(out, exp, atol):
        atol = 1e-6 if atol == 0 and isinstance(exp, tuple) and all(isinstance(i, float) for i in exp) else atol
        return (out == exp or (atol != 0 and elementwise_close(out, exp, atol))), atol
    want = [verdict(t, c, inputs[int(t.split("/")[1])], evalplus_same) for t, c in samples]
    assert [(x["base_passed"], x["passed"]) for x in res] == want, [x["result"] for x in res]
    old = [verdict(t, c, inputs[int(t.split("/")[1])], elementwise) for t, c in samples]
    assert [w != o for w, o in zip(want, old)] == [False, True, True, False, False, True, False]  # cases that tell


def test_tokensugar_protocol_gives_the_prompt_in_shorthand(ex, humaneval, tokenizer_path):
    """--preset tokensugar: the prompt's code is sugarized with the checkpoint's table before generation
    (the model continues shorthand, as it was trained on); the answer is judged against the plain prompt.
    Without the protocol the prompt stays as written."""
    sugar = pytest.importorskip("sugar")
    table = {"sugars": [{"code": "from typing import List", "type": "stmt", "id": "imp1", "reward": 5.0},
                        {"code": "abs(SUGARWILDCARD_0 - SUGARWILDCARD_1)", "type": "expr", "id": "abc1", "reward": 3.0}]}
    tok = Tokenizer(tokenizer_path)
    tok.add_tokens(sugar.load_sugars(table).tokens())
    p = humaneval[0]
    sweet = p["canonical"].replace("abs(elem - elem2)", "<abc1_expr_token>elem;elem2<\\expr_token>")
    protocol = ev.Sampling(**{k: v for k, v in ev.PRESETS["tokensugar"].items() if k in ev.Sampling.__dataclass_fields__})
    model = ScriptedModel(tok.encode(sweet), tok.eos_id)
    m, rec = ev.evaluate(model, tok, limit=1, sampling=protocol, postprocess={"sugar": table}, executor=ex,
                         return_records=True)
    shorthand = p["prompt"].replace("from typing import List", "<imp1_stmt_token>")
    assert model.prompts[0] == [tok.eos_id] + tok.encode(shorthand)
    assert sugar.desugarize(shorthand, table) == p["prompt"]
    assert rec[0]["completion"] == p["canonical"] and rec[0]["passed"]
    assert m["humaneval"]["sugar"]["prompts_sugarized"] == 1
    plain = ScriptedModel(tok.encode(sweet), tok.eos_id)
    m, rec = ev.evaluate(plain, tok, limit=1, postprocess={"sugar": table}, executor=ex, return_records=True)
    assert plain.prompts[0] == [tok.eos_id] + tok.encode(p["prompt"]) and rec[0]["passed"]
    assert m["humaneval"]["sugar"]["prompts_sugarized"] == 0
