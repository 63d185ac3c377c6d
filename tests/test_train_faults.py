"""train.py and bench.py under bad input and faults: every bad setting is one line and exit 2 with the
out folder left byte-identical; a diverged run never replaces the last good checkpoint and keeps the
log strict JSON; a full disk during a save is one line and no partial folder; an out_dir no one can write
is one line; SIGTERM saves and a resume continues exactly, a second signal exits at once; killing torchrun
stops its ranks. (The checkpoint folder under concurrency is tested in test_checkpoint.py.)"""
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest

import bench
import checkpoint
import model
import train as train_module
from conftest import REPO, UNWRITABLE, run_torchrun, unwritable_output
from test_train import curve, env, make_tiny_run, records, reference, train  # noqa: F401 (reference: a fixture)


@pytest.fixture(scope="module")
def config(tmp_path_factory, tokenizer_path):
    return make_tiny_run(tmp_path_factory, tokenizer_path)[1]


def snapshot(folder):
    """path -> sha256 of every file under folder."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def strict_records(out, name="log.jsonl"):
    """log records, parsed as strict JSON (NaN or Infinity fail)."""
    def refuse(constant):
        raise AssertionError(f"{name}: non-JSON constant {constant}")
    return [json.loads(line, parse_constant=refuse) for line in open(out / name)]


@pytest.fixture()
def ckpt_copy(tmp_path, reference):
    out = tmp_path / "ckpt"
    shutil.copytree(reference, out)
    return out


BAD_SETTINGS = [
    (["--max_iters=-5"], "max_iters must be >= 0, got -5"),
    (["--gradient_accumulation_steps=0"], "gradient_accumulation_steps must be >= 1, got 0"),
    (["--lr_schedule=cosin"], "lr_schedule must be one of 'cosine', 'linear', 'constant', got 'cosin'"),
    (["--batch_size=0"], "batch_size must be >= 1"),
    (["--batch_size=-3"], "batch_size must be >= 0"),
    (["--eval_interval=0"], "eval_interval must be >= 1, got 0"),
    (["--log_interval=0"], "log_interval must be >= 1, got 0"),
    (["--eval_iters=0"], "eval_iters must be >= 1, got 0"),
    (["--seed=-1"], "seed must be in [0, 2**63), got -1"),
    (["--learning_rate=-1e-3"], "learning_rate must be a finite number >= 0, got -0.001"),
    (["--learning_rate=nan"], "learning_rate must be a number, got 'nan'"),
    (["--beta2=1.5"], "beta2 must be in [0, 1), got 1.5"),
    (["--device=gpu"], "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'gpu'"),
    (["--optimizer=sgd"], "optimizer must be one of 'adamw', 'adamw8bit', got 'sgd'"),
    (["--max_itres=5"], "unknown config key 'max_itres' (did you mean 'max_iters'?)"),
    (["--init_from=scratch"], "already holds a checkpoint: continue it with --init_from=resume, or replace it with --overwrite=true"),
]
BAD_FILES = [
    ("learning_rate = float('nan')\n", "learning_rate must be a finite number >= 0, got nan"),
    ("max_iters = 3\nmax_iters = 1 // 0\n", "bad.py:2: error in config file: ZeroDivisionError: integer division or modulo by zero"),
    (b"max_iters = 3\n# caf\xe9\n", "bad.py:2: not UTF-8 text (byte 19)"),
]


@pytest.mark.parametrize("case", range(len(BAD_SETTINGS) + len(BAD_FILES)))
def test_bad_settings_are_one_line_and_touch_nothing(case, config, ckpt_copy, tmp_path, capsys):
    if case < len(BAD_SETTINGS):
        args, expect = BAD_SETTINGS[case]
    else:
        text, expect = BAD_FILES[case - len(BAD_SETTINGS)]
        bad = tmp_path / "bad.py"
        bad.write_bytes(text if isinstance(text, bytes) else text.encode())
        args = [bad]
    before = snapshot(ckpt_copy)
    with pytest.raises(SystemExit) as e:
        train_module.main([config, f"--out_dir={ckpt_copy}", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err == [f"train.py: error: {err[0][len('train.py: error: '):]}"], err
    assert expect in err[0]
    assert snapshot(ckpt_copy) == before


@pytest.mark.parametrize("where", UNWRITABLE)
def test_an_out_dir_nobody_can_write_is_one_line_before_any_work(config, tmp_path, where, capsys):
    out, _ = unwritable_output(tmp_path, where)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as e:
        train_module.main([config, f"--out_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    cause = "Not a directory" if where == "below a file" else "No such file or directory"
    assert e.value.code == 2 and err == [f"train.py: error: out_dir {str(out)!r} is not writable ({cause})"]
    assert sorted(tmp_path.rglob("*")) == before


def test_overwrite_keeps_the_old_checkpoint_and_log_until_its_own(config, ckpt_copy):
    """A scratch run told to overwrite, diverging before its first checkpoint: the old checkpoint and
    log are untouched; its own log (log.jsonl.new) is strict JSON and names no checkpoint as good."""
    before = snapshot(ckpt_copy)
    r = train(config, f"--out_dir={ckpt_copy}", "--overwrite=true", "--learning_rate=1e6", "--grad_clip=0",
              "--warmup_iters=0", "--max_iters=40", "--eval_interval=100", check=False)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "stopping; no checkpoint of this run was saved" in r.stdout
    assert {k: v for k, v in snapshot(ckpt_copy).items() if k != "log.jsonl.new"} == before
    bad = [rec for rec in strict_records(ckpt_copy, "log.jsonl.new") if rec["event"] == "nonfinite"]
    assert len(bad) == 1 and (bad[0].get("loss") is None or bad[0].get("grad_norm") is None)


def test_a_resumed_diverging_run_never_saves_over_the_good_checkpoint(config, ckpt_copy):
    before = snapshot(ckpt_copy)
    good = json.loads((ckpt_copy / "config.json").read_text())["step"]
    r = train(config, f"--out_dir={ckpt_copy}", "--init_from=resume", "--learning_rate=1e12", "--grad_clip=0",
              "--warmup_iters=0", "--max_iters=40", "--eval_interval=1", check=False)
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    stop = [rec for rec in strict_records(ckpt_copy) if rec["event"] == "nonfinite"]
    assert len(stop) == 1
    saved = [rec["step"] for rec in strict_records(ckpt_copy) if rec["event"] == "checkpoint" and rec["step"] > good]
    if not saved:  # it diverged at once: nothing was written over the checkpoint
        assert {k: v for k, v in snapshot(ckpt_copy).items() if k != "log.jsonl"} == {k: v for k, v in before.items() if k != "log.jsonl"}
    m, cfg = model.load_model(ckpt_copy)
    assert cfg["step"] == (saved[-1] if saved else good) and f"(step {cfg['step']})" in r.stdout
    total = sum(float(p.detach().float().pow(2).sum()) for p in m.parameters())
    assert total < 1e30 and all(bool(p.isfinite().all()) for p in m.parameters())


def test_disk_full_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(config, ckpt_copy):
    """RLIMIT_FSIZE makes every write past 1 MiB fail (EFBIG), as a full disk does with ENOSPC."""
    before = snapshot(ckpt_copy)

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    cmd = [sys.executable, str(REPO / "train.py"), str(config), f"--out_dir={ckpt_copy}", "--init_from=resume",
           "--max_iters=12", "--eval_interval=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env(), preexec_fn=limit_file_size, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"train.py: error: {ckpt_copy}: checkpoint not saved, the previous one is kept (")
    assert not (ckpt_copy / ".ckpt.partial").exists() and not (ckpt_copy / ".ckpt.ready").exists()
    assert {k: v for k, v in snapshot(ckpt_copy).items() if k != "log.jsonl"} == {k: v for k, v in before.items() if k != "log.jsonl"}
    assert "saved" not in r.stdout and not [rec for rec in strict_records(ckpt_copy) if rec["event"] == "checkpoint" and rec["step"] > 10]


def wait_for(out, event, step, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (out / "log.jsonl").exists() and any(r["step"] >= step for r in records(out, event)):
            return True
        time.sleep(0.05)
    return False


def test_sigterm_saves_and_the_resume_is_exact(tmp_path, config, reference):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), str(config), f"--out_dir={out}"], cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(out, "train", 3, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    stopped = records(out, "stopped")
    assert len(stopped) == 1 and stopped[0]["signal"] == "SIGTERM" and "continue with --init_from=resume" in stdout
    assert json.loads((out / "config.json").read_text())["step"] == stopped[0]["step"] < 10
    train(config, f"--out_dir={out}", "--init_from=resume")
    a, b = curve(reference), curve(out)
    assert a == b  # every step and eval of the uninterrupted run, bit for bit
    steps = [r["step"] for r in records(out, "train")]
    assert steps == sorted(set(steps)) == list(range(1, 11))  # each step logged once


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_exits_at_once_and_keeps_the_last_checkpoint(config, ckpt_copy, sig):
    """The first signal asks for a save, which waits here (a reader holds the folder, as eval.py loading
    it does); a second one, a second later, exits at once with 130 / 143, the checkpoint as it was."""
    before = snapshot(ckpt_copy)
    good = json.loads((ckpt_copy / "config.json").read_text())["step"]
    with checkpoint.reading_checkpoint(ckpt_copy):
        proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), str(config), f"--out_dir={ckpt_copy}",
                                 "--init_from=resume", "--max_iters=100000", "--eval_interval=100000"],
                                cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(ckpt_copy, "train", good + 2, proc)
            proc.send_signal(sig)
            first = ""
            while "finishing this step" not in first and proc.poll() is None:
                first = proc.stderr.readline()
            time.sleep(1.5)  # a repeat within a second counts as the same signal (torchrun forwards it again)
            proc.send_signal(sig)
            rest = proc.communicate(timeout=train_module._STOP_GRACE_S - 10)[1]  # (the watchdog exits silently)
        finally:
            proc.kill()
    assert proc.returncode == 128 + sig, rest[-2000:]
    assert f"{signal.Signals(sig).name} again: exiting now; the last checkpoint in {ckpt_copy} is kept" in rest
    assert {k: v for k, v in snapshot(ckpt_copy).items() if k != "log.jsonl"} == {k: v for k, v in before.items() if k != "log.jsonl"}
    assert model.load_model(ckpt_copy)[1]["step"] == good


def test_killing_torchrun_stops_its_ranks(tmp_path, config):
    """SIGKILL to the launcher: its ranks get SIGTERM (parent-death signal), save and exit (or, if the
    save hangs, exit through the stop watchdog within train._STOP_GRACE_S)."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "train.py"),
           str(config), f"--out_dir={out}", "--max_iters=100000", "--eval_interval=1000"]
    err = open(tmp_path / "stderr", "w")
    launcher = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=err)
    assert wait_for(out, "train", 2, launcher)
    ranks = [int(p) for p in open(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read().split()]
    assert len(ranks) == 2
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.time() + 120
    while time.time() < deadline and any(os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"
                                         for p in ranks):
        time.sleep(0.1)
    alive = [p for p in ranks if os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"]
    why = [open(f"/proc/{p}/stat").read()[:80] for p in alive] + [(tmp_path / "stderr").read_text()[-3000:]]
    for p in alive:  # (only if the test fails: leave nothing running)
        os.kill(p, signal.SIGKILL)
    assert not alive, why
    # usually both ranks save first; a rank that hangs in that save is ended by the stop watchdog instead
    assert not (out / ".ckpt.partial").exists() and not (out / ".ckpt.ready").exists()
    for stopped in records(out, "stopped"):
        assert json.loads((out / "config.json").read_text())["step"] == stopped["step"]


# ---- bench.py's command line
@pytest.mark.parametrize("argv, expect", [
    (["train", "--config", "missing.py"], "missing.py: cannot read config file"),
    (["train", "--override", "max_itres=3"], "unknown config key 'max_itres' (did you mean 'max_iters'?)"),
    (["train", "--steps", "0"], "--steps 0: must be >= 1"),
    (["train", "--device", "tpu"], "--device 'tpu': not a device"),
    (["optim", "--device", "cuda:x"], "--device 'cuda:x': not a device"),
    (["optim", "--steps", "-1"], "--steps -1: must be >= 1"),
])
def test_bench_bad_input(argv, expect, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("bench.py: error: ") and expect in err[0], err


def test_two_rank_resume_in_one_process_says_it_is_exact(tmp_path, config):
    out = tmp_path / "ddp"
    r = run_torchrun([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                      str(REPO / "train.py"), str(config), f"--out_dir={out}", "--max_iters=4"],
                     capture_output=True, text=True, cwd=REPO, env=env(), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    r = train(config, f"--out_dir={out}", "--init_from=resume", "--max_iters=6")
    assert "resuming a 2-process run on 1: bit-exact" in r.stdout
