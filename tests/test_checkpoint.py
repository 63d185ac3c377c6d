"""checkpoint.py: atomic saves, interrupted saves finished or dropped, readers under the folder lock."""
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
import torch

import checkpoint
import model
from checkpoint import PARTIAL, READY, save_checkpoint
from model import GPT, GPTConfig, load_model, make_config, model_state_dict

from conftest import REPO


def tiny(**kw):
    args = dict(vocab_size=100, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, attn_impl="sdpa")
    args.update(kw)
    torch.manual_seed(0)
    return GPT(GPTConfig(**args))


def test_interrupted_checkpoint_writes(tmp_path):
    m1, m2 = tiny(), tiny(n_layer=2)
    with torch.no_grad():
        m2.norm.weight.fill_(2.0)
    folder = tmp_path / "ck"
    save_checkpoint(folder, model_state_dict(m1), make_config(m1.cfg, step=1))
    # killed while writing: a partial folder is ignored and the previous checkpoint loads
    (folder / ".ckpt.partial").mkdir()
    (folder / ".ckpt.partial" / "model.safetensors").write_bytes(b"garbage")
    loaded, config = load_model(folder)
    assert config["step"] == 1 and not (folder / ".ckpt.partial").exists()
    # killed while moving a committed checkpoint into place: the reader finishes the moves
    save_checkpoint(tmp_path / "next", model_state_dict(m2), make_config(m2.cfg, step=2))
    ready = folder / ".ckpt.ready"
    ready.mkdir()
    os.replace(tmp_path / "next" / "model.safetensors", ready / "model.safetensors")
    os.replace(tmp_path / "next" / "config.json", folder / "config.json")  # this one was already moved
    loaded, config = load_model(folder)
    assert config["step"] == 2 and torch.all(loaded.norm.weight == 2.0) and not ready.exists()


READER = """
import json, sys
from checkpoint import CheckpointError
from model import ModelError, load_model
for folder in sys.argv[1:]:
    try:
        print(json.dumps({"step": load_model(folder)[1]["step"]}))
    except (ModelError, CheckpointError) as e:
        print(json.dumps({"error": str(e)}))
"""


def read_only_load(folders):
    """load_model of each folder in a process that cannot write them: a read-only bind mount in a private
    mount namespace when run as root (chmod stops nothing there), else chmod a-w. A JSON line each."""
    cmd = [sys.executable, "-c", READER, *map(str, folders)]
    if os.geteuid() == 0:
        mount = 'for f; do mount --bind "$f" "$f" && mount -o remount,bind,ro "$f" || exit 97; done; exec "$PY" -c "$READER" "$@"'
        cmd = ["unshare", "--mount", "sh", "-c", mount, "sh", *map(str, folders)]
    else:
        for f in folders:
            f.chmod(0o555)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(REPO), "PY": sys.executable, "READER": READER})
    except FileNotFoundError:  # no unshare
        r = subprocess.CompletedProcess(cmd, 97, "", "unshare not found")
    finally:
        for f in folders:
            f.chmod(0o755)
    if r.returncode == 97:
        pytest.skip(f"cannot make a read-only folder here as root: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0, r.stderr[-2000:]
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_a_read_only_checkpoint_is_read_and_left_as_it_is(tmp_path):
    m = tiny()
    clean = tmp_path / "clean"
    save_checkpoint(clean, model_state_dict(m), make_config(m.cfg, step=3))
    stale = tmp_path / "stale"  # a save killed before its commit point: ignored
    shutil.copytree(clean, stale)
    (stale / PARTIAL).mkdir()
    (stale / PARTIAL / "model.safetensors").write_bytes(b"garbage")
    unfinished = tmp_path / "unfinished"  # killed after it: the folder alone is a mix, and cannot be finished
    shutil.copytree(clean, unfinished)
    (unfinished / READY).mkdir()
    (unfinished / READY / "model.safetensors").write_bytes((clean / "model.safetensors").read_bytes())
    (unfinished / "config.json").write_text(json.dumps(make_config(m.cfg, step=4)))
    folders = [clean, stale, unfinished]
    before = [sorted(str(p.relative_to(f)) for p in f.rglob("*")) for f in folders]
    got = read_only_load(folders)
    assert got[:2] == [{"step": 3}, {"step": 3}]
    assert "the folder is read-only, so it cannot be finished" in got[2]["error"] and str(unfinished) in got[2]["error"]
    assert [sorted(str(p.relative_to(f)) for p in f.rglob("*")) for f in folders] == before  # no lock file, no repair
    assert load_model(unfinished)[1]["step"] == 4 and not (unfinished / READY).exists()  # writable again: finished


# ---- under concurrency: two repairers, a reader during a save, readers during many saves
def _half_done_save(folder, step):
    """A folder as a save killed after its commit point leaves it: files still in .ckpt.ready, and a
    stale .ckpt.partial of an earlier attempt."""
    ready = folder / checkpoint.READY
    ready.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "train_state.pt"):
        (ready / name).write_text(json.dumps({"step": step, "name": name}))
    (folder / checkpoint.PARTIAL).mkdir()
    (folder / checkpoint.PARTIAL / "model.safetensors").write_text("half")


def _repair(folder, go):
    go.wait()
    checkpoint.recover_checkpoint(folder)


def test_two_processes_repairing_one_folder(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for i in range(30):
        folder = tmp_path / f"f{i}"
        _half_done_save(folder, i)
        go = ctx.Event()
        procs = [ctx.Process(target=_repair, args=(folder, go)) for _ in range(2)]
        for p in procs:
            p.start()
        go.set()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0]
        assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "train_state.pt"]
        assert json.loads((folder / "model.safetensors").read_text()) == {"step": i, "name": "model.safetensors"}


def _slow_save(folder, state, config, written, release):
    """save_checkpoint in a child process that pauses once its files are written, before the commit."""
    write_files = checkpoint._write_files

    def paused(*args):
        write_files(*args)
        written.set()
        release.wait(120)

    checkpoint._write_files = paused
    checkpoint.save_checkpoint(folder, state, config)


def test_a_reader_during_a_save_waits_and_deletes_nothing(tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    shutil.copytree(tiny_ckpt, out)
    m, config = model.load_model(out)
    state = model.model_state_dict(m)
    config = {**config, "step": 7}
    ctx = multiprocessing.get_context("fork")
    written, release = ctx.Event(), ctx.Event()
    writer = ctx.Process(target=_slow_save, args=(out, state, config, written, release))
    writer.start()
    try:
        assert written.wait(120)
        result = {}
        reader = threading.Thread(target=lambda: result.update(config=model.load_model(out)[1]))
        reader.start()
        reader.join(1.0)
        assert (out / checkpoint.PARTIAL / "model.safetensors").is_file()  # the reader left the save alone...
        assert reader.is_alive()  # ...and waits for it
        release.set()
        writer.join(60)
        reader.join(60)
        assert writer.exitcode == 0 and result["config"]["step"] == 7  # it reads the new checkpoint, whole
        assert not (out / checkpoint.PARTIAL).exists() and not (out / checkpoint.READY).exists()
    finally:
        release.set()
        writer.join(60)


def _numbered_save(folder, i, tok_dir):
    """Checkpoint number i: every weight equal to i, config step i, tokenizer file b"tokenizer i"."""
    cfg = model.GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)
    with torch.device("meta"):
        shapes = model.model_state_dict(model.GPT(cfg))
    tok = tok_dir / f"tok{i}.model"
    tok.write_bytes(f"tokenizer {i}".encode())
    checkpoint.save_checkpoint(folder, {k: torch.full(v.shape, float(i)) for k, v in shapes.items()},
                               model.make_config(cfg, step=i), tokenizer_file=tok)


def _saves(folder, tok_dir, n):
    for i in range(1, n + 1):
        _numbered_save(folder, i, tok_dir)
        time.sleep(0.005)  # (room for the readers between saves: a lock is not a queue)


def test_readers_during_saves_get_one_whole_checkpoint(tmp_path):
    """Readers (as eval.py --ckpt out/ while training saves there) always get the config, weights and
    tokenizer of one save, old or new, and never an error."""
    out = tmp_path / "out"
    _numbered_save(out, 0, tmp_path)
    writer = multiprocessing.get_context("fork").Process(target=_saves, args=(out, tmp_path, 40))
    seen, errors = [], []

    def read_while_saving():
        while writer.is_alive():
            try:
                with checkpoint.reading_checkpoint(out):
                    m, config = model.load_model(out)
                    tok = (out / "tokenizer.model").read_bytes()
            except Exception as e:  # noqa: BLE001 (any error is a failure; collected to report it)
                errors.append(repr(e))
                continue
            i = config["step"]
            if tok != f"tokenizer {i}".encode() or not all(bool((p == i).all()) for p in m.parameters()):
                errors.append(f"config of save {i} read with other files")
            seen.append(i)

    writer.start()
    readers = [threading.Thread(target=read_while_saving) for _ in range(2)]
    for r in readers:
        r.start()
    writer.join(240)
    for r in readers:
        r.join(60)
    assert writer.exitcode == 0 and not errors, errors[:3]
    assert len(set(seen)) > 2, seen  # the reads did overlap the saves
    assert model.load_model(out)[1]["step"] == 40
