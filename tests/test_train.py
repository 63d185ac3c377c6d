"""train.py end to end, in subprocesses as users run it: one process, torchrun DDP/FSDP on CPU (gloo),
kill -9 and resume, and every bad input the run must refuse with a one-line error."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_torchrun, stdlib_sample

TINY = """
n_layer = 2
n_head = 4
n_kv_head = 2
n_embd = 64
block_size = 64
batch_size = 4
gradient_accumulation_steps = 2
max_iters = 10
eval_interval = 2
eval_iters = 2
log_interval = 1
warmup_iters = 2
learning_rate = 3e-3
"""


def make_tiny_run(tmp_path_factory, tokenizer_path):
    """(corpus folder, config file) of a tiny run on stdlib code; test modules build their own."""
    from data import prepare_corpus

    src = tmp_path_factory.mktemp("src")
    for i, text in enumerate(stdlib_sample(150_000)):
        (src / f"m{i}.py").write_text(text)
    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare_corpus(str(src), out, tokenizer=str(tokenizer_path), workers=1)
    path = tmp_path_factory.mktemp("cfg") / "tiny.py"
    path.write_text(TINY + f"data_dir = {str(out)!r}\n")
    return out, path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tokenizer_path):
    return make_tiny_run(tmp_path_factory, tokenizer_path)


@pytest.fixture(scope="module")
def corpus(tiny_run):
    return tiny_run[0]


@pytest.fixture(scope="module")
def config(tiny_run):
    return tiny_run[1]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def train(*args, check=True, procs=1, timeout=300):
    cmd = [sys.executable, str(REPO / "train.py"), *map(str, args)]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *cmd[1:]]
    r = run_torchrun(cmd, capture_output=True, text=True, cwd=REPO, env=env(), timeout=timeout)
    if check:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def records(out, event=None):
    lines = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    return [r for r in lines if event is None or r["event"] == event]


def curve(out):
    """step -> (train loss, val loss) as logged; every record of a step must agree."""
    seen = {}
    for r in records(out):
        if r["event"] in ("train", "eval"):
            key = (r["event"], r["step"])
            value = r.get("loss", r.get("val_loss"))
            assert seen.setdefault(key, value) == value, f"step {key} logged {seen[key]} and {value}"
    return seen


@pytest.fixture(scope="module")
def reference(tmp_path_factory, config):
    out = tmp_path_factory.mktemp("ref") / "out"
    train(config, f"--out_dir={out}")
    return out


def test_single_process_run(reference):
    from data import Tokenizer
    from model import load_model

    logs = records(reference, "train")
    assert [r["step"] for r in logs] == list(range(1, 11))
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert all(r["tokens_per_sec"] > 0 and "eta_s" in r for r in logs)
    model, cfg = load_model(reference)
    tok = Tokenizer.load(reference)
    assert cfg["step"] == 10 and cfg["train"]["max_iters"] == 10 and cfg["model"]["n_kv_head"] == 2
    assert tok.vocab_size == cfg["model"]["vocab_size"] and cfg["tokenizer"]["sha256"]
    assert len(model.generate([tok.encode("def f(x):\n")], 4)[0]) <= 4


def test_kill_and_resume_is_bit_exact(tmp_path, config, reference):
    """SIGKILL at random moments while a checkpoint is written every step; each resume continues, and
    every logged loss of the pieced-together run equals the uninterrupted run's, bit for bit."""
    ref = tmp_path / "ref"
    train(config, f"--out_dir={ref}", "--eval_interval=1")
    out = tmp_path / "out"
    rng = random.Random(0)
    kills = 0
    for attempt in range(3):
        args = [config, f"--out_dir={out}", "--eval_interval=1"] + (["--init_from=resume"] if attempt else [])
        proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *map(str, args)], cwd=REPO, env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        target = 2 + 3 * attempt
        while time.time() < deadline and proc.poll() is None:
            if (out / "log.jsonl").exists() and any(r["step"] >= target for r in records(out, "eval")):
                time.sleep(rng.uniform(0.0, 0.4))  # land anywhere: mid-step or mid-checkpoint
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.02)
        proc.wait()
    train(config, f"--out_dir={out}", "--eval_interval=1", "--init_from=resume")
    assert kills >= 1
    a, b = curve(ref), curve(out)
    assert a == {k: b[k] for k in a}
    assert not (out / ".ckpt.partial").exists() and not (out / ".ckpt.ready").exists()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(tmp_path, config, reference, parallel):
    """Same global batch (2 micro-batches: one per rank vs both in one process): same losses."""
    out = tmp_path / parallel
    train(config, f"--out_dir={out}", f"--parallel={parallel}", procs=2)
    a, b = curve(reference), curve(out)
    assert a.keys() == b.keys()
    assert all(abs(a[k] - b[k]) <= 1e-5 * abs(a[k]) for k in a), (a, b)
    assert records(out, "start")[0]["world_size"] == 2
    if parallel == "fsdp":  # an FSDP checkpoint resumes under FSDP and in a single process alike
        from model import load_model

        ref_model, _ = load_model(reference)
        fsdp_model, _ = load_model(out)
        for (k, x), (_, y) in zip(ref_model.state_dict().items(), fsdp_model.state_dict().items()):
            assert (x - y).abs().max() <= 1e-4, k
        shutil.copytree(out, tmp_path / "single")
        r = train(config, f"--out_dir={tmp_path / 'single'}", "--init_from=resume", "--max_iters=12")
        assert "resuming a 2-process run on 1: it continues from the same state but not bit for bit" in r.stdout
        train(config, f"--out_dir={out}", "--init_from=resume", "--max_iters=12", "--parallel=fsdp", procs=2)
        last = records(tmp_path / "single", "train")[-1]
        assert last["step"] == 12 and last["loss"] == pytest.approx(records(out, "train")[-1]["loss"], rel=1e-5)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, config):
    out = tmp_path / "out"
    r = train(config, f"--out_dir={out}", "--learning_rate=1e6", "--grad_clip=0", "--warmup_iters=0",
              "--max_iters=40", "--eval_interval=1", check=False)
    assert r.returncode == 3, r.stderr[-2000:]
    bad = records(out, "nonfinite")
    assert len(bad) == 1 and f"step {bad[0]['step']} | " in r.stdout and "stopping; the last good checkpoint is in" in r.stdout
    from model import load_model

    model, cfg = load_model(out)
    assert cfg["step"] <= bad[0]["step"]
    assert all(bool(p.isfinite().all()) for p in model.parameters())


def error_of(r):
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-2000:]
    lines = [line for line in r.stderr.strip().splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1, r.stderr[-2000:]
    return lines[0]


def test_bad_input(tmp_path, config, corpus, reference, tokenizer_path):
    out = f"--out_dir={tmp_path / 'o'}"
    assert "did you mean 'max_iters'" in error_of(train(config, out, "--max_itres=3", check=False))
    assert "max_iters must be an int" in error_of(train(config, out, "--max_iters=ten", check=False))
    assert "block_size 100000 is larger than the" in error_of(train(config, out, "--block_size=100000", check=False))
    # a resume whose model config differs from the checkpoint's
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    msg = error_of(train(config, f"--out_dir={resumed}", "--init_from=resume", "--n_layer=3", check=False))
    assert "differs from this run's: n_layer=2 there, 3 here" in msg
    # a checkpoint whose tokenizer is not the one the data was made with
    other = tmp_path / "other"
    shutil.copytree(reference, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["tokenizer"]["sha256"] = "0" * 64
    (other / "config.json").write_text(json.dumps(cfg))
    assert "tokenizer/model vocab mismatch" in error_of(train(config, out, f"--init_from={other}", check=False))
    # a truncated shard
    broken = tmp_path / "broken"
    shutil.copytree(corpus, broken)
    shard = broken / "train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-1])
    assert "train_000000.bin: truncated or corrupt shard" in error_of(train(config, out, f"--data_dir={broken}", check=False))
    assert "no meta.json" in error_of(train(config, out, f"--data_dir={tmp_path}", check=False))
    # an out_dir that cannot be created
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "is not writable" in error_of(train(config, f"--out_dir={blocker / 'sub'}", check=False))
    assert "parallel must be" in error_of(train(config, out, "--parallel=zero", check=False))


def test_quickstart_config_prepares_its_data(tmp_path):
    """config/quickstart.py as shipped, shortened: prepares the stdlib corpus itself, then trains."""
    data = tmp_path / "stdlib_8k"
    out = tmp_path / "qs"
    r = train(REPO / "config" / "quickstart.py", f"--data_dir={data}", f"--out_dir={out}", "--max_iters=2",
              "--eval_iters=1", "--batch_size=2", timeout=600)
    meta = json.loads((data / "meta.json").read_text())
    assert meta["vocab_size"] <= 8192 and meta["train"]["tokens"] > 1_000_000 and meta["sources"]["src"] == "stdlib"
    assert records(out, "train")[-1]["step"] == 2 and "val loss" in r.stdout
    # it ends with what the model writes: a sampled continuation of the config's prompt
    sample = records(out, "sample")[0]["text"]
    assert sample.startswith("def fibonacci(n):\n") and len(sample) > len("def fibonacci(n):\n")
    assert r.stdout.rstrip().endswith(sample.rstrip()) and "sample (temperature 0.8" in r.stdout
    assert (out / "model.safetensors").exists() and (out / "tokenizer.model").exists()
    # the README's multi-rank CPU command runs on the shipped config (its accumulation steps split over 2)
    r = train(REPO / "config" / "quickstart.py", f"--data_dir={data}", f"--out_dir={tmp_path / 'qs2'}",
              "--max_iters=1", "--eval_iters=1", "--batch_size=2", "--parallel=ddp", procs=2, timeout=600)
    assert records(tmp_path / "qs2", "start")[0]["world_size"] == 2


def test_humaneval_during_training(tmp_path, config):
    out = tmp_path / "out"
    train(config, f"--out_dir={out}", "--max_iters=2", "--eval_interval=2", "--eval_humaneval_interval=2",
          "--eval_humaneval_limit=2")
    he = records(out, "humaneval")
    assert len(he) == 1 and he[0]["step"] == 2 and he[0]["n_samples"] == 2 and 0.0 <= he[0]["pass@1"] <= 1.0
    assert he[0]["dataset"]["sha256"]
    r = train(config, f"--out_dir={out}", "--eval_humaneval_interval=2", "--parallel=fsdp", procs=2, check=False)
    assert r.returncode != 0 and r.stderr.count("train.py: error: eval_humaneval_interval needs parallel='ddp'") == 1


def test_a_failed_humaneval_is_logged_and_training_goes_on(monkeypatch):
    """The executor dying (or any evaluation error) during training's periodic HumanEval is one log
    record, not the end of the run."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    import eval as codelm_eval
    import train as T

    def dead_executor(*args, **kwargs):
        raise codelm_eval.ExecutorError("executor exited unexpectedly (status -9)")

    monkeypatch.setattr(codelm_eval, "evaluate", dead_executor)
    logged = []
    run = SimpleNamespace(cfg=SimpleNamespace(eval_humaneval_limit=2), env=SimpleNamespace(autocast=nullcontext),
                          raw=None, data=SimpleNamespace(tok=None, meta={}), executor=None,
                          log=lambda line, **rec: logged.append((line, rec)))
    T.Trainer.humaneval(run, 10)  # returns: the caller's loop continues
    (line, rec), = logged
    assert rec["event"] == "humaneval_failed" and rec["step"] == 10 and "executor exited" in rec["error"]
    assert "training goes on" in line


# ---- the learning-rate schedule
def test_warmup_fraction_sets_the_warmup_from_the_run_length():
    """warmup_fraction: warmup = the fraction of the run's steps, rounded up (Hugging Face's warmup_ratio,
    which the LintSeq and reasoning-recipe papers used); then the schedule decays as before."""
    import train as T

    cfg = T.settings(["--warmup_fraction=0.05", "--learning_rate=1e-3", "--min_lr=0", "--lr_schedule=linear"])
    assert [T.warmup_steps(cfg, n) for n in (7, 20, 21, 2000)] == [1, 1, 2, 100]
    lrs = [T.lr_at(s, cfg, 21) for s in (0, 1, 2, 12, 21)]
    assert lrs == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3 * 9 / 19, 0.0])
    assert T.warmup_steps(T.settings(["--warmup_iters=7"]), 21) == 7  # off (0): warmup_iters as before
    for name in ("lintseq_tinycodelm_hf.py", "lintseq_tinycodelm_hf_baseline.py"):  # the paper's 0.1% of the steps
        lintseq = T.settings([str(REPO / "config" / name)])
        assert [T.warmup_steps(lintseq, n) for n in (400, 1500, 20_000)] == [1, 2, 20]


# ---- pretraining mixtures (data_mix)
def test_mixture_draws_each_corpus_by_weight():
    from train import batch_rng, draw_source

    draws = [draw_source(batch_rng(1337, "train", step, micro), [0.25, 0.75]) for step in range(1000) for micro in range(2)]
    assert abs(draws.count(0) / len(draws) - 0.25) <= 0.03
    assert draws == [draw_source(batch_rng(1337, "train", s, m), [0.25, 0.75]) for s in range(1000) for m in range(2)]
    assert {draw_source(batch_rng(0, "train", s, 0), [0.0, 1.0, 0.0]) for s in range(200)} == {1}


@pytest.fixture(scope="module")
def second_corpus(tmp_path_factory, tokenizer_path):
    """Another corpus made with the same tokenizer: the stdlib files after the first corpus's."""
    from data import prepare_corpus

    src = tmp_path_factory.mktemp("src2")
    first = len(stdlib_sample(150_000))
    for i, text in enumerate(stdlib_sample(300_000)[first:]):
        (src / f"m{i}.py").write_text(text)
    out = tmp_path_factory.mktemp("data2") / "second"
    prepare_corpus(str(src), out, tokenizer=str(tokenizer_path), workers=1)
    return out


def test_mixture_run_counts_tokens_per_corpus_and_resumes_exactly(tmp_path, config, corpus, second_corpus):
    mix = [f"--data_mix={corpus}:1,{second_corpus}:3", "--lr_decay_iters=6"]
    full, part = tmp_path / "full", tmp_path / "part"
    r = train(config, f"--out_dir={full}", "--max_iters=6", *mix)
    assert f"data {corpus} x0.25 + {second_corpus} x0.75" in r.stdout and "| seen " in r.stdout
    train(config, f"--out_dir={part}", "--max_iters=4", *mix)
    train(config, f"--out_dir={part}", "--max_iters=6", "--init_from=resume", *mix)
    assert curve(full) == curve(part)
    seen = records(full, "train")[-1]["tokens_by_source"]
    assert seen == records(part, "train")[-1]["tokens_by_source"]
    assert set(seen) == {str(corpus), str(second_corpus)} and sum(seen.values()) == 6 * 2 * 4 * 64  # steps x micro x batch x block


def test_mixture_bad_input(tmp_path, config, corpus, second_corpus, capsys):
    import train as train_module

    for mix, expect in [(f"{corpus}:1,{tmp_path / 'none'}:1", f"data_mix: {tmp_path / 'none'} holds no corpus"),
                        (f"{corpus}:0,{second_corpus}:0", "data_mix: the weights sum to 0.0; they must sum to a positive number"),
                        (f"{corpus}:-1,{second_corpus}:2", f"data_mix: '{corpus}:-1' is not FOLDER:WEIGHT with a finite weight >= 0"),
                        (f"{corpus}", f"data_mix: '{corpus}' is not FOLDER:WEIGHT")]:
        with pytest.raises(SystemExit) as e:
            train_module.main([config, f"--out_dir={tmp_path / 'out'}", f"--data_mix={mix}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and expect in err[0], err
    assert not (tmp_path / "out").exists()
