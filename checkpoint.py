"""
The checkpoint folder on disk, safe against kills and concurrent readers. A save writes every file into
out/.ckpt.partial/, renames that folder to out/.ckpt.ready/ (the commit point), then moves the files
into out/. A reader that finds .ckpt.ready finishes the moves first, so a kill at any moment leaves
either the previous checkpoint or the new one, never a mix. Writers hold an exclusive lock on the folder
for the whole save, readers a shared one while they read (reading_checkpoint), so a reader never sees a
save half moved into place and never touches a save in progress.

What the files hold (config.json, the weights) is model.py's business; this file only moves them safely.

    from checkpoint import save_checkpoint, reading_checkpoint
    save_checkpoint("out/", state_dict, config_dict, tokenizer_file="data/x/tokenizer.model")
    with reading_checkpoint("out/"):       # config, weights and tokenizer of one save
        ...
"""
import fcntl
import json
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

PARTIAL, READY = ".ckpt.partial", ".ckpt.ready"
_held = threading.local()  # .folders: the folders this thread holds a read lock on (reading_checkpoint nests)


class CheckpointError(Exception):
    """A checkpoint folder that cannot be written or read safely: the message names the folder and the cause."""


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _folder_lock(folder):
    """An exclusive lock on a checkpoint folder (flock on the directory itself; the kernel releases it
    when the holder dies): one writer or repairer at a time, and no reader meanwhile."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def reading_checkpoint(folder):
    """Hold checkpoint `folder` still while the caller reads it (config, weights, tokenizer): no save
    starts or finishes meanwhile. Nests within a thread, so a caller can wrap load_model and its own
    reads of the same folder in one."""
    key = os.path.realpath(folder)
    held = _held.__dict__.setdefault("folders", set())
    if key in held:
        yield
        return
    fd = _lock_for_reading(Path(folder))
    held.add(key)
    try:
        yield
    finally:
        held.discard(key)
        if fd is not None:
            os.close(fd)  # releases the lock


def _lock_for_reading(folder):
    """A shared flock on folder: the locked descriptor, or None where nothing can be locked (a folder
    that cannot be opened: the reads that follow say why; a filesystem without flock, as some network
    mounts: read unlocked then, as a plain copy would). No writer runs while it is held, so a .ckpt.ready
    found under it is a killed writer's: it is finished (under the exclusive lock), then locked again.
    The lock is on the directory itself, nothing is created: a read-only folder is read the same way,
    and refused only when it holds such a save, which it cannot finish."""
    tidied = False
    while True:
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            os.close(fd)
            fd = None
        ready, partial = (folder / READY).exists(), (folder / PARTIAL).exists()
        writable = os.access(folder, os.W_OK)
        if not ready and not (partial and writable and not tidied):  # a stale .ckpt.partial: tidied, or ignored
            return fd
        if fd is not None:
            os.close(fd)
        if not writable:
            raise CheckpointError(f"{folder}: a save was killed before all its files were moved into place ({READY}); "
                             "the folder is read-only, so it cannot be finished: make it writable and read it again")
        recover_checkpoint(folder)
        tidied = True


def _repair(folder):
    """Finish moving a committed save (.ckpt.ready) into place, drop an uncommitted one; under the lock."""
    ready, partial = folder / READY, folder / PARTIAL
    if ready.is_dir():
        for f in sorted(ready.iterdir()):
            os.replace(f, folder / f.name)
        _fsync_dir(folder)
        ready.rmdir()
    if partial.exists():
        shutil.rmtree(partial, ignore_errors=True)


def recover_checkpoint(folder):
    """Finish or discard an interrupted checkpoint write in folder (see above). Safe to call from
    several processes at once, and while another process is saving (it waits for the save)."""
    folder = Path(folder)
    if (folder / READY).exists() or (folder / PARTIAL).exists():
        with _folder_lock(folder):
            _repair(folder)


def _write_failure(e, folder):
    """What stopped a write, in a few words: the OS's reason, or (for writers that only report a short
    write, as torch.save does) a full disk when there is no space left."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename + ': ' if e.filename else ''}{e.strerror}"
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    try:
        if shutil.disk_usage(folder).free == 0:
            return f"no space left on device ({first})"
    except OSError:
        pass
    return first


def save_checkpoint(folder, state_dict, config, tokenizer_file=None, train_state=None, weights_name="model.safetensors"):
    """Write a checkpoint folder atomically. state_dict: name -> tensor (plain names, full tensors;
    tied copies dropped); config: the dict for config.json; tokenizer_file: the SentencePiece model to
    copy; train_state: anything torch.save takes (resume only); weights_name: 'adapters.safetensors'
    for a LoRA adapters checkpoint (config["lora"] names its base). A failed write (disk full) raises
    CheckpointError naming the cause and leaves the previous checkpoint as it was, with no partial folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _folder_lock(folder):
        _repair(folder)
        partial = folder / PARTIAL
        try:
            _write_files(partial, state_dict, config, tokenizer_file, train_state, weights_name)
        except (OSError, RuntimeError) as e:
            shutil.rmtree(partial, ignore_errors=True)
            raise CheckpointError(f"{folder}: checkpoint not saved, the previous one is kept ({_write_failure(e, folder)})")
        os.replace(partial, folder / READY)  # the commit point
        _fsync_dir(folder)
        _repair(folder)


def _write_files(partial, state_dict, config, tokenizer_file, train_state, weights_name):
    partial.mkdir()
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    if config.get("model", {}).get("tie_embeddings"):
        tensors.pop("head.weight", None)  # the config is a plain dict here; see without_tied_head
    written = []
    save_file(tensors, partial / weights_name, metadata={"format": "pt", "step": str(config.get("step", 0))})
    written.append(weights_name)
    (partial / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    written.append("config.json")
    if tokenizer_file is not None:
        tok_name = "tokenizer.json" if str(tokenizer_file).endswith(".json") else "tokenizer.model"  # as it came
        shutil.copyfile(tokenizer_file, partial / tok_name)
        written.append(tok_name)
    if train_state is not None:
        torch.save(train_state, partial / "train_state.pt")
        written.append("train_state.pt")
    for name in written:
        with open(partial / name, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(partial)
