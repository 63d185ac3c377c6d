"""Shared fixtures: a small real tokenizer and a tiny checkpoint, built once per test session."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tests run two at a time on two cores
# Triton kernels run on numpy in tests (no GPU); must be set before anything imports triton
os.environ.setdefault("TRITON_INTERPRET", "1")


def run_torchrun(cmd, **kw):
    """subprocess.run of a torchrun command, once more if rendezvous lost a race for a port (two
    tests launch torchrun at the same moment under xdist); any other failure is returned as is. A launch
    that hangs fails after `timeout` seconds (its ranks die with it: parent-death signal)."""
    kw.setdefault("timeout", 600)
    r = subprocess.run(cmd, **kw)
    if r.returncode and re.search(r"Address already in use|EADDRINUSE|DistNetworkError", r.stderr or ""):
        r = subprocess.run(cmd, **kw)
    return r


def stdlib_sample(max_chars=300_000):
    """A fixed, deterministic slice of the standard library's sources (real code, no download)."""
    from data import stdlib_files

    texts, n = [], 0
    for p in stdlib_files():
        if p.parent.name in ("json", "collections", "email", "importlib", "logging", "unittest", "asyncio"):
            t = p.read_text(encoding="utf-8")
            texts.append(t)
            n += len(t)
            if n >= max_chars:
                break
    return texts


@pytest.fixture(scope="session")
def repo_root():
    return REPO


@pytest.fixture(scope="session")
def mbpp_path():
    return REPO / "benchmarks" / "mbpp.jsonl"  # ships with the project


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory):
    from data import train_tokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    train_tokenizer(stdlib_sample(), path, vocab_size=1024, threads=1)
    return path


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tokenizer_path):
    import torch

    from data import Tokenizer
    from checkpoint import save_checkpoint
    from model import GPT, GPTConfig, make_config, model_state_dict

    tok = Tokenizer(tokenizer_path)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
    model = GPT(cfg)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(folder, model_state_dict(model), make_config(cfg, tok.to_config()), tokenizer_file=tokenizer_path)
    return folder


UNWRITABLE = ("below a file", "below /proc")


def unwritable_output(tmp_path, where, name="out"):
    """(path, cause in the error) of an output no one can write, root included (tests run as root, where
    chmod stops nothing): below a regular file (tmp_path/a_file, which must stay as it is), or below /proc,
    which takes no new file."""
    if where == "below a file":
        blocker = tmp_path / "a_file"
        blocker.write_text("kept")
        return blocker / name, f"{blocker} is not a folder"
    return Path("/proc/codelm-test") / name, "cannot create files in /proc (No such file or directory)"
